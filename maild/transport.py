"""How finished messages leave maild: the one seam tests replace (httpx's transport idea).

``SmtpTransport`` talks to a relay; ``MaildirTransport`` drops each message into a local
Maildir so a newcomer can read what maild sends without any mail server;
``MemoryTransport`` keeps messages in a list for tests.
"""

from __future__ import annotations

import mailbox
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from maild.config import OutgoingConfig, SmtpRelayConfig
from maild.errors import PermanentFailure, TemporaryFailure


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_to: list[str]
    raw: bytes


class Transport(Protocol):
    def send(self, envelope: Envelope) -> None:
        """Deliver or raise TemporaryFailure / PermanentFailure."""


@dataclass
class MemoryTransport:
    sent: list[Envelope] = field(default_factory=list)
    fail_with: Exception | None = None

    def send(self, envelope: Envelope) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(envelope)


class MaildirTransport:
    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, envelope: Envelope) -> None:
        try:
            box = mailbox.Maildir(str(self.path), create=True)
            box.add(envelope.raw)  # writes to tmp/ then renames into new/: atomic
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to Maildir {self.path}: {exc.strerror}") from exc


class SmtpTransport:
    def __init__(self, config: SmtpRelayConfig) -> None:
        self.config = config

    def send(self, envelope: Envelope) -> None:
        try:
            with self._connect() as smtp:
                smtp.sendmail(envelope.mail_from, envelope.rcpt_to, envelope.raw)
        except smtplib.SMTPAuthenticationError as exc:
            # Credentials get fixed (a rotated password_file): keep the mail and retry.
            raise TemporaryFailure(f"SMTP relay refused the login: {exc.smtp_code} {exc.smtp_error!r}") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise _by_code(min(codes), f"recipients refused: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:
            raise _by_code(exc.smtp_code, f"{exc.smtp_code} {exc.smtp_error!r}") from exc
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            raise TemporaryFailure(f"SMTP relay {self.config.host}:{self.config.port}: {exc}") from exc

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        context = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        if c.security == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                c.host, c.port, timeout=c.timeout, local_hostname=c.local_hostname, context=context
            )
        else:
            smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout, local_hostname=c.local_hostname)
            if c.security == "starttls":
                smtp.starttls(context=context)
        if c.user:
            smtp.login(c.user, c.resolve() or "")
        return smtp


def _by_code(code: int, text: str) -> TemporaryFailure | PermanentFailure:
    return PermanentFailure(text) if 500 <= code < 600 else TemporaryFailure(text)


def from_config(config: OutgoingConfig) -> Transport:
    if config.transport == "smtp":
        return SmtpTransport(config.smtp)
    return MaildirTransport(config.maildir)
