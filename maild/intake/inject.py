"""``maild inject``: take one message from an MTA pipe and store it, like RT's mailgate.

The queue comes from ``--queue``; failing that, from the envelope recipient the MTA passes
(Postfix's ORIGINAL_RECIPIENT / RECIPIENT, Exim's LOCAL_PART@DOMAIN), and failing that,
from Delivered-To, X-Original-To, To and Cc, in that order. Exit codes follow sysexits.h,
because that is what MTAs act on: 75 makes them retry, anything else makes them bounce.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from maild.config import Config
from maild.errors import UnknownQueue

EX_OK, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 0, 65, 67, 70, 75, 78

_ENV_RECIPIENTS = ("ORIGINAL_RECIPIENT", "RECIPIENT")
_HEADER_RECIPIENTS = ("Delivered-To", "X-Original-To", "To", "Cc")


def choose_queue(config: Config, raw: bytes, queue: str | None, environ: Mapping[str, str]) -> str:
    """The queue this message is for, or UnknownQueue with what was tried."""
    if queue is not None:
        if queue not in config.queues:
            raise UnknownQueue(f"unknown queue {queue!r}; configured queues: {', '.join(sorted(config.queues))}")
        return queue
    candidates = [environ[k] for k in _ENV_RECIPIENTS if environ.get(k)]
    if environ.get("LOCAL_PART") and environ.get("DOMAIN"):
        candidates.append(f"{environ['LOCAL_PART']}@{environ['DOMAIN']}")
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    for name in _HEADER_RECIPIENTS:
        candidates += [addr for _, addr in getaddresses([str(v) for v in headers.get_all(name, [])])]
    for address in candidates:
        found = config.queue_for_address(address)
        if found is not None:
            return found
    raise UnknownQueue(
        "no queue address among the message's recipients; pass --queue "
        f"(configured queues: {', '.join(sorted(config.queues))})"
    )

