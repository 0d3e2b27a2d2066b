"""The dispatch runner: send due outbox rows through the transport, with backoff, at most once.

Each row is marked ``sending`` in a commit just before the transport is called, and its
result (sent, failed, or to retry later) is written right after, in the commit that marks
the next row ``sending`` (one commit, one fsync, per message instead of two; the last
row's result gets a commit of its own). If the process dies in between, nobody can know
whether the relay took the message, so the row is parked as ``unknown`` (never resent
automatically) for an admin to check and release with ``maild outbox retry``. Everywhere
else a crash only delays a message: rows are claimed under a lease that simply runs out.

On PostgreSQL that commit is one statement, run on its own (autocommit): the result, the
case's record of when the mail left and the next row's mark, as data-modifying CTEs. One
round trip instead of five (BEGIN, three statements, COMMIT), which made the dispatcher, not
the writer, what a single worker waited for at the end of a burst.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, DateTime, Row, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

from maild import metrics
from maild.clock import Clock, utcnow
from maild.config import OutgoingConfig
from maild.db import autocommit, is_postgres, transaction
from maild.errors import NotFound, PermanentFailure, TemporaryFailure
from maild.liveness import worker_id
from maild.models import FAILED, PENDING, SENDING, SENT, UNKNOWN, Activity, OutboundMessage
from maild.runner import Runner
from maild.transport import Envelope, Transport

log = logging.getLogger("maild.dispatch")

LEASE = timedelta(minutes=5)


class DispatchRunner(Runner):
    name = "dispatch"

    def __init__(
        self,
        factory: sessionmaker[Session],
        transport: Transport,
        config: OutgoingConfig,
        clock: Clock = utcnow,
        batch: int = 20,
        idle_seconds: float = 1.0,
        worker: str | None = None,
    ) -> None:
        super().__init__(idle_seconds)
        self.worker = worker or worker_id()  # named in its leases, for maild.liveness
        self.factory = factory
        self.transport = transport
        self.config = config
        self.clock = clock
        self.batch = batch
        self._unrecorded: Result | None = None  # the last send's result, until a commit records it
        self._one_statement = is_postgres(factory.kw["bind"])  # see the module's docstring

    def run_once(self) -> int:
        now = self.clock()
        self._park_interrupted(now)
        ids = self._claim(now)
        try:
            for row_id in ids:
                if self.stopping.is_set():
                    break
                self._unrecorded = self._send_one(row_id)
        finally:  # also when the transport raised something unforeseen: what was sent stays sent
            if self._unrecorded is not None:
                self._record_last(self._unrecorded)
                self._unrecorded = None
        return len(ids)

    def _claim(self, now: datetime) -> list[int]:
        # Lazy: a lease lost to a power cut is taken again. Marking a row sending is durable.
        with transaction(self.factory, lazy=True) as session:
            # Ids only: each row's bytes are read once, when it is marked sending.
            conn = session.connection()
            ids = list(conn.scalars(_CLAIMABLE, {"now": now, "limit": self.batch}))
            if ids:
                conn.execute(update(OutboundMessage).where(OutboundMessage.id.in_(ids)).values(
                    claimed_until=now + LEASE, claimed_by=self.worker))
            return ids

    def _send_one(self, row_id: int) -> Result | None:
        """Record the previous send's result and mark ``row_id`` sending (one commit), send
        it, and return its result for the next commit."""
        row = self._mark_sending(row_id)
        self._unrecorded = None  # committed
        if row is None:
            return None
        attempts, message_id = row.attempts, row.message_id
        envelope = Envelope(row.mail_from, list(row.rcpt_to), row.raw)
        try:
            self.transport.send(envelope)
        except PermanentFailure as exc:
            metrics.send_failed(permanent=True)
            log.error("outbox %d %s: permanent failure, not retrying: %s", row_id, message_id, exc)
            return Result(row_id, FAILED, f"permanent failure: {exc}", self.clock())
        except (TemporaryFailure, OSError) as exc:
            metrics.send_failed(permanent=False)
            return self._retry_later(row_id, attempts, str(exc))
        metrics.sent()
        log.info("outbox %d %s: sent to %s", row_id, message_id, ", ".join(envelope.rcpt_to))
        return Result(row_id, SENT, None, self.clock())

    def _mark_sending(self, row_id: int) -> Row[Any] | None:
        """One durable commit: the previous result, and ``row_id`` marked sending if it is
        still pending (None if it was sent, failed or rescheduled meanwhile)."""
        statement: Executable = _MARK_SENDING
        params = {"row_id": row_id, "until": self.clock() + LEASE, "worker": self.worker}
        if not self._one_statement:
            with transaction(self.factory) as session:
                conn = session.connection()
                if self._unrecorded is not None:
                    _record(conn, self._unrecorded)
                return conn.execute(statement, params).first()
        if self._unrecorded is not None:
            statement, params = _RECORD_AND_MARK, {**params, **_recorded(self._unrecorded)}
        with autocommit(self.factory) as conn:
            return conn.execute(statement, params).first()

    def _record_last(self, result: Result) -> None:
        if self._one_statement:
            with autocommit(self.factory) as conn:
                conn.execute(_RECORD, _recorded(result))
            return
        with transaction(self.factory) as session:
            _record(session.connection(), result)

    def _retry_later(self, row_id: int, attempts: int, error: str) -> Result:
        if attempts >= self.config.max_attempts:
            log.error("outbox %d: gave up after %d attempts: %s", row_id, attempts, error)
            return Result(row_id, FAILED, f"gave up after {attempts} attempts: {error}", self.clock())
        delay = backoff(attempts, self.config.backoff_initial, self.config.backoff_max)
        log.warning("outbox %d: attempt %d failed, retrying in %.0fs: %s", row_id, attempts, delay, error)
        return Result(row_id, PENDING, error, self.clock() + timedelta(seconds=delay))

    def _park_interrupted(self, now: datetime) -> None:
        # Lazy (maild.db): parking lost to a power cut is done again at the next look.
        with transaction(self.factory, lazy=True) as session:
            result = session.execute(
                update(OutboundMessage)
                .where(OutboundMessage.state == SENDING, OutboundMessage.claimed_until < now)
                .values(state=UNKNOWN, claimed_until=None,
                        last_error="interrupted while sending: it may or may not have been delivered; "
                        "check the relay's log, then `maild outbox retry ID` to send it again")
            )
            if result.rowcount:  # type: ignore[attr-defined]
                log.error("outbox: %d message(s) interrupted mid-send parked as unknown", result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Result:
    """What became of one send: SENT or FAILED at ``at``, or PENDING to try again at ``at``."""

    row_id: int
    state: str
    error: str | None
    at: datetime


def _recorded(result: Result) -> dict[str, Any]:
    """The parameters of _DONE (and _RECORD) for ``result``."""
    return {"done_id": result.row_id, "done_state": result.state, "done_error": result.error,
            "done_sent_at": result.at if result.state == SENT else None,
            "done_next_at": result.at if result.state == PENDING else None}


def _record(conn: Connection, result: Result) -> None:
    """SQLite's: its statements cannot be CTEs that write."""
    params = _recorded(result)
    conn.execute(_DONE, params)
    if result.state == SENT:  # the case's record of this mail says when it left
        conn.execute(_ACTIVITY_SENT, params)


_CLAIMABLE = (
    select(OutboundMessage.id)
    .where(
        OutboundMessage.state == PENDING,
        OutboundMessage.next_attempt_at <= bindparam("now"),
        or_(OutboundMessage.claimed_until.is_(None), OutboundMessage.claimed_until < bindparam("now")),
    )
    .order_by(OutboundMessage.next_attempt_at, OutboundMessage.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# Built once and run on the connection: a sent message is three small statements, and
# building them and passing them through the ORM each time cost more than running them.
_ROW = OutboundMessage.id == bindparam("row_id")
# Marks a row sending only if it is still pending, and returns what the send needs: one
# statement (and on PostgreSQL its row lock) instead of a SELECT ... FOR UPDATE and an UPDATE.
_MARK_SENDING = update(OutboundMessage).where(_ROW, OutboundMessage.state == PENDING).values(
    state=SENDING, attempts=OutboundMessage.attempts + 1, claimed_until=bindparam("until"),
    claimed_by=bindparam("worker"),
).returning(OutboundMessage.attempts, OutboundMessage.mail_from, OutboundMessage.rcpt_to, OutboundMessage.raw,
            OutboundMessage.message_id)
# A result: sent or failed (sent_at set when sent), or pending again from next_at.
_SENT_AT = bindparam("done_sent_at", type_=DateTime(timezone=True))
_NEXT_AT = bindparam("done_next_at", type_=DateTime(timezone=True))
_DONE = update(OutboundMessage).where(OutboundMessage.id == bindparam("done_id")).values(
    state=bindparam("done_state"), last_error=bindparam("done_error"), claimed_until=None, sent_at=_SENT_AT,
    next_attempt_at=func.coalesce(_NEXT_AT, OutboundMessage.next_attempt_at))
_ACTIVITY_SENT = update(Activity).where(
    Activity.id == select(OutboundMessage.activity_id).where(OutboundMessage.id == bindparam("done_id"))
    .scalar_subquery()).values(sent_at=_SENT_AT)
# PostgreSQL's: the same writes as _record's as CTEs (the activity found through the result's
# RETURNING), alone (_RECORD) or before the next row's mark (_RECORD_AND_MARK).
_DONE_CTE = _DONE.returning(OutboundMessage.activity_id).cte("done")
_ACTIVITY_CTE = update(Activity).where(Activity.id.in_(select(_DONE_CTE.c.activity_id)), _SENT_AT.is_not(None)) \
    .values(sent_at=_SENT_AT).cte("activity_sent")
_RECORD = select(func.count()).select_from(_DONE_CTE).add_cte(_ACTIVITY_CTE)
_RECORD_AND_MARK = _MARK_SENDING.add_cte(_DONE_CTE, _ACTIVITY_CTE)


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Exponential backoff with ±10% jitter, so many failed rows do not retry in lockstep."""
    base = min(initial * (2 ** max(attempts - 1, 0)), maximum)
    return float(base * random.uniform(0.9, 1.1))


def retry(factory: sessionmaker[Session], ids: list[int], now: datetime) -> int:
    """Release failed or unknown rows for another try now; an admin's decision."""
    with transaction(factory) as session:
        found = set(session.scalars(select(OutboundMessage.id).where(OutboundMessage.id.in_(ids))))
        missing = sorted(set(ids) - found)
        if missing:
            raise NotFound(f"no outbox message with id {', '.join(map(str, missing))}")
        result = session.execute(
            update(OutboundMessage)
            .where(OutboundMessage.id.in_(ids), OutboundMessage.state.in_([FAILED, UNKNOWN]))
            .values(state=PENDING, next_attempt_at=now, claimed_until=None, attempts=0)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
