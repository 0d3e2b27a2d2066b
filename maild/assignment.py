"""Choose the agent of a team who gets a new case: each in turn, or whoever has least to do.

Round-robin keeps its position in a counter row (``team:NAME``), so it survives restarts
and is shared by every worker; the row lock serialises concurrent picks.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild.config import TeamConfig
from maild.models import ACTIVE, Case
from maild.registry import Registry


def choose(session: Session, team: TeamConfig, registry: Registry) -> int:
    """The id of the agent in ``team`` who gets the next case."""
    ids = [registry.agent_ids[name] for name in team.agents]
    if team.assignment == "least_loaded":
        return least_loaded(session, ids)
    from maild.cases import next_number  # the one counter implementation

    return ids[(next_number(session, f"team:{team.name}") - 1) % len(ids)]


def least_loaded(session: Session, agent_ids: list[int]) -> int:
    """The agent owning the fewest active cases; ties go to the first listed."""
    load: dict[int | None, int] = {owner: n for owner, n in session.execute(
        select(Case.owner_id, func.count()).where(Case.owner_id.in_(agent_ids), Case.status == ACTIVE)
        .group_by(Case.owner_id)
    )}
    return min(agent_ids, key=lambda a: (load.get(a, 0), agent_ids.index(a)))
