"""What an SLA warning or failure does to a case: notify, raise the priority, move the case.

Called by the SlaRunner inside its transaction, so the action, its audit event and the
clock's "fired" mark commit together (exactly once).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from maild.cases import IntakeContext, audit
from maild.models import Case, Queue, SlaKpi
from maild.outbox import NOTICE, Draft, compose, new_message_id, outbox_row
from maild.refkeys import tag_subject
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
        watchers = ctx.config.queues[queue.name].notify if queue.name in ctx.config.queues else ()
        if not watchers:
            return f"notify queue: queue {queue.name} has no notify addresses"
        return "; ".join(_send(session, ctx, case, queue, row, action, stage, a, now) for a in watchers)
    to_addr = (case.owner.email if case.owner else None) if action.notify == "owner" else action.notify
    if not to_addr:
        return "notify owner: the case has no owner"
    return _send(session, ctx, case, queue, row, action, stage, to_addr, now)


def _send(session: Session, ctx: IntakeContext, case: Case, queue: Queue, row: SlaKpi, action: ActionSpec,
          stage: str, to_addr: str, now: datetime) -> str:
    template = action.template or f"sla_{stage}"
    rendered = ctx.renderer.render(template, {"case": case, "queue": queue, "kpi": row, "stage": stage, "now": now})
    draft = Draft(kind=NOTICE, from_name=queue.display_name, from_addr=queue.address, to_name="", to_addr=to_addr,
                  subject=tag_subject(rendered.subject or f"SLA {stage}: {case.title}", case.reference),
                  text=rendered.text, html=rendered.html, reply_to=ctx.reply_address(queue, case), auto_submitted=True)
    message_id = new_message_id(ctx.config.outgoing.message_id_domain or queue.address.rpartition("@")[2])
    session.add(outbox_row(draft, compose(draft, message_id, now).as_bytes(), message_id=message_id, now=now,
                           case_id=case.id, activity=None))
    audit(session, case.id, f"sla:{row.sla}", f"sla_{stage}_notified", now, to=to_addr, kpi=row.kpi)
    return f"notified {to_addr}"
