"""Who may open a case: each queue's policy for senders the customer records do not know yet.

``create`` (the default) makes a contact; ``create_with_account`` also files it under an
account for the sender's domain (never for public mail providers, where a domain says
nothing about the company); ``refuse`` opens no case, keeps the message marked
``refused``, and answers with the ``unknown_sender`` template.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.models import Account, Case, Contact, Queue
from maild.outbox import REFUSAL, Draft, enqueue
from maild.parse import ParsedMail
from maild.templates import Renderer

REFUSAL_TEMPLATE = "unknown_sender"

# Domains anyone can sign up at: an account named after them would lump strangers together.
PUBLIC_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "yahoo.com",
    "ymail.com", "icloud.com", "me.com", "mac.com", "aol.com", "gmx.de", "gmx.net", "gmx.com", "web.de",
    "proton.me", "protonmail.com", "mail.com", "yandex.ru", "yandex.com", "zoho.com", "fastmail.com",
    "t-online.de", "orange.fr", "free.fr", "qq.com", "163.com",
})


def is_known(session: Session, email: str | None) -> bool:
    return bool(email) and session.scalar(select(Contact.id).where(Contact.email == email)) is not None


def account_for_domain(session: Session, domain: str | None, now: datetime) -> Account | None:
    """The account for a company domain, created on first sight; None for public mail domains."""
    if not domain or domain in PUBLIC_MAIL_DOMAINS:
        return None
    account = session.scalar(select(Account).where(Account.domain == domain).order_by(Account.id).limit(1))
    if account is None:
        account = Account(name=domain, domain=domain, created_at=now)
        session.add(account)
        session.flush()
    return account


def refusal(session: Session, renderer: Renderer, queue: Queue, mail: ParsedMail, to_addr: str, *,
            message_id_domain: str | None, now: datetime, template: str = REFUSAL_TEMPLATE,
            case: Case | None = None, reply_to: str | None = None) -> str:
    """Queue a templated automatic answer: to a refused sender (no case: the row stands
    alone), or to a reply on a case that stays closed (``case``). Its Message-ID."""
    rendered = renderer.render(template, {"queue": queue, "mail": mail, "now": now, "case": case})
    draft = Draft(
        kind=REFUSAL, from_name=queue.display_name, from_addr=queue.address,
        to_name=mail.sender.name if mail.sender else "", to_addr=to_addr,
        subject=rendered.subject or f"Re: {mail.subject}", text=rendered.text, html=rendered.html,
        reply_to=reply_to or queue.address, in_reply_to=mail.message_id,
        references=tuple(mail.references) + ((mail.message_id,) if mail.message_id else ()), auto_submitted=True,
    )
    return enqueue(session, draft, now=now, case_id=case.id if case else None, domain=message_id_domain)
