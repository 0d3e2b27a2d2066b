"""Queue work from the command line, and teams: round-robin and least-loaded assignment."""

from __future__ import annotations

from pathlib import Path

from conftest import Env, mail

TEAMS = """
[[agents]]
name = "Bob Agent"
emails = ["bob@example.test"]

[[agents]]
name = "Carol Agent"
emails = ["carol@example.test"]

[[teams]]
name = "desk"
agents = ["Alice Agent", "Bob Agent", "Carol Agent"]
assignment = "{assignment}"
"""


def team_env(make_env, tmp_path: Path, assignment: str) -> Env:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10-route.toml").write_text('[[routing]]\nname = "desk"\nwhen = { field = "subject", contains = "desk" }'
                                          '\nteam = "desk"\n')
    return make_env(rules=folder.as_posix(), ack_limit=100, extra=TEAMS.format(assignment=assignment))  # type: ignore[no-any-return]


def owners(env: Env) -> list[str | None]:
    return [c["owner"] for c in reversed(env.json("cases", "list"))]


def test_round_robin_takes_each_agent_in_turn_across_runs(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = team_env(make_env, tmp_path, "round_robin")
    for i in range(4):
        env.inject(mail(subject=f"desk {i}"))
        env.ok("run", "--once")  # a new process each time: the turn is kept in the database
    env.inject(mail(subject="not for the team"))
    env.ok("run", "--once")
    assert owners(env) == ["Alice Agent", "Bob Agent", "Carol Agent", "Alice Agent", None]


def test_least_loaded_goes_to_whoever_has_fewest_active_cases(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = team_env(make_env, tmp_path, "least_loaded")
    env.inject(mail(subject="no team"))
    env.inject(mail(subject="also no team"))
    env.ok("run", "--once")
    refs = [c["reference"] for c in env.json("cases", "list")]
    env.ok("cases", "assign", refs[0], "--agent", "Alice Agent")
    env.ok("cases", "assign", refs[1], "--agent", "Bob Agent")
    env.inject(mail(subject="desk one"))
    env.ok("run", "--once")
    env.inject(mail(subject="desk two"))
    env.ok("run", "--once")
    # Alice and Bob have one each: Carol gets the first; then all three have one: Alice (listed first).
    assert owners(env)[2:] == ["Carol Agent", "Alice Agent"]


def test_pick_assign_and_queue_counts_are_audited(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    env.inject(mail(subject="one"))
    env.inject(mail(subject="two", headers={"X-Priority": "1"}))
    env.inject(mail(subject="three", to="billing@example.test"))
    env.ok("run", "--once")
    queues = {q["queue"]: q for q in env.json("queues", "list")}
    assert queues["support"] == {"queue": "support", "open": 2, "unassigned": 2, "high_priority": 0,
                                 "address": "support@example.test"}
    one = next(c for c in env.json("cases", "list") if c["title"] == "one")["reference"]
    assert "picked by Alice Agent from queue support" in env.ok("cases", "pick", one, "--agent", "Alice Agent")
    assert [c["title"] for c in env.json("cases", "list", "--unassigned", "--queue", "support")] == ["two"]
    again = env.cli("cases", "pick", one, "--agent", "Nobody")
    assert again.exit_code == 1 and "no agent 'Nobody'" in again.output
    env.ok("cases", "assign", one, "--queue", "billing")  # back to a pool: billing's
    shown = env.json("cases", "show", one)
    assert (shown["queue"], shown["owner"]) == ("billing", None)
    actions = [(e["action"], e["actor"].startswith("cli:")) for e in shown["audit"]]
    assert ("picked", True) in actions and ("assigned", True) in actions
    assigned = next(e for e in shown["audit"] if e["action"] == "assigned")["details"]
    assert assigned == {"before": {"owner": "Alice Agent", "queue": "support"},
                        "after": {"owner": None, "queue": "billing"}}
    assert {q["queue"]: q["unassigned"] for q in env.json("queues", "list")} == {"support": 1, "billing": 2}
    table = env.ok("queues", "list")
    assert "unassigned" in table and "billing@example.test" in table


def test_pick_refuses_a_case_someone_else_owns(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra='[[agents]]\nname = "Bob Agent"\nemails = ["bob@example.test"]\n')
    env.inject(mail())
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    env.ok("cases", "pick", case["reference"], "--agent", "Bob Agent")
    taken = env.cli("cases", "pick", case["reference"], "--agent", "Alice Agent")
    assert taken.exit_code == 1 and "is owned by Bob Agent" in taken.output


def test_unknown_senders_refused_with_a_templated_answer_and_the_message_kept(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=2)
    env.config.write_text(env.config.read_text().replace(
        'name = "Example Billing"', 'name = "Example Billing"\nunknown_senders = "refuse"'))
    env.inject(mail(subject="who am I", to="billing@example.test"))
    env.inject(mail(subject="known elsewhere", sender="jane@customer.test"))  # support creates the contact
    env.ok("run", "--once")
    env.inject(mail(subject="now known", sender="jane@customer.test", to="billing@example.test"))
    for i in range(3):  # a stranger who keeps writing: answered at most ack_limit times an hour
        env.inject(mail(subject=f"stranger {i}", sender="eve@stranger.test", to="billing@example.test"))
    env.ok("run", "--once")
    assert sorted(c["title"] for c in env.json("cases", "list")) == ["known elsewhere", "now known"]
    refused = [r for r in env.json("inbound", "list") if r["outcome"] == "refused"]
    assert len(refused) == 4  # jane's first (unknown then), and eve's three
    assert all("unknown sender: queue billing takes new cases only from known customers" in r["error"]
               for r in refused)
    assert sum("not answered: rate limit" in r["error"] for r in refused) == 1
    answers = [c for c in env.peer.wait_for(4)
               if "registered customers" in c.message.get_body(("plain",)).get_content()]
    assert len(answers) == 3
    first = answers[0].message
    assert first["Auto-Submitted"] == "auto-replied" and first["Subject"] == "Re: who am I"
    assert first["From"].addresses[0].addr_spec == "billing@example.test"


def test_new_contacts_join_their_company_by_default(make_env) -> None:  # type: ignore[no-untyped-def]
    """The default (unknown_senders = "create_with_account"): colleagues are one customer."""
    env: Env = make_env(ack_limit=100)
    env.inject(mail(sender="a@bigco.test"))
    env.inject(mail(sender="b@bigco.test"))
    env.inject(mail(sender="someone@gmail.com"))
    env.ok("run", "--once")
    engine = env.engine()
    with engine.connect() as conn:
        rows = conn.execute(__import__("sqlalchemy").text(
            "SELECT c.email, a.name FROM contact c LEFT JOIN account a ON a.id = c.account_id ORDER BY c.email")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("a@bigco.test", "bigco.test"), ("b@bigco.test", "bigco.test"),
                                        ("someone@gmail.com", None)]
    assert env.count("SELECT count(*) FROM account") == 1


def test_public_mail_domains_are_configurable(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    env.config.write_text(env.config.read_text().replace(
        "[cases]\n", '[cases]\npublic_mail_domains = ["Freemail.TEST"]\n'))
    env.inject(mail(sender="a@freemail.test"))
    env.inject(mail(sender="b@gmail.com"))  # public by default only: the list replaces the default
    env.ok("run", "--once")
    assert env.json("customers", "show", "a@freemail.test")["account"] is None
    assert env.json("customers", "show", "b@gmail.com")["account"] == "gmail.com"


def test_a_creation_rule_can_ask_for_an_account_from_the_domain(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10.toml").write_text('[[creation]]\nname = "partners"\nwhen = { field = "from_domain", '
                                    'equals = "partner.test" }\nset = { account_from_domain = true }\n')
    env: Env = make_env(rules=folder.as_posix(), ack_limit=100)
    env.config.write_text(env.config.read_text().replace(
        'name = "Example Support"', 'name = "Example Support"\nunknown_senders = "create"'))
    env.inject(mail(sender="p@partner.test"))
    env.inject(mail(sender="x@other.test"))
    env.ok("run", "--once")
    assert env.json("customers", "show", "p@partner.test")["account"] == "partner.test"
    assert env.json("customers", "show", "x@other.test")["account"] is None


def test_resolve_records_the_resolution_and_a_reply_reopens(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    env.inject(mail(subject="broken"))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    ref = case["reference"]
    bad = env.cli("cases", "resolve", ref, "--type", "On Hold", "--narrative", "x")
    assert bad.exit_code == 1 and "is not a Resolved status reason; choose from Problem Solved" in bad.output
    bad = env.cli("cases", "resolve", ref, "--type", "problem solved", "--narrative", "x", "--time-spent", "1x")
    assert bad.exit_code == 1 and "expected a duration like 1h30m" in bad.output
    out = env.ok("cases", "resolve", ref, "--type", "problem solved", "--narrative", "Replaced the fuser.",
                 "--time-spent", "1h30m")
    assert f"{ref} resolved: Problem Solved" in out
    shown = env.json("cases", "show", ref)
    assert (shown["status"], shown["status_reason"], shown["resolution_type"]) == ("Resolved", "Problem Solved",
                                                                                  "Problem Solved")
    assert shown["resolution"] == "Replaced the fuser." and shown["resolved_at"] and shown["time_spent_minutes"] == 90
    event = next(e for e in shown["audit"] if e["action"] == "resolved")
    assert event["details"]["time_spent_minutes"] == 90
    again = env.cli("cases", "resolve", ref, "--type", "Problem Solved", "--narrative", "x")
    assert again.exit_code == 1 and "already Resolved" in again.output
    env.inject(mail(subject=f"Re: [{ref}] broken", body="It is broken again.\n"))
    env.ok("run", "--once")
    assert env.json("cases", "show", ref)["status"] == "Active", "a reply within the window reopens"
