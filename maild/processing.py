"""The intake runner: claim stored inbound messages, parse them, and hand them to cases.apply.

Parsing happens outside the write transaction. With a backlog, the next batches (AHEAD)
are claimed before the current one is written and parsed meanwhile in a worker process
(maild.parsepool, `intake.parse_workers`), so parsing and writing use two CPUs. The claimed
batch is written in one transaction: one commit (one fsync) per batch instead of per
message. Whatever goes wrong with one message must cost only that message, which is
quarantined with its reason in the same commit. Savepoints per message would guarantee
that, at two statements (two round trips on PostgreSQL) a message, for what is rare: so a
batch is first written without them, and only if a message fails is the batch rolled back
and written again with a savepoint around each message. Written without them, the batch's
new rows are also flushed together, once, at its end (a flush costs as much again per call
as per row written); a row the database refuses there belongs to no message in particular,
so that too writes the batch again, with savepoints. A temporary database failure defers
the whole batch.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from maild import inbound, logs, metrics
from maild.cases import IntakeContext, Outcome, apply, lock_inbound, prefetch
from maild.clock import Clock, utcnow
from maild.config import Config
from maild.db import hold, is_temporary, transaction
from maild.errors import MaildError, ParseError, TemporaryFailure
from maild.liveness import worker_id
from maild.models import QUARANTINED, InboundMessage, Queue
from maild.parse import ParsedMail
from maild.parsepool import Parsed, Parser, Pending, parse_one
from maild.runner import Runner

log = logging.getLogger("maild.intake")

RETRY_DELAY = timedelta(seconds=10)
# Two workers that deadlocked or inserted the same row: nothing is wrong with the database,
# and the batch succeeds when tried again, so it is, almost at once (at 10 s, one deadlock
# cost two PostgreSQL workers draining a mailbox a third of their speed).
CONFLICT_DELAY = timedelta(seconds=0.2)
# A reply waiting for the message it answers (see cases._parent_in_line) looks again soon:
# that message is nearly always in another worker's batch, committed within a fraction of a
# second, and a look costs a claim and two indexed lookups. (At 2 s, two PostgreSQL workers
# draining a mailbox spent their last 2 s on one reply.)
PARENT_DELAY = timedelta(seconds=0.5)
# How often a runner looks for messages whose attempts ran out (inbound.claim's sweep): a
# look reads the whole backlog, and before every claim that made draining n messages cost
# n²/batch row reads. The rows are not claimed meanwhile; the sweep only quarantines them.
SWEEP_INTERVAL = timedelta(seconds=10)


# Batches claimed ahead and parsing in a worker while one is written. With one, the writer
# still waited on the worker after each batch it wrote straight after another (the worker's
# parse of a batch takes about as long as writing one); with two, the worker always has the
# next batch in hand.
AHEAD = 2


def batch_for(config: Config) -> int:
    """Messages a transaction writes (``intake.batch``). "auto": 50 on SQLite, where one
    writer holds the database and each commit and claim costs per batch (measured 5% faster
    than 20 on a 10,000-message mailbox); 20 on PostgreSQL, where two workers sharing a
    backlog went 1.59x as fast as one with 20 and 1.50x with 50 (median of three pairs)."""
    setting = config.intake.batch
    if setting != "auto":
        return setting
    return 50 if config.database.url.startswith("sqlite") else 20


class _WriteAgain(Exception):
    """A message failed in a batch written without savepoints: write it again with them."""


class IntakeRunner(Runner):
    name = "intake"

    def __init__(
        self,
        factory: sessionmaker[Session],
        context: Callable[[], IntakeContext],
        clock: Clock = utcnow,
        batch: int = 20,
        on_processed: Callable[[], None] = lambda: None,
        worker: str | None = None,
        parser: Parser | None = None,
    ) -> None:
        self.factory = factory
        self.worker = worker or worker_id()  # named in its leases, for maild.liveness
        self.context = context  # a callable: SIGHUP swaps in a new context between batches
        self.clock = clock
        self.batch = batch
        self.on_processed = on_processed  # wakes the dispatcher: acknowledgements go out at once
        self.parser = parser or Parser()
        # With a backlog, the next batches: claimed, and parsing in a worker while this one is written.
        self._ahead: deque[tuple[list[inbound.Claimed], Pending]] = deque()
        self._swept_at: datetime | None = None
        super().__init__(idle_seconds=context().config.intake.poll_interval)

    def run_once(self) -> int:
        ctx = self.context()
        ahead = self._ahead.popleft() if self._ahead else None
        # A batch claimed ahead that came back empty: the backlog was all claimed then, or
        # its next message was a suspect, which is claimed only to be processed at once.
        items, pending = ahead if ahead is not None and ahead[0] else self._claim(ctx)
        if self.stopping.is_set():
            self._release(items)  # hand them back rather than make them wait out the lease
            self._release_ahead()
            return 0
        if not items:
            return 0
        if pending.in_worker:
            self._claim_ahead(ctx)
        self.process_batch(items, ctx, pending.result())
        self.on_processed()
        return len(items)

    def _claim_ahead(self, ctx: IntakeContext) -> None:
        """Claim batches up to AHEAD, for the worker to parse while this one is written;
        none after one that came back empty (the backlog is all claimed, or a suspect is next)."""
        while len(self._ahead) < AHEAD and (not self._ahead or self._ahead[-1][0]):
            self._ahead.append(self._claim(ctx, suspects=False))  # a charge is for a message being processed

    def close(self) -> None:
        """Hand back the batches claimed ahead, and stop the parser's workers."""
        self._release_ahead()
        self.parser.close()

    def _release_ahead(self) -> None:
        held = [item for items, _ in self._ahead for item in items]
        self._ahead.clear()
        self._release(held)

    def _claim(self, ctx: IntakeContext, suspects: bool = True) -> tuple[list[inbound.Claimed], Pending]:
        now = self.clock()
        sweep = self._swept_at is None or not self._swept_at <= now < self._swept_at + SWEEP_INTERVAL
        claimed = inbound.claim(
            self.factory,
            now=now,
            lease=timedelta(seconds=ctx.config.intake.lease_seconds),
            max_attempts=ctx.config.intake.max_attempts,
            limit=self.batch,
            worker=self.worker,
            sweep=sweep,
            suspects=suspects,
        )
        if sweep:
            self._swept_at = now
        return claimed, self.parser.submit([item.raw for item in claimed])

    def _release(self, items: list[inbound.Claimed]) -> None:
        if items:
            inbound.release(self.factory, items)

    def process(self, item: inbound.Claimed, ctx: IntakeContext) -> Outcome:
        """Process one claimed message (a batch of one)."""
        return self.process_batch([item], ctx)[0]

    def process_batch(self, items: list[inbound.Claimed], ctx: IntakeContext,
                      mails: list[Parsed] | None = None) -> list[Outcome]:
        """Write a claimed batch: ``mails`` are its messages parsed already, else they are parsed here."""
        parsed = list(zip(items, mails if mails is not None else [parse_one(item.raw) for item in items]))
        try:
            try:
                outcomes = self._write(ctx, parsed, careful=len(parsed) == 1)
            except _WriteAgain:
                outcomes = self._write(ctx, parsed, careful=True)
        except (TemporaryFailure, IntegrityError) as exc:
            # IntegrityError here means a concurrent worker wrote the same row first;
            # like a locked database, it clears by itself: retry the batch shortly.
            log.warning("inbound %s: temporary failure, will retry: %s", ",".join(str(i.id) for i in items), exc)
            self._defer(items, CONFLICT_DELAY if _conflict(exc) else RETRY_DELAY)
            return [Outcome("deferred", note=str(exc)) for _ in items]
        for (item, mail), outcome in zip(parsed, outcomes):
            self._log(ctx, item, mail, outcome)
            metrics.processed(item.queue_id, outcome.action, item.received_at, self.clock())
        logs.bind_message(None)
        return outcomes

    def _write(self, ctx: IntakeContext, parsed: list[tuple[inbound.Claimed, Parsed]],
               careful: bool) -> list[Outcome]:
        """The batch in one transaction; ``careful``: each message in a savepoint of its own.

        Its commit is lazy (maild.db): nothing is promised outside until the dispatcher's
        durable commit before it sends, which makes this one durable too."""
        with transaction(self.factory, lazy=True) as session:
            hold(session, session.scalars(select(Queue)))  # every new case would load its queue again
            locked = lock_inbound(session, [item.id for item, _ in parsed])
            prefetch(session, [mail for _, mail in parsed if isinstance(mail, ParsedMail)], self.clock())
            outcomes = [self._apply_one(session, ctx, item, mail, locked.get(item.id), careful) for item, mail in parsed]
            if not careful:
                _flush_batch(session)
            return outcomes

    def _apply_one(self, session: Session, ctx: IntakeContext, item: inbound.Claimed,
                   mail: Parsed, locked: InboundMessage | None, careful: bool) -> Outcome:
        logs.bind_message(None if isinstance(mail, ParseError) else mail.message_id)
        if isinstance(mail, ParseError):
            return self._quarantine(session, item, f"cannot parse: {mail}")
        try:
            if careful:
                with session.begin_nested():
                    outcome = apply(session, ctx, item.id, mail, self.clock(), locked=locked)
            else:  # its rows are flushed with the batch's (see _flush_batch)
                outcome = apply(session, ctx, item.id, mail, self.clock(), locked=locked)
            if outcome.action == "waiting":
                self._wait(session, item)
            return outcome
        except (TemporaryFailure, IntegrityError):
            # IntegrityError: a concurrent worker wrote the same row first; the batch retries.
            raise
        except OperationalError as exc:
            # A deadlock or serialization failure between workers (PostgreSQL) clears when
            # the batch is tried again; it says nothing about the message.
            if is_temporary(exc):
                raise _conflict_failure(exc) from exc
            return self._failed(session, item, exc, careful)
        except Exception as exc:  # a bug must cost one message a quarantine, not the daemon
            return self._failed(session, item, exc, careful)

    def _failed(self, session: Session, item: inbound.Claimed, exc: Exception, careful: bool) -> Outcome:
        """Quarantine the message whose savepoint rolled back; without one, write the batch again."""
        if not careful:  # the transaction may be broken: start the batch again, with savepoints
            log.info("inbound %d failed in a batch written without savepoints; writing it again with them: %s: %s",
                     item.id, type(exc).__name__, exc)
            raise _WriteAgain from exc
        if isinstance(exc, OperationalError):
            log.error("inbound %d: database error", item.id, exc_info=exc)
            return self._quarantine(session, item, f"database error: {exc.orig}")
        if isinstance(exc, MaildError):
            return self._quarantine(session, item, str(exc))
        log.error("inbound %d: unexpected error", item.id, exc_info=exc)
        return self._quarantine(session, item, f"internal error: {type(exc).__name__}: {exc}")

    def _quarantine(self, session: Session, item: inbound.Claimed, reason: str) -> Outcome:
        row = session.get(InboundMessage, item.id)
        if row is not None:
            row.state, row.error, row.claimed_until, row.processed_at = QUARANTINED, reason[:4000], None, self.clock()
        return Outcome("quarantined", note=reason)

    def _wait(self, session: Session, item: inbound.Claimed) -> None:
        """Give the row back until PARENT_DELAY, as ``inbound.release`` does: waiting did not
        kill the worker, so it is no suspect and a suspect's charge is refunded."""
        row = session.get(InboundMessage, item.id)
        if row is not None:
            row.claimed_until, row.claimed_by = self.clock() + PARENT_DELAY, None
            if item.charged:
                row.attempts = max(row.attempts - 1, 0)

    def _defer(self, items: list[inbound.Claimed], delay: timedelta) -> None:
        try:
            inbound.release(self.factory, items, until=self.clock() + delay)
        except TemporaryFailure:
            pass  # the leases run out by themselves (and the rows are suspects then)

    @staticmethod
    def _log(ctx: IntakeContext, item: inbound.Claimed, mail: Parsed, outcome: Outcome) -> None:
        sender = None if isinstance(mail, ParseError) else mail.sender_email
        msgid = None if isinstance(mail, ParseError) else mail.message_id
        logs.bind_message(msgid, outcome.reference)
        level = logging.WARNING if outcome.action == "quarantined" else logging.INFO
        log.log(level, "inbound %d queue=%s from=%s message-id=%s: %s", item.id, ctx.queue_name(item.queue_id),
                sender, msgid, outcome.describe())


def _flush_batch(session: Session) -> None:
    """Write the rows of a batch written without savepoints; if the database refuses one,
    write the batch again with them, so that only the message it belongs to is quarantined."""
    try:
        session.flush()
    except IntegrityError:
        raise  # a concurrent worker wrote the same row first: the batch retries shortly
    except Exception as exc:
        if isinstance(exc, OperationalError) and is_temporary(exc):
            raise _conflict_failure(exc) from exc
        log.info("a batch's rows could not be written together; writing it again message by message: %s: %s",
                 type(exc).__name__, exc)
        raise _WriteAgain from exc


def _conflict_failure(exc: OperationalError) -> TemporaryFailure:
    """A deadlock or serialization failure between workers: it says nothing about the messages."""
    return TemporaryFailure(f"database conflict: {str(exc.orig).strip().splitlines()[0]}")


def _conflict(exc: Exception) -> bool:
    """Did workers get in each other's way (a concurrent insert of the same row, or a deadlock
    or serialization failure: SQLSTATE class 40), rather than the database being away?"""
    cause = exc.__cause__ if isinstance(exc, TemporaryFailure) else exc
    if isinstance(cause, IntegrityError):
        return True
    return isinstance(cause, OperationalError) and str(getattr(cause.orig, "sqlstate", "") or "").startswith("40")
