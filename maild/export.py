"""``maild export cases``: every case with its activities' metadata, streamed as JSON Lines or CSV.

Cases are read a page at a time (``yield_per``, a server-side cursor on PostgreSQL) and
written as they are read, so an export of any size runs in constant memory. JSON Lines
(one case per line, its activities nested) rather than one array: a consumer can start
on the first case before the last is written and never has to parse the whole file at
once. CSV has one row per activity with the case's columns repeated (a case without
activities gets one row), the shape spreadsheets and ``GROUP BY`` want. Mail bodies are
left out unless asked for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, defer, joinedload, selectinload

from maild.errors import NotFound
from maild.models import (AUTO_REPLY, BOUNCE, INCOMING_EMAIL, NOTE, OUTGOING_EMAIL, Activity, Case, Contact, InboundMessage,
                          OutboundMessage, Queue)

CASE_FIELDS = ("reference", "title", "queue", "status", "status_reason", "priority", "severity", "origin",
               "case_type", "customer_email", "customer_name", "account", "owner", "created_at", "updated_at",
               "first_response_at", "resolved_at", "resolution_type")
ACTIVITY_FIELDS = ("kind", "direction", "from", "from_name", "to", "cc", "date", "sent_at", "message_id",
                   "in_reply_to", "subject", "size", "attachments")
BODY_FIELDS = ("text", "html")
DIRECTIONS = {INCOMING_EMAIL: "in", OUTGOING_EMAIL: "out", NOTE: "internal", AUTO_REPLY: "in", BOUNCE: "in"}
PAGE = 100


def cases(session: Session, *, since: datetime | None = None, until: datetime | None = None,
          queue: str | None = None, bodies: bool = False, page: int = PAGE) -> Iterator[dict[str, Any]]:
    """Each matching case (created in [since, until), in ``queue``) as a dict, oldest first."""
    query = _query(session, since, until, queue, bodies)
    for chunk in session.scalars(query.execution_options(yield_per=page)).partitions():
        sizes = _sizes(session, [a for case in chunk for a in case.activities])
        records = [_record(case, sizes, bodies) for case in chunk]
        session.expunge_all()  # the page is written: let its objects go
        yield from records


def _query(session: Session, since: datetime | None, until: datetime | None, queue: str | None,
           bodies: bool) -> Select[Case]:
    activities = selectinload(Case.activities)
    if not bodies:
        activities = activities.options(defer(Activity.text), defer(Activity.text_stripped), defer(Activity.html))
    query = select(Case).options(
        joinedload(Case.queue), joinedload(Case.contact).joinedload(Contact.account), joinedload(Case.owner),
        activities.selectinload(Activity.attachments),
    ).order_by(Case.id)
    if queue is not None:
        queue_id = session.scalar(select(Queue.id).where(Queue.name == queue))
        if queue_id is None:
            raise NotFound(f"no queue {queue!r} in the database")
        query = query.where(Case.queue_id == queue_id)
    if since is not None:
        query = query.where(Case.created_at >= since)
    if until is not None:
        query = query.where(Case.created_at < until)
    return query


def _sizes(session: Session, activities: list[Activity]) -> dict[int, int]:
    """Activity id -> size in bytes of the message as sent (outbox) or else as received."""
    if not activities:
        return {}
    inbound_ids = {a.inbound_id for a in activities if a.inbound_id is not None}
    received: dict[int, int] = {i: size for i, size in session.execute(
        select(InboundMessage.id, InboundMessage.size).where(InboundMessage.id.in_(inbound_ids)))}
    sizes = {a.id: received[a.inbound_id] for a in activities if a.inbound_id in received}
    for activity_id, size in session.execute(select(OutboundMessage.activity_id, func.length(OutboundMessage.raw))
                                             .where(OutboundMessage.activity_id.in_([a.id for a in activities]))):
        if activity_id is not None:
            sizes[activity_id] = int(size)
    return sizes


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _record(case: Case, sizes: dict[int, int], bodies: bool) -> dict[str, Any]:
    contact = case.contact
    record: dict[str, Any] = {
        "reference": case.reference, "title": case.title, "queue": case.queue.name, "status": case.status,
        "status_reason": case.status_reason, "priority": case.priority, "severity": case.severity,
        "origin": case.origin, "case_type": case.case_type,
        "customer_email": contact.email if contact else None, "customer_name": contact.name if contact else None,
        "account": contact.account.name if contact and contact.account else None,
        "owner": case.owner.name if case.owner else None,
        "created_at": _iso(case.created_at), "updated_at": _iso(case.updated_at),
        "first_response_at": _iso(case.first_response_at), "resolved_at": _iso(case.resolved_at),
        "resolution_type": case.resolution_type,
    }
    record["activities"] = [_activity(a, sizes.get(a.id), bodies) for a in case.activities]
    return record


def _activity(a: Activity, size: int | None, bodies: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "kind": a.kind, "direction": DIRECTIONS.get(a.kind), "from": a.from_addr, "from_name": a.from_name,
        "to": a.to_addrs, "cc": a.cc_addrs, "date": _iso(a.created_at), "sent_at": _iso(a.sent_at),
        "message_id": a.message_id, "in_reply_to": a.in_reply_to, "subject": a.subject, "size": size,
        "attachments": [{"filename": f.filename, "content_type": f.content_type, "size": f.size}
                        for f in a.attachments],
    }
    if bodies:
        view.update(text=a.text, html=a.html)
    return view


def write_jsonl(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """One case per line; returns how many were written."""
    count = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def write_csv(records: Iterable[dict[str, Any]], out: TextIO, bodies: bool = False) -> int:
    """One row per activity, the case's columns repeated; returns how many cases were written."""
    activity_columns = [f"activity_{f}" for f in ACTIVITY_FIELDS + (BODY_FIELDS if bodies else ())]
    writer = csv.DictWriter(out, fieldnames=[*CASE_FIELDS, *activity_columns])
    writer.writeheader()
    count = 0
    for record in records:
        case = {f: record[f] for f in CASE_FIELDS}
        for activity in record["activities"] or [None]:
            writer.writerow({**case, **(_flat(activity) if activity else {})})
        count += 1
    return count


def _flat(activity: dict[str, Any]) -> dict[str, Any]:
    flat = {f"activity_{k}": v for k, v in activity.items() if k != "attachments"}
    flat["activity_attachments"] = "; ".join(a["filename"] for a in activity["attachments"])
    return flat
