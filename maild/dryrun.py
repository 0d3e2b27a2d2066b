"""What intake would do with one message, computed from what is stored, with nothing written.

``maild rules test`` prints it. It runs the same functions as intake (cases.find_thread,
cases.plan, ruling.new_case_fields), only reading, so what it shows is what will happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import senders
from maild.cases import IntakeContext, customer_address, find_thread, plan
from maild.models import Case
from maild.parse import ParsedMail
from maild.ruling import NEW_CASE_ACTIONS, customer_record, new_case_fields

# What each disposition means to the admin reading the dry run.
OUTCOMES = {
    "create": "create a new case",
    "follow_up": "create a new case linked to the resolved one",
    "append": "add to the existing case",
    "reopen": "reopen the resolved case and add to it",
    "agent_reply": "record the agent's reply and relay it to the customer",
    "quarantine": "quarantine the message",
    "ignore": "keep the message, marked ignored; no case",
    "refuse": "refuse: no case; the sender gets a templated answer",
    "unverified_note": "keep it on the case as an unverified internal note; do not relay it",
}


@dataclass(frozen=True)
class Explanation:
    queue: str
    outcome: str
    thread: dict[str, Any] | None
    reason: str | None
    creation_rule: str | None
    routing_rule: str | None
    rules: list[dict[str, Any]]
    case: dict[str, Any] | None  # the new case's fields, when one would be created
    customer: dict[str, Any]
    acknowledgement: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def explain(session: Session, ctx: IntakeContext, mail: ParsedMail, queue: str, now: datetime) -> Explanation:
    queue_id = ctx.registry.queue_id(queue)
    match = find_thread(session, ctx, mail)
    d = plan(session, ctx, mail, queue_id, match, now, lock=False, explain=True)
    result = d.rules
    case = None
    if d.action in NEW_CASE_ACTIONS:
        f = new_case_fields(result, mail, queue=queue, queue_id=queue_id,
                            prefix=ctx.config.cases.reference_prefix, registry=ctx.registry)
        owner = result.owner if result else None
        if result and result.team:
            team = ctx.config.team(result.team)
            owner = f"team {result.team} ({team.assignment.replace('_', ' ') if team else '?'})"
        case = {"title": f.title, "queue": ctx.queue_name(f.queue_id), "owner": owner,
                "priority": f.priority, "severity": f.severity, "origin": f.origin,
                "subject": result.subject if result else None}
    thread = None
    if match is not None:
        ref = session.scalar(select(Case.reference).where(Case.id == match.case_id))
        thread = {"case": ref, "via": match.via, "key": match.key}
    ack = {"sent": d.acknowledge, "reason": None if d.acknowledge else _no_ack(d.action, d.no_ack_reason),
           "to": customer_address(mail) if d.acknowledge else None}
    return Explanation(
        queue=queue, outcome=OUTCOMES[d.action], thread=thread, reason=d.reason,
        creation_rule=result.creation_rule if result else None,
        routing_rule=result.routing_rule if result else None,
        rules=[h.as_dict() for h in result.trace] if result else [],
        case=case, customer=_customer(session, mail.sender_email), acknowledgement=ack,
    )


def _customer(session: Session, email: str | None) -> dict[str, Any]:
    record = customer_record(session, email)
    return {"email": email, "known": senders.is_known(session, email), "account": record.account,
            "tier": record.tier}


def _no_ack(action: str, reason: str | None) -> str:
    if action in NEW_CASE_ACTIONS:
        return reason or "not acknowledged"
    return "only new cases are acknowledged"
