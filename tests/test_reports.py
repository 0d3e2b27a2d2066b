"""`maild report`: every figure checked against a seeded dataset with hand-computed answers,
the text, JSON and CSV outputs, bad input, and the scheduled report mail (once per period)."""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import Env, write_config
from maild import config as config_mod
from maild import reports
from maild.app import App, required_templates
from maild.businesshours import BusinessCalendar
from maild.db import transaction
from maild.errors import ConfigError
from maild.models import (KPI_CANCELLED, KPI_IN_PROGRESS, KPI_NONCOMPLIANT, KPI_SUCCEEDED, Account, Agent, Case,
                          Contact, Entitlement, OutboundMessage, ReportRun, SlaKpi, Subject)
from maild.reportmail import ReportMailRunner
from maild.reportschedule import ScheduledReport, latest_slot

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)  # a Monday
WEEK = ("--since", "2026-11-16", "--until", "2026-11-22")  # Monday to Sunday


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=timezone.utc)


@pytest.fixture
def app(env: Env) -> Iterator[App]:
    app = App(config_mod.load(env.config), clock=lambda: NOW)
    try:
        yield app
    finally:
        app.close()


def seed(app: App) -> None:
    """Seven cases whose figures are worked out by hand in the tests below. Business hours are
    the default: Monday to Friday 09:00-17:00 UTC."""
    queues = app.registry.queue_ids  # also puts the config's queues and agents in the database
    with transaction(app.factory) as s:
        alice = s.scalars(select(Agent).where(Agent.name == "Alice Agent")).one().id
        hardware = Subject(name="Hardware")
        printer, billing = Subject(name="Printer", parent=hardware), Subject(name="Billing")
        acme = Account(name="Acme", created_at=at(1, 0))
        jane = Contact(email="jane@customer.test", name="Jane", created_at=at(1, 0))
        s.add_all([hardware, printer, billing, acme, jane])
        s.flush()
        acme_cases = Entitlement(name="Acme 2026", account_id=acme.id, start_date=date(2026, 1, 1),
                                 end_date=date(2026, 12, 31), allocation="cases", total=10, remaining=7,
                                 channels=["email"], created_at=at(1, 0))
        s.add_all([acme_cases,
                   Entitlement(name="Jane hours", contact_id=jane.id, start_date=date(2026, 11, 1),
                               end_date=date(2026, 11, 30), allocation="hours", total=600, remaining=450,
                               channels=["email"], created_at=at(1, 0)),
                   Entitlement(name="Acme 2025", account_id=acme.id, start_date=date(2025, 1, 1),
                               end_date=date(2025, 12, 31), allocation="cases", total=5, remaining=0,
                               channels=["email"], created_at=at(1, 0))])
        s.flush()
        support, billing_q = queues["support"], queues["billing"]

        def case(n: int, queue: int, created: datetime, **fields: Any) -> Case:
            fields.setdefault("updated_at", fields.get("resolved_at") or created)
            c = Case(reference=f"CAS-{n:05d}-TEST00", title=f"case {n}", queue_id=queue, created_at=created, **fields)
            s.add(c)
            s.flush()
            return c

        # C1: SLA; answered after 1 business hour, resolved after 8 (Mon 10:00 -> Tue 10:00).
        c1 = case(1, support, at(16, 10), first_response_at=at(16, 11), resolved_at=at(17, 10), status="Resolved",
                  status_reason="Problem Solved", resolution_type="Problem Solved", owner_id=alice,
                  subject_id=printer.id)
        clock(s, c1, "first_response", KPI_SUCCEEDED)
        clock(s, c1, "resolve_by", KPI_SUCCEEDED, warned=at(17, 9))
        # C2: SLA; Friday 16:00, answered on Saturday: 1 business hour; first response breached.
        c2 = case(2, support, at(20, 16), first_response_at=at(21, 10), status_reason="On Hold", owner_id=alice,
                  priority="high", subject_id=hardware.id)
        clock(s, c2, "first_response", KPI_NONCOMPLIANT, warned=at(20, 16, 30), failed=at(20, 16, 45))
        clock(s, c2, "resolve_by", KPI_IN_PROGRESS)
        # C3: no SLA: answered in 30 minutes, resolved in 4 hours, wall-clock time.
        c3 = case(3, support, at(18, 9), first_response_at=at(18, 9, 30), resolved_at=at(18, 13), status="Resolved",
                  status_reason="Information Provided", resolution_type="Information Provided",
                  subject_id=printer.id, csat_requested_at=at(18, 13))
        # C4: cancelled (no resolved_at; its last update is the cancellation).
        case(4, billing_q, at(19, 8), updated_at=at(19, 12), status="Cancelled", status_reason="Cancelled",
             subject_id=billing.id)
        # C5 (before the period) and C6 (after it) are still open.
        case(5, billing_q, at(10, 10))
        case(6, billing_q, at(23, 11, 30), owner_id=alice, priority="urgent")
        # C7: its SLA clock was cancelled (never measured), but it still counts business time:
        # Tuesday 12:00 -> Thursday 12:00 is 5 + 8 + 3 = 16 business hours.
        c7 = case(7, support, at(17, 12), resolved_at=at(19, 12), status="Resolved", status_reason="Problem Solved",
                  resolution_type="Problem Solved", owner_id=alice, entitlement_id=acme_cases.id,
                  csat_requested_at=at(19, 12), csat_score=4, csat_at=at(19, 15))
        clock(s, c7, "resolve_by", KPI_CANCELLED)


def clock(s: Any, case: Case, kpi: str, state: str, warned: datetime | None = None,
          failed: datetime | None = None) -> None:
    s.add(SlaKpi(case_id=case.id, sla="standard", kpi=kpi, state=state, warn_after_s=1800, fail_after_s=3600,
                 started_at=case.created_at, consumed_s=0, warned_at=warned, failed_at=failed, history=[]))


def figures(app: App, queue: str | None = None) -> dict[str, list[dict[str, Any]]]:
    return reports.generate(app, date(2026, 11, 16), date(2026, 11, 22), queue).sections()


def test_every_figure_matches_the_hand_computed_answer(app: App) -> None:
    seed(app)
    f = figures(app)
    assert f["backlog"] == [
        {"queue": "billing", "status_reason": "In Progress", "open": 2, "age_under_1d": 1, "age_1d_to_3d": 0,
         "age_3d_to_7d": 0, "age_over_7d": 1},
        {"queue": "support", "status_reason": "On Hold", "open": 1, "age_under_1d": 0, "age_1d_to_3d": 1,
         "age_3d_to_7d": 0, "age_over_7d": 0},
    ]
    assert [(d["day"], d["created"], d["resolved"]) for d in f["daily"]] == [
        ("2026-11-16", 1, 0), ("2026-11-17", 1, 1), ("2026-11-18", 1, 1), ("2026-11-19", 1, 1),
        ("2026-11-20", 1, 0), ("2026-11-21", 0, 0), ("2026-11-22", 0, 0)]
    assert f["times"] == [
        # C1 60 (business), C2 60 (business), C3 30: mean 50, median 60.
        {"queue": "(all)", "measure": "first_response", "cases": 3, "business_time_cases": 2,
         "average_minutes": 50.0, "median_minutes": 60.0},
        {"queue": "support", "measure": "first_response", "cases": 3, "business_time_cases": 2,
         "average_minutes": 50.0, "median_minutes": 60.0},
        # C1 480 (business), C3 240, C7 960 (business): mean 560, median 480.
        {"queue": "(all)", "measure": "resolution", "cases": 3, "business_time_cases": 2,
         "average_minutes": 560.0, "median_minutes": 480.0},
        {"queue": "support", "measure": "resolution", "cases": 3, "business_time_cases": 2,
         "average_minutes": 560.0, "median_minutes": 480.0},
    ]
    assert f["sla"] == [
        {"queue": "support", "kpi": "first_response", "clocks": 2, "met": 1, "near_breach": 0, "breached": 1,
         "compliance_pct": 50.0},
        {"queue": "support", "kpi": "resolve_by", "clocks": 2, "met": 1, "near_breach": 1, "breached": 0,
         "compliance_pct": 100.0},
    ]
    assert f["closed"] == [
        {"status": "Cancelled", "status_reason": "Cancelled", "resolution_type": "", "cases": 1},
        {"status": "Resolved", "status_reason": "Information Provided", "resolution_type": "Information Provided",
         "cases": 1},
        {"status": "Resolved", "status_reason": "Problem Solved", "resolution_type": "Problem Solved", "cases": 2},
    ]
    assert f["subjects"] == [{"subject": "Billing", "cases": 1, "direct": 1},
                             {"subject": "Hardware", "cases": 3, "direct": 1},
                             {"subject": "Hardware > Printer", "cases": 2, "direct": 2},
                             {"subject": "(no subject)", "cases": 1, "direct": 1}]
    assert f["agents"] == [{"agent": "Alice Agent", "open": 2, "open_high_priority": 2, "resolved": 2},
                           {"agent": "(unassigned)", "open": 1, "open_high_priority": 0, "resolved": 1}]
    assert f["entitlements"] == [
        {"customer": "Acme", "entitlement": "Acme 2026", "unit": "cases", "total": 10, "used": 3, "remaining": 7,
         "used_pct": 30.0, "cases_in_period": 1},
        {"customer": "jane@customer.test", "entitlement": "Jane hours", "unit": "hours", "total": 10.0, "used": 2.5,
         "remaining": 7.5, "used_pct": 25.0, "cases_in_period": 0},
    ]
    assert f["csat"] == [{"queue": "support", "surveys": 2, "answers": 1, "average": 4.0}]


def test_a_queue_filter_keeps_only_that_queues_cases(app: App) -> None:
    seed(app)
    f = figures(app, "billing")
    assert [(r["queue"], r["open"]) for r in f["backlog"]] == [("billing", 2)]
    assert sum(d["created"] for d in f["daily"]) == 1 and sum(d["resolved"] for d in f["daily"]) == 0
    assert f["times"] == [{"queue": "(all)", "measure": m, "cases": 0, "business_time_cases": 0,
                           "average_minutes": None, "median_minutes": None} for m in ("first_response", "resolution")]
    assert f["sla"] == [] and f["csat"] == []
    assert [r["status"] for r in f["closed"]] == ["Cancelled"]
    assert f["subjects"] == [{"subject": "Billing", "cases": 1, "direct": 1}]
    assert f["agents"] == [{"agent": "Alice Agent", "open": 1, "open_high_priority": 1, "resolved": 0},
                           {"agent": "(unassigned)", "open": 1, "open_high_priority": 0, "resolved": 0}]


def test_business_days_follow_the_calendars_time_zone(app: App) -> None:
    seed(app)
    calendar = BusinessCalendar(app.config.business_hours.model_copy(update={"timezone": "Pacific/Auckland"}))
    scope = reports.scope_for_days(calendar, NOW, date(2026, 11, 16), date(2026, 11, 17), None, ["support"])
    assert scope.since == datetime(2026, 11, 15, 11, 0, tzinfo=timezone.utc), "midnight in Auckland (UTC+13)"
    with transaction(app.factory) as s:
        report = reports.build(s, scope, NOW, calendar)
    # C1 (Mon 10:00 UTC) is Mon 23:00 there; C7 (Tue 12:00 UTC) is already Wednesday there.
    assert [(d.day, d.created) for d in report.daily] == [("2026-11-16", 1), ("2026-11-17", 0)]


def test_cli_prints_text_json_and_one_csv(env: Env, app: App) -> None:
    seed(app)
    text = env.ok("report", *WEEK)
    assert "Closed cases by status reason and resolution type" in text and "Problem Solved" in text
    assert "Hardware > Printer" in text and "Alice Agent" in text
    data = env.json("report", *WEEK)
    assert data["since"] == "2026-11-16T00:00:00+00:00" and data["until"] == "2026-11-23T00:00:00+00:00"
    assert [r["cases"] for r in data["closed"]] == [1, 1, 2]
    assert [r["open"] for r in data["backlog"]] == [2, 1], "open cases do not depend on the period"
    rows = list(csv.DictReader(io.StringIO(env.ok("report", *WEEK, "--csv"))))
    assert rows[0].keys() >= {"section", "day", "queue", "status_reason", "subject", "agent", "entitlement"}
    assert {r["section"] for r in rows} == {"backlog", "daily", "times", "sla", "closed", "subjects", "agents",
                                           "entitlements", "csat"}
    closed = [(r["status_reason"], r["cases"]) for r in rows if r["section"] == "closed"]
    assert closed == [("Cancelled", "1"), ("Information Provided", "1"), ("Problem Solved", "2")]
    assert [r["day"] for r in rows if r["section"] == "closed"] == ["", "", ""], "other sections' columns are empty"
    assert "support" in env.ok("report", "csat"), "the csat subcommand still works"


def test_bad_report_options_are_one_clear_line(env: Env) -> None:
    result = env.maild("report", "--since", "2026-11-22", "--until", "2026-11-16")
    assert result.returncode == 1 and result.stderr.decode().strip() == \
        "maild: --since 2026-11-22 is after --until 2026-11-16"
    result = env.maild("report", "--queue", "nope")
    assert result.returncode == 1 and result.stderr.decode().strip() == \
        "maild: unknown queue 'nope'; queues: billing, support"
    result = env.maild("report", "--html", str(env.path / "missing" / "r.html"))
    assert result.returncode == 1 and "r.html: cannot write: No such file or directory" in result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert env.cli("report", "--json", "--csv").exit_code == 2


# Scheduled reports --------------------------------------------------------------------------

SCHEDULES = """
[[reports]]
name = "daily-support"
schedule = "daily"
at = "08:00"
to = ["lead@example.test", "boss@example.test"]
queue = "support"

[[reports]]
name = "weekly"
schedule = "weekly"
weekday = "mon"
at = "07:30"
to = ["manager@example.test"]
html = false
"""


@pytest.fixture
def scheduled(make_env: Any) -> Env:
    env: Env = make_env()
    write_config(env.path, env.db_url, env.peer.port, extra=SCHEDULES)
    return env


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def runner_for(env: Env, clock: Clock) -> tuple[ReportMailRunner, App]:
    app = App(config_mod.load(env.config), clock=clock)
    return ReportMailRunner(app.factory, app.config, lambda: app.renderer, clock=clock), app


def outbox(app: App) -> list[EmailMessage]:
    with transaction(app.factory) as s:
        raws = s.scalars(select(OutboundMessage.raw).where(OutboundMessage.kind == "report")
                         .order_by(OutboundMessage.id)).all()
    return [message_from_bytes(raw, policy=policy.default) for raw in raws]


def test_a_scheduled_report_is_mailed_once_per_period(scheduled: Env) -> None:
    clock = Clock(at(23, 7))  # Monday 07:00: the weekly (07:30) and daily (08:00) slots are yesterday and last week
    runner, app = runner_for(scheduled, clock)
    try:
        seed(app)
        assert runner.run_once() == 2, "the latest period of each schedule"
        assert runner.run_once() == 0
        clock.now = at(23, 7, 45)
        assert runner.run_once() == 1, "this week's Monday 07:30 slot has started"
        clock.now = at(23, 9)
        assert runner.run_once() == 1, "today's 08:00 slot"
        restarted, app2 = runner_for(scheduled, clock)
        assert restarted.run_once() == 0, "a restart does not send again"
        app2.close()
        clock.now = at(27, 8, 30)  # Friday: only the latest daily period, not the days in between
        assert runner.run_once() == 1
        with transaction(app.factory) as s:
            runs = s.execute(select(ReportRun.name, ReportRun.period).order_by(ReportRun.id)).all()
        assert [tuple(r) for r in runs] == [("daily-support", "2026-11-22"), ("weekly", "2026-W47"),
                                            ("weekly", "2026-W48"), ("daily-support", "2026-11-23"),
                                            ("daily-support", "2026-11-27")]
        mails = outbox(app)
        assert [m["To"] for m in mails[:3]] == ["lead@example.test", "boss@example.test", "manager@example.test"]
        daily = mails[0]
        assert daily["Subject"] == "Support report daily-support 2026-11-22 (support)"
        assert daily["From"].addresses[0].addr_spec == "support@example.test"
        assert daily["Auto-Submitted"] == "auto-replied"
        body = daily.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        # 2026-11-21 08:00 to 11-22 08:00: C2 (Friday) was answered on Saturday; nothing was created.
        assert "Created in the period: 0" in text and "Open cases now:        1" in text, text
        [page] = [p for p in daily.iter_attachments()]
        assert page.get_filename() == "maild-report-daily-support-2026-11-22.html"
        assert "<svg" in page.get_content()
        last_week, this_week = (m.get_body(("plain",)) for m in mails[2:4])
        assert last_week is not None and this_week is not None
        assert "Created in the period: 1" in last_week.get_content(), "9 to 16 November: C5"
        assert "Created in the period: 5" in this_week.get_content()
        assert list(mails[3].iter_attachments()) == [], "html = false"
    finally:
        app.close()


def test_two_workers_send_a_period_once(scheduled: Env) -> None:
    clock = Clock(at(23, 9))
    pairs = [runner_for(scheduled, clock) for _ in range(2)]
    results: list[int] = []
    start = threading.Barrier(2)

    def work(runner: ReportMailRunner) -> None:
        start.wait()
        results.append(runner.run_once())

    threads = [threading.Thread(target=work, args=(r,)) for r, _ in pairs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(results) == 2, results
        assert len(outbox(pairs[0][1])) == 3, "two to the daily list, one to the weekly"
    finally:
        for _, app in pairs:
            app.close()


def test_slots_follow_the_calendar_zone_and_weekday() -> None:
    report = ScheduledReport(name="w", schedule="weekly", weekday="fri", at="18:00", to=("a@example.test",))
    berlin = BusinessCalendar(config_mod.BusinessHoursConfig(timezone="Europe/Berlin")).zone
    slot = latest_slot(report, at(23, 12), berlin)
    assert slot.key == "2026-W47"
    assert slot.until == at(20, 17) and slot.since == at(13, 17), "Friday 18:00 in Berlin is 17:00 UTC"
    daily = ScheduledReport(name="d", schedule="daily", to=("a@example.test",))
    assert latest_slot(daily, at(23, 6, 59), berlin).key == "2026-11-22", "07:59 in Berlin: not yet 08:00"
    assert latest_slot(daily, at(23, 7), berlin).key == "2026-11-23"


BAD = [
    ('name = "r"\nschedule = "hourly"\nto = ["a@example.test"]', "reports.0.schedule: expected 'daily' or 'weekly'"),
    ('name = "r"\nschedule = "daily"\nat = "8am"\nto = ["a@example.test"]',
     "reports.0.at: expected a time like \"08:00\", got '8am'"),
    ('name = "r"\nschedule = "daily"\nto = ["not-an-address"]', "reports.0.to.0: expected an email address"),
    ('name = "r"\nschedule = "daily"\nto = []', "reports.0.to: "),
    ('name = "r"\nschedule = "daily"\nto = ["a@example.test"]\nqueue = "nope"',
     "reports.0.queue: unknown queue 'nope'"),
    ('name = "r"\nschedule = "daily"\nto = ["a@example.test"]\nsubject = "x"', "reports.0.subject: unknown key"),
    ('name = "r"\nschedule = "daily"\nto = ["a@example.test"]\n[[reports]]\nname = "r"\nschedule = "weekly"\n'
     'to = ["a@example.test"]', "reports.1.name: report 'r' is already defined at reports.0"),
]


@pytest.mark.parametrize(("snippet", "expected"), BAD, ids=[b[1][:24] for b in BAD])
def test_bad_report_config_names_file_and_key(tmp_path: Path, snippet: str, expected: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[queues.support]\naddresses = ["support@example.test"]\n[[reports]]\n' + snippet + "\n")
    with pytest.raises(ConfigError) as err:
        config_mod.load(cfg)
    assert str(err.value).startswith(f"{cfg}: ") and expected in str(err.value), str(err.value)


def test_report_templates_are_required_at_start_up(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[queues.support]\naddresses = ["support@example.test"]\n[[reports]]\nname = "r"\n'
                   'schedule = "daily"\nto = ["a@example.test"]\ntemplate = "my_report"\n')
    assert "my_report" in required_templates(config_mod.load(cfg))
