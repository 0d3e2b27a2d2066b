"""What an SLA warning or failure does to a case: notify, raise the priority, move the case.

Called by the SlaRunner inside its transaction, so the action, its audit event and the
clock's "fired" mark commit together (exactly once).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from maild.cases import IntakeContext, audit, notice
from maild.models import Case, Queue, SlaKpi
from maild.rules.slaspec import ActionSpec
from maild.sla import Act

PRIORITIES = ("low", "normal", "high", "urgent")


def act(ctx: IntakeContext) -> Act:
    """The SlaRunner's action callback, bound to the running templates and registry."""

    def run(session: Session, case: Case, row: SlaKpi, action: ActionSpec, stage: str, now: datetime) -> str:
        if action.raise_priority is not None:
            return _raise(session, case, action.raise_priority, row, now)
        if action.move_to_queue is not None:
            return _move(session, ctx, case, action.move_to_queue, row, now)
        return _notify(session, ctx, case, row, action, stage, now)

    return run


def _raise(session: Session, case: Case, priority: str, row: SlaKpi, now: datetime) -> str:
    if PRIORITIES.index(priority) <= PRIORITIES.index(case.priority):
        return f"priority already {case.priority}"
    before, case.priority = case.priority, priority
    audit(session, case.id, f"sla:{row.sla}", "priority_raised", now, before=before, after=priority, kpi=row.kpi)
    return f"priority {before} -> {priority}"


def _move(session: Session, ctx: IntakeContext, case: Case, queue: str, row: SlaKpi, now: datetime) -> str:
    target = ctx.registry.queue_ids.get(queue)
    if target is None or target == case.queue_id:
        return f"already in {queue}" if target else f"no queue {queue}"
    before = case.queue.name
    case.queue_id = target
    audit(session, case.id, f"sla:{row.sla}", "escalated", now, before=before, after=queue, kpi=row.kpi)
    return f"moved {before} -> {queue}"


def _notify(session: Session, ctx: IntakeContext, case: Case, row: SlaKpi, action: ActionSpec, stage: str,
            now: datetime) -> str:
    queue: Queue = case.queue
    if action.notify == "queue":
        recipients = ctx.config.queues[queue.name].notify if queue.name in ctx.config.queues else ()
        if not recipients:
            return f"notify queue: queue {queue.name} has no notify addresses"
    elif action.notify == "owner":
        if case.owner is None:
            return "notify owner: the case has no owner"
        recipients = (case.owner.email,)
    else:
        recipients = (action.notify or "",)
    for to_addr in recipients:
        notice(session, ctx, case, to_addr, action.template or f"sla_{stage}", {"kpi": row, "stage": stage},
               f"SLA {stage}: {case.title}", now)
        audit(session, case.id, f"sla:{row.sla}", f"sla_{stage}_notified", now, to=to_addr, kpi=row.kpi)
    return "; ".join(f"notified {a}" for a in recipients)
