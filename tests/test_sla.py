"""SLA clocks end to end: the seeds' gold customer (15 cases, a 15-minute first response met by
an agent's emailed reply, resolution leaving 14), warnings and breaches firing exactly once,
pauses, and the status and explain commands. Time is injected: nothing sleeps."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from conftest import Env, mail
from maild import casework
from maild import config as config_mod
from maild.app import App
from maild.daemon import run_once
from maild.escalation import act
from maild.replytokens import AGENT, address, load_key
from maild.sla import SlaRunner
from maild.transport import MemoryTransport

SLAS = """
[[routing]]
name = "gold to Alice"
when = { field = "customer_tier", equals = "gold" }
owner = "Alice Agent"

[[sla]]
name = "gold"
when = { field = "customer_tier", equals = "gold" }
pause_on = ["Waiting for Details", "On Hold"]
first_response = { warn_after = "10m", fail_after = "15m" }
resolve_by = { warn_after = "6h", fail_after = "8h" }
on_warning = [ { notify = "owner" }, { notify = "queue" } ]
on_failure = [ { raise_priority = "urgent" }, { move_to_queue = "billing" }, { notify = "lead@example.org" } ]
"""
ROUND_THE_CLOCK = '\n[business_hours]\ndays = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\nstart = "00:00"\n' \
                  'end = "24:00"\n'
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)


def sla_env(make_env, tmp_path: Path) -> Env:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10-sla.toml").write_text(SLAS)
    env: Env = make_env(rules=folder.as_posix(), ack_limit=100, extra=ROUND_THE_CLOCK)
    csv = tmp_path / "c.csv"
    csv.write_text("email,name,account,tier\njane@customer.test,Jane Doe,Contoso,gold\n")
    env.ok("customers", "import", str(csv))
    return env


def app_at(env: Env, when: datetime) -> App:
    app = App(config_mod.load(env.config), clock=lambda: when)
    app.prepare()
    return app


def kpis(env: Env) -> dict[str, tuple[str, str | None]]:
    engine = env.engine()
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kpi, state, warned_at FROM sla_kpi ORDER BY kpi")).all()
    engine.dispose()
    return {r[0]: (r[1], r[2]) for r in rows}


def sweep(env: Env, when: datetime) -> int:
    app = app_at(env, when)
    try:
        ctx = app.intake_context()
        return SlaRunner(app.factory, lambda: ctx.rules, act(ctx), clock=lambda: when).run_once()
    finally:
        app.close()


def test_the_gold_customer_example_from_the_seeds(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = sla_env(make_env, tmp_path)
    ent = env.ok("entitlements", "add", "--name", "Gold", "--account", "Contoso", "--cases", "15", "--start",
                 "2026-01-01", "--end", "2027-12-31", "--decrement-on", "resolution").split()[1]
    env.inject(mail(subject="printer on fire", message_id="<fire@customer.test>"))
    app = app_at(env, T0)
    run_once(app, MemoryTransport())
    app.close()
    [case] = env.json("cases", "list")
    assert case["owner"] == "Alice Agent"
    shown = env.json("sla", "explain", case["reference"])
    first = next(k for k in shown["kpis"] if k["kpi"] == "first_response")
    assert first["fail_at"] == (T0 + timedelta(minutes=15)).isoformat()
    # Alice answers from her mail client five minutes later: the KPI is met.
    key = load_key(config_mod.load(env.config).security.reply_token_key_file)
    env.inject(mail(subject=f"Re: [{case['reference']}] printer on fire", sender="Alice <alice@example.test>",
                    body="Unplug it, please.\n", headers={"In-Reply-To": "<fire@customer.test>"},
                    to=address("support@example.test", case["reference"], key, AGENT)))
    app = app_at(env, T0 + timedelta(minutes=5))
    run_once(app, MemoryTransport())
    app.close()
    assert kpis(env)["first_response"][0] == "Succeeded"
    assert sweep(env, T0 + timedelta(minutes=20)) == 0, "a met KPI never fires"
    env.ok("cases", "resolve", case["reference"], "--type", "Problem Solved", "--narrative", "unplugged")
    assert kpis(env)["resolve_by"][0] == "Succeeded"
    assert env.json("entitlements", "show", ent)["remaining"] == 14


def test_warning_and_breach_fire_exactly_once(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = sla_env(make_env, tmp_path)
    env.config.write_text(env.config.read_text().replace(
        'name = "Example Support"', 'name = "Example Support"\nnotify = ["desk@example.org"]'))
    env.inject(mail(subject="slow", message_id="<slow@customer.test>"))
    app = app_at(env, T0)
    run_once(app, MemoryTransport())
    app.close()
    assert sweep(env, T0 + timedelta(minutes=9)) == 0
    assert sweep(env, T0 + timedelta(minutes=11)) == 1  # the first-response warning
    assert sweep(env, T0 + timedelta(minutes=12)) == 0, "never twice"
    assert kpis(env)["first_response"][0] == "Nearing Noncompliance"
    assert sweep(env, T0 + timedelta(minutes=16)) == 1  # the breach
    assert sweep(env, T0 + timedelta(minutes=17)) == 0
    [case] = env.json("cases", "list")
    assert (case["priority"], case["queue"]) == ("urgent", "billing")
    engine = env.engine()
    with engine.connect() as conn:
        notices = conn.execute(sa.text("SELECT recipient FROM outbound_message WHERE kind = 'notice' ORDER BY id")
                               ).scalars().all()
    engine.dispose()
    assert notices == ["alice@example.test", "desk@example.org", "lead@example.org"]
    timeline = env.ok("sla", "explain", case["reference"])
    assert "warning  (notified alice@example.test; notified desk@example.org)" in timeline
    assert "failure  (priority normal -> urgent; moved support -> billing; notified lead@example.org)" in timeline
    breaching = env.json("sla", "status", "--breaching")
    assert [(b["kpi"], b["state"]) for b in breaching] == [("first_response", "Noncompliant")]


def test_pause_stops_the_clock_and_resume_moves_the_due_time(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = sla_env(make_env, tmp_path)
    env.inject(mail(subject="need info"))
    app = app_at(env, T0)
    run_once(app, MemoryTransport())
    ref = env.json("cases", "list")[0]["reference"]
    ctx = app.intake_context()

    def set_reason(reason: str, now: datetime) -> None:
        casework.change(app.factory, ref, lambda s, case: casework.set_reason(s, ctx, case, reason, actor="test",
                                                                             now=now))

    set_reason("Waiting for Details", T0 + timedelta(minutes=5))
    assert kpis(env)["first_response"][0] == "Paused"
    assert sweep(env, T0 + timedelta(hours=3)) == 0, "a paused clock never fires"
    set_reason("In Progress", T0 + timedelta(hours=1))
    app.close()
    first = next(k for k in env.json("sla", "explain", ref)["kpis"] if k["kpi"] == "first_response")
    # 5 minutes used before the pause: 10 left from the resume.
    assert first["fail_at"] == (T0 + timedelta(hours=1, minutes=10)).isoformat()
    assert [h["event"] for h in first["history"]] == ["started", "paused", "resumed"]
    assert sweep(env, T0 + timedelta(hours=1, minutes=6)) == 1  # warning at 10 minutes of business time


def test_no_sla_applies_to_others_and_cancel_stops_the_clocks(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = sla_env(make_env, tmp_path)
    env.inject(mail(subject="from a stranger", sender="x@elsewhere.test"))
    env.inject(mail(subject="gold", sender="jane@customer.test"))
    app = app_at(env, T0)
    run_once(app, MemoryTransport())
    app.close()
    refs = {c["title"]: c["reference"] for c in env.json("cases", "list")}
    assert "no SLA clocks" in env.ok("sla", "explain", refs["from a stranger"])
    env.ok("cases", "cancel", refs["gold"], "--reason", "duplicate")
    assert {k: v[0] for k, v in kpis(env).items()} == {"first_response": "Cancelled", "resolve_by": "Cancelled"}
    assert env.json("sla", "status") == []


def test_bad_sla_definitions_name_the_key(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10.toml").write_text('[[sla]]\nname = "x"\npause_on = ["Sleeping"]\n'
                                    'first_response = { warn_after = "20m", fail_after = "15m" }\n'
                                    'on_failure = [ { move_to_queue = "nowhere" } ]\n')
    env: Env = make_env(rules=folder.as_posix())
    problems = env.maild("rules", "check").stderr.decode()
    assert "rules/10.toml: sla[0] 'x': first_response: Value error, warn_after (20m) must come before fail_after" \
           in problems
    (folder / "10.toml").write_text('[[sla]]\nname = "x"\npause_on = ["Sleeping"]\n'
                                    'first_response = { warn_after = "10m", fail_after = "15m" }\n'
                                    'on_failure = [ { move_to_queue = "nowhere" } ]\n')
    problems = env.maild("rules", "check").stderr.decode()
    assert "sla[0] 'x': pause_on: 'Sleeping' is not an Active status reason" in problems
    assert "sla[0] 'x': on_failure: unknown queue 'nowhere'" in problems


def test_friday_evening_is_due_monday_and_a_holiday_shifts_it(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10.toml").write_text('[[sla]]\nname = "std"\nfirst_response = { warn_after = "10m", '
                                    'fail_after = "15m" }\n')
    hours = '\n[business_hours]\ntimezone = "Europe/Berlin"\nholidays = "DE"\nholiday_region = "BY"\n'
    env: Env = make_env(rules=folder.as_posix(), ack_limit=100, extra=hours)
    friday_evening = datetime(2026, 11, 27, 17, 30, tzinfo=timezone.utc)  # 18:30 in Berlin
    before_christmas = datetime(2026, 12, 23, 15, 55, tzinfo=timezone.utc)  # Wed 16:55 in Berlin
    for when, subject in ((friday_evening, "friday"), (before_christmas, "christmas")):
        env.inject(mail(subject=subject))
        app = app_at(env, when)
        run_once(app, MemoryTransport())
        app.close()
    due = {c["title"]: next(k["fail_at"] for k in env.json("sla", "explain", c["reference"])["kpis"])
           for c in env.json("cases", "list")}
    assert due["friday"] == "2026-11-30T08:15:00+00:00", "Monday 09:15 in Berlin"
    # 5 minutes on Wednesday; Thu 24 Dec is open, so the rest falls on Thursday morning.
    assert due["christmas"] == "2026-12-24T08:10:00+00:00"
    env.config.write_text(env.config.read_text() + 'extra_holidays = ["2026-12-24"]\n')
    env.inject(mail(subject="christmas again"))
    app = app_at(env, before_christmas)
    run_once(app, MemoryTransport())
    app.close()
    ref = next(c["reference"] for c in env.json("cases", "list") if c["title"] == "christmas again")
    kpi = env.json("sla", "explain", ref)["kpis"][0]
    # Dec 24 (company day off), 25 and 26 (public holidays) and Sunday are closed: Monday the 28th.
    assert kpi["fail_at"] == "2026-12-28T08:10:00+00:00"
    assert "Europe/Berlin" in env.json("sla", "explain", ref)["calendar"]


def test_an_entitlement_names_the_sla_its_cases_get(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10.toml").write_text(
        '[[sla]]\nname = "standard"\nresolve_by = { warn_after = "20h", fail_after = "24h" }\n\n'
        '[[sla]]\nname = "premium"\nwhen = { field = "entitlement", equals = "never matches by itself" }\n'
        'first_response = { warn_after = "30m", fail_after = "1h" }\n')
    env: Env = make_env(rules=folder.as_posix(), ack_limit=100, extra=ROUND_THE_CLOCK)
    csv = tmp_path / "c.csv"
    csv.write_text("email,name,account,tier\njane@customer.test,Jane,Contoso,gold\n")
    env.ok("customers", "import", str(csv))
    env.ok("entitlements", "add", "--name", "Premium", "--account", "Contoso", "--cases", "5", "--start",
           "2026-01-01", "--end", "2027-12-31", "--sla", "premium")
    env.inject(mail(subject="premium customer"))
    env.inject(mail(subject="anyone else", sender="x@other.test"))
    app = app_at(env, T0)
    run_once(app, MemoryTransport())
    app.close()
    slas = {c["title"]: {k["sla"] for k in env.json("sla", "explain", c["reference"])["kpis"]}
            for c in env.json("cases", "list")}
    assert slas == {"premium customer": {"premium"}, "anyone else": {"standard"}}


def test_two_sweepers_at_once_fire_each_action_once(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import threading

    env = sla_env(make_env, tmp_path)
    for i in range(30):
        env.inject(mail(subject=f"case {i}"))
    app = app_at(env, T0)
    run_once(app, MemoryTransport())
    app.close()
    fired: list[int] = []
    later = T0 + timedelta(minutes=11)
    threads = [threading.Thread(target=lambda: fired.append(sweep(env, later))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(fired) == 30, f"each of the 30 warnings fired once between the two sweepers: {fired}"
    assert sweep(env, later) == 0
