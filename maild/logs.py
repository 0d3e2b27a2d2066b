"""Log setup for the daemon and CLI: plain lines for people, or JSON lines for log shippers.

While a message is processed, every line logged in that thread carries its case key and
Message-ID: ``bind_message`` sets them in context variables (one value per thread, so the
runners never see each other's), and a filter copies them onto each record.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

from maild.config import LoggingConfig

_case: ContextVar[str | None] = ContextVar("maild_case", default=None)
_message_id: ContextVar[str | None] = ContextVar("maild_message_id", default=None)


def bind_message(message_id: str | None, case: str | None = None) -> None:
    """The message (and case, once known) the current thread is working on; None: no message."""
    _message_id.set(message_id)
    _case.set(case)


class MessageContext(logging.Filter):
    """Copies the bound case key and Message-ID onto every record as ``case`` and ``msgid``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.case, record.msgid = _case.get(), _message_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str | None] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("case", "msgid"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message case=CAS-… msgid=<…>`` (the last two when known)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{key}={getattr(record, key)}" for key in ("case", "msgid") if getattr(record, key, None)]
        if not extra:
            return line
        # Keep the context on the first line: a traceback below it stays a traceback.
        first, newline, rest = line.partition("\n")
        return f"{first} {' '.join(extra)}{newline}{rest}"


def setup(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else PlainFormatter())
    # On the handler, not a logger: a filter on the root logger misses records from child loggers.
    handler.addFilter(MessageContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    # aiosmtpd logs every SMTP command at INFO; that is noise next to one line per message.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("imapclient").setLevel(logging.WARNING)
