"""Customer satisfaction: a survey mail when a case is resolved, and the 1-5 answer to it.

The customer answers by replying with a number. There are deliberately no one-click
links: mail security scanners follow every link in a message and would "vote".
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from maild.models import Agent, Case, Queue
from maild.outbox import SURVEY
from maild.replytokens import CUSTOMER

if TYPE_CHECKING:
    from maild.cases import IntakeContext

SURVEY_TEMPLATE = "csat_survey"

# "5", "4/5", "4 out of 5", "Rating: 3", "5 stars", "4 - quick and friendly", "2. Too slow".
# A number followed by other words ("3 printers still fail") is not an answer.
_ANSWER = re.compile(
    r"^(?:rating|score|note|bewertung)?\s*[:=]?\s*([1-5])\s*(?:/\s*5|out of 5|von 5|stars?|sterne?|\*+)?\s*"
    r"(?:$|[-\u2013\u2014:.,!)]\s*(.*)$)", re.IGNORECASE)


def rating(text: str | None) -> tuple[int, str] | None:
    """The score and comment in a survey answer (its first non-blank line leads), or None."""
    found = reply_answer(text, _ANSWER)
    return (int(found[0].group(1)), found[1]) if found else None


def reply_answer(text: str | None, *patterns: re.Pattern[str]) -> tuple[re.Match[str], str] | None:
    """The first of ``patterns`` to match a reply's first non-blank line, and the comment
    with it: the rest of that line (each pattern's last group) and the lines below, up to
    the customer's quote of our mail. Surveys and article ratings are answered so."""
    lines = [line.strip() for line in (text or "").strip().splitlines()]
    m = next((m for p in patterns if lines and (m := p.match(lines[0]))), None)
    if m is None:
        return None
    rest = lines[1:]
    quoted = next((i for i, line in enumerate(rest) if line.startswith(">")), len(rest))
    return m, "\n".join([m.group(m.re.groups) or "", *rest[:quoted]]).strip()


def request(session: Session, ctx: IntakeContext, case: Case, now: datetime) -> None:
    """Queue the survey for a just-resolved case, when its queue asks for surveys."""
    from maild.cases import notice  # maild.cases imports this module

    settings = ctx.config.queues.get(case.queue.name)
    if settings is None or not settings.csat or case.contact is None:
        return
    notice(session, ctx, case, case.contact.email, SURVEY_TEMPLATE, {"contact": case.contact},
           f"How did we do? {case.title}", now, kind=SURVEY, role=CUSTOMER, to_name=case.contact.name)
    case.csat_requested_at, case.csat_score, case.csat_comment, case.csat_at = now, None, None, None


def record(case: Case, score: int, comment: str, now: datetime) -> None:
    case.csat_score, case.csat_comment, case.csat_at = score, comment[:2000] or None, now


def report(session: Session, since: datetime | None = None, *,
           until: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
    """Surveys sent (from ``since``, before ``until``), answers, and the average score, per
    queue and per owning agent."""
    where: list[ColumnElement[bool]] = [Case.csat_requested_at.is_not(None)]
    if since is not None:
        where.append(Case.csat_requested_at >= since)
    if until is not None:
        where.append(Case.csat_requested_at < until)
    columns = (func.count(Case.id), func.count(Case.csat_score), func.avg(Case.csat_score))
    per_queue = session.execute(select(Queue.name, *columns).join(Queue, Queue.id == Case.queue_id).where(*where)
                                .group_by(Queue.name).order_by(Queue.name)).all()
    per_agent = session.execute(select(Agent.name, *columns).join(Agent, Agent.id == Case.owner_id, isouter=True)
                                .where(*where).group_by(Agent.name).order_by(Agent.name)).all()
    return {"queues": [_row("queue", r) for r in per_queue], "agents": [_row("agent", r) for r in per_agent]}


def _row(key: str, row: Any) -> dict[str, Any]:
    name, sent, answered, average = row
    return {key: name or "(unassigned)", "surveys": sent, "answers": answered,
            "average": None if average is None else round(float(average), 2)}
