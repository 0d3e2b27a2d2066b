"""Wake every worker's intake as soon as a message is stored: PostgreSQL LISTEN/NOTIFY.

Workers on several hosts share one database, and only one of them polls a mailbox (its
lease holder). Without a signal, a worker that has caught up looks for new rows only every
``intake.poll_interval``, so the mailbox's other workers sit idle while its holder stores
batch after batch. The storing transaction sends a NOTIFY; PostgreSQL delivers it only
once that transaction commits (and never if it rolls back), to every worker listening.
The signal carries nothing: a listener only starts its intake's next pass, which claims
rows as usual (SKIP LOCKED), so a lost notice costs at most a poll interval.

SQLite runs one process: the in-process pokes (``on_stored``) are all it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from maild.runner import Runner

log = logging.getLogger("maild.wakeups")

CHANNEL = "maild_inbound_stored"
MAX_BACKOFF = 30.0  # seconds between attempts to listen again after the connection failed


def announce(session: Session) -> None:
    """Tell the other workers, when this transaction commits, that new inbound rows exist."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {CHANNEL}"))


class Listener(Runner):
    """A thread that LISTENs on its own connection and pokes ``on_notice`` for each notice."""

    name = "wakeups"

    def __init__(self, engine: Engine, on_notice: Callable[[], None], wait: float = 1.0) -> None:
        super().__init__(idle_seconds=wait)
        self.engine = engine
        self.on_notice = on_notice
        self.wait = wait  # how long one pass waits for a notice: also how soon stop() takes effect
        self.failures = 0
        self._raw: Any = None  # the pooled DBAPI connection in LISTEN mode

    def run_once(self) -> int:
        """Wait up to ``wait`` seconds for notices; poke once if any came."""
        try:
            conn = self._listening()
            # Back at the first notice: the intake starts at once, and the next pass listens again.
            got = len(list(conn.notifies(timeout=self.wait, stop_after=1)))
        except Exception as exc:  # the database went away: listen again later, polling covers meanwhile
            self.failures += 1
            log.warning("cannot listen for stored messages (%s); workers fall back to polling: %s",
                        type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            self._drop()
            return 0
        self.failures = 0
        if got:
            self.on_notice()
        return got

    def pause(self, handled: int) -> None:
        if self.failures:  # run_once itself waits; only a failure needs a pause, growing
            self.wakeup.wait(min(2.0 ** (self.failures - 1), MAX_BACKOFF))
            self.wakeup.clear()

    def close(self) -> None:
        self._drop()

    def _listening(self) -> Any:
        if self._raw is None:
            raw = self.engine.raw_connection()
            conn = raw.driver_connection
            assert conn is not None
            conn.autocommit = True  # LISTEN takes effect at once, and no transaction stays open
            conn.execute(f"LISTEN {CHANNEL}")
            self._raw = raw
        return self._raw.driver_connection

    def _drop(self) -> None:
        if self._raw is not None:
            raw, self._raw = self._raw, None
            try:
                raw.invalidate()  # never back to the pool: it is still listening
            except Exception:  # already broken: nothing left to release
                log.debug("closing the listening connection failed", exc_info=True)
