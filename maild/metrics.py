"""The counting hooks intake, dispatch, the IMAP pollers and the SLA sweeper call where things
happen; they update the running daemon's metrics (``maild.prometheus_exporter``).

They do nothing until a daemon serving metrics calls ``activate`` (``maild run --once``,
``maild inject`` and the admin commands keep no metrics), and this module imports nothing
heavy, so the modules that call it stay cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maild.prometheus_exporter import Metrics

_active: Metrics | None = None


def activate(metrics: Metrics | None) -> None:
    """Make ``metrics`` the one the module functions update (None: stop counting)."""
    global _active
    _active = metrics


def received(queue_id: int, count: int = 1) -> None:
    m = _active
    if m is not None and count:
        m.received.labels(m.queue(queue_id)).inc(count)


def stored(items: Iterable[tuple[int, bool]]) -> None:
    """Count what ``inbound.add`` stored: (queue_id, duplicate) pairs; duplicates are not new."""
    for queue_id, duplicate in items:
        if not duplicate:
            received(queue_id)


def processed(queue_id: int, outcome: str, received_at: datetime | None, now: datetime) -> None:
    """A message's outcome after its commit; one still waiting or deferred comes back later."""
    m = _active
    if m is None or outcome in ("waiting", "deferred", "skipped"):
        return
    queue = m.queue(queue_id)
    if outcome == "quarantined":
        m.quarantined.labels(queue).inc()
    else:
        m.processed.labels(queue, outcome).inc()
    if received_at is not None:
        m.latency.labels(queue).observe(max((now - received_at).total_seconds(), 0.0))


def sent() -> None:
    if _active is not None:
        _active.sent.inc()


def resent(count: int) -> None:
    """Messages interrupted mid-send and queued to go again (``[outgoing] unknown = "resend"``)."""
    if _active is not None and count:
        _active.resent.inc(count)


def send_failed(permanent: bool) -> None:
    if _active is not None:
        _active.send_failures.labels("permanent" if permanent else "temporary").inc()


def poll_failed(queue_id: int) -> None:
    m = _active
    if m is not None:
        m.poll_errors.labels(m.queue(queue_id)).inc()


def sla_fired(queue_id: int, stage: str) -> None:
    """An SLA clock reached ``stage`` ("warning" or "failure")."""
    m = _active
    if m is not None:
        (m.sla_warnings if stage == "warning" else m.sla_breaches).labels(m.queue(queue_id)).inc()
