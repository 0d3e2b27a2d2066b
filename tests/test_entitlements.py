"""Entitlements: the seeds' gold customer with 15 cases, exhausted entitlements under both
policies, cancelled cases giving their count back, hours charged at resolution."""

from __future__ import annotations

from pathlib import Path

from conftest import Env, mail


def gold(env: Env, tmp_path: Path, *extra: str) -> int:
    csv = tmp_path / "c.csv"
    csv.write_text("email,name,account,tier\njane@customer.test,Jane Doe,Contoso,gold\n")
    env.ok("customers", "import", str(csv))
    out = env.ok("entitlements", "add", "--name", "Gold 2026", "--account", "Contoso", "--start", "2026-01-01",
                 "--end", "2027-12-31", *extra)
    return int(out.split()[1])


def test_the_gold_customer_is_entitled_to_15_cases_and_resolution_leaves_14(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    ent = gold(env, tmp_path, "--cases", "15", "--decrement-on", "resolution")
    env.inject(mail(subject="printer broken"))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    assert env.json("entitlements", "show", str(ent))["remaining"] == 15, "counted at resolution"
    env.ok("cases", "resolve", case["reference"], "--type", "Problem Solved", "--narrative", "fixed")
    shown = env.json("entitlements", "show", str(ent))
    assert shown["remaining"] == 14
    assert shown["cases"] == [{"reference": case["reference"], "status": "Resolved", "charged": 1, "flag": None}]
    assert [h["action"] for h in shown["history"]] == ["entitlement_added", "entitlement_charged"]


def test_exhausted_flag_policy_creates_flags_and_notifies(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100, extra='[entitlements]\nnotify = ["manager@example.org"]\n')
    ent = gold(env, tmp_path, "--cases", "1")
    env.inject(mail(subject="first"))
    env.inject(mail(subject="second"))
    env.ok("run", "--once")
    assert env.json("entitlements", "show", str(ent))["remaining"] == 0
    cases = {c["title"]: c["reference"] for c in env.json("cases", "list")}
    assert set(cases) == {"first", "second"}, "policy flag: the case is still created"
    shown = env.json("entitlements", "show", str(ent))["cases"]
    assert [c["flag"] for c in shown] == [None, "entitlement 'Gold 2026' exhausted (1 cases)"]
    notices = [c for c in env.peer.wait_for(3) if c.rcpt_tos == ["manager@example.org"]]
    assert len(notices) == 1 and cases["second"] in notices[0].message["Subject"]
    # The admin tops it up; the next case draws on it again.
    assert "1 of 1 cases remaining" in env.ok("entitlements", "adjust", str(ent), "--add", "1", "--reason", "renewal")


def test_exhausted_refuse_policy_answers_and_keeps_the_message(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    gold(env, tmp_path, "--cases", "1", "--on-exhausted", "refuse")
    env.inject(mail(subject="first"))
    env.ok("run", "--once")
    env.inject(mail(subject="second"))
    env.ok("run", "--once")
    assert [c["title"] for c in env.json("cases", "list")] == ["first"]
    [refused] = [r for r in env.json("inbound", "list") if r["outcome"] == "refused"]
    assert "entitlement 'Gold 2026' is exhausted and refuses new cases" in refused["error"]
    answers = [c for c in env.peer.wait_for(2) if "no cases" in c.message.get_body(("plain",)).get_content()]
    assert len(answers) == 1 and answers[0].message["Subject"] == "Re: second"


def test_a_cancelled_case_gives_its_count_back_and_hours_are_charged_time_spent(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    cases_ent = gold(env, tmp_path, "--cases", "5")
    env.inject(mail(subject="mistake"))
    env.ok("run", "--once")
    [case] = env.json("cases", "list")
    assert env.json("entitlements", "show", str(cases_ent))["remaining"] == 4
    assert f"{case['reference']} cancelled" in env.ok("cases", "cancel", case["reference"], "--reason", "spam")
    assert env.json("entitlements", "show", str(cases_ent))["remaining"] == 5
    # An hours contract for one contact takes precedence over the account's.
    hours = int(env.ok("entitlements", "add", "--name", "Jane's hours", "--contact", "jane@customer.test",
                       "--hours", "10", "--start", "2026-01-01", "--end", "2027-12-31").split()[1])
    env.inject(mail(subject="consulting"))
    env.ok("run", "--once")
    ref = next(c["reference"] for c in env.json("cases", "list") if c["title"] == "consulting")
    env.ok("cases", "resolve", ref, "--type", "Information Provided", "--narrative", "call", "--time-spent", "1h30m")
    assert env.json("entitlements", "show", str(hours))["remaining"] == 600 - 90
    assert env.json("entitlements", "show", str(cases_ent))["remaining"] == 5
    listed = {e["name"]: e for e in env.json("entitlements", "list")}
    assert listed["Jane's hours"]["unit"] == "minutes"


def test_bad_entitlement_commands_say_what_is_wrong(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    bad = env.cli("entitlements", "add", "--name", "x", "--account", "Nobody", "--cases", "3", "--start",
                  "2026-01-01", "--end", "2026-12-31")
    assert bad.exit_code == 1 and "no account 'Nobody'" in bad.output
    bad = env.cli("entitlements", "add", "--name", "x", "--account", "A", "--start", "2026-01-01", "--end",
                  "2026-12-31")
    assert bad.exit_code == 1 and "give --cases N or --hours N" in bad.output
    gold(env, tmp_path, "--cases", "2")
    bad = env.cli("entitlements", "add", "--name", "x", "--account", "Contoso", "--cases", "3", "--start",
                  "2026-12-31", "--end", "2026-01-01")
    assert bad.exit_code == 1 and "ends (2026-01-01) before it starts" in bad.output
    bad = env.cli("entitlements", "adjust", "1", "--remaining", "5", "--reason", " ")
    assert bad.exit_code == 1 and "--reason" in bad.output
