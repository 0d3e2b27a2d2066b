"""Who may open a case: each queue's policy for senders the customer records do not know yet.

``create_with_account`` (the default) makes a contact and files it under the account for
the sender's company domain, so colleagues writing from the same company are people of the
same customer (never for public mail providers, ``[cases] public_mail_domains``, where a
domain says nothing about the company); ``create`` makes a contact without an account;
``refuse`` opens no case, keeps the message marked ``refused``, and answers with the
``unknown_sender`` template.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from maild.config import PUBLIC_MAIL_DOMAINS
from maild.models import Account, Case, Contact, Queue
from maild.outbox import REFUSAL, Draft, enqueue
from maild.parse import ParsedMail
from maild.templates import Renderer

REFUSAL_TEMPLATE = "unknown_sender"


def is_known(session: Session, email: str | None) -> bool:
    return bool(email) and session.scalar(select(Contact.id).where(Contact.email == email)) is not None


def account_for_domain(session: Session, domain: str | None, now: datetime,
                       public: Collection[str] = PUBLIC_MAIL_DOMAINS,
                       known: dict[str, int | None] | None = None) -> int | None:
    """The id of the account for a company domain, created on first sight; None for public
    mail domains. ``known``: what ``accounts_by_domain`` found for the batch, kept up to date
    here (a lookup per new customer was a sixth of intake's statements).

    Without flushing: intake writes a batch's rows once, at its end (maild.processing), and
    an ORM add here would write the whole batch so far."""
    if not domain or domain in public:
        return None
    found = known[domain] if known is not None and domain in known else accounts_by_domain(session, {domain})[domain]
    if found is None:
        with session.no_autoflush:
            found = session.scalar(insert(Account).values(name=domain, domain=domain, created_at=now)
                                   .returning(Account.id))
    if known is not None:
        known[domain] = found
    return found


def accounts_by_domain(session: Session, domains: Collection[str]) -> dict[str, int | None]:
    """The account for each of ``domains`` (None: none yet), in one query; the oldest wins
    where an admin's import made two for one domain."""
    found: dict[str, int | None] = dict.fromkeys(domains)
    if domains:
        with session.no_autoflush:
            rows = session.execute(select(Account.domain, func.min(Account.id)).where(Account.domain.in_(domains))
                                   .group_by(Account.domain))
            found.update({domain: account_id for domain, account_id in rows if domain})
    return found


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
