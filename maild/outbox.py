"""Build outgoing messages safely and queue them in the outbox, inside the caller's transaction.

Every address is checked by ``headerregistry.Address`` and every value that came from a
customer (a subject, a display name) is flattened to one line first, so no CR/LF in customer
input can ever start a header of its own. The message is what the email package's compat32
classes write: the same MIME as ``EmailMessage`` with the SMTP policy, at a quarter of the
cost (that policy re-parses and re-folds every header it writes, about 4 ms of an
acknowledgement). A message without attachments is written straight to those bytes
(``message_bytes``), without building the package's objects; one with attachments is
built with them (``compose``). The outbox row is a plain row (``queue``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from email import encoders
from email.charset import QP, Charset
from email.errors import HeaderParseError
from email.header import Header
from email.headerregistry import Address
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import Compat32
from email.utils import format_datetime, formataddr, make_msgid
from functools import lru_cache
from typing import Any, cast

from sqlalchemy.orm import Session

from maild.db import insert_after_flush
from maild.models import PENDING, Activity, OutboundMessage

# REFUSAL: the answer to an unknown sender in a queue that refuses them (maild.senders).
ACKNOWLEDGEMENT, REPLY, REFUSAL = "acknowledgement", "reply", "refusal"
NOTICE = "notice"  # internal: e.g. a case opened on an exhausted entitlement
SURVEY = "survey"  # the satisfaction survey sent on resolution


@dataclass(frozen=True)
class FileAttachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class Draft:
    """Everything needed to write one message; built by cases.apply from a template or a relay."""

    kind: str
    from_name: str
    from_addr: str
    to_name: str
    to_addr: str
    subject: str
    text: str
    html: str | None = None
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    auto_submitted: bool = False
    attachments: tuple[FileAttachment, ...] = field(default=())


def one_line(value: str) -> str:
    """Collapse every run of whitespace (CR and LF included) and drop control characters."""
    return " ".join(_CONTROL.sub("", value).split())


# The control characters below space that are not whitespace: one pass in C, where a test
# per character cost a generator step each (160 a message, for its headers).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


class _Wire(Compat32):
    """compat32 on the wire (CRLF line ends, as the SMTP policy wrote them), with a short
    cut: a header that is ASCII, one line and short enough is written as it is. compat32
    runs every header through ``Header.encode``, which returns exactly that for such a
    value but cost half of writing an acknowledgement out (tested byte for byte)."""

    def _fold(self, name: str, value: Any, sanitize: bool) -> str:
        if isinstance(value, str) and len(name) + len(value) + 2 <= _FITS and value.isascii() \
                and value.isprintable() and value == value.strip():
            return f"{name}: {value}{self.linesep}"
        return str(super()._fold(name, value, sanitize))  # type: ignore[misc]  # not in typeshed


_FITS = 78  # RFC 5322's recommended line length, compat32's max_line_length
_WIRE = _Wire(linesep="\r\n")
# Text bodies in quoted-printable: readable in the raw, safe for any line length or charset.
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP


def compose(draft: Draft, message_id: str, now: datetime) -> Message:
    """The finished message. Raises ValueError if an address cannot be written safely."""
    msg = _body(draft)
    for name, value in _headers(draft, message_id, now):
        msg[name] = value
    return msg


def _headers(draft: Draft, message_id: str, now: datetime) -> list[tuple[str, str]]:
    """The message's own headers, after its body's MIME headers; ValueError as compose."""
    headers = [("From", _address(draft.from_name, draft.from_addr)), ("To", _address(draft.to_name, draft.to_addr))]
    if draft.reply_to:
        headers.append(("Reply-To", _address("", draft.reply_to)))
    headers += [("Subject", _text_header(one_line(draft.subject))), ("Date", format_datetime(now)),
                ("Message-ID", one_line(message_id))]
    if draft.in_reply_to:
        headers.append(("In-Reply-To", one_line(draft.in_reply_to)))
    refs = [r for r in draft.references if r] or ([draft.in_reply_to] if draft.in_reply_to else [])
    if refs:  # bounded: long threads must not grow headers forever
        headers.append(("References", one_line(" ".join(refs[-20:]))))
    if draft.auto_submitted:
        headers.append(("Auto-Submitted", "auto-replied"))  # RFC 3834: other robots must not answer us
        headers.append(("X-Auto-Response-Suppress", "All"))  # the same request, in Exchange's dialect
    return headers


def message_bytes(draft: Draft, message_id: str, now: datetime) -> bytes:
    """The finished message on the wire: ``as_bytes(compose(...))``, byte for byte.

    Without attachments (every acknowledgement and notice) it is written directly: the same
    header values folded by the same policy, the same quoted-printable encoder, in the order
    the email package writes them, without building and walking its objects (which cost
    about 280 us an acknowledgement, a fifth of writing a new case). Tested equal to the
    email package's bytes. ValueError as compose.
    """
    if draft.attachments:
        return as_bytes(compose(draft, message_id, now))
    text_head, text_body = _text_head("plain"), _qp(draft.text)
    if draft.html:
        boundary = _boundary()
        head = _alternative_head(boundary)
        body = _multipart(boundary, [text_head + b"\r\n" + text_body,
                                     _text_head("html") + b"\r\n" + _qp(draft.html)])
    else:
        head, body = text_head, text_body
    own = b"".join(_WIRE.fold_binary(name, value) for name, value in _headers(draft, message_id, now))
    return head + own + b"\r\n" + body


@lru_cache(maxsize=None)
def _text_head(subtype: str) -> bytes:
    """A text part's MIME headers, as ``_text_part`` sets them (the same for every part)."""
    return b"".join(_WIRE.fold_binary(name, value) for name, value in [
        ("MIME-Version", "1.0"), ("Content-Type", f'text/{subtype}; charset="utf-8"'),
        ("Content-Transfer-Encoding", "quoted-printable")])


def _alternative_head(boundary: str) -> bytes:
    """multipart/alternative's headers. Its Content-Type is too long for one line, and
    compat32's folding of it (Header.encode, 40 us) depends only on where it may break,
    which a boundary of ``_boundary``'s shape never offers: so it is folded once, with a
    stand-in of that shape, and the boundary put in its place."""
    return _ALTERNATIVE_HEAD.replace(_STAND_IN, boundary.encode("ascii"))


def _qp(text: str) -> bytes:
    """A text part's body, as ``_text_part`` encodes it and the generator writes it."""
    encoded = _UTF8_QP.body_encode(text.encode("utf-8")) if text else ""
    return _NEWLINE.sub("\r\n", encoded).encode("ascii")


def _multipart(boundary: str, parts: list[bytes]) -> bytes:
    delimiter = f"--{boundary}".encode("ascii")
    return delimiter + b"\r\n" + (b"\r\n" + delimiter + b"\r\n").join(parts) + b"\r\n" + delimiter + b"--\r\n"


_NEWLINE = re.compile(r"\r\n|\r|\n")  # the generator's: every line end is written as the policy's
_STAND_IN = b"=_" + b"0" * 32  # the shape of _boundary's
_ALTERNATIVE_HEAD = _WIRE.fold_binary("Content-Type", f'multipart/alternative; boundary="{_STAND_IN.decode()}"') \
    + b"MIME-Version: 1.0\r\n"


def as_bytes(msg: Message) -> bytes:
    return msg.as_bytes(policy=_WIRE)


def _body(draft: Draft) -> Message:
    """text/plain, or multipart/alternative with the HTML, inside multipart/mixed with attachments."""
    body: Message = _text_part(draft.text, "plain")
    if draft.html:
        body = MIMEMultipart("alternative", _subparts=[body, _text_part(draft.html, "html")], boundary=_boundary())
    if not draft.attachments:
        return body
    return MIMEMultipart("mixed", _subparts=[body, *(_attachment(att) for att in draft.attachments)],
                         boundary=_boundary())


def _boundary() -> str:
    # Chosen here, not by the generator, which searches every part's text for its candidate
    # with a regular expression compiled per message. "=_" cannot occur in what the parts
    # hold: quoted-printable writes "=" only before two hex digits or a line end, base64
    # never writes "_".
    return f"=_{secrets.token_hex(16)}"


def _text_part(text: str, subtype: str) -> Message:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, _UTF8_QP)
    return part


def _attachment(att: FileAttachment) -> Message:
    maintype, _, subtype = att.content_type.partition("/")
    part = MIMEBase(one_line(maintype) or "application", one_line(subtype) or "octet-stream")
    part.set_payload(att.content)
    encoders.encode_base64(part)
    filename = one_line(att.filename)
    named = {"filename": filename if filename.isascii() else ("utf-8", "", filename)} if filename else {}
    part.add_header("Content-Disposition", "attachment", **named)
    return part


def _address(name: str, addr: str) -> str:
    """``Name <addr>``, the name encoded if it is not ASCII; ValueError for an address the
    email package would refuse, or one that is not ASCII (no SMTPUTF8 here)."""
    if not name and _PLAIN_ADDRESS.fullmatch(addr):
        # A bare address of plain characters is written as it is: what the email package
        # makes of it, without its parser. The signed Reply-To of every acknowledgement is
        # one, and new for every case, so the cache below never had it.
        return addr
    return _checked_address(name, addr)


# RFC 5322's dot-atom on the left (no quoting needed), host names on the right.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


@lru_cache(maxsize=4096)
def _checked_address(name: str, addr: str) -> str:
    """Cached: a queue's own address heads every mail it sends and customers write again, and
    checking one costs more than the rest of a header (a refusal is not cached: it raises)."""
    try:
        checked = Address(display_name=one_line(name), addr_spec=addr)
    except HeaderParseError as exc:
        raise ValueError(f"cannot write the address {addr!r}: {exc}") from None
    if not checked.addr_spec.isascii():
        raise ValueError(f"cannot write the address {addr!r} safely")
    return formataddr((checked.display_name, checked.addr_spec), charset="utf-8")


def _text_header(value: str) -> str:
    # A compat32 message takes a Header where a str goes, and encodes it when written.
    return value if value.isascii() else cast(str, Header(value, "utf-8"))


def new_message_id(domain: str) -> str:
    return make_msgid(domain=domain)


def new_message(draft: Draft, *, now: datetime, domain: str | None) -> tuple[str, bytes]:
    """``draft`` on the wire under a new Message-ID (in ``domain``, default the sender's):
    (Message-ID, bytes). ValueError for an address the email package refuses."""
    message_id = new_message_id(domain or draft.from_addr.rpartition("@")[2])
    return message_id, message_bytes(draft, message_id, now)


def queue(session: Session, draft: Draft, message_id: str, raw: bytes, *, now: datetime, case_id: int | None,
          activity: Activity | None = None) -> None:
    """Put a written message in the outbox, in the caller's transaction: it is sent only
    after the caller commits. A plain row, not an ORM object (which cost a new case as much
    as its case row): written after the pending rows it points at (db.insert_after_flush),
    its activity's id read then. cases._recent_acks counts it meanwhile."""
    insert_after_flush(session, OutboundMessage, [{
        "case_id": case_id, "activity_id": activity, "kind": draft.kind, "message_id": message_id,
        "mail_from": draft.from_addr, "recipient": draft.to_addr, "rcpt_to": [draft.to_addr], "raw": raw,
        "state": PENDING, "attempts": 0, "created_at": now, "next_attempt_at": now,
    }])


def enqueue(session: Session, draft: Draft, *, now: datetime, case_id: int | None, domain: str | None) -> str:
    """Write ``draft`` (new_message) and queue it; its Message-ID. Written first, so an
    address the email package refuses (ValueError) leaves nothing behind."""
    message_id, raw = new_message(draft, now=now, domain=domain)
    queue(session, draft, message_id, raw, now=now, case_id=case_id)
    return message_id
