"""Delivery status notifications (RFC 3464): read them, record what they say about the mail
maild sent, and stop mailing addresses that keep bouncing hard.

``looks_like_bounce`` and ``parse_report`` are pure and never raise on hostile input;
``record`` writes a report's rows in the caller's transaction; ``list_bounces``,
``list_suppressed`` and ``lift`` serve ``maild bounces``. The report is read with the standard
library, not mail-parser (maild.parse): that flattens the parts into text and attachments,
and a report's meaning is in its structure.
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from maild.errors import NotFound
from maild.models import (BOUNCED, SENDING, SENT, SUPPRESSED, UNKNOWN, Activity, Bounce, Case, OutboundMessage,
                          Suppression)
from maild.msgids import normalise_message_id, split_message_ids
from maild.safety import daemon_sender, null_path, return_path

if TYPE_CHECKING:
    from maild.parse import ParsedMail  # only a type: the CLI's listings need not import the parser

__all__ = ["Lifted", "Recipient", "Recorded", "Report", "lift", "list_bounces", "list_suppressed",
           "looks_like_bounce", "parse_report", "record"]

_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})  # RFC 3464, RFC 6533
_RETURNED_TYPES = frozenset({"message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers",
                             "message/global-headers"})
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
# Actions that mean the message did not get through: "unknown" is a report that does not say.
_UNDELIVERED = frozenset({"failed", "unknown"})

_REPORT_TYPE = re.compile(r";\s*report-type\s*=\s*\"?([\w.-]+)", re.I)
# An RFC 3463 code; never the tail of an IP address or a version number ("10.4.5.6").
_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_FAILURE_STATUS = re.compile(r"(?<![\d.])([45]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_FAILURE_REPLY = re.compile(r"(?<![\d.])([45])\d\d(?![\d.])")
_ADDRESS = re.compile(r"[^\s@<>;,\"()\x00-\x1f\x7f]+@[^\s@<>;,\"()\x00-\x1f\x7f]+")
# PostgreSQL refuses NUL in text, and no field here has a use for control characters.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_DIAGNOSTIC_TYPE = re.compile(r"^[a-z][\w-]*\s*;\s*", re.I)
_QUOTED_ID = re.compile(r"^[ \t>]*message-id:\s*(<[^<>\s]{1,998}>)", re.I | re.M)
_QMAIL_RECIPIENT = re.compile(r"^<([^<>\s]+@[^<>\s]+)>:[ \t]*$", re.M)
_COPY_FOLLOWS = re.compile(r"^.*(?:below this line is a copy|this is a copy of the message|original message).*$",
                           re.I | re.M)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")

# Bounds on what one report can make maild read or write: a DSN about maild's mail names
# one recipient (maild sends each message to one), and its text is short.
_MAX_PARTS = 50
_MAX_RECIPIENTS = 50
_MAX_IDS = 20
_TEXT_LIMIT = 64_000
_VALUE_LIMIT = 1_000
_ID_LIMIT = 998  # the Message-ID columns' size
_ADDRESS_LIMIT = 320  # the address columns' size


@dataclass(frozen=True)
class Recipient:
    """One recipient a report names, and what happened to the message there."""

    address: str  # lower-case; the Original-Recipient where given: the address maild sent to
    action: str  # failed, delayed, delivered, relayed, expanded (RFC 3464), or "unknown"
    status: str | None  # "5.1.1" (RFC 3463)
    diagnostic: str | None  # the remote server's answer: "550 5.1.1 User unknown"
    hard: bool  # failed with a permanent (5.x.x) status: the address does not work


@dataclass(frozen=True)
class Report:
    """What a bounce says: which message came back, and what happened at each recipient."""

    message_ids: tuple[str, ...]  # the bounced message's Message-ID, candidates best first
    recipients: tuple[Recipient, ...]  # may be empty: not every bounce names them
    standard: bool  # read from an RFC 3464 delivery-status part; False: a best-effort reading

    @property
    def bounced(self) -> bool:
        """Whether the message did not get through: a recipient failed, or the report does
        not say (plain-text bounces). A report of delays only means it is still on its way."""
        return not self.recipients or any(r.action in _UNDELIVERED for r in self.recipients)


@dataclass(frozen=True)
class Recorded:
    """What ``record`` found and did, for the caller to file on the case and log."""

    case_id: int | None  # the case of the mail that bounced; None: it matches no mail of maild's
    outbound_id: int | None  # the outbox row it matched
    suppressed: tuple[str, ...]  # addresses this report got suppressed
    note: str  # one line for logs and the audit trail


@dataclass(frozen=True)
class Lifted:
    """An address ``lift`` made mailable again."""

    email: str
    hard_bounces: int  # the count it had
    held: tuple[int, ...]  # outbox rows not sent to it (suppressed): `maild outbox retry` sends them


# Recognising and reading ----------------------------------------------------------------


def looks_like_bounce(mail: ParsedMail, envelope_from: str | None = None) -> bool:
    """Whether ``mail`` is a bounce to read with ``parse_report`` rather than a person's mail.

    Yes for an RFC 3464 report (multipart/report; report-type=delivery-status), and for mail
    from MAILER-DAEMON or postmaster on a null reverse path (RFC 5321 §4.5.5), or an unknown
    one: the envelope's ``envelope_from`` if intake knows it ("" or "<>" is null), else the
    Return-Path header. Not the sender or the null path alone: a postmaster writing from a
    real address is a person, and vacation replies go out on a null path too (RFC 3834
    §3.3). maild.safety's check is broader, as it only decides whether to acknowledge.
    """
    if mail.content_type == "multipart/report" and _report_type(mail.header("content-type") or "") == "delivery-status":
        return True
    if not daemon_sender(mail.sender_email):
        return False
    return return_path(mail, envelope_from) is None or null_path(mail, envelope_from)


def parse_report(raw: bytes) -> Report | None:
    """Read a bounce; None if ``raw`` is not one. Never raises, whatever the bytes.

    A bounce is an RFC 3464 report or mail from MAILER-DAEMON or postmaster (the reverse
    path, which the bytes do not show, is ``looks_like_bounce``'s to check). The bounced
    message's Message-ID is looked for in the returned message or headers (message/rfc822,
    text/rfc822-headers), then the report's X-Original-Message-ID (Gmail), then a
    Message-ID quoted in the text (qmail, Exchange), and last the report's own In-Reply-To
    and References. Recipients come from the delivery-status part, else qmail's "<address>:"
    paragraphs, else the X-Failed-Recipients header (Exim); a plain-text bounce may name none.
    """
    try:
        message = email.message_from_bytes(raw, policy=compat32)
        if not (_is_report(message) or daemon_sender(_from_address(message))):
            return None
    except Exception:  # noqa: BLE001
        # The stdlib parser has no limits (nesting deep enough exhausts the stack); intake
        # must not crash on what a stranger sends.
        return None
    try:
        return _read(message)
    except Exception:  # noqa: BLE001
        # A bounce all the same, with nothing readable in it.
        return Report(message_ids=(), recipients=(), standard=False)


def _report_type(content_type: str) -> str | None:
    match = _REPORT_TYPE.search(content_type)
    return match.group(1).lower() if match else None


def _is_report(message: Message) -> bool:
    return message.get_content_type() == "multipart/report" and \
        _report_type(_header(message, "content-type") or "") == "delivery-status"


def _from_address(message: Message) -> str:
    return parseaddr(_header(message, "from") or "")[1]


def _read(message: Message) -> Report:
    parts = _parts(message)
    status_part = next((p for p in parts if p.get_content_type() in _STATUS_TYPES), None)
    blocks = _status_blocks(status_part) if status_part is not None else []
    texts = [_text(p) for p in parts if p.get_content_type() == "text/plain"]
    notice = _COPY_FOLLOWS.split(texts[0], maxsplit=1)[0] if texts else ""
    returned = _returned_id(next((p for p in parts if p.get_content_type() in _RETURNED_TYPES), None))
    quoted = [] if returned else [m.group(1) for text in texts for m in _QUOTED_ID.finditer(text)]
    ids = _message_ids([
        *returned, *(value for fields in blocks for value in fields.get("x-original-message-id", [])), *quoted,
        *split_message_ids(_header(message, "in-reply-to") or ""),
        *reversed(split_message_ids(" ".join(_headers(message, "references")))),  # the newest is last
    ])
    recipients = [r for fields in blocks if (r := _block_recipient(fields)) is not None]
    if not recipients and status_part is None:
        recipients = _qmail_recipients(notice)
    if not recipients:
        recipients = _failed_header_recipients(message, notice)
    return Report(message_ids=ids, recipients=_unique(recipients), standard=status_part is not None)


def _parts(message: Message) -> list[Message]:
    """The message and its parts, depth first, without looking inside a returned message
    (message/*): its text is not the report's. At most _MAX_PARTS."""
    found: list[Message] = []
    stack = [message]
    while stack and len(found) < _MAX_PARTS:
        part = stack.pop()
        found.append(part)
        payload = part.get_payload()
        if part.get_content_maintype() == "multipart" and isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
    return found


def _status_blocks(part: Message) -> list[dict[str, list[str]]]:
    """The delivery-status part's field groups: per message, then one per recipient. The
    parser has split them already (it knows message/delivery-status). None of 348 real
    reports in sisimai's collection transfer-encodes this part, so an encoded one is not read."""
    payload = part.get_payload()
    blocks = payload[:_MAX_RECIPIENTS + 1] if isinstance(payload, list) else []
    return [_fields(block) for block in blocks if isinstance(block, Message)]


def _block_recipient(fields: dict[str, list[str]]) -> Recipient | None:
    # Original-Recipient first: after an alias or forward, Final-Recipient is an address
    # maild never sent to, and suppressing it would stop nothing.
    values = [*fields.get("original-recipient", []), *fields.get("final-recipient", [])]
    address = next((a for v in values if (a := _address(v.rpartition(";")[2])) is not None), None)
    if address is None:
        return None
    first = {name: (fields.get(name) or [""])[0] for name in ("action", "status", "diagnostic-code")}
    diagnostic = _DIAGNOSTIC_TYPE.sub("", first["diagnostic-code"]) or None
    match = _STATUS.search(first["status"])
    status = match.group(1) if match else _failure_code(diagnostic or "")
    action = (first["action"].split() or [""])[0].strip(";,.").lower()
    return _recipient(address, action if action in _ACTIONS else "unknown", status, diagnostic)


def _recipient(address: str, action: str, status: str | None, diagnostic: str | None) -> Recipient:
    hard = action == "failed" and status is not None and status.startswith("5.")
    return Recipient(address=address, action=action, status=status, diagnostic=diagnostic, hard=hard)


def _qmail_recipients(notice: str) -> list[Recipient]:
    """qmail's plain-text bounce: each failed address alone on a line as "<address>:", the
    remote server's answer in the paragraph below it; qmail writes only when it gave up."""
    found = []
    for match in _QMAIL_RECIPIENT.finditer(notice):
        address = _address(match.group(1))
        paragraph = _clean(_BLANK_LINE.split(notice[match.end():], maxsplit=1)[0]) or None
        if address is not None:
            found.append(_recipient(address, "failed", _failure_code(paragraph or ""), paragraph))
    return found


def _failed_header_recipients(message: Message, notice: str) -> list[Recipient]:
    """Exim's (and old Gmail's) X-Failed-Recipients. The notice's status code is the
    recipient's only when there is one recipient."""
    values = [a for _, a in getaddresses(_headers(message, "x-failed-recipients"))]
    addresses = [a for v in values if (a := _address(v)) is not None]
    status = _failure_code(notice) if len(addresses) == 1 else None
    return [_recipient(address, "failed", status, None) for address in addresses]


def _failure_code(text: str) -> str | None:
    """The first failure status in free text: an RFC 3463 code, else the class of an SMTP
    reply code ("550" -> "5.0.0")."""
    match = _FAILURE_STATUS.search(text)
    if match:
        return match.group(1)
    reply = _FAILURE_REPLY.search(text)
    return f"{reply.group(1)}.0.0" if reply else None


def _returned_id(part: Message | None) -> list[str]:
    """The Message-ID of the returned message (message/rfc822) or headers (text/rfc822-headers)."""
    if part is None:
        return []
    payload = part.get_payload()
    if isinstance(payload, list):  # message/*: the parser read it as a message
        headers = payload[0] if payload and isinstance(payload[0], Message) else None
    else:
        headers = HeaderParser(policy=compat32).parsestr(_text(part))
    value = _header(headers, "message-id") if headers is not None else None
    return [value] if value else []


def _message_ids(values: Iterable[str]) -> tuple[str, ...]:
    found: list[str] = []
    for value in values:
        normalised = normalise_message_id(value)
        if normalised and len(normalised) <= _ID_LIMIT and not _CONTROL.search(normalised) and normalised not in found:
            found.append(normalised)
    return tuple(found[:_MAX_IDS])


def _unique(recipients: Sequence[Recipient]) -> tuple[Recipient, ...]:
    """One entry per address (the first): a report naming it twice is one bounce, counted once."""
    seen: dict[str, Recipient] = {}
    for recipient in recipients:
        seen.setdefault(recipient.address, recipient)
    return tuple(seen.values())[:_MAX_RECIPIENTS]


def _address(value: str) -> str | None:
    candidate = value.strip().strip("<>").strip().lower()
    return candidate if len(candidate) <= _ADDRESS_LIMIT and _ADDRESS.fullmatch(candidate) else None


def _fields(block: Message) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in block.raw_items():
        fields.setdefault(name.strip().lower(), []).append(_clean(value))
    return fields


def _headers(message: Message, name: str) -> list[str]:
    """Every value of header ``name``, unfolded. Raw values: compat32's own accessors
    return Header objects for 8-bit values."""
    return [_clean(value) for key, value in message.raw_items() if key.lower() == name]


def _header(message: Message, name: str) -> str | None:
    values = _headers(message, name)
    return values[0] if values else None


def _clean(value: object) -> str:
    """One line of text from a raw value: 8-bit bytes decoded as UTF-8, folding undone."""
    text = str(value)[:_VALUE_LIMIT * 4]
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return " ".join(_CONTROL.sub("", text).split())[:_VALUE_LIMIT]


def _text(part: Message) -> str:
    """A leaf part's decoded text (its first _TEXT_LIMIT bytes), in its charset if known."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    try:
        return data[:_TEXT_LIMIT].decode(part.get_content_charset() or "utf-8", "replace")
    except (LookupError, ValueError):
        return data[:_TEXT_LIMIT].decode("utf-8", "replace")


# Recording --------------------------------------------------------------------------------


def record(session: Session, *, inbound_id: int, report: Report, now: datetime, suppress_after: int) -> Recorded:
    """Write what ``report`` (stored as inbound message ``inbound_id``) says, in the caller's
    transaction (no commit), and return what it matched.

    - The bounced mail is the outbox row with the first of the report's Message-IDs that
      matches one, else the activity with one (which gives the case at least).
    - One Bounce row per recipient reported, or one without a recipient if it names none.
    - The outbox row becomes bounced, its last error the status and diagnostic, when the
      report says the message did not get through, and only from sent, sending or unknown:
      a bounce never un-fails a row nor sends one again. A delay leaves it as it is.
    - A hard bounce counts against its address (Suppression.hard_bounces, one atomic
      upsert, so concurrent workers both count), and the address is suppressed when the
      count reaches ``suppress_after`` (0: never). It counts only when the report matched
      an outbox row sent to that address, and once per row: a forged report, or a second one
      about the same message, cannot get a customer suppressed.

    It writes no activity or audit event on the case: the caller files the bounce there with
    its own helpers (maild.cases).
    """
    # No autoflush: the caller's batch so far need not be written for these reads, and
    # nothing it holds unwritten can be the mail a bounce is about (that was sent long ago).
    with session.no_autoflush:
        sent = _bounced_outbox(session, report.message_ids)
        case_id, message_id = (sent.case_id, sent.message_id) if sent is not None else \
            _bounced_activity(session, report.message_ids)
        counted = _to_count(session, report, sent)
        base = {"received_at": now, "inbound_id": inbound_id, "outbound_id": sent.id if sent is not None else None,
                "case_id": case_id,
                "original_message_id": message_id or (report.message_ids[0] if report.message_ids else None)}
        session.execute(insert(Bounce), [{**base, **row} for row in _bounce_rows(report)])
        if sent is not None and report.bounced:
            session.execute(update(OutboundMessage)
                            .where(OutboundMessage.id == sent.id, OutboundMessage.state.in_([SENT, SENDING, UNKNOWN]))
                            .values(state=BOUNCED, last_error=_error_line(report))
                            .execution_options(synchronize_session=False))
        suppressed = tuple(r.address for r in counted if _count_hard_bounce(session, r, now, suppress_after))
    return Recorded(case_id=case_id, outbound_id=sent.id if sent is not None else None, suppressed=suppressed,
                    note=_note(report, message_id, sent.id if sent is not None else None, suppressed))


@dataclass(frozen=True)
class _Sent:
    """The outbox row a report is about."""

    id: int
    case_id: int | None
    message_id: str
    recipients: frozenset[str]  # lower-case


def _bounced_outbox(session: Session, ids: Sequence[str]) -> _Sent | None:
    """The outbox row the report is about, locked: two reports about one message are then
    recorded one after the other, and the second sees the first's rows (_to_count)."""
    if not ids:
        return None
    rows = session.execute(
        select(OutboundMessage.id, OutboundMessage.case_id, OutboundMessage.message_id, OutboundMessage.recipient,
               OutboundMessage.rcpt_to).where(OutboundMessage.message_id.in_(ids)).with_for_update()).all()
    found = {message_id: _Sent(row_id, case_id, message_id, frozenset(str(a).lower() for a in [recipient, *rcpt_to]))
             for row_id, case_id, message_id, recipient, rcpt_to in rows}
    return next((found[i] for i in ids if i in found), None)


def _bounced_activity(session: Session, ids: Sequence[str]) -> tuple[int | None, str | None]:
    """The case and Message-ID of the first activity with one of ``ids``: mail maild sent
    whose outbox row is not found, or (References) the customer's mail it answered."""
    if not ids:
        return None, None
    rows = session.execute(select(Activity.case_id, Activity.message_id).where(Activity.message_id.in_(ids))).all()
    cases = {message_id: case_id for case_id, message_id in rows}
    found = next((i for i in ids if i in cases), None)
    return (cases[found], found) if found is not None else (None, None)


def _to_count(session: Session, report: Report, sent: _Sent | None) -> list[Recipient]:
    """The hard bounces that count against their address: to an address ``sent`` went to,
    not yet counted for ``sent``."""
    if sent is None:
        return []
    hard = [r for r in report.recipients if r.hard and r.address in sent.recipients]
    if not hard:
        return []
    counted = set(session.scalars(select(Bounce.recipient).where(
        Bounce.outbound_id == sent.id, Bounce.hard.is_(True), Bounce.recipient.in_([r.address for r in hard]))))
    return [r for r in hard if r.address not in counted]


def _bounce_rows(report: Report) -> list[dict[str, Any]]:
    if not report.recipients:
        return [{"recipient": None, "action": "unknown", "status": None, "diagnostic": None, "hard": False}]
    return [{"recipient": r.address, "action": r.action, "status": r.status, "diagnostic": r.diagnostic,
             "hard": r.hard} for r in report.recipients]


def _count_hard_bounce(session: Session, recipient: Recipient, now: datetime, suppress_after: int) -> bool:
    """Count one hard bounce against the address; True if that suppressed it.

    The count is one INSERT ... ON CONFLICT DO UPDATE: a worker counting the same address at
    the same time waits for this row lock and then adds its own, where a read and a write
    would lose one count (or fail on the insert). The row stays locked to the commit, so the
    suppressing UPDATE below has no race either."""
    make = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    upsert = make(Suppression).values(
        email=recipient.address, hard_bounces=1, last_bounce_at=now,
    ).on_conflict_do_update(
        index_elements=[Suppression.email],
        set_={"hard_bounces": Suppression.hard_bounces + 1, "last_bounce_at": now},
    ).returning(Suppression.hard_bounces, Suppression.suppressed_at)
    count, suppressed_at = session.execute(upsert).one()
    if suppress_after <= 0 or count < suppress_after or suppressed_at is not None:
        return False
    reason = f"{count} hard bounces; the last: {_describe(recipient)}"[:_VALUE_LIMIT]
    done = session.execute(update(Suppression)
                           .where(Suppression.email == recipient.address, Suppression.suppressed_at.is_(None))
                           .values(suppressed_at=now, reason=reason).returning(Suppression.email)
                           .execution_options(synchronize_session=False)).first()
    return done is not None


def _error_line(report: Report) -> str:
    """The outbox row's last error: the first failed recipient's status and diagnostic."""
    failed = next((r for r in report.recipients if r.action in _UNDELIVERED), None)
    return _describe(failed) if failed is not None else "bounced; the report names no recipient"


def _describe(recipient: Recipient) -> str:
    """"5.1.1 550 5.1.1 User unknown": what the remote server said about the recipient."""
    return (" ".join(filter(None, [recipient.status, recipient.diagnostic])) or recipient.action)[:_VALUE_LIMIT]


def _note(report: Report, message_id: str | None, outbound_id: int | None, suppressed: Sequence[str]) -> str:
    named = ", ".join(f"{r.address} {r.action}" + (f" {r.status}" if r.status else "") + (" (hard)" if r.hard else "")
                      for r in report.recipients[:3]) or "no recipient named"
    if len(report.recipients) > 3:
        named += f" and {len(report.recipients) - 3} more"
    about = message_id or (report.message_ids[0] if report.message_ids else "no Message-ID found")
    note = f"{named}; about {about}" + (f" (outbox {outbound_id})" if outbound_id is not None else "")
    return note + (f"; suppressed {', '.join(suppressed)}" if suppressed else "")


# Listing and lifting ------------------------------------------------------------------------


def list_bounces(session: Session, *, unmatched_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """Bounce rows, newest first; ``unmatched_only``: those matching no mail maild sent."""
    query = select(Bounce, Case.reference).outerjoin(Case, Case.id == Bounce.case_id) \
        .order_by(Bounce.id.desc()).limit(limit)
    if unmatched_only:
        query = query.where(Bounce.case_id.is_(None), Bounce.outbound_id.is_(None))
    return [
        {"id": row.id, "received_at": _iso(row.received_at), "case": reference, "outbox": row.outbound_id,
         "inbound": row.inbound_id, "recipient": row.recipient, "action": row.action, "status": row.status,
         "hard": row.hard, "diagnostic": row.diagnostic, "message_id": row.original_message_id}
        for row, reference in session.execute(query)
    ]


def list_suppressed(session: Session, include_lifted: bool = False) -> list[dict[str, Any]]:
    """Suppressed addresses by address; ``include_lifted``: also those an admin lifted."""
    shown: ColumnElement[bool] = Suppression.suppressed_at.is_not(None)
    if include_lifted:
        shown = or_(shown, Suppression.lifted_at.is_not(None))
    return [
        {"email": row.email, "state": "suppressed" if row.suppressed_at is not None else "lifted",
         "hard_bounces": row.hard_bounces, "last_bounce_at": _iso(row.last_bounce_at),
         "suppressed_at": _iso(row.suppressed_at), "reason": row.reason, "lifted_at": _iso(row.lifted_at),
         "lifted_by": row.lifted_by}
        for row in session.scalars(select(Suppression).where(shown).order_by(Suppression.email))
    ]


def lift(session: Session, email: str, *, by: str, now: datetime) -> Lifted:
    """Mail ``email`` again: its suppression lifted (who and when kept), its count back to 0.

    NotFound if it is not suppressed. Messages not sent to it meanwhile stay suppressed
    until an admin releases them (``maild outbox retry``): some may be stale by now."""
    address = email.strip().lower()
    row = session.scalars(select(Suppression).where(Suppression.email == address).with_for_update()).one_or_none()
    if row is None or row.suppressed_at is None:
        raise NotFound(f"{address} is not suppressed" + _why_not(row))
    count = row.hard_bounces
    row.suppressed_at, row.hard_bounces, row.lifted_at, row.lifted_by = None, 0, now, by
    held = session.scalars(select(OutboundMessage.id).where(func.lower(OutboundMessage.recipient) == address,
                                                            OutboundMessage.state == SUPPRESSED)
                           .order_by(OutboundMessage.id))
    return Lifted(email=address, hard_bounces=count, held=tuple(held))


def _why_not(row: Suppression | None) -> str:
    if row is None:
        return ""
    if row.lifted_at is not None and row.hard_bounces == 0:
        return f" (lifted {_iso(row.lifted_at)} by {row.lifted_by})"
    return f" ({row.hard_bounces} hard bounce(s) counted so far)"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
