"""Which workers are alive, so that work held by a dead one is taken over at once.

Leases alone are safe but slow: a worker killed with SIGKILL leaves its inbound rows,
outbox rows and mailbox held until their leases run out (minutes). Each worker therefore
names itself in what it claims (``claimed_by`` / ``owner``) and proves it is alive:

* on PostgreSQL it holds a session-level advisory lock keyed by its name for as long as
  it runs; the server drops the lock the moment the process's connection dies, so any
  other worker, on any host, can ask ``pg_try_advisory_lock`` whether the holder is gone;
* on SQLite only one ``maild run`` may use the database (the run lock in ``App``), so
  anything claimed by another name belongs to a process that has died.

The lease stays as the backstop for a host that vanishes without closing its connection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from maild.clock import Clock, utcnow
from maild.db import transaction
from maild.models import RECEIVED, InboundMessage, MailboxState, OutboundMessage
from maild.runner import Runner

log = logging.getLogger("maild.liveness")

# The first half of PostgreSQL's two-int advisory key: keeps maild's locks apart from an
# application sharing the database.
LOCK_CLASS = 0x6D61  # "ma"


def worker_id() -> str:
    """This process's name in leases and logs: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Presence(Protocol):
    worker_id: str

    def alive(self, other: str) -> bool: ...

    def close(self) -> None: ...


class SoleProcess:
    """SQLite: the run lock guarantees no other worker is running."""

    def __init__(self, me: str) -> None:
        self.worker_id = me

    def alive(self, other: str) -> bool:
        return other == self.worker_id

    def close(self) -> None:
        pass


class AdvisoryPresence:
    """PostgreSQL: hold an advisory lock named for this worker on a connection of its own."""

    def __init__(self, engine: Engine, me: str) -> None:
        self.worker_id = me
        self._conn: Connection | None = engine.connect()
        self._conn.execute(text("SELECT pg_advisory_lock(:c, :k)"), {"c": LOCK_CLASS, "k": _key(me)})
        self._conn.commit()

    def alive(self, other: str) -> bool:
        if other == self.worker_id:
            return True
        if self._conn is None:
            return True  # closing down: claim nothing on anyone's behalf
        params = {"c": LOCK_CLASS, "k": _key(other)}
        got = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:c, :k)"), params).scalar_one())
        if got:  # nobody held it: the worker is gone; give the lock straight back
            self._conn.execute(text("SELECT pg_advisory_unlock(:c, :k)"), params)
        self._conn.commit()
        return not got

    def close(self) -> None:
        if self._conn is not None:
            # Session locks outlive a return to the pool: end the connection, lock and all.
            self._conn.invalidate()
            self._conn.close()
            self._conn = None


def presence_for(engine: Engine, me: str | None = None) -> Presence:
    me = me or worker_id()
    if engine.dialect.name == "postgresql":
        return AdvisoryPresence(engine, me)
    return SoleProcess(me)


def _key(name: str) -> int:
    # A signed 32-bit int from the name; a collision only makes a dead worker look alive,
    # which leaves its work to the lease.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


def reap(factory: sessionmaker[Session], presence: Presence, now: datetime) -> int:
    """Expire every lease held by a worker that is no longer alive; return how many."""
    with transaction(factory) as session:
        holders = _holders(session, now) - {presence.worker_id}
        dead = sorted(h for h in holders if not presence.alive(h))
        if not dead:
            return 0
        # Expire rather than clear, keeping the holder's name: an inbound row held by a dead
        # worker is a suspect (inbound.claim), claimed alone and charged an attempt, so only
        # the message that kills workers runs out of them; and a 'sending' row whose lease
        # expired is parked as unknown by the dispatcher.
        n = 0
        for table, who, until in ((InboundMessage, InboundMessage.claimed_by, InboundMessage.claimed_until),
                                  (OutboundMessage, OutboundMessage.claimed_by, OutboundMessage.claimed_until),
                                  (MailboxState, MailboxState.owner, MailboxState.lease_until)):
            result = session.execute(update(table).where(who.in_(dead), until > now).values({until.key: now}))
            n += int(result.rowcount)  # type: ignore[attr-defined]
    log.warning("took over %d lease(s) from stopped worker(s) %s", n, ", ".join(dead))
    return n


def _holders(session: Session, now: datetime) -> set[str]:
    found: set[str] = set()
    for who, until, extra in (
        (InboundMessage.claimed_by, InboundMessage.claimed_until, InboundMessage.state == RECEIVED),
        (OutboundMessage.claimed_by, OutboundMessage.claimed_until, OutboundMessage.claimed_by.is_not(None)),
        (MailboxState.owner, MailboxState.lease_until, MailboxState.owner.is_not(None)),
    ):
        found.update(n for n in session.scalars(select(who).where(until > now, extra).distinct()) if n)
    return found



class ReaperRunner(Runner):
    """Every few seconds, take over the leases of workers that stopped."""

    name = "reaper"

    def __init__(self, factory: sessionmaker[Session], presence: Presence, clock: Clock = utcnow,
                 idle_seconds: float = 10.0) -> None:
        super().__init__(idle_seconds)
        self.factory, self.presence, self.clock = factory, presence, clock

    def run_once(self) -> int:
        reap(self.factory, self.presence, self.clock())
        return 0  # the reaper always waits for its next round

    def close(self) -> None:
        self.presence.close()
