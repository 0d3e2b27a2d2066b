"""Who may add to a case by mail: its customer, contacts of the customer's account, any
address already on the case's mail (From, To, Cc), and agents.

Someone else who carries a case's key (or answers one of its messages) is not appended
silently: depending on ``[cases] unknown_participant`` the message is quarantined for
review or opens a new case linked to the old one. Senders are judged by their address,
never by the display name (``"support@company.test" <evil@attacker.test>`` is evil@).
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from maild.models import Activity, Case, Contact


def is_participant(session: Session, case_id: int, email: str | None) -> bool:
    if not email:
        return False
    email = email.strip().lower()
    case = session.get(Case, case_id)
    if case is None:
        return False
    contact = session.get(Contact, case.contact_id) if case.contact_id else None
    if contact is not None and contact.email == email:
        return True
    if case.account_id is not None and session.scalar(
            select(Contact.id).where(Contact.email == email, Contact.account_id == case.account_id)) is not None:
        return True
    pattern = f"%{email}%"  # the address lists are stored as text, "a@x, b@y"
    return session.scalar(
        select(Activity.id).where(Activity.case_id == case_id,
                                  or_(Activity.from_addr == email, Activity.to_addrs.ilike(pattern),
                                      Activity.cc_addrs.ilike(pattern))).limit(1)
    ) is not None
