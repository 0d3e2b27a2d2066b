"""The dispatch runner: send due outbox rows through the transport, with backoff.

Each row is marked ``sending`` in a commit just before the transport is called, and its
result (sent, failed, or to retry later) is written right after, in the commit that marks
the next row ``sending`` (one commit, one fsync, per message instead of two; the last
row's result gets a commit of its own). If the process dies in between, nobody can know
whether the relay took the message. Once its lease runs out the row is sent again, the
same stored bytes under the same Message-ID, so receivers and clients that drop duplicates
show one message (``[outgoing] unknown = "resend"``, within ``max_attempts``); or, with
``"hold"``, it is parked as ``unknown`` for an admin to check and release with ``maild
outbox retry``. Everywhere else a crash only delays a message: rows are claimed under a
lease that simply runs out.

A row whose recipient is suppressed (it bounced hard too often, ``maild.bounces``) is not
sent: the statement that leases a batch marks such rows ``suppressed`` instead, so the
check costs no statement of its own.

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

from sqlalchemy import Connection, DateTime, Row, bindparam, case, func, literal, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

from maild import metrics
from maild.clock import Clock, utcnow
from maild.config import OutgoingConfig
from maild.db import autocommit, is_postgres, transaction
from maild.errors import NotFound, PermanentFailure, TemporaryFailure
from maild.liveness import worker_id
from maild.models import FAILED, PENDING, SENDING, SENT, SUPPRESSED, UNKNOWN, Activity, OutboundMessage, \
    Suppression
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
        self._take_back_interrupted(now)
        ids, suppressed = self._claim(now)
        try:
            for row_id in ids:
                if self.stopping.is_set():
                    break
                self._unrecorded = self._send_one(row_id)
        finally:  # also when the transport raised something unforeseen: what was sent stays sent
            if self._unrecorded is not None:
                self._record_last(self._unrecorded)
                self._unrecorded = None
        return len(ids) + suppressed  # suppressed rows were handled too: no idle pause after them

    def _claim(self, now: datetime) -> tuple[list[int], int]:
        """Lease a batch of due rows: the ids to send, in order, and how many were marked
        suppressed instead (in the same statement, see _LEASE)."""
        # Lazy: a lease (or a suppressed mark) lost to a power cut is done again. Marking a
        # row sending is durable.
        with transaction(self.factory, lazy=True) as session:
            # Ids only: each row's bytes are read once, when it is marked sending.
            conn = session.connection()
            ids = list(conn.scalars(_CLAIMABLE, {"now": now, "limit": self.batch}))
            if not ids:
                return [], 0
            leased = conn.execute(_LEASE, {"ids": ids, "until": now + LEASE, "worker": self.worker}).all()
        skipped = {row.id for row in leased if row.state == SUPPRESSED}
        for row in (row for row in leased if row.id in skipped):
            log.warning("outbox %d %s: not sent: %s is suppressed (`maild bounces lift` to mail it again)",
                        row.id, row.message_id, row.recipient)
        return [i for i in ids if i not in skipped], len(skipped)  # RETURNING's order is not the claim's

    def _send_one(self, row_id: int) -> Result | None:
        """Record the previous send's result and mark ``row_id`` sending (one commit), send
        it, and return its result for the next commit."""
        row = self._mark_sending(row_id)
        self._unrecorded = None  # committed
        if row is None:
            return None
        attempts, message_id = row.attempts, row.message_id
        # A resend keeps its note when it goes through: the recipient may have it twice.
        note = row.last_error if _is_resend_note(row.last_error) else None
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
        return Result(row_id, SENT, note, self.clock())

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

    def _take_back_interrupted(self, now: datetime) -> None:
        """Rows left ``sending`` past their lease (their worker died mid-send): pending again
        to be resent, or parked as ``unknown`` with ``[outgoing] unknown = "hold"`` or once
        they used up ``max_attempts`` (the crash may be the message's doing)."""
        # No attempt count is below 0: with "hold", every such row is parked.
        resend_below = self.config.max_attempts if self.config.unknown == "resend" else 0
        # Lazy (maild.db): what is lost to a power cut is done again at the next look.
        with transaction(self.factory, lazy=True) as session:
            rows = session.connection().execute(_INTERRUPTED, {"now": now, "resend_below": resend_below}).all()
        for row in rows:
            if row.state == PENDING:
                log.warning("outbox %d %s: interrupted mid-send after attempt %d; sending it again, same "
                            "Message-ID", row.id, row.message_id, row.attempts)
            else:
                log.error("outbox %d %s: interrupted mid-send after attempt %d; parked as unknown",
                          row.id, row.message_id, row.attempts)
        metrics.resent(sum(row.state == PENDING for row in rows))


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


def _is_resend_note(error: str | None) -> bool:
    return error is not None and error.startswith(_RESEND_NOTE)


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
#
# Leases the claimed rows, and marks those to a suppressed address suppressed instead, in one
# statement per batch: one index probe into suppression per row, no statement per message.
# Suppression.email is lower-case (maild.bounces).
_ADDRESS = func.lower(OutboundMessage.recipient)
_SUPPRESSED_RCPT = select(Suppression.email).where(
    Suppression.email == _ADDRESS, Suppression.suppressed_at.is_not(None)).exists()
_LEASE = update(OutboundMessage).where(OutboundMessage.id.in_(bindparam("ids", expanding=True))).values(
    claimed_until=bindparam("until"), claimed_by=bindparam("worker"),
    state=case((_SUPPRESSED_RCPT, SUPPRESSED), else_=OutboundMessage.state),
    last_error=case((_SUPPRESSED_RCPT, literal("not sent: ") + _ADDRESS + literal(
        " is suppressed after repeated hard bounces; to mail it again: `maild bounces lift ") + _ADDRESS
        + literal("`, then `maild outbox retry ID`")), else_=OutboundMessage.last_error),
).returning(OutboundMessage.id, OutboundMessage.state, OutboundMessage.recipient, OutboundMessage.message_id)
# Rows left sending past their lease: pending again while attempts < resend_below, else unknown.
_RESEND_NOTE = "interrupted mid-send and sent again"
_RESEND = OutboundMessage.attempts < bindparam("resend_below")
_INTERRUPTED = update(OutboundMessage).where(
    OutboundMessage.state == SENDING, OutboundMessage.claimed_until < bindparam("now")).values(
    state=case((_RESEND, PENDING), else_=UNKNOWN), claimed_until=None,
    last_error=case(
        (_RESEND, _RESEND_NOTE + " with the same Message-ID (its worker stopped before recording the relay's "
         "answer): the recipient may have it twice"),
        else_="interrupted while sending: it may or may not have been delivered; check the relay's log, then "
        "`maild outbox retry ID` to send it again"),
).returning(OutboundMessage.id, OutboundMessage.state, OutboundMessage.attempts, OutboundMessage.message_id)
_ROW = OutboundMessage.id == bindparam("row_id")
# Marks a row sending only if it is still pending, and returns what the send needs: one
# statement (and on PostgreSQL its row lock) instead of a SELECT ... FOR UPDATE and an UPDATE.
_MARK_SENDING = update(OutboundMessage).where(_ROW, OutboundMessage.state == PENDING).values(
    state=SENDING, attempts=OutboundMessage.attempts + 1, claimed_until=bindparam("until"),
    claimed_by=bindparam("worker"),
).returning(OutboundMessage.attempts, OutboundMessage.mail_from, OutboundMessage.rcpt_to, OutboundMessage.raw,
            OutboundMessage.message_id, OutboundMessage.last_error)
# A result: sent or failed (sent_at set when sent), or pending again from next_at.
_SENT_AT = bindparam("done_sent_at", type_=DateTime(timezone=True))
_NEXT_AT = bindparam("done_next_at", type_=DateTime(timezone=True))
# Only a row still being sent: a bounce recorded meanwhile (maild.bounces) stays recorded.
_DONE = update(OutboundMessage).where(OutboundMessage.id == bindparam("done_id"),
                                      OutboundMessage.state == SENDING).values(
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
    """Release failed, unknown or suppressed rows for another try now; an admin's decision.

    A suppressed row whose address is still suppressed is marked suppressed again when it
    is claimed: lift the address first. Bounced rows stay: they were sent, and the relay's
    answer came back later (maild.bounces)."""
    with transaction(factory) as session:
        found = set(session.scalars(select(OutboundMessage.id).where(OutboundMessage.id.in_(ids))))
        missing = sorted(set(ids) - found)
        if missing:
            raise NotFound(f"no outbox message with id {', '.join(map(str, missing))}")
        result = session.execute(
            update(OutboundMessage)
            .where(OutboundMessage.id.in_(ids), OutboundMessage.state.in_([FAILED, UNKNOWN, SUPPRESSED]))
            .values(state=PENDING, next_attempt_at=now, claimed_until=None, attempts=0)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
