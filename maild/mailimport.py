"""``maild import``: bring a mail archive (mbox or Maildir) into a queue as history.

Each message is stored in the durable inbound store like any other intake, under a
stable source key, and processed by the normal intake path in historical mode
(maild.historical): it threads and the rules apply, but it keeps its own date and
nothing is sent or started. Work is committed batch by batch, so a killed import loses
at most the batch in hand, and running it again stores nothing twice: it finishes what
the interrupted run left stored but unprocessed, then skips everything already stored.

Messages are imported oldest first, by the Date header, else the mbox ``From_`` line's
date, else the file's modification time (a Maildir's delivery time), so a reply comes
after the message it answers even when the archive is out of order.
"""

from __future__ import annotations

import hashlib
import mailbox
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from maild import inbound, liveness
from maild.cases import IntakeContext, Outcome, audit
from maild.clock import Clock
from maild.db import transaction
from maild.errors import MaildError
from maild.historical import IMPORT_SOURCE
from maild.models import ACTIVE, QUARANTINED, RECEIVED, RESOLVED, Activity, Case, InboundMessage
from maild.parsepool import Pending, parser_for
from maild.processing import IntakeRunner

FORMATS = ("mbox", "maildir")
STATUSES = ("resolved", "open")
# The status reason of imported cases marked resolved, and what their resolution says.
RESOLVED_REASON, RESOLUTION = "Problem Solved", "Imported from a mail archive"
ACTOR = "import"

_NEW = {"created", "follow_up"}
_THREADED = {"threaded", "reopened", "kept_closed", "unverified_note", "csat", "kb_rating"}
_ALREADY = {"duplicate", "skipped"}
_PENDING = {"waiting", "deferred"}


class Reporter(Protocol):
    """Where progress goes (the CLI's progress bar)."""

    def start(self, what: str, total: int) -> None: ...

    def advance(self, count: int) -> None: ...


class Silent:
    def start(self, what: str, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


@dataclass
class Summary:
    messages: int = 0
    created: int = 0  # new cases
    threaded: int = 0  # replies filed on a case (one imported earlier, or an existing one)
    skipped: int = 0  # already imported (or already recorded on a case)
    quarantined: int = 0  # kept with the reason: `maild inbound list --quarantined`
    ignored: int = 0  # ignored or refused by the rules, kept and marked
    pending: int = 0  # still waiting or deferred: `maild run` finishes them
    resumed: int = 0  # left stored but unprocessed by an interrupted run, processed now
    resolved: int = 0  # imported cases marked resolved

    def count(self, outcome: Outcome) -> None:
        action = outcome.action
        if action in _NEW:
            self.created += 1
        elif action in _THREADED:
            self.threaded += 1
        elif action in _ALREADY:
            self.skipped += 1
        elif action == "quarantined":
            self.quarantined += 1
        elif action in _PENDING:
            self.pending += 1
        else:
            self.ignored += 1


@dataclass(frozen=True)
class _Entry:
    date: datetime
    position: int
    key: str  # the mailbox's own key, to read the message again
    source_key: str  # stable across runs: what makes a re-run skip it


class Archive:
    """An mbox file or a Maildir, read message by message (never all at once)."""

    def __init__(self, kind: str, path: Path) -> None:
        if kind not in FORMATS:
            raise MaildError(f"unknown archive format {kind!r}; use one of {', '.join(FORMATS)}")
        self.kind, self.path = kind, path
        try:
            self.box: mailbox.mbox | mailbox.Maildir = mailbox.mbox(path, create=False) if kind == "mbox" \
                else mailbox.Maildir(path, factory=None, create=False)
            # Native keys: typeshed calls them str, but an mbox numbers its messages.
            self.keys = list(self.box.keys())
        except (mailbox.NoSuchMailboxError, OSError) as exc:
            raise MaildError(f"{path}: cannot read it as {kind}: {exc}") from None
        if not self.keys:
            hint = "an mbox separates messages with 'From ' lines" if kind == "mbox" else "nothing in new/ or cur/"
            raise MaildError(f"{path}: no messages found ({hint})")

    def read(self, key: str) -> tuple[bytes, str | None]:
        """The message's bytes as stored, and the mbox ``From_`` line (None for Maildir)."""
        if self.kind == "maildir":
            return self.box.get_bytes(key), None
        assert isinstance(self.box, mailbox.mbox)
        separator, _, raw = self.box.get_bytes(key, from_=True).partition(b"\n")
        return raw, separator.decode("ascii", "replace")

    def source_key(self, key: str, raw: bytes) -> str:
        # A Maildir key (the unique part of the file name) survives flag changes and moves
        # from new/ to cur/; an mbox position does not survive edits, so mbox uses content.
        if self.kind == "maildir":
            return f"maildir:{key}"[:500]
        return f"mbox:{hashlib.sha256(raw).hexdigest()}"

    def fallback_date(self, key: str, separator: str | None) -> datetime:
        if separator is not None:
            found = _from_line_date(separator)
            if found is not None:
                return found
            return datetime.fromtimestamp(os.path.getmtime(self.path), UTC)
        message = self.box.get_message(key)
        assert isinstance(message, mailbox.MaildirMessage)
        return datetime.fromtimestamp(message.get_date(), UTC)

    def entries(self) -> Iterator[_Entry]:
        for position, key in enumerate(self.keys):
            raw, separator = self.read(key)
            date = header_date(raw) or self.fallback_date(key, separator)
            yield _Entry(date, position, key, self.source_key(key, raw))


def header_date(raw: bytes) -> datetime | None:
    """The message's Date header as an aware UTC time, or None if missing or unreadable."""
    value = BytesHeaderParser(policy=compat32).parsebytes(raw).get("Date")
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _from_line_date(line: str) -> datetime | None:
    """The date of an mbox separator, ``From sender Mon Nov 23 10:00:00 2026`` (asctime, UTC)."""
    words = line.split()
    try:
        return datetime.strptime(" ".join(words[2:7]), "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)
    except ValueError:
        return None


def import_archive(factory: sessionmaker[Session], ctx: IntakeContext, archive: Archive, queue: str, *,
                   status: str, clock: Clock, batch: int = 20, reporter: Reporter | None = None) -> Summary:
    """Import every message of ``archive`` into ``queue`` as history; see the module docstring."""
    if status not in STATUSES:
        raise MaildError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    if queue not in ctx.config.queues:
        raise MaildError(f"unknown queue {queue!r}; configured queues: {', '.join(sorted(ctx.config.queues))}")
    reporter = reporter or Silent()
    queue_id = ctx.registry.queue_id(queue)
    # Present like a worker while importing, so a running daemon's reaper leaves our leases alone.
    presence = liveness.presence_for(factory.kw["bind"])
    try:
        return _import(factory, ctx, archive, queue_id, status, clock, batch, reporter, presence.worker_id)
    finally:
        presence.close()


def _import(factory: sessionmaker[Session], ctx: IntakeContext, archive: Archive, queue_id: int, status: str,
            clock: Clock, batch: int, reporter: Reporter, worker: str) -> Summary:
    # As `maild run` does: a parse worker (intake.parse_workers) parses the batch stored
    # last while the one before is written. Batches are still written oldest first.
    runner = IntakeRunner(factory, lambda: ctx, clock=clock, batch=batch, worker=worker,
                          parser=parser_for(ctx.config))
    summary = Summary()
    resumed = _finish_leftovers(runner, ctx, queue_id, summary, count_as_resumed=True)
    entries = _oldest_first(archive, reporter)
    summary.messages = len(entries)
    reporter.start("importing", len(entries))
    ahead: tuple[list[inbound.Claimed], Pending, int] | None = None
    try:
        for chunk in _chunks(entries, batch):
            fresh, known = _store(runner, ctx, archive, queue_id, chunk)
            summary.skipped += sum(1 for stored_id in known if stored_id not in resumed)
            if ahead is not None:
                _write(runner, ctx, ahead, summary, reporter)
            ahead = (fresh, runner.parser.submit([item.raw for item in fresh]), len(chunk))
        if ahead is not None:
            _write(runner, ctx, ahead, summary, reporter)
    finally:
        runner.close()
    summary.pending = 0  # a last pass for replies that waited and batches deferred
    _finish_leftovers(runner, ctx, queue_id, summary, count_as_resumed=False)
    if status == "resolved":
        summary.resolved = resolve_imported(factory, queue_id)
    return summary


def _write(runner: IntakeRunner, ctx: IntakeContext, stored: tuple[list[inbound.Claimed], Pending, int],
           summary: Summary, reporter: Reporter) -> None:
    fresh, parsing, size = stored
    for outcome in runner.process_batch(fresh, ctx, parsing.result()) if fresh else []:
        summary.count(outcome)
    reporter.advance(size)


def _oldest_first(archive: Archive, reporter: Reporter) -> list[_Entry]:
    """Every message's date and keys (not its bytes), oldest first, file order among equals."""
    reporter.start("reading", len(archive.keys))
    entries = []
    for entry in archive.entries():
        entries.append(entry)
        reporter.advance(1)
    return sorted(entries, key=lambda e: (e.date, e.position))


def _chunks(items: Sequence[_Entry], size: int) -> Iterator[Sequence[_Entry]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _store(runner: IntakeRunner, ctx: IntakeContext, archive: Archive, queue_id: int,
           chunk: Sequence[_Entry]) -> tuple[list[inbound.Claimed], list[int]]:
    """Store a batch in one commit, leased to this import; returns the new rows (to process)
    and the ids of those already stored."""
    lease_until = runner.clock() + timedelta(seconds=ctx.config.intake.lease_seconds)
    fresh, known = [], []
    with transaction(runner.factory) as session:
        for entry in chunk:
            raw, _ = archive.read(entry.key)
            stored = inbound.store(session, queue_id, raw, source=IMPORT_SOURCE, source_key=entry.source_key,
                                   now=entry.date, acked=True)
            if stored.duplicate:
                known.append(stored.id)
                continue
            row = session.get(InboundMessage, stored.id)
            assert row is not None
            # Held by this import, so a running daemon leaves it to us (it would process it
            # the same way, historically, should this import die).
            row.claimed_until, row.claimed_by, row.attempts = lease_until, runner.worker, 1
            fresh.append(inbound.Claimed(stored.id, queue_id, raw, 1))
    return fresh, known


def _finish_leftovers(runner: IntakeRunner, ctx: IntakeContext, queue_id: int, summary: Summary, *,
                      count_as_resumed: bool) -> set[int]:
    """Process imported rows of the queue still waiting (an interrupted run's, or replies that
    waited); returns their ids. A row whose processing killed the importer ``max_attempts``
    times is quarantined instead of tried again."""
    with transaction(runner.factory) as session:
        ids = list(session.scalars(
            select(InboundMessage.id).where(InboundMessage.queue_id == queue_id, InboundMessage.state == RECEIVED,
                                            InboundMessage.source == IMPORT_SOURCE).order_by(InboundMessage.id)))
    for start in range(0, len(ids), runner.batch):
        claimed = _claim(runner, ctx, ids[start:start + runner.batch])
        for outcome in runner.process_batch(claimed, ctx) if claimed else []:
            summary.count(outcome)
        summary.resumed += len(claimed) if count_as_resumed else 0
    return set(ids)


def _claim(runner: IntakeRunner, ctx: IntakeContext, ids: list[int]) -> list[inbound.Claimed]:
    # Leases are not respected here: only a dead import (or a deferral) leaves these rows,
    # and cases.apply locks the row and skips it if another process got there first.
    now, limit = runner.clock(), ctx.config.intake.max_attempts
    with transaction(runner.factory) as session:
        rows = session.scalars(
            select(InboundMessage).where(InboundMessage.id.in_(ids), InboundMessage.state == RECEIVED)
            .order_by(InboundMessage.id).options(selectinload(InboundMessage.content))
            .with_for_update(skip_locked=True)).all()
        claimed = []
        for row in rows:
            if row.attempts >= limit:
                row.state, row.claimed_until, row.processed_at = QUARANTINED, None, now
                row.error = f"gave up after {limit} attempts: the import stopped while processing it"
                continue
            row.attempts += 1
            row.claimed_until = now + timedelta(seconds=ctx.config.intake.lease_seconds)
            row.claimed_by = runner.worker
            claimed.append(inbound.Claimed(row.id, row.queue_id, row.raw, row.attempts))
        return claimed


def resolve_imported(factory: sessionmaker[Session], queue_id: int, chunk: int = 500) -> int:
    """Mark resolved, at their last message's date, the active cases an import created in
    the queue that hold nothing but imported mail (a case a customer has since written
    to, or an agent worked on, is left alone). Returns how many."""
    total = 0
    while True:
        with transaction(factory) as session:
            cases = session.scalars(_unresolved_imports(queue_id).limit(chunk).with_for_update()).all()
            for case in cases:
                _resolve(session, case)
        total += len(cases)
        if len(cases) < chunk:
            return total


def _unresolved_imports(queue_id: int) -> Select[Case]:
    created = select(InboundMessage.case_id).where(
        InboundMessage.queue_id == queue_id, InboundMessage.source == IMPORT_SOURCE,
        InboundMessage.outcome.in_(_NEW))
    live = select(Activity.id).outerjoin(InboundMessage, Activity.inbound_id == InboundMessage.id).where(
        Activity.case_id == Case.id, or_(InboundMessage.id.is_(None), InboundMessage.source != IMPORT_SOURCE))
    return select(Case).where(Case.id.in_(created), Case.status == ACTIVE, ~live.exists()).order_by(Case.id)


def _resolve(session: Session, case: Case) -> None:
    last = session.scalar(select(func.max(Activity.created_at)).where(Activity.case_id == case.id)) or case.created_at
    before = case.status_reason
    case.status, case.status_reason, case.resolution_type = RESOLVED, RESOLVED_REASON, RESOLVED_REASON
    case.resolution, case.resolved_at = RESOLUTION, last
    audit(session, case.id, ACTOR, "resolved", last, previous_reason=before, resolution_type=RESOLVED_REASON,
          imported=True)
