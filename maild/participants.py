"""Who may add to a case by mail: its customer, contacts of the customer's account and
anyone writing from that account's company domain (colleagues), any address already on the
case's mail (From, To, Cc), and agents. (Anyone answering a message of the case joins it
too: maild.cases decides that from how the message threaded.)

Someone else who carries a case's key (or answers one of its messages) is not appended
silently: depending on ``[cases] unknown_participant`` the message is quarantined for
review or opens a new case linked to the old one. Senders are judged by their address,
never by the display name (``"support@company.test" <evil@attacker.test>`` is evil@).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from maild.db import get_unflushed, pending
from maild.models import Account, Activity, Case, Contact


def is_participant(session: Session, case_id: int, email: str | None,
                   public_domains: Collection[str] = ()) -> bool:
    """``public_domains``: mail providers whose domain says nothing about the company."""
    if not email:
        return False
    email = email.strip().lower()
    # Nothing here flushes intake's batch: the case, and the mail on it, may be pending (db.pending).
    case = get_unflushed(session, Case, case_id)
    if case is None:
        return False
    with session.no_autoflush:
        contact = case.contact
        if contact is not None and contact.email == email:
            return True
        if case.account_id is not None and _colleague(session, case.account_id, email, public_domains):
            return True
        pattern = f"%{email}%"  # the address lists are stored as text, "a@x, b@y"
        if session.scalar(
            select(Activity.id).where(Activity.case_id == case_id,
                                      or_(Activity.from_addr == email, Activity.to_addrs.ilike(pattern),
                                          Activity.cc_addrs.ilike(pattern))).limit(1)
        ) is not None:
            return True
    return any(_on(row, email) for row in pending(session, Activity) if row.case_id == case_id)


def _colleague(session: Session, account_id: int, email: str, public_domains: Collection[str]) -> bool:
    """A contact of the account, or someone new at its company domain (as a new contact
    there would join it, maild.senders)."""
    # Contacts and accounts are written when they are made, never left pending (cases._contact_for).
    if session.scalar(select(Contact.id).where(Contact.email == email, Contact.account_id == account_id)) is not None:
        return True
    domain = email.rpartition("@")[2]
    return bool(domain) and domain not in public_domains and session.scalar(
        select(Account.id).where(Account.id == account_id, Account.domain == domain)) is not None


def _on(activity: Activity, email: str) -> bool:
    """Is ``email`` on this mail (From, To or Cc)? As the query above, which ignores case in the lists."""
    return activity.from_addr == email or any(email in (addrs or "").lower()
                                              for addrs in (activity.to_addrs, activity.cc_addrs))
