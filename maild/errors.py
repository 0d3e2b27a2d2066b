"""The one exception tree of maild, so callers can tell retry from give-up.

    MaildError
    ├── ConfigError          bad config file: names the file, key path and problem
    ├── SchemaOutOfDate      the database needs `maild db upgrade`
    ├── UnknownQueue         a message was addressed to a queue that is not configured
    ├── ParseError           raw bytes that cannot be read as mail (quarantine, never drop)
    ├── ProcessingError      a message that cannot be turned into a case (quarantine)
    ├── NotFound             a case, message or outbox row an admin asked for does not exist
    └── TransportError
        ├── TemporaryFailure back off and try again (4xx, connection refused, locked db)
        └── PermanentFailure give up on this item (5xx): dead letter

The CLI maps MaildError to exit 1 (ConfigError to 2); no code below the daemon calls sys.exit().
"""

from __future__ import annotations


class MaildError(Exception):
    """Base class of every error maild raises on purpose."""


class ConfigError(MaildError):
    """A configuration or content file is invalid."""


class SchemaOutOfDate(MaildError):
    """The database schema is older (or newer) than this code."""


class UnknownQueue(MaildError):
    """No queue has that name or address."""


class ParseError(MaildError):
    """The raw bytes are not a readable mail message."""


class ProcessingError(MaildError):
    """A parsed message could not be turned into a case or activity."""


class NotFound(MaildError):
    """A record an admin named does not exist."""


class TransportError(MaildError):
    """Sending or storing failed."""


class TemporaryFailure(TransportError):
    """Try again later: the failure is expected to clear by itself."""


class PermanentFailure(TransportError):
    """Do not try again: the failure will not clear by itself."""
