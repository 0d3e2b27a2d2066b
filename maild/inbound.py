"""The durable inbound store: every message is committed here before its source is told "accepted".

It is Mailman's switchboard held in the database. Sources call ``add``; the intake runner
``claim``s rows under a lease, so a crashed worker's message is picked up again once the
lease runs out, and a message that keeps crashing workers is quarantined after
``max_attempts`` instead of looping forever (see ``claim`` for how a death is charged to
one message, not to its whole batch). A redelivery (the same bytes, the same source key
such as an IMAP UID, or the same Message-ID with the same sender and body) is recognised
and stored once; a different message under a stored Message-ID is kept as one of its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr
from typing import Any

from sqlalchemy import Row, bindparam, func, insert, or_, select, union_all, update
from sqlalchemy.orm import Session, sessionmaker

from maild import wakeups
from maild.db import again_on_conflict, insert_returning_ids, transaction
from maild.errors import NotFound
from maild.liveness import worker_id
from maild.models import QUARANTINED, RECEIVED, InboundMessage, InboundRaw
from maild.msgids import normalise_message_id


@dataclass(frozen=True)
class Stored:
    id: int
    queue_id: int
    duplicate: bool


@dataclass(frozen=True)
class Claimed:
    id: int
    queue_id: int
    raw: bytes
    attempts: int
    received_at: datetime | None = None  # for the processing-latency metric
    # Claimed alone with an attempt charged (a suspect, see ``claim``); giving it back
    # (``release``) refunds the attempt.
    charged: bool = False


# Where the header block ends. Not r"\r?\n\r?\n", which ends in the same place: a pattern that
# starts with a literal is searched for in C, one with an optional start tried at every
# byte (20 µs of a message with a 3 KB header block, against 2).
_BLANK_LINE = re.compile(rb"\n\r?\n")


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID from the header block only: cheap enough to run before the commit."""
    end = _BLANK_LINE.search(raw)  # the parser would read (and keep) the whole body too
    block = raw[:end.end()] if end else raw
    plain, value = _plain_message_id(block)
    if not plain:
        value = parsed_message_id(block)
    return normalise_message_id(value) if value else None


def parsed_message_id(block: bytes) -> str | None:
    """What the email package's compat32 parser gives as a header block's first Message-ID:
    the reading of every block that is not plain, and what the plain reading must equal."""
    value = BytesHeaderParser(policy=compat32).parsebytes(block).get("Message-ID")
    return str(value) if value else None


def _plain_message_id(block: bytes) -> tuple[bool, str | None]:
    """(True, what the email package's compat32 parser gives as the first Message-ID) for a
    plain header block: ASCII, CRLF or LF line ends, every line a field or the fold of one.
    (False, None) for anything else, which the parser itself reads.

    Parsing every header of every stored message (a dozen Received lines and all) to read
    one was a third of storing a fetched message: about 50 µs of the poller's main thread,
    where going through the lines takes 15."""
    if not block.isascii() or _LONE_CR.search(block):
        return False, None
    lines = block.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line in (b"\r\n", b"\n"):  # the blank line that ends the block
            return True, None
        field = _FIELD.match(line)
        if field is None:  # a fold before any field, an envelope "From " line, a line without a colon
            return False, None
        end = i + 1
        while end < len(lines) and lines[end][:1] in (b" ", b"\t"):  # its folds
            end += 1
        if field.group(1).lower() == b"message-id":
            # compat32: the value after the colon, its leading blanks gone, its folds kept
            # as they are, and the last line end dropped.
            value = (line[field.end():].lstrip(b" \t") + b"".join(lines[i + 1:end])).rstrip(b"\r\n")
            return True, value.decode("ascii")
        i = end
    return True, None


_LONE_CR = re.compile(rb"\r(?!\n)")
# A field's first line: its name (printable ASCII but the colon) and the colon.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")


def add(
    factory: sessionmaker[Session],
    queue_ids: list[int],
    raw: bytes,
    *,
    source: str,
    now: datetime,
    source_key: str | None = None,
    envelope_from: str | None = None,
) -> list[Stored]:
    """Store ``raw`` once per queue in one committed transaction; report duplicates.

    Raises TemporaryFailure when the database cannot take the write, so the caller can
    answer 451 / EX_TEMPFAIL and the sender retries.
    """
    item = _identify(raw, source_key)

    def store_all() -> list[Stored]:
        with transaction(factory) as session:
            return [_store(session, q, [item], source=source, now=now, acked=True, envelope_from=envelope_from)[0]
                    for q in queue_ids]

    # A concurrent delivery of the same message may win the race; the second pass sees it.
    return again_on_conflict(store_all)


def store(session: Session, queue_id: int, raw: bytes, *, source: str, source_key: str, now: datetime,
          acked: bool) -> Stored:
    """Add one message inside the caller's transaction.

    ``acked=False`` records that the source still has to be told, e.g. an IMAP message that
    must yet be moved; the poller finishes that after the commit, or after a crash.
    """
    return _store(session, queue_id, [_identify(raw, source_key)], source=source, now=now, acked=acked)[0]


def store_batch(session: Session, queue_id: int, items: Sequence[tuple[bytes, str]], *, source: str,
                now: datetime, acked: bool) -> list[bool]:
    """``store`` for a fetched batch of (raw, source_key): whether each was a duplicate.

    One lookup per identity for the whole batch and one multi-row INSERT, instead of a
    lookup and an INSERT per message.
    """
    stored = _store(session, queue_id, [_identify(raw, key) for raw, key in items], source=source, now=now,
                    acked=acked)
    return [s.duplicate for s in stored]


# A message as the store recognises it: (raw, source_key, sha256, Message-ID).
_Item = tuple[bytes, str | None, str, str | None]


def _identify(raw: bytes, source_key: str | None) -> _Item:
    return raw, source_key, hashlib.sha256(raw).hexdigest(), header_message_id(raw)


def _identities(item: _Item, source: str) -> list[tuple[str, str]]:
    """What makes two messages of a queue the same for certain: the bytes, the source's key.
    (A shared Message-ID makes them the same only with the same content: see ``_Collisions``.)"""
    _, key, digest, _ = item
    return [("sha256", digest)] + ([("source_key", f"{source}\n{key}")] if key else [])


def _store(session: Session, queue_id: int, items: list[_Item], *, source: str, now: datetime, acked: bool,
           envelope_from: str | None = None) -> list[Stored]:
    """Add ``items`` to the queue in the caller's transaction, each unless the queue holds it
    already or it repeats an earlier item (then: the id of the one stored). The new rows are
    plain rows in one INSERT (db.insert_returning_ids): as ORM objects, a fetched chunk's
    rows cost the poller more than storing their bytes."""
    seen: dict[tuple[str, str], int] = _known(session, queue_id, source, items)
    collisions = _Collisions(session)
    found: list[tuple[int, bool]] = []  # (the stored row's id, or -1 - the index of a new row; duplicate)
    rows: list[dict[str, object]] = []
    contents: list[bytes] = []  # each new row's bytes, for its InboundRaw row
    later: list[tuple[int, int]] = []  # (new row, new row it collides with): indexes, written once they have ids
    for item in items:
        raw, key, digest, msgid = item
        identities, ident = _identities(item, source), -1 - len(rows)
        same = next((seen[i] for i in identities if i in seen), None)
        holder = seen.get(("message_id", msgid)) if msgid and same is None else None
        if holder is not None:  # its Message-ID is held, by other bytes: a redelivery, or a collision
            same = collisions.redelivered(holder, ident, raw, contents)
        if same is not None:
            found.append((same, True))
            continue
        seen.update((i, ident) for i in identities)
        if holder is None and msgid:
            seen["message_id", msgid] = ident
        found.append((ident, False))
        if holder is not None and holder < 0:  # rare: one Message-ID twice in one fetched chunk
            later.append((len(rows), -1 - holder))
        rows.append({"queue_id": queue_id, "size": len(raw), "sha256": digest,
                     "message_id": msgid if holder is None else None,
                     "collides_with": holder if holder is not None and holder >= 0 else None,
                     "source": source, "source_key": key, "envelope_from": envelope_from, "received_at": now,
                     "source_acked": acked, "state": RECEIVED, "attempts": 0})
        contents.append(raw)
    ids: list[int] = []
    if rows:
        ids = _insert(session, rows, contents, later)
    return [Stored(ident if ident >= 0 else ids[-1 - ident], queue_id, duplicate) for ident, duplicate in found]


def _insert(session: Session, rows: list[dict[str, object]], contents: list[bytes],
            later: list[tuple[int, int]]) -> list[int]:
    """Insert the new rows and their bytes; their ids. ``later``: (row, earlier row) of this
    INSERT whose ``collides_with`` is the other's id, written once it has one."""
    ids = insert_returning_ids(session, InboundMessage, rows)
    session.execute(insert(InboundRaw), [{"inbound_id": i, "raw": raw} for i, raw in zip(ids, contents)])
    for row, holder in later:
        session.execute(update(InboundMessage).where(InboundMessage.id == ids[row]).values(collides_with=ids[holder]))
    wakeups.announce(session)
    return ids


# What a redelivery keeps of a message: its sender's address and its body, see ``_content``.
_Content = tuple[str, bytes]


class _Collisions:
    """The messages under each Message-ID the store met again with other bytes: the one
    holding it and those kept beside it (``collides_with``), each as its ``_content``.

    Read only for such a message, from the stored bytes, in the caller's transaction: most
    messages bring a Message-ID of their own, and most redeliveries the same bytes."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.groups: dict[int, list[tuple[int, _Content]]] = {}  # by the holder's id, or -1 - its index

    def redelivered(self, holder: int, ident: int, raw: bytes, contents: list[bytes]) -> int | None:
        """Which of the messages under ``holder``'s Message-ID ``raw`` is a redelivery of;
        None: it is a different message, and joins them as ``ident`` (a new row)."""
        if holder not in self.groups:
            self.groups[holder] = ([(holder, _content(contents[-1 - holder]))] if holder < 0
                                   else _stored_group(self.session, holder))
        content = _content(raw)
        same = next((other for other, known in self.groups[holder] if known == content), None)
        if same is None:
            self.groups[holder].append((ident, content))
        return same


def _stored_group(session: Session, holder: int) -> list[tuple[int, _Content]]:
    """The stored message holding a Message-ID and those kept beside it, as ``_content``s."""
    # Those are stored after it: the id range keeps the unindexed collides_with test to the
    # rows stored since.
    rows = session.execute(
        select(InboundRaw.inbound_id, InboundRaw.raw).join(InboundMessage, InboundMessage.id == InboundRaw.inbound_id)
        .where(InboundMessage.id >= holder, or_(InboundMessage.id == holder, InboundMessage.collides_with == holder))
        .order_by(InboundMessage.id))
    return [(row_id, _content(raw)) for row_id, raw in rows]


def _content(raw: bytes) -> _Content:
    """What every delivery of one message has in common: the From header's address, and the
    body with its line ends normalised and trailing blanks dropped.

    A relay adds Received (and other) headers, a mailbox or an MTA's pipe may rewrite line
    ends; a message under the same Message-ID with another sender or body is a different
    message (a broken client, list software or a forgery reusing the ID)."""
    end = _BLANK_LINE.search(raw)
    block, body = (raw[:end.end()], raw[end.end():]) if end else (raw, b"")
    sender = BytesHeaderParser(policy=compat32).parsebytes(block).get("From")
    address = parseaddr(str(sender))[1].lower() if sender is not None else ""
    return address, b"\n".join(line.rstrip() for line in body.splitlines()).rstrip()


def _known(session: Session, queue_id: int, source: str, items: list[_Item]) -> dict[tuple[str, str], int]:
    """The ids of what the queue holds already, by identity (see ``_identities``) and by Message-ID."""
    # One indexed lookup per identity, joined with UNION ALL: an OR across the three columns
    # would make SQLite scan every stored message of the queue, and intake slow down as
    # the store grows.
    known: dict[tuple[str, str], int] = {}
    columns = (InboundMessage.id, InboundMessage.sha256, InboundMessage.message_id, InboundMessage.source,
               InboundMessage.source_key)
    here = InboundMessage.queue_id == queue_id
    for start in range(0, len(items), 500):  # a bounded number of bound parameters per query
        part = items[start:start + 500]
        lookups = [select(*columns).where(here, InboundMessage.sha256.in_([d for _, _, d, _ in part]))]
        if msgids := [m for _, _, _, m in part if m]:
            lookups.append(select(*columns).where(here, InboundMessage.message_id.in_(msgids)))
        if keys := [k for _, k, _, _ in part if k]:
            lookups.append(select(*columns).where(here, InboundMessage.source == source,
                                                  InboundMessage.source_key.in_(keys)))
        for row_id, digest, msgid, row_source, key in session.execute(union_all(*lookups)):
            for identity in _identities((b"", key, digest, msgid), row_source):
                known.setdefault(identity, row_id)
            if msgid:
                known.setdefault(("message_id", msgid), row_id)
    return known


def claim(
    factory: sessionmaker[Session], *, now: datetime, lease: timedelta, max_attempts: int, limit: int = 10,
    worker: str | None = None, sweep: bool = True, suspects: bool = True,
) -> list[Claimed]:
    """Take up to ``limit`` received rows nobody holds and that have attempts left, oldest first.

    An attempt is charged only to a *suspect*: a row whose last claim was neither finished
    nor released (``claimed_by`` still set, the lease run out or taken over by
    maild.liveness), so its worker died holding it. Any message of that worker's batch may
    have killed it, so a suspect is claimed alone, with its attempt charged in the claim's
    commit, before it is processed: a message that kills its worker every time runs out of
    attempts, and the rest of its batch are charged one attempt each and processed. Other
    rows are claimed in a batch, without a charge (a kill -9 of the daemon must not count
    against every message of the batches it held); a batch stops before the first suspect,
    so messages still come up oldest first and a reply after the message it answers.
    ``suspects=False``: claim no suspect (a batch claimed ahead waits while another is
    processed, and a charge is for the message being processed).

    ``sweep``: first quarantine the rows whose attempts ran out, so an admin sees them. A
    sweep reads every received row (the backlog), so a runner claiming batch after batch
    sweeps now and then, not before every claim; the rows wait unclaimed meanwhile.
    On PostgreSQL, SKIP LOCKED lets several workers claim side by side without waiting on
    each other; on SQLite the write lock taken by BEGIN IMMEDIATE serialises them.
    A lazy commit (maild.db): a claim lost to a power cut only leaves the rows to claim again.
    """
    with transaction(factory, lazy=True) as session:
        if sweep:
            _give_up_on_poison(session, now, max_attempts)
        # Columns and a single UPDATE on the connection, not ORM objects: a batch's raw bytes
        # are most of what is read, and the ORM would track and flush each row separately.
        conn = session.connection()
        rows = _unsuspected_or_one(conn.execute(_CLAIMABLE, {"now": now, "limit": limit,
                                                             "max_attempts": max_attempts}).all(), suspects)
        charged = bool(rows) and rows[0].claimed_by is not None
        if rows:
            # Always a name: a row claimed without one could never be told from a released one.
            held: dict[str, Any] = {"claimed_until": now + lease, "claimed_by": worker or worker_id()}
            if charged:
                held["attempts"] = InboundMessage.attempts + 1
            conn.execute(update(InboundMessage).where(InboundMessage.id.in_([r.id for r in rows])).values(held))
        return [Claimed(r.id, r.queue_id, r.raw, r.attempts + charged, r.received_at, charged) for r in rows]


def _unsuspected_or_one(rows: Sequence[Row[Any]] | Sequence[Any], suspects: bool) -> Sequence[Any]:
    """The rows before the first suspect, or (``suspects``) that suspect alone if it comes first."""
    for i, row in enumerate(rows):
        if row.claimed_by is not None:
            return rows[:i] if i or not suspects else rows[:1]
    return rows


_CLAIMABLE = (
    select(InboundMessage.id, InboundMessage.queue_id, InboundRaw.raw, InboundMessage.attempts,
           InboundMessage.received_at, InboundMessage.claimed_by)
    .join(InboundRaw, InboundRaw.inbound_id == InboundMessage.id)
    .where(
        InboundMessage.state == RECEIVED,
        or_(InboundMessage.claimed_until.is_(None), InboundMessage.claimed_until < bindparam("now")),
        InboundMessage.attempts < bindparam("max_attempts"),  # the rest wait for a sweep to quarantine them
    )
    .order_by(InboundMessage.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True, of=InboundMessage)  # the bytes are never updated
)


def _give_up_on_poison(session: Session, now: datetime, max_attempts: int) -> None:
    # Attempts are charged only to a message claimed alone, and refunded when it is given
    # back, so these are messages whose worker died max_attempts times while processing
    # them and nothing else: the message itself is the likely cause; stop retrying it and
    # tell the admin.
    session.execute(
        update(InboundMessage)
        .where(
            InboundMessage.state == RECEIVED,
            InboundMessage.claimed_until < now,
            InboundMessage.attempts >= max_attempts,
        )
        .values(
            state=QUARANTINED,
            claimed_until=None,
            error=f"gave up after {max_attempts} attempts: a worker stopped while processing it",
        )
    )


def quarantine(factory: sessionmaker[Session], inbound_id: int, reason: str, *, now: datetime) -> None:
    """Keep the message, mark why it could not be processed, and release its lease."""
    with transaction(factory) as session:
        session.execute(
            update(InboundMessage)
            .where(InboundMessage.id == inbound_id)
            .values(state=QUARANTINED, error=reason[:4000], claimed_until=None, processed_at=now)
        )


def release(factory: sessionmaker[Session], items: Sequence[Claimed], *, until: datetime | None = None) -> None:
    """Give claimed rows back: at once (shutting down) or from ``until`` (a temporary failure).

    Their worker is alive and gave them back, so they are no suspects (``claimed_by``
    cleared), and a suspect's charged attempt is refunded: it did not kill its worker."""
    with transaction(factory) as session:
        for charged in (False, True):
            ids = [item.id for item in items if item.charged == charged]
            if ids:
                given_back: dict[str, Any] = {"claimed_until": until, "claimed_by": None}
                if charged:
                    given_back["attempts"] = InboundMessage.attempts - 1
                session.execute(update(InboundMessage).where(InboundMessage.id.in_(ids),
                                                             InboundMessage.state == RECEIVED).values(given_back))


def retry(factory: sessionmaker[Session], inbound_ids: list[int]) -> int:
    """Put quarantined messages back in line after an admin fixed the cause; returns how many."""
    with transaction(factory) as session:
        found = set(session.scalars(select(InboundMessage.id).where(InboundMessage.id.in_(inbound_ids))))
        missing = sorted(set(inbound_ids) - found)
        if missing:
            raise NotFound(f"no inbound message with id {', '.join(map(str, missing))}")
        result = session.execute(
            update(InboundMessage)
            .where(InboundMessage.id.in_(inbound_ids), InboundMessage.state == QUARANTINED)
            .values(state=RECEIVED, attempts=0, error=None, claimed_until=None, claimed_by=None, processed_at=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(InboundMessage.state == RECEIVED)) or 0
