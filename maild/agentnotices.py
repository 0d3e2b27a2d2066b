"""Mail to agents about their cases: a new case in their queue, a customer's reply to their
case, and a case assigned to them. Which of these a queue sends is ``notify_agents``.

Each notice carries the case's signed reply address, so the agent can answer the
customer straight from it (maild.replytokens).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from maild.config import QueueConfig
from maild.models import Case

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from maild.cases import IntakeContext

NEW_CASE, CUSTOMER_REPLY, ASSIGNED = "new_case", "customer_reply", "assigned"
TEMPLATES = {NEW_CASE: "agent_new_case", CUSTOMER_REPLY: "agent_customer_reply", ASSIGNED: "agent_assigned"}


def new_case(session: Session, ctx: IntakeContext, case: Case, text: str | None, now: datetime) -> None:
    """Tell the queue's agents (all but the owner, who is told it was assigned to them)."""
    settings = _settings(ctx, case, NEW_CASE)
    owner = case.owner.name if case.owner else None
    for name in settings.agents if settings else ():
        if name != owner:
            _send(session, ctx, case, name, NEW_CASE, text, f"New case: {case.title}", now)


def customer_reply(session: Session, ctx: IntakeContext, case: Case, text: str | None, now: datetime) -> None:
    if case.owner is not None and _settings(ctx, case, CUSTOMER_REPLY):
        _send(session, ctx, case, case.owner.name, CUSTOMER_REPLY, text, f"Customer replied: {case.title}", now)


def assigned(session: Session, ctx: IntakeContext, case: Case, agent: str, actor: str, now: datetime) -> None:
    """Tell ``agent`` that someone else gave them the case (not when they took it themselves)."""
    if actor != f"agent:{agent}" and _settings(ctx, case, ASSIGNED):
        _send(session, ctx, case, agent, ASSIGNED, None, f"Assigned to you: {case.title}", now, by=actor)


def _settings(ctx: IntakeContext, case: Case, kind: str) -> QueueConfig | None:
    settings = ctx.config.queues.get(ctx.queue_name(case.queue_id))
    return settings if settings is not None and kind in settings.notify_agents else None


def _send(session: Session, ctx: IntakeContext, case: Case, agent: str, kind: str, text: str | None, subject: str,
          now: datetime, by: str | None = None) -> None:
    from maild.cases import notice  # maild.cases calls this module while it writes a case

    if ctx.historical:  # imported history: the agents saw it in the old system
        return
    address = next((a.emails[0] for a in ctx.config.agents if a.name == agent), None)
    if address is not None:
        notice(session, ctx, case, address, TEMPLATES[kind], {"agent": agent, "text": text, "by": by}, subject, now)
