"""Mirror the queues and agents named in config into the database, so cases can point at them."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Config
from maild.db import again_on_conflict, transaction
from maild.models import Agent, Queue


@dataclass(frozen=True)
class Registry:
    """Name → id maps for the configured queues and agents (ids are stable across restarts)."""

    queue_ids: dict[str, int]
    agent_ids: dict[str, int]
    subject_ids: dict[str, int] = field(default_factory=dict)  # subject path -> id (maild.subjects)

    def queue_id(self, name: str) -> int:
        return self.queue_ids[name]


def sync(factory: sessionmaker[Session], config: Config) -> Registry:
    """Insert or update every configured queue and agent; nothing is ever deleted,
    because old cases still refer to queues and agents that left the config.

    Two workers starting at once on a fresh database may both insert the same queue; the
    loser of that race simply reads what the winner wrote.
    """
    return again_on_conflict(lambda: _sync(factory, config))


def _sync(factory: sessionmaker[Session], config: Config) -> Registry:
    with transaction(factory) as session:
        queues = {q.name: q for q in session.scalars(select(Queue))}
        for name, qc in config.queues.items():
            row = queues.get(name) or Queue(name=name)
            row.address = qc.addresses[0]
            row.display_name = qc.name or name.capitalize()
            session.add(row)
            queues[name] = row
        agents = {a.name: a for a in session.scalars(select(Agent))}
        for ac in config.agents:
            agent = agents.get(ac.name) or Agent(name=ac.name)
            agent.email = ac.emails[0]
            agent.active = True
            session.add(agent)
            agents[ac.name] = agent
        session.flush()
        return Registry(
            queue_ids={n: q.id for n, q in queues.items() if n in config.queues},
            agent_ids={n: a.id for n, a in agents.items()},
        )
