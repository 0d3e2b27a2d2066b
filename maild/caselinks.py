"""Cases in relation to each other: parent/child links, merging a duplicate into another case,
and reopening. Each change is one transaction with its audit events.

A merge moves the source's activities (with their attachments and Message-IDs, so replies
thread straight onto the target), its outgoing mail records and its children to the
target, gives back what it drew from an entitlement, stops its SLA clocks, and leaves it
Cancelled/Merged pointing at the target: mail that still carries the source's key is
threaded onto the target (``StoreLookup`` follows ``merged_into``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from maild import entitlements, sla
from maild.cases import IntakeContext, audit
from maild.casework import NotAllowed, check_transition, locked_case
from maild.db import transaction
from maild.models import ACTIVE, CANCELLED, RESOLVED, Activity, Case, OutboundMessage


def link(factory: sessionmaker[Session], reference: str, parent_ref: str, *, actor: str, now: datetime) -> str:
    """Make ``reference`` a child of ``parent_ref``; the child keeps its own customer and thread."""
    with transaction(factory) as session:
        child, parent = locked_case(session, reference), locked_case(session, parent_ref)
        if child.id == parent.id:
            raise NotAllowed("a case cannot be its own parent")
        ancestor: Case | None = parent
        while ancestor is not None:  # a cycle would make cascades loop forever
            if ancestor.id == child.id:
                raise NotAllowed(f"{parent.reference} is already below {child.reference}: that would be a cycle")
            ancestor = session.get(Case, ancestor.parent_id) if ancestor.parent_id else None
        before = session.get(Case, child.parent_id).reference if child.parent_id else None  # type: ignore[union-attr]
        child.parent_id, child.updated_at = parent.id, now
        audit(session, child.id, actor, "parent_linked", now, parent=parent.reference, previous_parent=before)
        audit(session, parent.id, actor, "child_linked", now, child=child.reference)
        return f"{child.reference} is now a child of {parent.reference}"


def merge(factory: sessionmaker[Session], source_ref: str, target_ref: str, *, actor: str, now: datetime) -> str:
    with transaction(factory) as session:
        source, target = locked_case(session, source_ref), locked_case(session, target_ref)
        if source.id == target.id:
            raise NotAllowed("a case cannot be merged into itself")
        if source.status != ACTIVE or target.status == CANCELLED:
            raise NotAllowed(f"merge an active case into an active or resolved one ({source.reference} is "
                             f"{source.status}, {target.reference} is {target.status})")
        moved = session.execute(update(Activity).where(Activity.case_id == source.id).values(case_id=target.id))
        session.execute(update(OutboundMessage).where(OutboundMessage.case_id == source.id).values(case_id=target.id))
        session.execute(update(Case).where(Case.parent_id == source.id).values(parent_id=target.id))
        entitlements.on_cancel(session, source, now, actor)
        sla.cancel(session, source.id, now, f"merged into {target.reference}")
        source.status, source.status_reason = CANCELLED, "Merged"
        source.merged_into_id, source.updated_at, target.updated_at = target.id, now, now
        if target.status == RESOLVED:  # new information on a closed case: the team should see it
            target.status, target.status_reason, target.resolved_at = ACTIVE, "In Progress", None
        count = int(moved.rowcount)  # type: ignore[attr-defined]
        customer = source.contact.email if source.contact else None
        audit(session, source.id, actor, "merged", now, into=target.reference, activities=count)
        audit(session, target.id, actor, "merged_in", now, source=source.reference, activities=count,
              customer=customer)
        return f"{source.reference} merged into {target.reference} ({count} activities moved)"


def reopen(session: Session, ctx: IntakeContext, case: Case, *, reason: str, actor: str, now: datetime) -> str:
    """Make a resolved or cancelled case active again (not a merged one: its mail lives on elsewhere)."""
    if case.status == ACTIVE:
        raise NotAllowed(f"case {case.reference} is already active")
    if case.merged_into_id is not None:
        target = session.scalar(select(Case.reference).where(Case.id == case.merged_into_id))
        raise NotAllowed(f"case {case.reference} was merged into {target}; work on that case")
    check_transition(ctx, case, "In Progress")
    before = (case.status, case.status_reason)
    case.status, case.status_reason, case.resolved_at, case.updated_at = ACTIVE, "In Progress", None, now
    audit(session, case.id, actor, "reopened", now, previous_status=before[0], previous_reason=before[1],
          reason=reason)
    return f"{case.reference} reopened ({before[0]}, {before[1]} -> Active, In Progress)"
