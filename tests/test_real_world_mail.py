"""Mail as it arrives in the wild, end to end through ``maild``, on SQLite and PostgreSQL:
colleagues on a thread, automatic replies, loops and forged identities, where automatic
answers go (RFC 3834), colliding Message-IDs, and replies that overtake what they answer."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from conftest import Env, mail
from maild import liveness

QUEUE = "support@example.test"


def cases(env: Env) -> list[dict[str, object]]:
    return list(env.json("cases", "list"))


def outcomes(env: Env) -> list[str]:
    return [r["outcome"] or r["state"] for r in sorted(env.json("inbound", "list"), key=lambda r: r["id"])]


def open_thread(env: Env, sender: str = "Jane Doe <jane@bigco.test>", cc: str | None = None) -> str:
    env.inject(mail(message_id="<first@bigco.test>", sender=sender, headers={"Cc": cc} if cc else None))
    env.ok("run", "--once")
    [case] = cases(env)
    return str(case["reference"])


# Participants ------------------------------------------------------------------------


def test_a_colleague_answering_the_thread_and_the_customer_answering_her_stay_on_the_case(env: Env) -> None:
    ref = open_thread(env)
    # Bob, at Jane's company but on none of the mail, answers Jane's message; Jane answers Bob.
    env.inject(mail(subject="Re: Printer on fire", sender="Bob <bob@bigco.test>", message_id="<bob@bigco.test>",
                    headers={"In-Reply-To": "<first@bigco.test>", "References": "<first@bigco.test>"}))
    env.inject(mail(subject="Re: Printer on fire", message_id="<jane2@bigco.test>",
                    headers={"In-Reply-To": "<bob@bigco.test>", "References": "<first@bigco.test> <bob@bigco.test>"}))
    env.ok("run", "--once")
    assert [c["reference"] for c in cases(env)] == [ref]
    assert outcomes(env) == ["created", "threaded", "threaded"]


def test_anyone_answering_a_message_of_the_case_joins_it(env: Env) -> None:
    """Someone the customer forwarded the thread to, at another company, answers it."""
    ref = open_thread(env)
    env.inject(mail(subject="Re: Printer on fire", sender="Partner <p@partner.test>",
                    headers={"In-Reply-To": "<first@bigco.test>"}))
    env.ok("run", "--once")
    assert [c["reference"] for c in cases(env)] == [ref]


def test_a_colleague_carrying_only_the_key_is_the_same_customer(env: Env) -> None:
    ref = open_thread(env)
    env.inject(mail(subject=f"Re: [{ref}] Printer on fire", sender="Bob <bob@bigco.test>"))
    env.ok("run", "--once")
    assert outcomes(env) == ["created", "threaded"]


def test_strangers_carrying_only_the_key_still_follow_unknown_participant(env: Env) -> None:
    ref = open_thread(env, sender="Jane <jane@gmail.com>")
    # Same public domain says nothing; another company says nothing.
    env.inject(mail(subject=f"Re: [{ref}] Printer on fire", sender="Kim <kim@gmail.com>"))
    env.inject(mail(subject=f"Re: [{ref}] Printer on fire", sender="Eve <eve@elsewhere.test>"))
    env.ok("run", "--once")
    assert outcomes(env) == ["created", "follow_up", "follow_up"]


def test_someone_copied_on_the_case_mail_is_a_participant(env: Env) -> None:
    ref = open_thread(env, sender="Jane <jane@gmail.com>", cc="Lee <lee@elsewhere.test>")
    env.inject(mail(subject=f"Re: [{ref}] Printer on fire", sender="Lee <lee@elsewhere.test>"))
    env.ok("run", "--once")
    assert outcomes(env) == ["created", "threaded"]


# Automatic replies -------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Auto-Submitted": "auto-replied"},
    {"X-Autoreply": "yes"},
    {"Precedence": "auto_reply"},
    {"X-Auto-Response-Suppress": "All"},
    {"X-MS-Exchange-Inbox-Rules-Loop": "jane@customer.test"},
])
def test_an_out_of_office_reply_is_filed_on_its_case_without_reopening_it(env: Env, headers: dict[str, str]) -> None:
    ref = open_thread(env)
    env.ok("cases", "resolve", ref, "--type", "Problem Solved", "--narrative", "Fixed.")
    env.ok("run", "--once")
    sent = len(env.peer.received)
    env.inject(mail(subject=f"Automatic reply: [{ref}] Printer on fire", body="I am away until Monday.\n",
                    headers={**headers, "In-Reply-To": "<first@bigco.test>"}))
    env.ok("run", "--once")
    case = env.json("cases", "show", ref)
    assert case["status"] == "Resolved" and len(cases(env)) == 1
    assert case["activities"][-1]["kind"] == "auto_reply"
    assert "auto_reply_filed" in [e["action"] for e in case["audit"]]
    assert len(env.peer.received) == sent, "nothing is sent for it: no acknowledgement, no notice"
    assert outcomes(env)[-1] == "auto_reply"


def test_an_auto_reply_to_no_case_is_kept_with_its_reason(env: Env) -> None:
    env.inject(mail(subject="Out of office", headers={"Auto-Submitted": "auto-replied"}))
    env.ok("run", "--once")
    assert cases(env) == []
    [row] = env.json("inbound", "list")
    assert row["outcome"] == "auto_reply" and "Auto-Submitted: auto-replied" in row["error"]


def test_a_queue_can_open_cases_from_automatic_mail(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    env.config.write_text(env.config.read_text().replace(
        'name = "Example Support"', 'name = "Example Support"\nauto_replies = "create"'))
    env.inject(mail(subject="Disk full on db1", sender="monitor@bigco.test", headers={"Auto-Submitted": "auto-generated"}))
    env.ok("run", "--once")
    assert len(cases(env)) == 1 and env.json("outbox", "list") == []


# Loops and forged identity -------------------------------------------------------------


@pytest.mark.parametrize("raw, reason", [
    (b"From: Jane <jane@bigco.test>\r\nFrom: Eve <eve@evil.test>\r\n", "more than one From header"),
    (b"From: jane@bigco.test, eve@evil.test\r\n", "several From addresses and no Sender"),
    (b"From: Support <support+CAS-00001-AB12CD.abcdefghij@example.test>\r\n", "maild's own address"),
    (b"From: Billing <billing@example.test>\r\n", "maild's own address"),
])
def test_loops_and_ambiguous_senders_are_quarantined_with_the_reason(env: Env, raw: bytes, reason: str) -> None:
    env.inject(raw + b"To: support@example.test\r\nSubject: [CAS-00001-AB12CD] hello\r\n"
               b"Message-ID: <x@bigco.test>\r\n\r\nbody\r\n")
    env.ok("run", "--once")
    [row] = env.json("inbound", "list")
    assert row["state"] == "quarantined" and reason in row["error"]
    assert cases(env) == [] and env.json("outbox", "list") == []


def test_several_from_addresses_with_a_sender_are_fine(env: Env) -> None:
    env.inject(b"From: jane@bigco.test, bob@bigco.test\r\nSender: jane@bigco.test\r\nTo: support@example.test\r\n"
               b"Subject: from both of us\r\nMessage-ID: <both@bigco.test>\r\n\r\nbody\r\n")
    env.ok("run", "--once")
    assert len(cases(env)) == 1


# Where automatic answers go (RFC 3834 section 4) ------------------------------------------


def test_the_acknowledgement_goes_to_the_envelope_sender_never_to_reply_to(env: Env) -> None:
    env.inject(mail(headers={"Reply-To": "victim@third.test"}), "-f", "jane+bounces@bigco.test")
    env.ok("run", "--once")
    [ack] = env.peer.wait_for(1)
    assert ack.rcpt_tos == ["jane+bounces@bigco.test"]


def test_without_an_envelope_the_return_path_then_from_is_answered(env: Env) -> None:
    env.inject(mail(subject="one", sender="Jane <jane@bigco.test>", headers={"Return-Path": "<rp@bigco.test>",
                                                                             "Reply-To": "victim@third.test"}))
    env.inject(mail(subject="two", sender="Kim <kim@bigco.test>", headers={"Reply-To": "victim@third.test"}))
    env.ok("run", "--once")
    assert sorted(m.rcpt_tos[0] for m in env.peer.wait_for(2)) == ["kim@bigco.test", "rp@bigco.test"]


@pytest.mark.parametrize("null", ["<>", "", "MAILER-DAEMON"])
def test_the_null_sender_gets_no_automatic_answer(env: Env, null: str) -> None:
    """Only notifications use the null path (RFC 5321 section 4.5.5): kept as a bounce."""
    env.inject(mail(), "-f", null)
    env.ok("run", "--once")
    assert cases(env) == [] and env.json("outbox", "list") == []
    assert outcomes(env) == ["bounce_unmatched"]


def test_an_automatic_reply_with_the_null_sender_is_filed_as_one(env: Env) -> None:
    ref = open_thread(env)
    env.inject(mail(subject="Out of office", headers={"Auto-Submitted": "auto-replied",
                                                      "In-Reply-To": "<first@bigco.test>"}), "-f", "<>")
    env.ok("run", "--once")
    assert outcomes(env) == ["created", "auto_reply"]
    assert env.json("cases", "show", ref)["activities"][-1]["kind"] == "auto_reply"


def test_inject_exit_codes(env: Env) -> None:
    assert env.maild("inject", input=b"").returncode == 65
    assert env.maild("inject", "--queue", "nosuch", input=mail()).returncode == 67
    assert env.maild("inject", "--bogus-option", input=mail()).returncode == 2
    broken = env.path / "broken.toml"
    broken.write_text("[queues.support\n")
    result = env.maild("--config", str(broken), "inject", input=mail())
    assert result.returncode == 78, result.stderr
    assert env.maild("inject", input=mail()).returncode == 0


# A message's identity ---------------------------------------------------------------------


def test_a_colliding_message_id_is_a_message_of_its_own(env: Env) -> None:
    env.inject(mail(message_id="<same@x.test>"))
    env.inject(mail(message_id="<same@x.test>").replace(b"To: support@example.test", b"To: billing@example.test"),
               "--queue", "billing")  # the same message copied to a second queue: recorded once
    env.inject(mail(message_id="<same@x.test>", subject="Other problem", sender="kim@other.test",
                    body="Different.\n").replace(b"To: support@example.test", b"To: billing@example.test"),
               "--queue", "billing")
    env.ok("run", "--once")
    assert sorted(str(c["title"]) for c in cases(env)) == ["Other problem", "Printer on fire"]
    rows = sorted(env.json("inbound", "list"), key=lambda r: r["id"])
    assert [r["outcome"] for r in rows] == ["created", "duplicate", "created"]


def test_replies_to_a_message_id_go_to_the_first_message_recorded_under_it(env: Env) -> None:
    ref = open_thread(env)
    env.inject(mail(message_id="<first@bigco.test>", subject="Unrelated", sender="kim@other.test", body="Other.\n"))
    env.ok("run", "--once")
    assert len(cases(env)) == 2, "the collision is a message, and a case, of its own"
    env.inject(mail(subject="Re: Printer on fire", headers={"In-Reply-To": "<first@bigco.test>"}))
    env.ok("run", "--once")
    assert len(env.json("cases", "show", ref)["activities"]) == 3  # mail, acknowledgement, the reply


# Several workers ----------------------------------------------------------------------------


def test_a_reply_waits_for_the_message_it_answers_even_when_an_older_reference_matches(env: Env) -> None:
    """Jane's reply names her new message (held by another worker, unprocessed) and, further
    back, an old case's mail: it waits, then goes where the new message went."""
    if not env.db_url.startswith("postgresql"):
        pytest.skip("SQLite has one worker: a message held by another is one it left behind, taken over at once")
    open_thread(env)
    env.inject(mail(subject="New problem", message_id="<new@bigco.test>", sender="jane@bigco.test"))
    env.inject(mail(subject="Re: New problem", headers={"In-Reply-To": "<new@bigco.test>",
                                                        "References": "<first@bigco.test> <new@bigco.test>"}))
    held = "UPDATE inbound_message SET claimed_until = '2999-01-01', claimed_by = 'other' WHERE message_id = '<new@bigco.test>'"
    _execute(env, held)
    engine = env.engine()
    alive = engine.connect()  # the other worker, alive (maild.liveness)
    alive.execute(sa.text("SELECT pg_advisory_lock(:c, :k)"), {"c": liveness.LOCK_CLASS, "k": liveness._key("other")})
    try:
        env.ok("run", "--once")
    finally:
        alive.close()
        engine.dispose()
    assert outcomes(env)[1:] == ["received", "received"], "the reply waits for it"
    _execute(env, "UPDATE inbound_message SET claimed_until = NULL, claimed_by = NULL")
    for _ in range(20):  # the reply's short wait
        env.ok("run", "--once")
        if "received" not in outcomes(env):
            break
        time.sleep(0.2)
    assert outcomes(env) == ["created", "created", "threaded"]
    new = [c for c in cases(env) if c["title"] == "New problem"][0]
    assert len(env.json("cases", "show", str(new["reference"]))["activities"]) >= 2


def test_the_acknowledgement_limit_holds_across_workers(make_env) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL another worker's batch counting the same sender is waited for."""
    env: Env = make_env(ack_limit=1)
    if not env.db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: counts cannot overlap")
    env.inject(mail(subject="one"))
    engine = env.engine()
    from maild.cases import _lock_recipients  # the other worker's batch, as the writer takes it
    from sqlalchemy.orm import Session

    with Session(engine) as other:
        _lock_recipients(other, {"jane@customer.test"})
        runner = threading.Thread(target=lambda: env.ok("run", "--once"))
        runner.start()
        time.sleep(1.0)  # the worker is at the lock now
        other.execute(sa.text(
            "INSERT INTO outbound_message (kind, message_id, mail_from, recipient, rcpt_to, raw, state, attempts, "
            "created_at, next_attempt_at) VALUES ('acknowledgement', '<o@x>', 'support@example.test', "
            "'jane@customer.test', '[\"jane@customer.test\"]', '', 'sent', 1, now(), now())"))
        other.commit()
    runner.join(30)
    engine.dispose()
    audit = env.json("cases", "show", str(cases(env)[0]["reference"]))["audit"]
    skipped = [e["details"]["reason"] for e in audit if e["action"] == "acknowledgement_skipped"]
    assert skipped and skipped[0].startswith("rate limit"), "it counted the other worker's acknowledgement"


def _execute(env: Env, sql: str) -> None:
    engine = env.engine()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


# Bounces ------------------------------------------------------------------------------------


def dsn(message_id: str, recipient: str) -> bytes:
    """A Postfix-style RFC 3464 report about maild's message ``message_id`` to ``recipient``."""
    return (f"Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.example.test (Mail Delivery System)\r\n"
            f"To: support@example.test\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            f"Message-ID: <dsn.{message_id.strip('<>')}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            f"--B\r\nContent-Type: text/plain\r\n\r\nI could not deliver your message.\r\n"
            f"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.test\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: User unknown\r\n"
            f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: support@example.test\r\nTo: {recipient}\r\n"
            f"Message-ID: {message_id}\r\nSubject: [CAS] acknowledgement\r\n--B--\r\n").encode()


def test_a_bounce_of_an_acknowledgement_is_recorded_on_its_case_and_suppresses_after_three(
        make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    for i in range(3):
        env.inject(mail(subject=f"problem {i}", sender="gone@bigco.test"))
        env.ok("run", "--once")
    acks = env.peer.wait_for(3)
    for ack in acks:
        env.inject(dsn(ack.message["Message-ID"], "gone@bigco.test"))
    env.inject(dsn("<never-sent@example.test>", "who@else.test"))
    env.ok("run", "--once")
    assert len(cases(env)) == 3, "no bounce opens a case"
    assert outcomes(env)[3:] == ["bounce", "bounce", "bounce", "bounce_unmatched"]
    assert {r["state"] for r in env.json("outbox", "list")} == {"bounced"}
    first = env.json("cases", "show", str(cases(env)[0]["reference"]))
    assert first["activities"][-1]["kind"] == "bounce"
    assert "bounce_received" in [e["action"] for e in first["audit"]]
    assert [b["recipient"] for b in env.json("bounces", "list", "--unmatched")] == ["who@else.test"]
    assert [s["email"] for s in env.json("bounces", "suppressed")] == ["gone@bigco.test"]
    env.inject(mail(subject="problem 4", sender="gone@bigco.test"))
    env.ok("run", "--once")
    assert len(env.peer.received) == 3, "a suppressed address is not mailed"
    env.ok("bounces", "lift", "gone@bigco.test")
    assert env.json("bounces", "suppressed") == []
