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

from maild.db import get_unflushed, pending
from maild.models import Activity, Case, Contact


def is_participant(session: Session, case_id: int, email: str | None) -> bool:
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
        if case.account_id is not None and session.scalar(
                select(Contact.id).where(Contact.email == email, Contact.account_id == case.account_id)) is not None:
            return True  # contacts are written when they are made, never left pending (cases._contact_for)
        pattern = f"%{email}%"  # the address lists are stored as text, "a@x, b@y"
        if session.scalar(
            select(Activity.id).where(Activity.case_id == case_id,
                                      or_(Activity.from_addr == email, Activity.to_addrs.ilike(pattern),
                                          Activity.cc_addrs.ilike(pattern))).limit(1)
        ) is not None:
            return True
    return any(_on(row, email) for row in pending(session, Activity) if row.case_id == case_id)


def _on(activity: Activity, email: str) -> bool:
    """Is ``email`` on this mail (From, To or Cc)? As the query above, which ignores case in the lists."""
    return activity.from_addr == email or any(email in (addrs or "").lower()
                                              for addrs in (activity.to_addrs, activity.cc_addrs))
