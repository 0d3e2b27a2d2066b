"""The intake runner: claim stored inbound messages, parse them, and hand them to cases.apply.

Parsing happens outside the write transaction (it is the slow part) and the write is
one transaction per message. Whatever goes wrong with one message quarantines that
message with its reason, and the runner moves on to the next.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from maild import inbound
from maild.cases import IntakeContext, Outcome, apply
from maild.clock import Clock, utcnow
from maild.db import transaction
from maild.errors import MaildError, ParseError, ProcessingError, TemporaryFailure
from maild.parse import ParsedMail, parse
from maild.runner import Runner

log = logging.getLogger("maild.intake")

RETRY_DELAY = timedelta(seconds=10)


class IntakeRunner(Runner):
    name = "intake"

    def __init__(
        self,
        factory: sessionmaker[Session],
        context: Callable[[], IntakeContext],
        clock: Clock = utcnow,
        batch: int = 20,
        on_processed: Callable[[], None] = lambda: None,
    ) -> None:
        self.factory = factory
        self.on_processed = on_processed  # wakes the dispatcher: acknowledgements go out at once
        self.context = context  # a callable: SIGHUP swaps in a new context between messages
        self.clock = clock
        self.batch = batch
        ctx = context()
        super().__init__(idle_seconds=ctx.config.intake.poll_interval)

    def run_once(self) -> int:
        ctx = self.context()
        claimed = inbound.claim(
            self.factory,
            now=self.clock(),
            lease=timedelta(seconds=ctx.config.intake.lease_seconds),
            max_attempts=ctx.config.intake.max_attempts,
            limit=self.batch,
        )
        for item in claimed:
            if self.stopping.is_set():
                inbound.release(self.factory, item.id)  # hand it back rather than wait out the lease
                continue
            self.process(item, ctx)
        if claimed:
            self.on_processed()
        return len(claimed)

    def process(self, item: inbound.Claimed, ctx: IntakeContext) -> Outcome:
        try:
            mail = parse(item.raw)
        except ParseError as exc:
            return self._quarantine(item, f"cannot parse: {exc}", None)
        try:
            with transaction(self.factory) as session:
                outcome = apply(session, ctx, item.id, mail, self.clock())
        except (TemporaryFailure, IntegrityError) as exc:
            # IntegrityError: another worker created the same contact or row first; the
            # retry sees its row and threads onto it.
            log.warning("inbound %d: temporary failure, will retry: %s", item.id, exc)
            try:
                inbound.release(self.factory, item.id, until=self.clock() + RETRY_DELAY)
            except TemporaryFailure:
                pass  # the lease runs out by itself
            return Outcome("deferred", note=str(exc))
        except (ProcessingError, MaildError) as exc:
            return self._quarantine(item, str(exc), mail)
        except Exception as exc:  # a bug must cost one message a quarantine, not the daemon
            log.exception("inbound %d: unexpected error", item.id)
            return self._quarantine(item, f"internal error: {type(exc).__name__}: {exc}", mail)
        log.info("inbound %d queue=%s from=%s message-id=%s: %s", item.id, _queue(ctx, item.queue_id),
                 mail.sender_email, mail.message_id, outcome.describe())
        return outcome

    def _quarantine(self, item: inbound.Claimed, reason: str, mail: ParsedMail | None) -> Outcome:
        inbound.quarantine(self.factory, item.id, reason, now=self.clock())
        log.warning("inbound %d queue=%s message-id=%s: quarantined: %s", item.id, item.queue_id,
                    mail.message_id if mail else None, reason)
        return Outcome("quarantined", note=reason)


def _queue(ctx: IntakeContext, queue_id: int) -> str:
    return next((n for n, i in ctx.registry.queue_ids.items() if i == queue_id), str(queue_id))
