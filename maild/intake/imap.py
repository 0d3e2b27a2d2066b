"""Poll an IMAP mailbox into the durable inbound store, exactly once across crashes.

The protocol, per poll (RFC 3501 and RFC 4549's resynchronisation rules):

1. SELECT the folder. If UIDVALIDITY differs from the one recorded, UIDs mean nothing any
   more: start again from UID 1. Nothing is imported twice, because the store recognises
   a message it already has by Message-ID and by content.
2. Finish what a crash left undone: stored messages whose after-processing action
   (move, \\Seen, delete) was not confirmed get it now.
3. ``UID SEARCH UID last+1:*`` and ``UID FETCH BODY.PEEK[]`` in batches, so nothing is
   marked read early. Each batch is committed with the new ``last_uid`` in one
   transaction; only then is the after-processing action taken and recorded.

A crash before the commit refetches the batch; a crash after it only repeats an
idempotent move or flag. One worker at a time owns a mailbox through a lease in
``mailbox_state``; when its holder dies the lease runs out and another worker takes over.
"""

from __future__ import annotations

import imaplib
import logging
import shlex
import socket
import ssl
import subprocess
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from maild import inbound, metrics
from maild.clock import Clock, utcnow
from maild.config import ImapConfig
from maild.db import transaction
from maild.errors import ConfigError, MaildError, TemporaryFailure
from maild.models import InboundMessage, MailboxState
from maild.runner import Runner

log = logging.getLogger("maild.intake.imap")

SOURCE = "imap"
NETWORK_ERRORS = (IMAPClientError, imaplib.IMAP4.error, OSError, socket.timeout, ssl.SSLError, EOFError)
MAX_BACKOFF = 300.0


class MailboxError(MaildError):
    """A mailbox could not be reached, logged into or selected."""


@dataclass(frozen=True)
class PollResult:
    stored: int
    duplicates: int
    backlog: int


def connect(cfg: ImapConfig) -> IMAPClient:
    """Connect, secure and log in; raises MailboxError with a reason fit for an admin."""
    context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    try:
        client = IMAPClient(cfg.host, port=cfg.effective_port, ssl=cfg.security == "ssl",
                            ssl_context=context, timeout=cfg.timeout)
        if cfg.security == "starttls":
            client.starttls(context)
    except NETWORK_ERRORS as exc:
        raise MailboxError(f"cannot connect to {cfg.host}:{cfg.effective_port}: {exc}") from exc
    try:
        if cfg.token_command:
            client.oauth2_login(cfg.user, oauth2_token(cfg.token_command))
        else:
            client.login(cfg.user, cfg.resolve() or "")
    except LoginError as exc:
        _close(client)
        raise MailboxError(f"login as {cfg.user} failed: {_text(exc)}") from exc
    except (ConfigError, *NETWORK_ERRORS) as exc:
        _close(client)
        raise MailboxError(f"login as {cfg.user} failed: {exc}") from exc
    return client


def oauth2_token(command: str) -> str:
    """Run the configured token command; its first output line is the access token."""
    try:
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"token_command failed: {exc}") from exc
    token = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    if result.returncode != 0 or not token:
        raise ConfigError(f"token_command exited {result.returncode} without a token: {result.stderr.strip()[:200]}")
    return token


def _text(exc: BaseException) -> str:
    text = str(exc)
    return text[2:-1] if text.startswith(("b'", 'b"')) else text


def _close(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:  # the connection may already be gone; closing must never fail
        try:
            client.shutdown()
        except Exception:
            pass


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class ImapPoller(Runner):
    """One mailbox: poll, store, acknowledge to the server; IDLE in between where offered."""

    def __init__(
        self,
        queue: str,
        queue_id: int,
        cfg: ImapConfig,
        factory: sessionmaker[Session],
        *,
        worker_id: str,
        lease: timedelta,
        clock: Clock = utcnow,
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(idle_seconds=cfg.poll_interval)
        self.name = f"imap:{queue}"
        self.queue, self.queue_id, self.cfg = queue, queue_id, cfg
        self.factory, self.worker_id, self.lease, self.clock = factory, worker_id, lease, clock
        self.on_stored = on_stored
        self.client: IMAPClient | None = None
        self.failures = 0
        self._move_target_ready = False

    # Runner interface -------------------------------------------------------

    def run_once(self, between_chunks: Callable[[int], None] = lambda stored: None) -> int:
        """One poll; returns how many new messages were stored (0 also when not ours to poll).

        ``between_chunks(n)`` runs after each fetched chunk is stored (``n`` new messages)
        and done with on the server, outside the poll's error handling: ``maild run --once``
        writes cases there while the poll waits (see maild.daemon)."""
        if not self.claim_mailbox():
            return 0
        chunks = self.poll()
        while True:
            try:
                stored = next(chunks)
            except StopIteration as done:
                result: PollResult = done.value
                break
            except MailboxError as exc:
                self._failed(str(exc))
                return 0
            except NETWORK_ERRORS as exc:
                self._failed(f"connection to {self.cfg.host} lost: {_text(exc)}")
                return 0
            between_chunks(stored)
        self.failures = 0
        self._record(success=True, backlog=result.backlog)
        return result.stored

    def pause(self, handled: int) -> None:
        if handled:
            return
        if self.failures:
            delay = min(2.0 ** (self.failures - 1), MAX_BACKOFF)  # 1, 2, 4 … 300 s
            self.wakeup.wait(delay)
        elif self.client is not None and self.cfg.idle and self.client.has_capability("IDLE"):
            self._idle(self.cfg.poll_interval)
        else:
            self.wakeup.wait(self.cfg.poll_interval)
        self.wakeup.clear()

    def close(self) -> None:
        if self.client is not None:
            _close(self.client)
            self.client = None
        self.release_mailbox()

    # Ownership ----------------------------------------------------------------

    def claim_mailbox(self) -> bool:
        """Take or renew the lease on this mailbox; False while another worker holds it."""
        now = self.clock()
        with transaction(self.factory) as session:
            if session.get(MailboxState, self.queue_id) is None:
                session.add(MailboxState(queue_id=self.queue_id, folder=self.cfg.folder))
                session.flush()
            result = session.execute(
                update(MailboxState)
                .where(
                    MailboxState.queue_id == self.queue_id,
                    or_(MailboxState.owner.is_(None), MailboxState.owner == self.worker_id,
                        MailboxState.lease_until < now),
                )
                .values(owner=self.worker_id, lease_until=now + self.lease)
            )
            owned = bool(result.rowcount)  # type: ignore[attr-defined]
        if not owned and self.client is not None:
            _close(self.client)  # we lost the lease: someone else polls now
            self.client = None
        return owned

    def release_mailbox(self) -> None:
        try:
            with transaction(self.factory) as session:
                session.execute(update(MailboxState).where(
                    MailboxState.queue_id == self.queue_id, MailboxState.owner == self.worker_id
                ).values(owner=None, lease_until=None))
        except TemporaryFailure:
            pass  # the lease runs out by itself

    # Polling --------------------------------------------------------------------

    def connection(self) -> IMAPClient:
        if self.client is None:
            self.client = connect(self.cfg)
            self._move_target_ready = False
            log.info("%s: connected to %s:%d as %s", self.name, self.cfg.host, self.cfg.effective_port, self.cfg.user)
        return self.client

    def poll(self) -> Generator[int, None, PollResult]:
        """Store what is new, a chunk at a time: yields each chunk's new messages once the
        chunk is stored and acknowledged to the server; returns the whole poll's counts."""
        client = self.connection()
        try:
            selected = client.select_folder(self.cfg.folder)
        except IMAPClientError as exc:
            raise MailboxError(f"cannot select folder {self.cfg.folder!r}: {_text(exc)}") from exc
        uidvalidity = int(selected[b"UIDVALIDITY"])
        last_uid = self._sync_uidvalidity(uidvalidity)
        self._finish_pending(client, uidvalidity)
        uids = sorted(u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid)
        stored = duplicates = 0
        for chunk in _chunks(uids, self.cfg.batch):
            if self.stopping.is_set():
                break
            batch = self._store(client, chunk, uidvalidity)
            new = sum(1 for _, dup in batch if not dup)
            stored, duplicates = stored + new, duplicates + len(batch) - new
            self.after_processing(client, [uid for uid, _ in batch], uidvalidity)
            yield new
        return PollResult(stored, duplicates, max(len(uids) - stored - duplicates, 0))

    def _sync_uidvalidity(self, uidvalidity: int) -> int:
        """The last UID stored under this UIDVALIDITY; resets on a change (RFC 4549 section 4.1)."""
        with transaction(self.factory) as session:
            state = session.get(MailboxState, self.queue_id)
            assert state is not None
            if state.uidvalidity == uidvalidity and state.folder == self.cfg.folder:
                return state.last_uid
            if state.uidvalidity is not None:
                log.warning("%s: UIDVALIDITY of %s changed from %s to %s; rescanning the folder "
                            "(messages already stored are recognised by Message-ID and content)",
                            self.name, self.cfg.folder, state.uidvalidity, uidvalidity)
            state.uidvalidity, state.last_uid, state.folder = uidvalidity, 0, self.cfg.folder
            # Unfinished actions under the old UIDs can no longer be carried out by UID;
            # the rescan finds those messages again and finishes them under their new UIDs.
            session.execute(update(InboundMessage).where(
                InboundMessage.queue_id == self.queue_id, InboundMessage.source == SOURCE,
                InboundMessage.source_acked.is_(False),
            ).values(source_acked=True))
            return 0

    def _store(self, client: IMAPClient, uids: list[int], uidvalidity: int) -> list[tuple[int, bool]]:
        """Fetch and commit a batch with the new last_uid; [(uid, was_duplicate)] in UID order."""
        fetched = client.fetch(uids, ["BODY.PEEK[]"])
        # UIDs expunged between SEARCH and FETCH by another client come back without a body.
        present = [(uid, raw) for uid in uids if (raw := (fetched.get(uid) or {}).get(b"BODY[]")) is not None]
        with transaction(self.factory) as session:
            duplicates = inbound.store_batch(session, self.queue_id,
                                             [(raw, self._key(uidvalidity, uid)) for uid, raw in present],
                                             source=SOURCE, now=self.clock(), acked=False)
            done = [(uid, duplicate) for (uid, _), duplicate in zip(present, duplicates)]
            session.execute(update(MailboxState).where(MailboxState.queue_id == self.queue_id)
                            .values(last_uid=max(uids)))
        metrics.received(self.queue_id, sum(1 for _, dup in done if not dup))
        if done:
            self.on_stored()
        return done

    def _key(self, uidvalidity: int, uid: int) -> str:
        return f"{self.cfg.folder}/{uidvalidity}/{uid}"

    def _finish_pending(self, client: IMAPClient, uidvalidity: int) -> None:
        prefix = f"{self.cfg.folder}/{uidvalidity}/"
        with transaction(self.factory) as session:
            keys = session.scalars(select(InboundMessage.source_key).where(
                InboundMessage.queue_id == self.queue_id, InboundMessage.source == SOURCE,
                InboundMessage.source_acked.is_(False),
            )).all()
        uids = [int(k[len(prefix):]) for k in keys if k and k.startswith(prefix)]
        if uids:
            log.info("%s: finishing the after-processing action for %d message(s) stored before a restart",
                     self.name, len(uids))
            self.after_processing(client, uids, uidvalidity)

    def after_processing(self, client: IMAPClient, uids: list[int], uidvalidity: int) -> None:
        """Move, flag or delete stored messages, then record that it was done."""
        if not uids:
            return
        if self.cfg.after == "move":
            self._ensure_move_target(client)
            if client.has_capability("MOVE"):
                client.move(uids, self.cfg.move_to)
            else:
                client.copy(uids, self.cfg.move_to)
                self._delete(client, uids)
        elif self.cfg.after == "seen":
            client.add_flags(uids, [b"\\Seen"])
        else:
            self._delete(client, uids)
        keys = [self._key(uidvalidity, uid) for uid in uids]
        # Lazily (maild.db): if a power cut takes this record, the next poll repeats the
        # action on UIDs the folder no longer holds, which IMAP ignores (UIDs are never reused).
        with transaction(self.factory, lazy=True) as session:
            for chunk in _chunks(list(range(len(keys))), 500):
                session.execute(update(InboundMessage).where(
                    InboundMessage.queue_id == self.queue_id, InboundMessage.source == SOURCE,
                    InboundMessage.source_key.in_([keys[i] for i in chunk]),
                ).values(source_acked=True))

    def _delete(self, client: IMAPClient, uids: list[int]) -> None:
        client.add_flags(uids, [b"\\Deleted"])
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)  # only ours: never expunge what another client flagged
        else:
            client.expunge()

    def _ensure_move_target(self, client: IMAPClient) -> None:
        if self._move_target_ready:
            return
        if not client.folder_exists(self.cfg.move_to):
            client.create_folder(self.cfg.move_to)
            log.info("%s: created folder %s", self.name, self.cfg.move_to)
        self._move_target_ready = True

    # Waiting and bookkeeping ------------------------------------------------------

    def _idle(self, seconds: float) -> None:
        """Wait in IDLE until the server announces new mail, stop is asked, or ``seconds`` pass."""
        assert self.client is not None
        deadline = self.clock() + timedelta(seconds=seconds)
        renew_every = self.lease.total_seconds() / 3
        try:
            self.client.idle()
            while not self.stopping.is_set() and self.clock() < deadline:
                responses: list[Any] = self.client.idle_check(timeout=min(renew_every, 5.0))
                if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    break
                if self.wakeup.is_set():
                    break
                if not self.claim_mailbox_quietly():
                    break
            self.client.idle_done()
        except NETWORK_ERRORS as exc:
            log.warning("%s: IDLE interrupted: %s", self.name, _text(exc))
            _close(self.client)
            self.client = None

    def claim_mailbox_quietly(self) -> bool:
        """Renew the lease during IDLE without touching the IMAP connection."""
        now = self.clock()
        with transaction(self.factory) as session:
            result = session.execute(update(MailboxState).where(
                MailboxState.queue_id == self.queue_id, MailboxState.owner == self.worker_id,
            ).values(lease_until=now + self.lease))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def _failed(self, reason: str) -> None:
        self.failures += 1
        metrics.poll_failed(self.queue_id)
        if self.client is not None:
            _close(self.client)
            self.client = None
        log.error("%s: %s (attempt %d; retrying in %.0fs)", self.name, reason, self.failures,
                  min(2.0 ** (self.failures - 1), MAX_BACKOFF))
        try:
            self._record(success=False, error=reason)
        except TemporaryFailure:
            pass

    def _record(self, *, success: bool, backlog: int | None = None, error: str | None = None) -> None:
        now = self.clock()
        values: dict[str, Any] = {"last_poll_at": now, "failing": not success}
        if success:
            values.update(last_success_at=now, backlog=backlog or 0)
        else:
            values.update(last_error=error, last_error_at=now)
        with transaction(self.factory) as session:
            session.execute(update(MailboxState).where(MailboxState.queue_id == self.queue_id).values(**values))


def check(cfg: ImapConfig) -> dict[str, Any]:
    """Connect, log in and select, for `maild mailboxes check`; raises MailboxError."""
    client = connect(cfg)
    try:
        try:
            selected = client.select_folder(cfg.folder, readonly=True)
        except IMAPClientError as exc:
            raise MailboxError(f"cannot select folder {cfg.folder!r}: {_text(exc)}") from exc
        return {
            "messages": int(selected.get(b"EXISTS", 0)),
            "uidvalidity": int(selected[b"UIDVALIDITY"]),
            "idle": client.has_capability("IDLE"),
            "move": client.has_capability("MOVE"),
        }
    finally:
        _close(client)
