"""Rules at work on real intake, on SQLite and PostgreSQL: routing, ignore, quarantine, append-only,
customer tiers, rule hits on the case, ``rules check``/``rules test``, and SIGHUP with a bad file."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from conftest import Env, mail
from test_daemon import daemon, send

CREATION = """
[[creation]]
name = "newsletters"
when = { field = "from_domain", in = ["news.example"] }
action = "ignore"
reason = "newsletters are not cases"

[[creation]]
name = "spam"
when = { field = "subject", matches = "(?i)viagra|lottery" }
action = "quarantine"
reason = "looks like spam"

[[creation]]
name = "billing only continues cases"
queues = ["billing"]
when = { not = { field = "customer_tier", equals = "gold" } }
action = "append_only"

[[creation]]
name = "urgent"
when = { any = [ { field = "subject", contains = "urgent" }, { field = "header:X-Priority", starts_with = "1" } ] }
set = { priority = "from_headers", severity = "sev1" }
"""

ROUTING = """
[[routing]]
name = "invoices to billing"
when = { field = "subject", matches = "invoice|refund" }
queue = "billing"
owner = "Alice Agent"
priority = "high"

[[routing]]
name = "gold customers"
when = { field = "customer_tier", in = ["gold", "platinum"] }
priority = "urgent"
"""


def rules_env(make_env, tmp_path: Path, **files: str) -> Env:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    for name, text in (files or {"10-creation.toml": CREATION, "20-routing.toml": ROUTING}).items():
        (folder / name).write_text(text)
    return make_env(rules=folder.as_posix(), ack_limit=100)  # type: ignore[no-any-return]


def sql(env: Env, query: str) -> list[tuple]:  # type: ignore[type-arg]
    engine = env.engine()
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def test_routing_sets_queue_owner_and_priority_and_the_case_says_why(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path)
    env.inject(mail(subject="Invoice 42 is wrong"))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    assert (case["queue"], case["priority"], case["owner"]) == ("billing", "high", "Alice Agent")
    shown = env.json("cases", "show", case["reference"])
    assert [r["rule"] for r in shown["rules"]] == ["invoices to billing"]
    assert shown["rules"][0]["conditions"] == ["✓ subject matches 'invoice|refund'"]
    assert "rule:               routing 'invoices to billing'" in env.ok("cases", "show", case["reference"])
    created = next(e for e in shown["audit"] if e["action"] == "created")
    assert created["details"]["rules"] == ["invoices to billing"] and created["details"]["owner"] == "Alice Agent"
    # The acknowledgement comes from the queue the case was routed to.
    [ack] = env.peer.wait_for(1)
    assert ack.message["From"].addresses[0].addr_spec == "billing@example.test"


def test_priority_from_headers_and_severity(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path)
    env.inject(mail(subject="server down", headers={"X-Priority": "1 (Highest)"}))
    env.inject(mail(subject="urgent but polite"))
    env.ok("run", "--once")
    cases = {c["title"]: c for c in env.json("cases", "list")}
    assert cases["server down"]["priority"] == "urgent"
    assert cases["urgent but polite"]["priority"] == "normal", "no header: the default"
    assert env.json("cases", "show", cases["server down"]["reference"])["severity"] == "sev1"


def test_ignored_mail_is_kept_and_marked_and_quarantined_mail_can_be_retried(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path)
    env.inject(mail(subject="Our November newsletter", sender="news@news.example"))
    env.inject(mail(subject="You won the lottery"))
    env.ok("run", "--once")
    assert env.json("cases", "list") == []
    rows = {r["outcome"] or r["state"]: r for r in env.json("inbound", "list")}
    assert rows["ignored"]["error"] == "ignored by rule 'newsletters': newsletters are not cases"
    assert rows["quarantined"]["error"] == "quarantined by rule 'spam': looks like spam"
    assert env.peer.received == []
    # The admin decides the rule was wrong, removes it, and retries: nothing was lost.
    (tmp_path / "rules" / "10-creation.toml").write_text(CREATION.replace('"(?i)viagra|lottery"', '"viagra"'))
    env.ok("inbound", "retry", str(rows["quarantined"]["id"]))
    env.ok("run", "--once")
    assert [c["title"] for c in env.json("cases", "list")] == ["You won the lottery"]


def test_append_only_queue_threads_replies_but_opens_no_cases(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path)
    env.inject(mail(subject="Printer", message_id="<p1@customer.test>"))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    env.inject(mail(subject="new question", to="billing@example.test"))
    env.inject(mail(subject=f"Re: [{case['reference']}] Printer", to="billing@example.test"))
    env.ok("run", "--once")
    assert len(env.json("cases", "list")) == 1
    assert len(env.json("cases", "show", case["reference"])["activities"]) >= 2
    ignored = [r for r in env.json("inbound", "list") if r["outcome"] == "ignored"]
    assert len(ignored) == 1 and "only adds to existing cases" in ignored[0]["error"]


def test_customer_tier_from_the_customer_records(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path)
    engine = env.engine()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO account (name, domain, tier, created_at) "
                             "VALUES ('Acme', 'acme.test', 'gold', CURRENT_TIMESTAMP)"))
        account = conn.execute(sa.text("SELECT id FROM account")).scalar_one()
        conn.execute(sa.text("INSERT INTO contact (email, name, account_id, created_at) "
                             "VALUES ('boss@acme.test', 'Boss', :a, CURRENT_TIMESTAMP)"), {"a": account})
    engine.dispose()
    eml = tmp_path / "boss.eml"
    eml.write_bytes(mail(subject="Help", sender="boss@acme.test", to="billing@example.test"))
    assert env.json("rules", "test", str(eml))["customer"] == {"email": "boss@acme.test", "known": True,
                                                               "account": "Acme", "tier": "gold"}
    assert "customer:     boss@acme.test: Acme (gold)" in env.ok("rules", "test", str(eml))
    env.inject(mail(subject="Help", sender="boss@acme.test", to="billing@example.test"))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    assert (case["queue"], case["priority"]) == ("billing", "urgent"), "gold may open billing cases, urgently"


def test_rules_check_exit_codes(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path)
    assert "2 file(s)" in env.ok("rules", "check") and "all valid" in env.ok("rules", "check")
    (tmp_path / "rules" / "30-bad.toml").write_text('[[routing]]\nname = "x"\nqueue = "sales"\n')
    result = env.maild("rules", "check")
    assert result.returncode == 1
    assert b"rules/30-bad.toml: routing[0] 'x': queue: unknown queue 'sales'" in result.stderr
    run = env.maild("run", "--once")
    assert run.returncode == 2 and b"Traceback" not in run.stderr
    assert b"rules/30-bad.toml: routing[0] 'x': queue: unknown queue 'sales'" in run.stderr


def test_rules_test_is_a_dry_run_that_explains_itself(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path)
    eml = tmp_path / "m.eml"
    eml.write_bytes(mail(subject="urgent: refund please", headers={"X-Priority": "2"}))
    out = env.json("rules", "test", str(eml))
    assert out["queue"] == "support" and out["outcome"] == "create a new case"
    assert (out["creation_rule"], out["routing_rule"]) == ("urgent", "invoices to billing")
    assert out["case"] == {"title": "urgent: refund please", "queue": "billing", "owner": "Alice Agent",
                           "priority": "high", "severity": "sev1", "origin": "email", "subject": None}
    assert out["acknowledgement"] == {"sent": True, "reason": None, "to": "jane@customer.test"}
    assert out["customer"] == {"email": "jane@customer.test", "known": False, "account": None, "tier": None}
    looked = [(r["kind"], r["rule"], r["matched"]) for r in out["rules"]]
    assert looked == [("creation", "newsletters", False), ("creation", "spam", False), ("creation", "urgent", True),
                      ("routing", "invoices to billing", True)]
    text = env.ok("rules", "test", str(eml))
    assert "✓ subject contains 'urgent'" in text and "acknowledge:  yes, to jane@customer.test" in text
    eml.write_bytes(mail(subject="lottery", headers={"Auto-Submitted": "auto-replied"}))
    out = env.json("rules", "test", str(eml))
    assert out["outcome"] == "quarantine the message" and out["acknowledgement"]["sent"] is False
    assert sql(env, "SELECT count(*) FROM inbound_message") == [(0,)]
    assert sql(env, "SELECT count(*) FROM cases") == [(0,)], "nothing was written"
    assert sql(env, "SELECT value FROM counter WHERE name = 'case'") == [(0,)]


def test_sighup_with_a_bad_rule_file_keeps_the_running_rules(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "20-routing.toml").write_text(ROUTING)
    env: Env = make_env(rules=folder.as_posix(), smtp_enabled="true", ack_limit=100)
    with daemon(env) as proc:
        (folder / "20-routing.toml").write_text(ROUTING.replace('queue = "billing"', 'queue = "nowhere"'))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        send(env.smtp_port, mail(subject="invoice missing"))
        env.peer.wait_for(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "reload refused, keeping the running templates and rules" in err.decode()
    assert "unknown queue 'nowhere'" in err.decode()
    assert [c["queue"] for c in env.json("cases", "list")] == ["billing"]


SUBJECTS = """
subjects = ["Billing > Invoice Dispute > Wrong Address", "Billing > Refund", "Hardware > Printer"]

[[creation]]
name = "refunds"
when = { field = "subject", contains = "refund" }
set = { subject = "Billing > Refund" }

[[creation]]
name = "printers"
when = { field = "subject", contains = "printer" }
set = { subject = "Hardware > Printer" }
"""

BRANCH_ROUTING = """
[[routing]]
name = "all of billing"
when = { field = "case_subject", under = "Billing" }
queue = "billing"
"""


def test_subjects_tree_and_routing_by_branch(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path, **{"00-subjects.toml": SUBJECTS, "20-routing.toml": BRANCH_ROUTING})
    assert env.ok("subjects", "list").splitlines() == [
        "Billing", "  Invoice Dispute", "    Wrong Address", "  Refund", "Hardware", "  Printer"]
    env.inject(mail(subject="refund please"))
    env.inject(mail(subject="printer jammed"))
    env.ok("run", "--once")
    cases = {c["title"]: c for c in env.json("cases", "list")}
    assert cases["refund please"]["queue"] == "billing", "Billing > Refund is under Billing"
    assert cases["printer jammed"]["queue"] == "support"
    shown = env.json("cases", "show", cases["refund please"]["reference"])
    assert shown["subject"] == "Billing > Refund"
    assert [r["rule"] for r in shown["rules"]] == ["refunds", "all of billing"]
    # A reply to the billing case sees its subject: rules can tell replies by the case's subject.
    bad = BRANCH_ROUTING.replace('under = "Billing"', 'under = "Billing > Nope"')
    (tmp_path / "rules" / "20-routing.toml").write_text(bad + '\n[[creation]]\nname = "x"\nset = { subject = "Nope" }\n')
    problems = env.maild("rules", "check").stderr.decode()
    assert "rules/20-routing.toml: creation[0] 'x': set.subject: unknown subject 'Nope'" in problems


def test_under_applies_to_subjects_only() -> None:
    import pytest

    from maild.rules import conditions

    with pytest.raises(conditions.ConditionError, match="'under' applies to case_subject only"):
        conditions.parse({"field": "subject", "under": "Billing"})
    with pytest.raises(conditions.ConditionError, match="only operator for it"):
        conditions.parse({"field": "case_subject", "equals": "Billing"})


def test_replay_shows_what_a_candidate_rule_set_would_change_and_writes_nothing(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = rules_env(make_env, tmp_path)
    env.inject(mail(subject="Invoice 7", message_id="<inv7@customer.test>"))
    env.inject(mail(subject="Re: Invoice 7", headers={"In-Reply-To": "<inv7@customer.test>"}))
    env.inject(mail(subject="printer"))
    env.inject(mail(subject="refund for my lottery ticket"))
    env.ok("run", "--once")
    current = env.json("rules", "replay")
    assert current["changes"] == [] and current["messages"] == 4, "the running rules reproduce history"
    assert {q["queue"]: (q["before"], q["after"]) for q in current["queues"]} == {"billing": (1, 1),
                                                                                  "support": (1, 1)}
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "10.toml").write_text('[[routing]]\nname = "printers"\nwhen = { field = "subject", '
                                       'contains = "printer" }\nqueue = "billing"\n')
    before_counts = sql(env, "SELECT (SELECT count(*) FROM cases), (SELECT count(*) FROM inbound_message), "
                             "(SELECT count(*) FROM audit_event)")
    out = env.json("rules", "replay", "--rules", str(candidate), "--since", "1d")
    changes = {c["subject"]: (c["before"], c["after"], c["rule"]) for c in out["changes"]}
    assert changes == {
        "Invoice 7": ("new case in billing", "new case in support", None),
        "printer": ("new case in support", "new case in billing", "printers"),
        "refund for my lottery ticket": ("quarantined", "new case in support", None),
    }
    assert {q["queue"]: (q["before"], q["after"]) for q in out["queues"]} == {"billing": (1, 1), "support": (1, 2)}
    text = env.ok("rules", "replay", "--rules", str(candidate))
    assert "3 message(s) would change" in text
    assert sql(env, "SELECT (SELECT count(*) FROM cases), (SELECT count(*) FROM inbound_message), "
                    "(SELECT count(*) FROM audit_event)") == before_counts, "nothing was written"
    bad = env.cli("rules", "replay", "--since", "yesterday")
    assert bad.exit_code == 1 and "expected a duration like 30m, 24h, 7d or 2w" in bad.output


def test_business_hours_condition_uses_the_arrival_time(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rules = '[[routing]]\nname = "after hours"\nwhen = { field = "business_hours", equals = false }\npriority = "low"\n'
    env = rules_env(make_env, tmp_path, **{"10.toml": rules})
    # Closed every day but Sunday, so any weekday arrival is "after hours" whenever the test runs.
    env.config.write_text(env.config.read_text() + '\n[business_hours]\ndays = ["sun"]\n')
    if datetime.now(timezone.utc).weekday() == 6:
        env.config.write_text(env.config.read_text().replace('days = ["sun"]', 'days = ["sat"]'))
    env.inject(mail(subject="at night"))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    assert case["priority"] == "low"
    assert env.json("cases", "show", case["reference"])["rules"][0]["conditions"] == ["✓ business_hours equals False"]
