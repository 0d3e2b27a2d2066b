"""The runner base: ``run_once()`` does one pass of work; ``run()`` loops until told to stop.

Mailman's runner pattern: each item's failure is isolated inside ``run_once`` so a bad
message never stops the loop, and the loop sleeps only when a pass found nothing to do.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

log = logging.getLogger(__name__)


class Runner(ABC):
    name = "runner"

    def __init__(self, idle_seconds: float = 1.0) -> None:
        self.idle_seconds = idle_seconds
        self.stopping = threading.Event()
        self.wakeup = threading.Event()

    @abstractmethod
    def run_once(self) -> int:
        """Do what is due now; return how many items were handled."""

    def run(self) -> None:
        """Loop until ``stop()``; the item in hand is always finished first."""
        try:
            while not self.stopping.is_set():
                try:
                    handled = self.run_once()
                except Exception:  # a runner must survive anything one pass throws
                    log.exception("%s: pass failed; retrying after a pause", self.name)
                    handled = 0
                self.pause(handled)
        finally:
            self.close()

    def pause(self, handled: int) -> None:
        """Between passes: go straight on after work, sleep (until poked) after an empty pass."""
        if handled == 0:
            self.wakeup.wait(self.idle_seconds)
            self.wakeup.clear()

    def close(self) -> None:
        """Release what the runner holds (connections, leases) when the loop ends."""

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()

    def poke(self) -> None:
        """Start the next pass now (e.g. the SMTP listener just stored a message)."""
        self.wakeup.set()
