"""Build outgoing messages safely and queue them in the outbox, inside the caller's transaction.

Headers are built with the email package's ``EmailMessage`` and ``headerregistry.Address``,
and every value that came from a customer (a subject, a display name) is flattened to one
line first, so no CR/LF in customer input can ever start a header of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from maild.models import Activity, OutboundMessage

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
    return " ".join("".join(ch for ch in value if ch >= " " or ch in "\t\r\n").split())


def compose(draft: Draft, message_id: str, now: datetime) -> EmailMessage:
    """The finished message. Raises ValueError if an address cannot be written safely."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(display_name=one_line(draft.from_name), addr_spec=draft.from_addr)
    msg["To"] = Address(display_name=one_line(draft.to_name), addr_spec=draft.to_addr)
    if draft.reply_to:
        msg["Reply-To"] = Address(addr_spec=draft.reply_to)
    msg["Subject"] = one_line(draft.subject)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id
    if draft.in_reply_to:
        msg["In-Reply-To"] = draft.in_reply_to
    refs = [r for r in draft.references if r] or ([draft.in_reply_to] if draft.in_reply_to else [])
    if refs:
        msg["References"] = " ".join(refs[-20:])  # bounded: long threads must not grow headers forever
    if draft.auto_submitted:
        msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: other robots must not answer us
        msg["X-Auto-Response-Suppress"] = "All"  # the same request, in Exchange's dialect
    msg.set_content(draft.text)
    if draft.html:
        msg.add_alternative(draft.html, subtype="html")
    for att in draft.attachments:
        maintype, _, subtype = att.content_type.partition("/")
        msg.add_attachment(
            att.content, maintype=maintype or "application", subtype=subtype or "octet-stream",
            filename=one_line(att.filename) or None,
        )
    return msg


def new_message_id(domain: str) -> str:
    return make_msgid(domain=domain)


def enqueue(draft: Draft, *, now: datetime, case_id: int | None, domain: str | None,
            activity: Activity | None = None) -> OutboundMessage:
    """Compose ``draft`` under a new Message-ID (in ``domain``, default the sender's) and return
    its outbox row for the caller to add. Composing first means an address the email package
    refuses (ValueError) leaves nothing behind."""
    message_id = new_message_id(domain or draft.from_addr.rpartition("@")[2])
    return outbox_row(draft, compose(draft, message_id, now).as_bytes(), message_id=message_id, now=now,
                      case_id=case_id, activity=activity)


def outbox_row(draft: Draft, raw: bytes, *, message_id: str, now: datetime, case_id: int | None,
               activity: Activity | None) -> OutboundMessage:
    """The outbox row for a composed message; it is sent only after the caller commits."""
    return OutboundMessage(
        case_id=case_id,
        activity=activity,
        kind=draft.kind,
        message_id=message_id,
        mail_from=draft.from_addr,
        recipient=draft.to_addr,
        rcpt_to=[draft.to_addr],
        raw=raw,
        created_at=now,
        next_attempt_at=now,
    )
