"""Historical mode: how intake treats mail imported from an archive (``maild import``).

Imported mail goes through the normal intake path (threading, rules, quarantine), but it
happened long ago: the case and its activities take the message's own date, and nothing
is sent or started: no acknowledgement, agent notice or survey, no SLA clock, and no
entitlement is drawn on. The mode belongs to the stored row (its source), not to the
process handling it, so a ``maild run`` that picks up an interrupted import's rows treats
them exactly as ``maild import`` would.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from maild.models import InboundMessage

if TYPE_CHECKING:
    from maild.cases import IntakeContext

# InboundMessage.source of imported mail; its received_at holds the original date.
IMPORT_SOURCE = "import"
NOTHING_SENT = "historical import: nothing is sent for imported mail"


def view(ctx: IntakeContext, inbound: InboundMessage, now: datetime) -> tuple[IntakeContext, datetime]:
    """The context and time to process ``inbound`` with: for imported mail, historical mode
    at the message's original date (stored as its received_at by maild.mailimport)."""
    if inbound.source != IMPORT_SOURCE:
        return ctx, now
    return replace(ctx, historical=True), inbound.received_at
