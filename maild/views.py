"""Read-only views of cases, inbound messages and the outbox, as plain dicts for the CLI and JSON."""

from __future__ import annotations

from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import default
from typing import Any

from sqlalchemy import case as when_then, func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from maild import knowledge, subjects
from maild.errors import NotFound
from maild.inbound import header_message_id
from maild.config import Config, ProcessConfig
from maild.models import ACTIVE, Activity, AuditEvent, Case, InboundMessage, MailboxState, OutboundMessage, Queue
from maild.processes import current_stage


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def case_summary(case: Case) -> dict[str, Any]:
    return {
        "reference": case.reference,
        "title": case.title,
        "status": case.status,
        "status_reason": case.status_reason,
        "queue": case.queue.name,
        "customer_email": case.contact.email if case.contact else None,
        "customer_name": case.contact.name if case.contact else None,
        "priority": case.priority,
        "owner": case.owner.name if case.owner else None,
        "origin": case.origin,
        "created_at": _iso(case.created_at),
        "updated_at": _iso(case.updated_at),
    }


def queue_overview(session: Session, queue_names: list[str]) -> list[dict[str, Any]]:
    """Per configured queue: its active cases, those nobody owns, and those of high or urgent priority."""
    rows = {name: {"queue": name, "open": 0, "unassigned": 0, "high_priority": 0} for name in queue_names}
    query = (
        select(Queue.name, func.count(),
               func.sum(when_then((Case.owner_id.is_(None), 1), else_=0)),
               func.sum(when_then((Case.priority.in_(["high", "urgent"]), 1), else_=0)))
        .join(Case, Case.queue_id == Queue.id)
        .where(Case.status == ACTIVE)
        .group_by(Queue.name)
    )
    for name, total, unassigned, high in session.execute(query):
        if name in rows:
            rows[name].update(open=int(total), unassigned=int(unassigned or 0), high_priority=int(high or 0))
    return list(rows.values())


def list_cases(session: Session, *, queue: str | None = None, status: str | None = None,
               limit: int = 100, unassigned: bool = False) -> list[dict[str, Any]]:
    query = (
        select(Case)
        .options(joinedload(Case.queue), joinedload(Case.contact), joinedload(Case.owner))
        .order_by(Case.id.desc())
        .limit(limit)
    )
    if queue:
        query = query.join(Queue, Case.queue_id == Queue.id).where(Queue.name == queue)
    if unassigned:  # the queue's pool: active cases nobody has picked yet
        query = query.where(Case.owner_id.is_(None), Case.status == ACTIVE)
    if status:
        # Accept a status ("Active") or a status reason ("On Hold"), case-insensitively.
        query = query.where((Case.status.ilike(status)) | (Case.status_reason.ilike(status)))
    return [case_summary(c) for c in session.scalars(query).unique()]


def activity_view(activity: Activity) -> dict[str, Any]:
    return {
        "kind": activity.kind,
        "message_id": activity.message_id,
        "from": activity.from_addr,
        "to": activity.to_addrs,
        "cc": activity.cc_addrs,
        "subject": activity.subject,
        "created_at": _iso(activity.created_at),
        "sent_at": _iso(activity.sent_at),
        "text": activity.text_stripped if activity.text_stripped is not None else activity.text,
        "full_text": activity.text,
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256}
            for a in activity.attachments
        ],
        "rules": activity.rule_hits or [],
    }


def show_case(session: Session, reference: str, processes: tuple[ProcessConfig, ...] = ()) -> dict[str, Any]:
    """One case with its activities and audit trail; ``processes`` places it in its business process flow."""
    case = session.scalar(
        select(Case)
        .where(Case.reference == reference.upper())
        .options(selectinload(Case.activities).selectinload(Activity.attachments))
    )
    if case is None:
        raise NotFound(f"no case {reference}")
    view = case_summary(case)
    related = {c.id: c.reference for c in session.scalars(
        select(Case).where(Case.id.in_([i for i in (case.parent_id, case.previous_case_id, case.merged_into_id) if i]))
    )}
    view.update({
        "first_response_at": _iso(case.first_response_at),
        "resolved_at": _iso(case.resolved_at),
        "resolution_type": case.resolution_type,
        "resolution": case.resolution,
        "time_spent_minutes": case.time_spent_minutes,
        "parent": related.get(case.parent_id or 0),
        "children": list(session.scalars(select(Case.reference).where(Case.parent_id == case.id).order_by(Case.id))),
        "previous_case": related.get(case.previous_case_id or 0),
        "merged_into": related.get(case.merged_into_id or 0),
        "severity": case.severity,
        "origin": case.origin,
        "subject": subjects.path_of(session, case.subject_id),
        "case_type": case.case_type,
        **_flow(session, case, processes),
        "articles": knowledge.linked(session, case.id),
        # Why the case went where it went: the rules that matched when it was created.
        "rules": next((a.rule_hits for a in case.activities if a.rule_hits), []),
        "activities": [activity_view(a) for a in case.activities],
        "audit": [
            {"at": _iso(e.at), "actor": e.actor, "action": e.action, "details": e.details}
            for e in session.scalars(select(AuditEvent).where(AuditEvent.case_id == case.id).order_by(AuditEvent.id))
        ],
    })
    return view


def _flow(session: Session, case: Case, processes: tuple[ProcessConfig, ...]) -> dict[str, str | None]:
    at = current_stage(session, case, processes)
    return {"process": at.process.name if at else None, "stage": at.stage.name if at else None}


def inbound_summary(row: InboundMessage, queue: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "queue": queue,
        "state": row.state,
        "source": row.source,
        "message_id": row.message_id,
        "size": row.size,
        "attempts": row.attempts,
        "received_at": _iso(row.received_at),
        "outcome": row.outcome,
        "error": row.error,
    }


def list_inbound(session: Session, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(InboundMessage, Queue.name).join(Queue).order_by(InboundMessage.id.desc()).limit(limit)
    if state:
        query = query.where(InboundMessage.state == state)
    return [inbound_summary(row, q) for row, q in session.execute(query)]


def show_inbound(session: Session, inbound_id: int) -> tuple[dict[str, Any], bytes]:
    found = session.execute(
        select(InboundMessage, Queue.name).join(Queue).where(InboundMessage.id == inbound_id)
    ).first()
    if found is None:
        raise NotFound(f"no inbound message with id {inbound_id}")
    row, queue = found
    view = inbound_summary(row, queue)
    headers = BytesHeaderParser(policy=default).parsebytes(row.raw)
    view.update({
        "from": str(headers.get("From", "")),
        "to": str(headers.get("To", "")),
        "subject": str(headers.get("Subject", "")),
        "envelope_from": row.envelope_from,
        "sha256": row.sha256,
        "processed_at": _iso(row.processed_at),
        "case": session.scalar(select(Case.reference).where(Case.id == row.case_id)) if row.case_id else None,
    })
    if row.collides_with is not None:
        # Stored without its Message-ID (the stored message holds that key): the header's.
        view["message_id"] = header_message_id(row.raw)
        view["collision"] = f"Message-ID collides with inbound {row.collides_with}: kept as a message of its own"
    return view, row.raw


def list_outbox(session: Session, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(OutboundMessage, Case.reference).outerjoin(Case).order_by(OutboundMessage.id.desc()).limit(limit)
    if state:
        query = query.where(OutboundMessage.state == state)
    return [
        {
            "id": row.id,
            "kind": row.kind,
            "case": ref,
            "recipient": row.recipient,
            "state": row.state,
            "attempts": row.attempts,
            "message_id": row.message_id,
            "created_at": _iso(row.created_at),
            "next_attempt_at": _iso(row.next_attempt_at) if row.state == "pending" else None,
            "sent_at": _iso(row.sent_at),
            "last_error": row.last_error,
        }
        for row, ref in session.execute(query)
    ]


def list_mailboxes(session: Session, config: Config) -> list[dict[str, Any]]:
    """Each configured IMAP mailbox with its polling state (never polled yet: empty fields)."""
    states = {
        name: (state, unacked)
        for name, state, unacked in session.execute(
            select(Queue.name, MailboxState, select(func.count()).where(
                InboundMessage.queue_id == Queue.id, InboundMessage.source_acked.is_(False)
            ).scalar_subquery()).join(MailboxState, MailboxState.queue_id == Queue.id)
        )
    }
    rows = []
    for name, queue in config.queues.items():
        if queue.imap is None:
            continue
        state, unacked = states.get(name, (None, 0))
        rows.append({
            "queue": name,
            "mailbox": f"{queue.imap.user}@{queue.imap.host}:{queue.imap.effective_port}/{queue.imap.folder}",
            "status": "never polled" if state is None or state.last_poll_at is None
            else ("failing" if state.failing else "ok"),
            "last_success": _iso(state.last_success_at) if state else None,
            "backlog": state.backlog + unacked if state else None,
            "last_error": state.last_error if state else None,
            "last_error_at": _iso(state.last_error_at) if state else None,
            "uidvalidity": state.uidvalidity if state else None,
            "last_uid": state.last_uid if state else None,
            "owner": state.owner if state else None,
        })
    return rows
