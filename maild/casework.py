"""An admin's or agent's changes to a case from the command line: pick, assign, move, resolve.

Each change is one transaction with its audit event, like every write to a case.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild import entitlements, sla
from maild.businesshours import BusinessCalendar
from maild.cases import audit
from maild.db import transaction
from maild.errors import MaildError, NotFound
from maild.models import ACTIVE, CANCELLED, RESOLVED, Case
from maild.statuses import status_of
from maild.registry import Registry
from maild.rules import RuleSet
from maild.rules.slaspec import parse_duration


class NotAllowed(MaildError):
    """The change does not fit the case's state (owned by someone else, closed)."""


def pick(factory: sessionmaker[Session], registry: Registry, reference: str, agent: str, *, actor: str,
         now: datetime) -> str:
    """``agent`` takes an unassigned case from its queue; returns what happened."""
    agent_id = _agent_id(registry, agent)
    with transaction(factory) as session:
        case = locked_case(session, reference)
        if case.status != ACTIVE:
            raise NotAllowed(f"case {case.reference} is {case.status}; only active cases can be picked")
        if case.owner_id == agent_id:
            return f"{case.reference} is already owned by {agent}"
        if case.owner_id is not None:
            raise NotAllowed(f"case {case.reference} is owned by {case.owner.name if case.owner else case.owner_id}; "
                             "use `maild cases assign` to reassign it")
        case.owner_id, case.updated_at = agent_id, now
        audit(session, case.id, actor, "picked", now, owner=agent, queue=case.queue.name)
        return f"{case.reference} picked by {agent} from queue {case.queue.name}"


def assign(factory: sessionmaker[Session], registry: Registry, reference: str, *, agent: str | None,
           queue: str | None, actor: str, now: datetime) -> str:
    """Give a case to an agent, move it to a queue (back to that queue's unassigned pool), or both."""
    if agent is None and queue is None:
        raise MaildError("give --agent, --queue or both")
    agent_id = _agent_id(registry, agent) if agent else None
    if queue is not None and queue not in registry.queue_ids:
        raise NotFound(f"no queue {queue!r}; configured: {', '.join(sorted(registry.queue_ids))}")
    with transaction(factory) as session:
        case = locked_case(session, reference)
        before = {"owner": case.owner.name if case.owner else None, "queue": case.queue.name}
        if queue is not None:
            case.queue_id = registry.queue_ids[queue]
        case.owner_id = agent_id
        case.updated_at = now
        session.flush()
        session.refresh(case)
        after = {"owner": agent, "queue": case.queue.name}
        audit(session, case.id, actor, "assigned", now, before=before, after=after)
        return f"{case.reference}: queue {after['queue']}, owner {agent or '(none: the queue picks it up)'}"


def parse_time_spent(text: str) -> int:
    """``1h30m``, ``2h``, ``45m`` (the SLA duration grammar) or plain minutes (``90``) -> minutes."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    try:
        return int(parse_duration(text).total_seconds()) // 60
    except ValueError:
        raise MaildError(f"--time-spent: expected a duration like 1h30m, 2h, 45m or 90, got {text!r}") from None


def resolve(factory: sessionmaker[Session], reasons: dict[str, tuple[str, ...]], reference: str, *,
            resolution_type: str, narrative: str, minutes: int | None, actor: str, now: datetime,
            cascade: bool = False) -> str:
    """Resolve an active case with a resolution type (a Resolved status reason) and narrative."""
    if status_of(resolution_type, reasons) != RESOLVED:
        raise MaildError(f"--type: {resolution_type!r} is not a Resolved status reason; "
                         f"choose from {', '.join(reasons[RESOLVED])}")
    reason = next(r for r in reasons[RESOLVED] if r.lower() == resolution_type.lower())
    if not narrative.strip():
        raise MaildError("--narrative: say how the case was resolved")
    with transaction(factory) as session:
        case = locked_case(session, reference)
        if case.status != ACTIVE:
            raise NotAllowed(f"case {case.reference} is already {case.status} ({case.status_reason})")
        _resolve(session, case, reason, narrative.strip(), minutes, actor, now)
        children = [c for c in session.scalars(select(Case).where(Case.parent_id == case.id, Case.status == ACTIVE)
                                               .with_for_update())] if cascade else []
        for child in children:
            _resolve(session, child, reason, f"Resolved with its parent {case.reference}: {narrative.strip()}", None,
                     actor, now)
        also = f" (and {len(children)} child case(s): {', '.join(c.reference for c in children)})" if children else ""
        return f"{case.reference} resolved: {reason}{also}"


def _resolve(session: Session, case: Case, reason: str, narrative: str, minutes: int | None, actor: str,
             now: datetime) -> None:
    before = case.status_reason
    case.status, case.status_reason, case.resolution_type = RESOLVED, reason, reason
    case.resolution, case.time_spent_minutes = narrative, minutes
    case.resolved_at = case.updated_at = now
    audit(session, case.id, actor, "resolved", now, previous_reason=before, resolution_type=reason,
          time_spent_minutes=minutes)
    entitlements.on_resolve(session, case, now, actor)
    sla.met(session, case.id, "resolve_by", now)
    sla.cancel(session, case.id, now, "resolved before a first response")


def cancel(factory: sessionmaker[Session], reference: str, *, reason: str, actor: str, now: datetime) -> str:
    """Cancel an active case; whatever it drew from an entitlement is given back."""
    with transaction(factory) as session:
        case = locked_case(session, reference)
        if case.status != ACTIVE:
            raise NotAllowed(f"case {case.reference} is {case.status}; only active cases can be cancelled")
        before = case.status_reason
        case.status, case.status_reason, case.updated_at = CANCELLED, "Cancelled", now
        audit(session, case.id, actor, "cancelled", now, previous_reason=before, reason=reason)
        entitlements.on_cancel(session, case, now, actor)
        sla.cancel(session, case.id, now, "case cancelled")
        return f"{case.reference} cancelled"


def set_reason(factory: sessionmaker[Session], reasons: dict[str, tuple[str, ...]], reference: str, reason: str, *,
               rules: RuleSet, calendar: BusinessCalendar, actor: str, now: datetime) -> str:
    """Change an active case's status reason (On Hold, Waiting for Details, ...); SLA clocks
    pause or resume as their SLA says."""
    name = next((r for r in reasons[ACTIVE] if r.lower() == reason.strip().lower()), None)
    if name is None:
        raise MaildError(f"--reason: {reason!r} is not an Active status reason; choose from "
                         f"{', '.join(reasons[ACTIVE])} (resolve or cancel with their own commands)")
    with transaction(factory) as session:
        case = locked_case(session, reference)
        if case.status != ACTIVE:
            raise NotAllowed(f"case {case.reference} is {case.status}")
        before, case.status_reason, case.updated_at = case.status_reason, name, now
        audit(session, case.id, actor, "status_changed", now, previous_reason=before, status_reason=name)
        sla.status_changed(session, case.id, name, rules, calendar, now)
        return f"{case.reference}: {before} -> {name}"


def locked_case(session: Session, reference: str) -> Case:
    """The case named by ``reference``, locked for the change at hand; NotFound if there is none."""
    case = session.scalar(select(Case).where(Case.reference == reference.strip().upper()).with_for_update())
    if case is None:
        raise NotFound(f"no case {reference}")
    return case


def _agent_id(registry: Registry, name: str) -> int:
    if name not in registry.agent_ids:
        raise NotFound(f"no agent {name!r}; agents: {', '.join(sorted(registry.agent_ids)) or 'none'}")
    return registry.agent_ids[name]
