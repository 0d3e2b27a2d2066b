"""Bounces: delivery status notifications read from the shapes real servers send, recorded
against the mail maild sent, counted towards suppressing an address, and `maild bounces`."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from conftest import Env, mail
from maild import db
from maild.bounces import Recipient, Recorded, Report, looks_like_bounce, parse_report, record
from maild.models import (BOUNCED, FAILED, OUTGOING_EMAIL, PENDING, SENDING, SENT, SUPPRESSED, UNKNOWN, Activity,
                          Bounce, Case, InboundMessage, OutboundMessage, Queue, Suppression)
from maild.parse import parse

MAIL_DIR = Path(__file__).parent / "data" / "mail"
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

# The Message-IDs of the messages the test files return (maild's acknowledgements and replies).
POSTFIX_ID = "<179551152610.4242.1111111111111111111@example.test>"
QMAIL_ID = "<179671200016.4249.8888888888888888888@example.test>"
SENDMAIL_ID = "<179621460417.4250.9999999999999999999@example.test>"


def load(name: str) -> bytes:
    return (MAIL_DIR / name).read_bytes()


def report_of(name: str) -> Report:
    report = parse_report(load(name))
    assert report is not None, f"{name} is a bounce"
    return report


# --- reading reports ------------------------------------------------------------------------

FAILED_, DELAYED = "failed", "delayed"

CORPUS = [
    # Postfix: forwarded address (Original-Recipient is the one maild sent to), whole message returned.
    ("dsn_postfix_user_unknown.eml", (POSTFIX_ID,), True,
     [("jane@customer.test", FAILED_, "5.1.1", "550 5.1.1 <jane.doe@mail.customer.test>: Recipient address "
       "rejected: User unknown in virtual mailbox table", True)]),
    # Postfix delay warning: headers only returned (a folded Message-ID), soft.
    ("dsn_postfix_delayed.eml", ("<179551152611.4243.2222222222222222222@example.test>",), True,
     [("bob@slow.customer.test", DELAYED, "4.2.2", "452 4.2.2 <bob@slow.customer.test>: Mailbox full", False)]),
    # Exim: gave up after retrying a full mailbox: failed, but with a temporary status.
    ("dsn_exim_mailbox_full.eml", ("<179534490112.4244.3333333333333333333@example.test>",), True,
     [("carol@isp.test", FAILED_, "4.2.2", "452 4.2.2 Mailbox full", False)]),
    # Office 365: a three-digit detail code, text/rfc822-headers returned.
    ("dsn_office365_not_found.eml", ("<179560216312.4245.4444444444444444444@example.test>",), True,
     [("dave@contoso.test", FAILED_, "5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient "
       "dave@contoso.test not found by SMTP address lookup", True)]),
    # Gmail: nothing returned; the bounced message is named only by In-Reply-To/References.
    ("dsn_gmail_address_not_found.eml", ("<179675430114.4247.6666666666666666666@example.test>",), True,
     [("frank.typo@gmail.test", FAILED_, "5.1.1", "550-5.1.1 The email account that you tried to reach does not "
       "exist. Please try 550-5.1.1 double-checking the recipient's email address for typos or 550-5.1.1 unnecessary "
       "spaces. For more information, go to 550 5.1.1 https://support.google.test/mail/?p=NoSuchUser "
       "5b1f17b1804b1-40b2a4c8f0esor1234567f9.12 - gsmtp", True)]),
    # Gmail delay: nothing returned, no In-Reply-To; X-Original-Message-ID in the status part.
    ("dsn_gmail_over_quota.eml", ("<179683079515.4248.7777777777777777777@example.test>",), True,
     [("grace@gmail.test", DELAYED, "4.2.2", "The recipient's inbox is out of storage space. Please direct the "
       "recipient to https://support.google.test/mail/?p=OverQuotaTemp", False)]),
    # Office 365 without a delivery-status part: the Message-ID quoted in its (quoted-printable) text.
    ("dsn_office365_no_status_part.eml", ("<179647021313.4246.5555555555555555555@example.test>",), False, []),
    # qmail: plain text, the recipient's paragraph, the message copied below a line.
    ("dsn_qmail.eml", (QMAIL_ID,), False,
     [("heidi@oldhost.test", FAILED_, "5.1.1", "Sorry, no mailbox here by that name. (#5.1.1)", True)]),
    # Old sendmail: text plus the message attached as message/rfc822, no machine-readable recipient.
    ("dsn_sendmail_attached.eml", (SENDMAIL_ID,), False, []),
]


@pytest.mark.parametrize(("name", "ids", "standard", "recipients"), CORPUS, ids=[c[0] for c in CORPUS])
def test_reports_are_read_as_their_servers_write_them(
        name: str, ids: tuple[str, ...], standard: bool, recipients: list[tuple[str, str, str, str | None, bool]],
) -> None:
    report = report_of(name)
    assert report.message_ids == ids
    assert report.standard is standard
    assert [(r.address, r.action, r.status, r.diagnostic, r.hard) for r in report.recipients] == recipients


def test_a_delay_is_not_a_failed_delivery_but_a_failure_or_silence_is() -> None:
    assert not report_of("dsn_postfix_delayed.eml").bounced
    assert not report_of("dsn_gmail_over_quota.eml").bounced
    assert report_of("dsn_exim_mailbox_full.eml").bounced  # soft, and still not delivered
    assert report_of("dsn_sendmail_attached.eml").bounced  # names no recipient: it came back


def test_the_returned_message_id_wins_over_in_reply_to() -> None:
    raw = load("dsn_postfix_user_unknown.eml").replace(
        b"Message-Id: <4Yc2Lq0Zz1z9sWp@mx1.customer.test>", b"In-Reply-To: <other@example.test>\n"
        b"References: <older@example.test> <newer@example.test>")
    report = parse_report(raw)
    assert report is not None
    assert report.message_ids == (POSTFIX_ID, "<other@example.test>", "<newer@example.test>", "<older@example.test>")


def test_a_malformed_report_gives_what_can_be_read_and_drops_the_rest() -> None:
    report = report_of("dsn_malformed.eml")
    # The returned Message-ID is longer than any column holds: In-Reply-To is next.
    assert report.message_ids == ("<179700000018.4251.1010101010101010101@example.test>",)
    assert report.recipients == (
        # An unknown action is not "failed": never hard, whatever the code says.
        Recipient("mallory@victim.test", "unknown", "5.7.1", "550 5.7.1 spoofed", False),  # NUL removed
        Recipient("caf\ufffd@bad-bytes.test", "failed", "5.1.1", "550 5.1.1 \ufffd\ufffd", True),
    )  # the 400-character address and the block without a recipient are gone
    assert report.standard


def test_what_is_not_a_bounce_is_none() -> None:
    assert parse_report(load("dsn_mdn_read_receipt.eml")) is None  # a read receipt is a report too
    assert parse_report(mail()) is None
    assert parse_report(mail(sender="Postmaster <postmaster@customer.test>")) is not None  # the caller checks the path
    assert parse_report(b"") is None


def test_a_report_about_many_recipients_is_cut_short() -> None:
    blocks = b"".join(b"Final-Recipient: rfc822; u%d@x.test\nAction: failed\nStatus: 5.1.1\n\n" % i for i in range(500))
    raw = (b"From: MAILER-DAEMON@x.test\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
           b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x.test\n\n" + blocks + b"--b--\n")
    report = parse_report(raw)
    assert report is not None and len(report.recipients) == 50
    listed = b"From: MAILER-DAEMON@x.test\nX-Failed-Recipients: " + b", ".join(b"u%d@x.test" % i for i in range(500))
    plain = parse_report(listed + b"\n\nThis message was created automatically by mail delivery software.\n")
    assert plain is not None and len(plain.recipients) == 50
    # The same address twice is one recipient.
    twice = raw.replace(b"u1@x.test", b"u0@x.test")
    again = parse_report(twice)
    assert again is not None and [r.address for r in again.recipients[:2]] == ["u0@x.test", "u2@x.test"]


def test_nesting_that_exhausts_the_parser_is_not_a_crash() -> None:
    raw = b"From: MAILER-DAEMON@x.test\nContent-Type: multipart/report; report-type=delivery-status; boundary=b0\n\n"
    raw += b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(2000))
    assert parse_report(raw) is None  # nothing readable; and no exception


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from([c[0] for c in CORPUS] + ["dsn_malformed.eml"]), cut=st.integers(min_value=0),
       noise=st.binary(max_size=200), at=st.integers(min_value=0))
def test_damaged_reports_never_raise(name: str, cut: int, noise: bytes, at: int) -> None:
    raw = load(name)
    raw = raw[:cut % (len(raw) + 1)]
    position = at % (len(raw) + 1)
    result = parse_report(raw[:position] + noise + raw[position:])
    assert result is None or isinstance(result, Report)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(noise: bytes) -> None:
    for prefix in (b"", b"From: MAILER-DAEMON@x.test\n",
                   b"Content-Type: multipart/report; report-type=delivery-status; boundary=z\n\n--z\n"):
        result = parse_report(prefix + noise)
        assert result is None or isinstance(result, Report)


# --- recognising bounces among intake's mail --------------------------------------------------


@pytest.mark.parametrize(("raw", "envelope_from", "expected"), [
    (load("dsn_postfix_user_unknown.eml"), None, True),
    (load("dsn_office365_not_found.eml"), "<>", True),
    # A report is a report even from a non-null path (some gateways rewrite it).
    (load("dsn_gmail_over_quota.eml").replace(b"Return-Path: <>", b"Return-Path: <x@relay.test>"), None, True),
    (load("dsn_qmail.eml"), None, True),  # Return-Path: <>
    (load("dsn_qmail.eml").replace(b"Return-Path: <>\n", b""), "<>", True),  # LMTP: the envelope says
    (load("dsn_qmail.eml").replace(b"Return-Path: <>\n", b""), None, True),  # path unknown: the sender decides
    (load("dsn_qmail.eml"), "", True),  # `maild inject` from a pipe: SENDER is empty
    # A postmaster writing as a person, from a real address.
    (mail(sender="postmaster@customer.test"), "postmaster@customer.test", False),
    (mail(sender="postmaster@customer.test", headers={"Return-Path": "<postmaster@customer.test>"}), None, False),
    # A vacation reply goes out on a null path too: not a bounce.
    (mail(sender="jane@customer.test", headers={"Return-Path": "<>", "Auto-Submitted": "auto-replied"}), None, False),
    (load("dsn_mdn_read_receipt.eml"), None, False),
    (mail(), None, False),
], ids=["postfix", "o365", "report-from-real-path", "qmail", "qmail-lmtp", "qmail-unknown-path", "qmail-inject",
        "postmaster-person", "postmaster-person-imap", "vacation", "read-receipt", "customer"])
def test_looks_like_bounce(raw: bytes, envelope_from: str | None, expected: bool) -> None:
    assert looks_like_bounce(parse(raw), envelope_from) is expected


def test_every_bounce_intake_recognises_in_the_corpus_is_readable() -> None:
    # The caller reads what it recognised: the two must agree on the test files.
    for name in sorted(p.name for p in MAIL_DIR.glob("*.eml")):
        raw = load(name)
        if looks_like_bounce(parse(raw)):
            assert parse_report(raw) is not None, name


# --- recording --------------------------------------------------------------------------------


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    try:
        yield db.make_sessionmaker(engine)
    finally:
        engine.dispose()


def a_case(session: Session) -> int:
    queue = session.scalar(sa.select(Queue).where(Queue.name == "support"))
    if queue is None:
        queue = Queue(name="support", address="support@example.test")
        session.add(queue)
        session.flush()
    number = (session.scalar(sa.select(sa.func.count()).select_from(Case)) or 0) + 1
    case = Case(reference=f"CAS-{number:05d}-AB12CD", title="Printer on fire", queue_id=queue.id, created_at=NOW,
                updated_at=NOW)
    session.add(case)
    session.flush()
    return case.id


def sent_mail(session: Session, case_id: int | None, message_id: str, recipient: str = "jane@customer.test",
              state: str = SENT) -> int:
    row = OutboundMessage(case_id=case_id, kind="acknowledgement", message_id=message_id,
                          mail_from="support@example.test", recipient=recipient, rcpt_to=[recipient], raw=b"...",
                          state=state, attempts=1, created_at=NOW, next_attempt_at=NOW)
    session.add(row)
    session.flush()
    return row.id


def stored(session: Session, raw: bytes) -> int:
    queue_id = session.scalar(sa.select(Queue.id).where(Queue.name == "support"))
    assert queue_id is not None
    count = session.scalar(sa.select(sa.func.count()).select_from(InboundMessage)) or 0
    row = InboundMessage(queue_id=queue_id, size=len(raw), sha256=hashlib.sha256(raw + bytes([count])).hexdigest(),
                         source="lmtp", received_at=NOW)
    session.add(row)
    session.flush()
    return row.id


def bounce(factory: sessionmaker[Session], raw: bytes, *, suppress_after: int = 3, now: datetime = NOW) -> Recorded:
    report = parse_report(raw)
    assert report is not None
    with db.transaction(factory) as session:
        return record(session, inbound_id=stored(session, raw), report=report, now=now, suppress_after=suppress_after)


def with_id(name: str, message_id: str) -> bytes:
    """The test file ``name`` returning the message ``message_id`` instead."""
    return load(name).replace(POSTFIX_ID.encode(), message_id.encode())


def setup(factory: sessionmaker[Session], *messages: tuple[str, str, str]) -> tuple[int, list[int]]:
    """A case and its sent mail: (message_id, recipient, state) each; (case id, outbox ids)."""
    with db.transaction(factory) as session:
        case_id = a_case(session)
        return case_id, [sent_mail(session, case_id, m, r, s) for m, r, s in messages]


def outbox_row(factory: sessionmaker[Session], row_id: int) -> tuple[str, str | None]:
    with db.transaction(factory) as session:
        row = session.get(OutboundMessage, row_id)
        assert row is not None
        return row.state, row.last_error


def bounce_rows(factory: sessionmaker[Session]) -> list[tuple[object, ...]]:
    with db.transaction(factory) as session:
        return [tuple(row) for row in session.execute(sa.select(
            Bounce.case_id, Bounce.outbound_id, Bounce.original_message_id, Bounce.recipient, Bounce.action,
            Bounce.status, Bounce.hard).order_by(Bounce.id))]


def suppression(factory: sessionmaker[Session], email: str) -> Suppression | None:
    with db.transaction(factory) as session:
        return session.get(Suppression, email)


def test_a_hard_bounce_marks_its_mail_bounced_and_is_recorded(factory: sessionmaker[Session]) -> None:
    case_id, [row_id] = setup(factory, (POSTFIX_ID, "Jane@Customer.test", SENT))
    done = bounce(factory, load("dsn_postfix_user_unknown.eml"))
    assert (done.case_id, done.outbound_id, done.suppressed) == (case_id, row_id, ())
    assert done.note == f"jane@customer.test failed 5.1.1 (hard); about {POSTFIX_ID} (outbox {row_id})"
    assert outbox_row(factory, row_id) == (BOUNCED, "5.1.1 550 5.1.1 <jane.doe@mail.customer.test>: Recipient "
                                                    "address rejected: User unknown in virtual mailbox table")
    assert bounce_rows(factory) == [(case_id, row_id, POSTFIX_ID, "jane@customer.test", "failed", "5.1.1", True)]
    counted = suppression(factory, "jane@customer.test")
    assert counted is not None and (counted.hard_bounces, counted.last_bounce_at, counted.suppressed_at) == (
        1, NOW, None)


@pytest.mark.parametrize(("suppress_after", "suppressed_by"), [(1, 1), (3, 3), (0, None)])
def test_an_address_is_suppressed_when_its_hard_bounces_reach_the_threshold(
        factory: sessionmaker[Session], suppress_after: int, suppressed_by: int | None) -> None:
    ids = [f"<ack-{i}@example.test>" for i in range(4)]
    setup(factory, *((i, "jane@customer.test", SENT) for i in ids))
    results = [bounce(factory, with_id("dsn_postfix_user_unknown.eml", message_id), suppress_after=suppress_after,
                      now=NOW + timedelta(hours=n)) for n, message_id in enumerate(ids)]
    assert [r.suppressed for r in results] == [
        ("jane@customer.test",) if suppressed_by == n + 1 else () for n in range(4)]
    row = suppression(factory, "jane@customer.test")
    assert row is not None and row.hard_bounces == 4 and row.last_bounce_at == NOW + timedelta(hours=3)
    if suppressed_by is None:
        assert row.suppressed_at is None and row.reason is None
    else:
        assert row.suppressed_at == NOW + timedelta(hours=suppressed_by - 1)
        assert row.reason == (f"{suppressed_by} hard bounces; the last: 5.1.1 550 5.1.1 <jane.doe@mail.customer.test>: "
                              "Recipient address rejected: User unknown in virtual mailbox table")


def test_a_soft_bounce_or_a_delay_never_counts(factory: sessionmaker[Session]) -> None:
    _, [exim, postfix] = setup(
        factory, ("<179534490112.4244.3333333333333333333@example.test>", "carol@isp.test", SENT),
        ("<179551152611.4243.2222222222222222222@example.test>", "bob@slow.customer.test", SENT))
    bounce(factory, load("dsn_exim_mailbox_full.eml"), suppress_after=1)
    bounce(factory, load("dsn_postfix_delayed.eml"), suppress_after=1)
    assert suppression(factory, "carol@isp.test") is None and suppression(factory, "bob@slow.customer.test") is None
    assert outbox_row(factory, exim) == (BOUNCED, "4.2.2 452 4.2.2 Mailbox full")  # gave up: it did not arrive
    assert outbox_row(factory, postfix) == (SENT, None)  # still being tried: it may yet arrive
    assert [r[4:] for r in bounce_rows(factory)] == [("failed", "4.2.2", False), ("delayed", "4.2.2", False)]


@pytest.mark.parametrize(("state", "after"), [
    (SENT, BOUNCED), (SENDING, BOUNCED), (UNKNOWN, BOUNCED),
    (PENDING, PENDING), (FAILED, FAILED), (SUPPRESSED, SUPPRESSED), (BOUNCED, BOUNCED),
])
def test_only_mail_that_went_out_becomes_bounced(factory: sessionmaker[Session], state: str, after: str) -> None:
    _, [row_id] = setup(factory, (POSTFIX_ID, "jane@customer.test", state))
    bounce(factory, load("dsn_postfix_user_unknown.eml"))
    assert outbox_row(factory, row_id)[0] == after


def test_a_report_matching_no_mail_is_kept_without_a_case_and_counts_nothing(factory: sessionmaker[Session]) -> None:
    with db.transaction(factory) as session:
        a_case(session)  # a queue for the inbound row, and a case the report is not about
    done = bounce(factory, load("dsn_postfix_user_unknown.eml"), suppress_after=1)
    assert (done.case_id, done.outbound_id, done.suppressed) == (None, None, ())
    assert bounce_rows(factory) == [(None, None, POSTFIX_ID, "jane@customer.test", "failed", "5.1.1", True)]
    # A forged report must not stop maild mailing a customer.
    assert suppression(factory, "jane@customer.test") is None


def test_a_report_about_mail_without_an_outbox_row_finds_the_case_by_activity(factory: sessionmaker[Session]) -> None:
    with db.transaction(factory) as session:
        case_id = a_case(session)
        session.add(Activity(case_id=case_id, kind=OUTGOING_EMAIL, created_at=NOW, message_id=QMAIL_ID))
    done = bounce(factory, load("dsn_qmail.eml"), suppress_after=1)
    assert (done.case_id, done.outbound_id, done.suppressed) == (case_id, None, ())
    assert bounce_rows(factory) == [(case_id, None, QMAIL_ID, "heidi@oldhost.test", "failed", "5.1.1", True)]


def test_a_second_report_about_the_same_message_counts_once(factory: sessionmaker[Session]) -> None:
    _, [row_id] = setup(factory, (POSTFIX_ID, "jane@customer.test", SENT))
    bounce(factory, load("dsn_postfix_user_unknown.eml"), suppress_after=2)
    again = bounce(factory, load("dsn_postfix_user_unknown.eml"), suppress_after=2)
    assert again.suppressed == ()
    row = suppression(factory, "jane@customer.test")
    assert row is not None and row.hard_bounces == 1
    assert len(bounce_rows(factory)) == 2  # both reports are kept


def test_a_hard_bounce_for_an_address_the_mail_did_not_go_to_counts_nothing(factory: sessionmaker[Session]) -> None:
    _, [row_id] = setup(factory, (POSTFIX_ID, "someone.else@customer.test", SENT))
    done = bounce(factory, load("dsn_postfix_user_unknown.eml"), suppress_after=1)
    assert done.outbound_id == row_id and done.suppressed == ()
    assert suppression(factory, "jane@customer.test") is None


def test_a_report_naming_no_recipient_is_one_row_without_one(factory: sessionmaker[Session]) -> None:
    case_id, [row_id] = setup(factory, (SENDMAIL_ID, "ivan@partner.test", SENT))
    done = bounce(factory, load("dsn_sendmail_attached.eml"))
    assert done.note == f"no recipient named; about {SENDMAIL_ID} (outbox {row_id})"
    assert bounce_rows(factory) == [(case_id, row_id, SENDMAIL_ID, None, "unknown", None, False)]
    assert outbox_row(factory, row_id) == (BOUNCED, "bounced; the report names no recipient")


def test_a_malformed_report_is_recorded_on_every_database(factory: sessionmaker[Session]) -> None:
    # Control characters, broken bytes, overlong values: nothing a column refuses.
    with db.transaction(factory) as session:
        a_case(session)
    done = bounce(factory, load("dsn_malformed.eml"))
    assert done.case_id is None
    assert [r[3] for r in bounce_rows(factory)] == ["mallory@victim.test", "caf\ufffd@bad-bytes.test"]


def test_two_workers_counting_one_address_at_once_both_count(factory: sessionmaker[Session]) -> None:
    setup(factory, ("<ack-a@example.test>", "jane@customer.test", SENT),
          ("<ack-b@example.test>", "jane@customer.test", SENT))
    first = factory()  # a worker in the middle of its transaction: it has counted, not committed
    report = parse_report(with_id("dsn_postfix_user_unknown.eml", "<ack-a@example.test>"))
    assert report is not None
    record(first, inbound_id=stored(first, b"a"), report=report, now=NOW, suppress_after=2)
    outcome: list[Recorded] = []

    def second() -> None:  # blocks on the first's row (PostgreSQL) or its write lock (SQLite)
        outcome.append(bounce(factory, with_id("dsn_postfix_user_unknown.eml", "<ack-b@example.test>"),
                              suppress_after=2))

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)
    assert not outcome, "the second worker waits for the first"
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert [r.suppressed for r in outcome] == [("jane@customer.test",)]
    row = suppression(factory, "jane@customer.test")
    assert row is not None and row.hard_bounces == 2 and row.suppressed_at is not None


# --- the command line -------------------------------------------------------------------------


def test_list_shows_bounces_and_lift_mails_an_address_again(env: Env) -> None:
    engine = env.engine()
    factory = db.make_sessionmaker(engine)
    try:
        _, [_, held] = setup(factory, (POSTFIX_ID, "jane@customer.test", SENT),
                             ("<later@example.test>", "jane@customer.test", SUPPRESSED))
        matched = bounce(factory, load("dsn_postfix_user_unknown.eml"), suppress_after=1)
        bounce(factory, load("dsn_qmail.eml"))  # about nothing maild sent
    finally:
        engine.dispose()
    assert matched.suppressed == ("jane@customer.test",)

    listed = env.json("bounces", "list")
    assert [(b["recipient"], b["case"] is not None, b["outbox"] == matched.outbound_id, b["status"], b["hard"])
            for b in listed] == [("heidi@oldhost.test", False, False, "5.1.1", True),
                                 ("jane@customer.test", True, True, "5.1.1", True)]
    assert [b["recipient"] for b in env.json("bounces", "list", "--unmatched")] == ["heidi@oldhost.test"]
    assert len(env.json("bounces", "list", "--limit", "1")) == 1
    table = env.ok("bounces", "list")
    assert "heidi@oldhost.test" in table and "CAS-00001-AB12CD" in table and "Sorry, no mailbox here" in table

    [suppressed] = env.json("bounces", "suppressed")
    assert (suppressed["email"], suppressed["state"], suppressed["hard_bounces"]) == ("jane@customer.test",
                                                                                     "suppressed", 1)
    assert "jane@customer.test" in env.ok("bounces", "suppressed")

    out = env.ok("bounces", "lift", "JANE@customer.test")
    assert "jane@customer.test: suppression lifted (1 hard bounce(s) forgotten)" in out
    assert f"`maild outbox retry {held}` sends them" in out
    assert env.json("bounces", "suppressed") == []
    assert env.ok("bounces", "suppressed") == "no address is suppressed\n"
    [lifted] = env.json("bounces", "suppressed", "--all")
    assert (lifted["state"], lifted["hard_bounces"], lifted["suppressed_at"]) == ("lifted", 0, None)
    assert lifted["lifted_by"].startswith("cli:") and lifted["lifted_at"]

    again = env.cli("bounces", "lift", "jane@customer.test")
    assert again.exit_code == 1
    assert again.output.startswith("maild: jane@customer.test is not suppressed (lifted ")
    assert "Traceback" not in again.output
    unknown = env.cli("bounces", "lift", "nobody@customer.test")
    assert (unknown.exit_code, unknown.output) == (1, "maild: nobody@customer.test is not suppressed\n")


def test_the_commands_are_listed_and_an_empty_database_says_so(env: Env) -> None:
    assert "bounces" in env.ok("--help")
    assert env.ok("bounces", "list") == "no bounces\n"
    assert env.json("bounces", "list", "--unmatched") == []
    assert env.ok("bounces", "suppressed", "--all") == "no address is suppressed\n"
