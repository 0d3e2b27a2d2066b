"""Run stored inbound history through a rule set, with nothing written: what would change?

``maild rules replay`` compares what each stored message did (its recorded outcome and the
queue of the case it opened) with what the current or a candidate rule set would do now.
It uses the same parse, threading and planning as intake, only reading.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from maild.cases import IntakeContext, find_thread, plan
from maild.errors import MaildError, ParseError
from maild.models import PROCESSED, QUARANTINED, AuditEvent, Case, InboundMessage
from maild.parse import parse
from maild.rules import RuleSet
from maild.ruling import NEW_CASE_ACTIONS, new_case_fields

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_LABELS = {"append": "added to a case", "reopen": "added to a case", "agent_reply": "agent reply",
           "quarantine": "quarantined", "ignore": "ignored", "refuse": "refused",
           "unverified_note": "unverified note"}
_RECORDED = {"unverified_note": "unverified note", "threaded": "added to a case", "reopened": "added to a case", "relayed": "agent reply",
             "ignored": "ignored", "refused": "refused"}


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d``, ``2w``."""
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise MaildError(f"--since: expected a duration like 30m, 24h, 7d or 2w, got {text!r}")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


@dataclass(frozen=True)
class Change:
    inbound_id: int
    received_at: str
    sender: str | None
    subject: str
    before: str
    after: str
    rule: str | None


@dataclass
class ReplayReport:
    messages: int = 0
    before: Counter[str] = field(default_factory=Counter)  # new cases per queue
    after: Counter[str] = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        queues = sorted(set(self.before) | set(self.after))
        return {"messages": self.messages,
                "queues": [{"queue": q, "before": self.before[q], "after": self.after[q]} for q in queues],
                "changes": [c.__dict__ for c in self.changes]}


def replay(session: Session, ctx: IntakeContext, candidate: RuleSet, *, since: datetime, now: datetime,
           progress: Callable[[int], None] = lambda n: None) -> ReplayReport:
    report = ReplayReport()
    trial = replace(ctx, rules=candidate)
    rows = session.scalars(
        select(InboundMessage).where(InboundMessage.received_at >= since,
                                     InboundMessage.state.in_([PROCESSED, QUARANTINED]),
                                     (InboundMessage.outcome.is_(None)) | (InboundMessage.outcome != "duplicate"))
        .order_by(InboundMessage.id).options(selectinload(InboundMessage.content)).execution_options(yield_per=200)
    )
    for row in rows:
        before = _before(session, row)
        after, rule, sender, subject = _after(session, trial, row, now)
        report.messages += 1
        for counter, label in ((report.before, before), (report.after, after)):
            if label.startswith("new case in "):
                counter[label.removeprefix("new case in ")] += 1
        if before != after:
            report.changes.append(Change(row.id, row.received_at.isoformat(), sender, subject, before, after, rule))
        progress(1)
    return report


def _before(session: Session, row: InboundMessage) -> str:
    if row.state == QUARANTINED:
        return "quarantined"
    if row.outcome in ("created", "follow_up") and row.case_id is not None:
        return f"new case in {_created_queue(session, row.case_id)}"
    return _RECORDED.get(row.outcome or "", row.outcome or "processed")


def _created_queue(session: Session, case_id: int) -> str:
    # The queue the case was created in (an admin may have moved it since).
    details = session.scalar(select(AuditEvent.details).where(AuditEvent.case_id == case_id,
                                                              AuditEvent.action == "created").limit(1))
    if isinstance(details, dict) and details.get("queue"):
        return str(details["queue"])
    case = session.get(Case, case_id)
    return case.queue.name if case else "?"


def _after(session: Session, ctx: IntakeContext, row: InboundMessage, now: datetime) -> tuple[str, str | None,
                                                                                             str | None, str]:
    try:
        mail = parse(row.raw)
    except ParseError as exc:
        return f"quarantined (cannot parse: {exc})", None, None, ""
    match = find_thread(session, ctx, mail)
    d = plan(session, ctx, mail, row.queue_id, match, now, lock=False, received_at=row.received_at)
    rule = (d.rules.routing_rule or d.rules.creation_rule) if d.rules else None
    if d.action in NEW_CASE_ACTIONS:
        queue = ctx.queue_name(row.queue_id)
        f = new_case_fields(d.rules, mail, queue=queue, queue_id=row.queue_id,
                            prefix=ctx.config.cases.reference_prefix, registry=ctx.registry)
        return f"new case in {ctx.queue_name(f.queue_id)}", rule, mail.sender_email, mail.subject
    return _LABELS.get(d.action, d.action), rule, mail.sender_email, mail.subject
