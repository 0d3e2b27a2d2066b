"""What an agent's mail does to its case: commands run, and the agent hears how it went.

The commands (maild.agentcommands) run through the same changes as the CLI
(maild.casework), inside the transaction that records the mail; the caller wraps them in
a savepoint so that a command that fails undoes the ones before it.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from maild import casework, knowledge
from maild.agentcommands import Command
from maild.errors import MaildError
from maild.models import Case

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from maild.cases import IntakeContext

RESULT_TEMPLATE = "agent_command_result"


def run(session: Session, ctx: IntakeContext, case: Case, commands: tuple[Command, ...], agent: str,
        narrative: str, now: datetime) -> list[str]:
    """Run each command in order and say what it did; the first failure raises MaildError."""
    actor = f"agent:{agent}"
    return [_run_one(session, ctx, case, c, agent, narrative, actor, now) for c in commands]


def _run_one(session: Session, ctx: IntakeContext, case: Case, c: Command, agent: str, narrative: str, actor: str,
             now: datetime) -> str:
    try:
        if c.name == "note":
            return f"{case.reference}: kept as an internal note, not sent to the customer"
        if c.name == "status":
            return casework.set_reason(session, ctx, case, c.argument, actor=actor, now=now)
        if c.name == "priority":
            return casework.set_priority(session, ctx, case, c.argument, actor=actor, now=now)
        if c.name == "assign":
            return casework.assign(session, ctx, case, agent=_agent_name(ctx, c.argument), queue=None, actor=actor,
                                   now=now)
        if c.name == "resolve":
            reason, minutes = _resolution(c.argument)
            return casework.resolve(session, ctx, case, resolution_type=reason, minutes=minutes, actor=actor, now=now,
                                    narrative=narrative.strip()[:4000] or f"Resolved by mail by {agent}")
        return knowledge.send(session, ctx, case, int(c.argument), actor=actor, now=now)  # #kb 42
    except MaildError as exc:
        raise MaildError(f"{c.line}: {exc}") from exc


def _resolution(argument: str) -> tuple[str, int | None]:
    """``Problem Solved 45m`` -> ("Problem Solved", 45): a trailing duration is the time spent."""
    words = argument.split()
    if len(words) > 1:
        try:
            return " ".join(words[:-1]), casework.parse_time_spent(words[-1])
        except MaildError:
            pass  # the last word is part of the resolution type
    return argument, None


def _agent_name(ctx: IntakeContext, name: str) -> str:
    """Agent names are matched without regard to case: ``#assign Alice`` means alice."""
    return next((n for n in ctx.registry.agent_ids if n.lower() == name.strip().lower()), name.strip())


def report(session: Session, ctx: IntakeContext, case: Case, to_addr: str, done: list[str], errors: list[str],
           now: datetime) -> None:
    """The confirmation (what was done) or the error mail (what was wrong, nothing done)."""
    from maild.cases import notice  # maild.cases calls this module while it records the mail

    subject = f"Not done: {errors[0]}" if errors else f"Done: {'; '.join(done)}"
    notice(session, ctx, case, to_addr, RESULT_TEMPLATE, {"done": done, "errors": errors}, subject[:200], now)
