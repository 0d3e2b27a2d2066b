"""Is this daemon fit to work? The answer ``/healthz`` gives: the database answers, and every
IMAP mailbox has polled successfully within ``[metrics] health_max_poll_age``.

Mailbox state is read from the database (``mailbox_state``), so with several workers each
one reports on every mailbox, whichever worker polls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Config
from maild.db import transaction
from maild.errors import TemporaryFailure
from maild.models import MailboxState, Queue


STARTING, RUNNING, STOPPING = "starting", "running", "stopping"


@dataclass
class Health:
    problems: list[str] = field(default_factory=list)
    mailboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    database: str = "ok"
    # The daemon's: "starting" until every listener is bound and every runner runs,
    # "stopping" from when it stops taking mail. Only a running daemon is ok.
    phase: str = RUNNING

    @property
    def ok(self) -> bool:
        return not self.problems and self.phase == RUNNING

    def as_json(self) -> dict[str, Any]:
        status = "ok" if self.ok else "failing" if self.problems else self.phase
        body: dict[str, Any] = {"status": status, "database": self.database, "mailboxes": self.mailboxes}
        if self.problems:
            body["problems"] = self.problems
        return body


def check(factory: sessionmaker[Session], engine: Engine, config: Config, started_at: datetime,
          now: datetime, *, phase: str = RUNNING) -> Health:
    """Check the database and the mailboxes; ``started_at`` is the grace period for a first poll.
    ``phase``: the daemon's (see Health); a client that waits for /healthz before it connects
    must find every listener bound, and a balancer must stop sending to a daemon that stops."""
    health = Health(phase=phase)
    missing = _sqlite_file_missing(engine)
    if missing:  # checked first: a new connection would create an empty database in its place
        health.database = missing
        health.problems.append(missing)
        return health
    try:
        with transaction(factory) as session:
            states = {name: state for name, state in session.execute(
                select(Queue.name, MailboxState).join(MailboxState, MailboxState.queue_id == Queue.id))}
    except (SQLAlchemyError, TemporaryFailure) as exc:
        health.database = _first_line(exc)
        health.problems.append(f"database unreachable: {health.database}")
        return health
    max_age = config.metrics.max_poll_age
    for name, queue in config.queues.items():
        if queue.imap is None:
            continue
        state = states.get(name)
        last = state.last_success_at if state else None
        health.mailboxes[name] = {"last_success": last.isoformat() if last else None,
                                  "last_error": state.last_error if state and state.failing else None}
        if now - (last or started_at) > max_age:
            since = f"since {last.isoformat()}" if last else f"since maild started at {started_at.isoformat()}"
            error = f": {state.last_error}" if state and state.failing and state.last_error else ""
            health.problems.append(f"mailbox {name} has not polled successfully {since}{error}")
    return health


def _sqlite_file_missing(engine: Engine) -> str | None:
    # An open SQLite connection keeps writing to a file that was deleted or moved away, and
    # everything written is lost when maild exits: that is as bad as an unreachable server.
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return None if Path(database).exists() else f"the SQLite database file {database} is gone"


def _first_line(exc: Exception) -> str:
    if isinstance(exc, TemporaryFailure) and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__  # the driver's own words, not our "database unavailable" wrapper
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]
