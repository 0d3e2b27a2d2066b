"""An admin's or agent's changes to a case: pick, assign, move, resolve, cancel, status, priority.

Each change works on a locked case inside the caller's transaction and writes its audit
event there: the CLI runs one change per transaction (``change``); an agent's mail
commands run inside the intake transaction, together with the mail they came in.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild import agentnotices, csat, entitlements, knowledge, sla
from maild.cases import IntakeContext, audit
from maild.db import transaction
from maild.errors import MaildError, NotFound
from maild.models import ACTIVE, CANCELLED, PRIORITIES, RESOLVED, Case
from maild.rules.slaspec import parse_duration
from maild.statuses import transition_refusal


class NotAllowed(MaildError):
    """The change does not fit the case's state (owned by someone else, closed, a forbidden transition)."""


Change = Callable[[Session, Case], str]


def change(factory: sessionmaker[Session], reference: str, apply: Change) -> str:
    """Run one change on the locked case ``reference`` in its own transaction (the CLI's way in;
    mail commands run the same changes inside the intake transaction)."""
    with transaction(factory) as session:
        return apply(session, locked_case(session, reference))


def pick(session: Session, ctx: IntakeContext, case: Case, agent: str, *, actor: str, now: datetime) -> str:
    """``agent`` takes an unassigned case from its queue; returns what happened."""
    agent_id = agent_id_of(ctx, agent)
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


def assign(session: Session, ctx: IntakeContext, case: Case, *, agent: str | None, queue: str | None, actor: str,
           now: datetime) -> str:
    """Give a case to an agent, move it to a queue (back to that queue's unassigned pool), or both."""
    if agent is None and queue is None:
        raise MaildError("give --agent, --queue or both")
    agent_id = agent_id_of(ctx, agent) if agent else None
    if queue is not None and queue not in ctx.registry.queue_ids:
        raise NotFound(f"no queue {queue!r}; configured: {', '.join(sorted(ctx.registry.queue_ids))}")
    before = {"owner": case.owner.name if case.owner else None, "queue": case.queue.name}
    if queue is not None:
        case.queue_id = ctx.registry.queue_ids[queue]
    case.owner_id = agent_id
    case.updated_at = now
    session.flush()
    session.refresh(case)
    after = {"owner": agent, "queue": case.queue.name}
    audit(session, case.id, actor, "assigned", now, before=before, after=after)
    if agent is not None and agent != before["owner"]:
        agentnotices.assigned(session, ctx, case, agent, actor, now)
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


def resolution_reason(ctx: IntakeContext, resolution_type: str) -> str:
    """The configured Resolved status reason named (in any case) by ``resolution_type``."""
    reasons = ctx.config.cases.status_reasons.all()
    name = next((r for r in reasons[RESOLVED] if r.lower() == resolution_type.strip().lower()), None)
    if name is None:
        raise MaildError(f"{resolution_type!r} is not a Resolved status reason; choose from "
                         f"{', '.join(reasons[RESOLVED])}")
    return name


def active_reason(ctx: IntakeContext, reason: str) -> str:
    """The Active status reason named by ``reason``; "on-hold" names "On Hold"."""
    reasons = ctx.config.cases.status_reasons.all()
    wanted = reason.strip().lower().replace("-", " ").replace("_", " ")
    name = next((r for r in reasons[ACTIVE] if r.lower() == wanted), None)
    if name is None:
        raise MaildError(f"{reason!r} is not an Active status reason; choose from {', '.join(reasons[ACTIVE])} "
                         "(resolve or cancel with their own commands)")
    return name


def resolve(session: Session, ctx: IntakeContext, case: Case, *, resolution_type: str, narrative: str,
            minutes: int | None, actor: str, now: datetime) -> str:
    """Resolve an active case with a resolution type (a Resolved status reason) and narrative;
    its open children follow when ``[cases] resolve_children`` says so."""
    reason = resolution_reason(ctx, resolution_type)
    if not narrative.strip():
        raise MaildError("say how the case was resolved (the narrative is empty)")
    if case.status != ACTIVE:
        raise NotAllowed(f"case {case.reference} is already {case.status} ({case.status_reason})")
    check_transition(ctx, case, reason)
    from maild.processes import check_resolvable  # here: maild.processes builds on this module

    check_resolvable(session, ctx.config.processes, case)
    _resolve(session, ctx, case, reason, narrative.strip(), minutes, actor, now)
    children = list(session.scalars(select(Case).where(Case.parent_id == case.id, Case.status == ACTIVE)
                                    .with_for_update())) if ctx.config.cases.resolve_children else []
    for child in children:
        _resolve(session, ctx, child, reason, f"Resolved with its parent {case.reference}: {narrative.strip()}",
                 None, actor, now)
    also = f" (and {len(children)} child case(s): {', '.join(c.reference for c in children)})" if children else ""
    return f"{case.reference} resolved: {reason}{also}"


def _resolve(session: Session, ctx: IntakeContext, case: Case, reason: str, narrative: str, minutes: int | None,
             actor: str, now: datetime) -> None:
    before = case.status_reason
    case.status, case.status_reason, case.resolution_type = RESOLVED, reason, reason
    case.resolution, case.time_spent_minutes = narrative, minutes
    case.resolved_at = case.updated_at = now
    audit(session, case.id, actor, "resolved", now, previous_reason=before, resolution_type=reason,
          time_spent_minutes=minutes)
    entitlements.on_resolve(session, case, now, actor)
    sla.met(session, case.id, "resolve_by", now)
    sla.cancel(session, case.id, now, "resolved before a first response")
    csat.request(session, ctx, case, now)
    knowledge.on_resolve(session, case)


def cancel(session: Session, ctx: IntakeContext, case: Case, *, reason: str, actor: str, now: datetime) -> str:
    """Cancel an active case; whatever it drew from an entitlement is given back."""
    if case.status != ACTIVE:
        raise NotAllowed(f"case {case.reference} is {case.status}; only active cases can be cancelled")
    check_transition(ctx, case, "Cancelled")
    before = case.status_reason
    case.status, case.status_reason, case.updated_at = CANCELLED, "Cancelled", now
    audit(session, case.id, actor, "cancelled", now, previous_reason=before, reason=reason)
    entitlements.on_cancel(session, case, now, actor)
    sla.cancel(session, case.id, now, "case cancelled")
    return f"{case.reference} cancelled"


def set_reason(session: Session, ctx: IntakeContext, case: Case, reason: str, *, actor: str, now: datetime) -> str:
    """Change an active case's status reason (On Hold, Waiting for Details, ...); SLA clocks
    pause or resume as their SLA says."""
    name = active_reason(ctx, reason)
    if case.status != ACTIVE:
        raise NotAllowed(f"case {case.reference} is {case.status}")
    check_transition(ctx, case, name)
    before, case.status_reason, case.updated_at = case.status_reason, name, now
    audit(session, case.id, actor, "status_changed", now, previous_reason=before, status_reason=name)
    assert ctx.calendar is not None
    sla.status_changed(session, case.id, name, ctx.rules, ctx.calendar, now)
    return f"{case.reference}: {before} -> {name}"


def set_priority(session: Session, ctx: IntakeContext, case: Case, priority: str, *, actor: str,
                 now: datetime) -> str:
    wanted = priority.strip().lower()
    if wanted not in PRIORITIES:
        raise MaildError(f"{priority!r} is not a priority; choose from {', '.join(PRIORITIES)}")
    before, case.priority, case.updated_at = case.priority, wanted, now
    audit(session, case.id, actor, "priority_changed", now, previous=before, priority=wanted)
    return f"{case.reference}: priority {before} -> {wanted}"


def check_transition(ctx: IntakeContext, case: Case, target: str) -> None:
    """Refuse a change that ``[cases] transitions`` does not allow from the case's reason."""
    refusal = transition_refusal(ctx.config.cases.transitions, ctx.config.cases.status_reasons.all(),
                                 case.status_reason, target)
    if refusal is not None:
        raise NotAllowed(f"case {case.reference}: {refusal}")


def locked_case(session: Session, reference: str) -> Case:
    """The case named by ``reference``, locked for the change at hand; NotFound if there is none."""
    case = session.scalar(select(Case).where(Case.reference == reference.strip().upper()).with_for_update())
    if case is None:
        raise NotFound(f"no case {reference}")
    return case


def agent_id_of(ctx: IntakeContext, name: str) -> int:
    if name not in ctx.registry.agent_ids:
        raise NotFound(f"no agent {name!r}; agents: {', '.join(sorted(ctx.registry.agent_ids)) or 'none'}")
    return ctx.registry.agent_ids[name]
