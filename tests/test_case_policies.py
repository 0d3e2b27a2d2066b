"""Per-queue and per-site case policies: what a reply to a resolved case does, which status
transitions are allowed, and customer satisfaction surveys. On SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sqlalchemy as sa

from conftest import MAILD, REPO, Env, mail
from test_agent_mail import agent_address, body_of, open_case, queue_keys

RESOLVE = ("--type", "Problem Solved", "--narrative", "Replaced the fuse.")


def resolved_case(env: Env) -> str:
    ref, _ = open_case(env)
    env.ok("cases", "resolve", ref, *RESOLVE)
    env.ok("run", "--once")
    return ref


def reply(env: Env, ref: str, body: str, sender: str = "Jane Doe <jane@customer.test>") -> None:
    env.inject(mail(subject=f"Re: [{ref}] Printer on fire", body=body, sender=sender))
    env.ok("run", "--once")


def test_keep_closed_files_the_reply_and_answers_with_the_template(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    queue_keys(env, on_reply_to_resolved="keep_closed")
    ref = resolved_case(env)
    env.peer.received.clear()
    reply(env, ref, "Thanks!\n")
    case = env.json("cases", "show", ref)
    assert case["status"] == "Resolved" and len(env.json("cases", "list")) == 1
    assert [a["text"].strip() for a in case["activities"] if a["kind"] == "incoming_email"][-1] == "Thanks!"
    [answer] = env.peer.wait_for(1)
    assert answer.rcpt_tos == ["jane@customer.test"] and ref in answer.message["Subject"]
    assert "is resolved, and we have added your message" in " ".join(body_of(answer.message).split())
    assert answer.message["Auto-Submitted"] == "auto-replied"
    assert "reply_to_closed_case" in [e["action"] for e in env.json("cases", "history", ref)]


def test_keep_closed_needs_its_template(make_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    templates = tmp_path / "tpl"
    templates.mkdir()
    for f in (REPO / "templates").iterdir():
        if not f.name.startswith("closed_case_reply"):
            shutil.copy(f, templates / f.name)
    queue_keys(env, on_reply_to_resolved="keep_closed")
    env.config.write_text(env.config.read_text().replace(str((REPO / "templates").as_posix()), templates.as_posix()))
    result = env.cli("run", "--once")
    assert result.exit_code != 0 and "closed_case_reply" in result.output


def test_new_case_policy_opens_a_linked_case_even_inside_the_window(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    queue_keys(env, on_reply_to_resolved="new_case")
    ref = resolved_case(env)
    reply(env, ref, "It is broken again.\n")
    cases = env.json("cases", "list")
    assert len(cases) == 2
    follow = next(c for c in cases if c["reference"] != ref)
    assert env.json("cases", "show", follow["reference"])["previous_case"] == ref
    assert env.json("cases", "show", ref)["status"] == "Resolved"


def test_a_queue_reopen_window_overrides_the_site_default(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    queue_keys(env, reopen_window_days=0)
    ref = resolved_case(env)
    reply(env, ref, "One more thing.\n")
    assert len(env.json("cases", "list")) == 2, "window 0: a new case, not a reopen"
    assert env.json("cases", "show", ref)["status"] == "Resolved"


def test_default_policy_reopens_within_the_window(env: Env) -> None:
    ref = resolved_case(env)
    reply(env, ref, "Still smoking.\n")
    case = env.json("cases", "show", ref)
    assert (case["status"], case["status_reason"]) == ("Active", "In Progress")


TRANSITIONS = '''
[cases.transitions]
"On Hold" = ["In Progress", "Cancelled"]
"Problem Solved" = []
'''


def test_transitions_refuse_what_is_not_allowed_with_the_reason(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    env.config.write_text(env.config.read_text().replace("reopen_window_days = 7", "reopen_window_days = 7" +
                                                         TRANSITIONS))
    ref, signed = open_case(env)
    env.ok("cases", "set-status", ref, "--reason", "On Hold")
    refused = env.cli("cases", "resolve", ref, *RESOLVE)
    assert refused.exit_code == 1
    assert "On Hold -> Problem Solved is not an allowed transition" in refused.output
    assert "allows On Hold -> In Progress, Cancelled" in refused.output
    env.ok("cases", "set-status", ref, "--reason", "In Progress")
    env.ok("cases", "resolve", ref, *RESOLVE)
    again = env.cli("cases", "reopen", ref, "--reason", "customer asked")
    assert again.exit_code == 1 and "Problem Solved -> In Progress is not an allowed transition" in again.output
    # The same rule holds for an agent's mail command.
    ref2, signed2 = _second_case(env)
    env.ok("cases", "set-status", ref2, "--reason", "On Hold")
    env.inject(mail(subject=f"Re: [{ref2}] x", sender="Alice Agent <alice@example.test>", to=signed2,
                    body="#resolve Problem Solved\nAll done.\n"))
    env.ok("run", "--once")
    assert env.json("cases", "show", ref2)["status"] == "Active"
    [error] = env.peer.wait_for(1)
    assert error.rcpt_tos == ["alice@example.test"]
    assert "On Hold -> Problem Solved is not an allowed transition" in " ".join(body_of(error.message).split())


def _second_case(env: Env) -> tuple[str, str]:
    env.peer.received.clear()
    env.inject(mail(subject="Second problem", message_id="<q2@customer.test>"))
    env.ok("run", "--once")
    env.peer.wait_for(1)
    env.peer.received.clear()
    ref = next(c["reference"] for c in env.json("cases", "list") if c["title"] == "Second problem")
    return ref, agent_address(env, ref)


def test_a_bad_transition_in_config_names_the_key(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    env.config.write_text(env.config.read_text().replace(
        "reopen_window_days = 7", 'reopen_window_days = 7\n[cases.transitions]\n"On Hold" = ["Sleeping"]\n'))
    result = subprocess.run([MAILD, "--config", str(env.config), "cases", "list"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cases.transitions: transitions.On Hold: 'Sleeping' is neither a status nor a status reason" in \
        result.stderr or "transitions.On Hold: 'Sleeping'" in result.stderr, result.stderr


def test_survey_on_resolution_and_the_answer_is_recorded(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    queue_keys(env, csat=True)
    ref = resolved_case(env)
    [survey] = env.peer.wait_for(1)
    assert survey.rcpt_tos == ["jane@customer.test"] and "reply to this mail with a number" in \
        " ".join(body_of(survey.message).split()).lower()
    assert "http" not in body_of(survey.message), "no links: scanners would vote"
    env.peer.received.clear()
    # Someone else's "1" is not an answer (and opens a new case linked to this one).
    reply(env, ref, "1\n", sender="Mallory <mallory@elsewhere.test>")
    reply(env, ref, "4 - quick and friendly\n\n> How did we do?\n")
    case = env.json("cases", "show", ref)
    assert case["status"] == "Resolved", "a rating does not reopen the case"
    with env.engine().connect() as conn:
        score, comment = conn.execute(sa.text("SELECT csat_score, csat_comment FROM cases WHERE reference = :r"),
                                      {"r": ref}).one()
    assert (score, comment) == (4, "quick and friendly")
    report = env.json("report", "csat")
    assert report["queues"] == [{"queue": "support", "surveys": 1, "answers": 1, "average": 4.0}]
    assert report["agents"] == [{"agent": "(unassigned)", "surveys": 1, "answers": 1, "average": 4.0}]
    assert "support" in env.ok("report", "csat")


def test_a_reply_that_is_not_a_rating_follows_the_reopen_policy(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    queue_keys(env, csat=True)
    ref = resolved_case(env)
    reply(env, ref, "3 printers still fail after your fix.\n")
    assert env.json("cases", "show", ref)["status"] == "Active"
    assert env.json("report", "csat")["queues"][0]["answers"] == 0
