"""Receive mail over SMTP or LMTP (aiosmtpd) and store it durably before saying 250.

The handler follows aiosmtpd's hook protocol: ``handle_RCPT`` refuses addresses that are
not a queue (550, so the sending MTA bounces at once instead of after accepting), and
``handle_DATA`` answers only after ``inbound.add`` has committed: 451 if the store fails,
so the sender keeps the message and retries. Oversized messages get 552 from aiosmtpd's
own ``data_size_limit`` before any byte is stored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from maild import inbound, metrics
from maild.clock import Clock, utcnow
from maild.config import Config
from maild.errors import TemporaryFailure
from maild.registry import Registry
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

log = logging.getLogger("maild.intake.smtp")


class IntakeHandler:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        factory: sessionmaker[DbSession],
        on_stored: Callable[[], None] = lambda: None,
        clock: Clock = utcnow,
        lmtp: bool = False,
    ) -> None:
        self.config = config
        self.registry = registry
        self.factory = factory
        self.on_stored = on_stored
        self.clock = clock
        self.lmtp = lmtp

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.config.queue_for_address(address) is None:
            return f"550 5.1.1 <{address}>: no such queue here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        queues = _unique(self.config.queue_for_address(a) for a in envelope.rcpt_tos)
        queue_ids = [self.registry.queue_id(q) for q in queues]
        mail_from = envelope.mail_from or ""
        try:
            stored = await asyncio.get_running_loop().run_in_executor(
                None, lambda: inbound.add(self.factory, queue_ids, raw, source="lmtp" if self.lmtp else "smtp",
                                          now=self.clock(), envelope_from=mail_from)
            )
        except TemporaryFailure as exc:
            log.warning("smtp: could not store message from <%s>: %s", mail_from, exc)
            return self._status(envelope, "451 4.3.0 Temporary storage failure, try again later")
        except Exception:
            log.exception("smtp: could not store message from <%s>", mail_from)
            return self._status(envelope, "451 4.3.0 Temporary storage failure, try again later")
        self.on_stored()
        metrics.stored((s.queue_id, s.duplicate) for s in stored)
        ids = ", ".join(f"{s.id}{' (duplicate)' if s.duplicate else ''}" for s in stored)
        log.info("smtp: stored message from <%s> for %s as inbound %s", mail_from, ", ".join(queues), ids)
        return self._status(envelope, "250 2.0.0 Message accepted for delivery")

    def _status(self, envelope: Envelope, line: str) -> str:
        # LMTP wants one status line per accepted recipient (RFC 2033 section 4.2).
        if self.lmtp:
            return "\r\n".join(line for _ in envelope.rcpt_tos)
        return line


def _unique(names: Any) -> list[str]:
    seen: list[str] = []
    for n in names:
        if n is not None and n not in seen:
            seen.append(n)
    return seen


class IntakeController(Controller):
    """aiosmtpd's threaded controller, serving SMTP or LMTP with maild's limits."""

    def __init__(self, handler: IntakeHandler, config: Config) -> None:
        smtp = config.intake.smtp
        self.lmtp = smtp.protocol == "lmtp"
        super().__init__(
            handler,
            hostname=smtp.host,
            port=smtp.port,
            data_size_limit=smtp.max_message_size,
            server_hostname=smtp.hostname,
            decode_data=False,
            ident="maild",
        )

    def factory(self) -> SMTP:
        cls = LMTP if self.lmtp else SMTP
        return cls(self.handler, **self.SMTP_kwargs)
