"""Build maild's runners from config, run them, and handle SIGTERM (finish and exit) and SIGHUP (reload).

One process: the SMTP/LMTP listener runs in aiosmtpd's controller thread, and each runner
(intake, dispatch) is a thread of its own looping over ``run_once``. On PostgreSQL more
processes can run the same config side by side; the runners claim rows with SKIP LOCKED.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any

from maild import config as config_mod
from maild import escalation, health, metrics
from maild.app import App, load_rules, required_templates
from maild.cases import IntakeContext
from maild.db import is_postgres
from maild.dispatch import DispatchRunner
from maild.errors import ConfigError
from maild.intake.imap import ImapPoller
from maild.liveness import Presence, ReaperRunner, presence_for, reap, worker_id
from maild.parsepool import parser_for
from maild.processing import AHEAD, IntakeRunner, batch_for
from maild.reportmail import ReportMailRunner
from maild.runner import Runner
from maild.sla import SlaRunner
from maild.templates import Renderer
from maild.transport import Transport, from_config
from maild.wakeups import Listener

if TYPE_CHECKING:
    # Imported where they start: `run --once` serves neither HTTP nor SMTP, and their
    # libraries (prometheus_client, aiosmtpd) would add 2 MiB to its resident memory.
    from maild.httpd import HttpServer
    from maild.intake.smtp import IntakeController

log = logging.getLogger("maild.daemon")


class Daemon:
    """``maild run``: start everything, wait for a signal, stop cleanly."""

    def __init__(self, app: App, transport: Transport | None = None) -> None:
        self.app = app
        self.transport = transport or from_config(app.config.outgoing)
        self._context_value = app.intake_context()
        self.presence = presence_for(app.engine)
        me = self.presence.worker_id
        self.dispatch = DispatchRunner(app.factory, self.transport, app.config.outgoing, clock=app.clock, worker=me)
        self.intake = IntakeRunner(app.factory, self._context, clock=app.clock, on_processed=self.dispatch.poke,
                                   worker=me, parser=parser_for(app.config), batch=batch_for(app.config))
        self.pollers = make_pollers(app, on_stored=self.intake.poke, worker=me)
        self.reaper = ReaperRunner(app.factory, self.presence, clock=app.clock)
        self.sla = SlaRunner(app.factory, lambda: self._context().rules, self._act, clock=app.clock)
        self.runners: list[Runner] = [self.intake, self.dispatch, *self.pollers, self.reaper, self.sla]
        self.runners += [ReportMailRunner(app.factory, app.config, lambda: self._context().renderer, clock=app.clock)]
        if is_postgres(app.engine):  # other workers' stored messages start this one's intake at once
            self.runners.append(Listener(app.engine, self.intake.poke))
        self._threads: list[threading.Thread] = []
        self._listener: IntakeController | None = None
        self._http: HttpServer | None = None
        self.phase = health.STARTING  # what /healthz says besides its checks (see maild.health)
        self.stopped = threading.Event()

    def _context(self) -> IntakeContext:
        return self._context_value

    def _act(self, *args: Any) -> str:
        return escalation.act(self._context())(*args)  # the running templates, even after SIGHUP

    def start(self) -> None:
        cfg = self.app.config
        # HTTP first: a port already taken stops the daemon before it takes any mail. Its
        # /healthz says "starting" until the end of this method, so a client that waits for
        # it finds the SMTP listener bound and the runners running.
        self._start_http()
        if cfg.intake.smtp.enabled:
            self._listener = self._smtp_listener()
            self._listener.start()
            log.info("listening for %s on %s:%d", cfg.intake.smtp.protocol.upper(), cfg.intake.smtp.host,
                     cfg.intake.smtp.port)
        # Before any runner claims: what a killed predecessor held is free again at once.
        reap(self.app.factory, self.presence, self.app.clock())
        for runner in self.runners:
            t = threading.Thread(target=runner.run, name=f"maild-{runner.name}", daemon=True)
            t.start()
            self._threads.append(t)
        # Mail queued by another process (maild inject) is picked up by the poll interval.
        self.phase = health.RUNNING
        log.info("maild started as worker %s: %d queue(s), %d IMAP mailbox(es), outgoing via %s",
                 self.presence.worker_id, len(cfg.queues), len(self.pollers), cfg.outgoing.transport)

    def stop(self) -> None:
        """Stop taking mail first, then let each runner finish the item in hand."""
        self.phase = health.STOPPING
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        for runner in self.runners:
            runner.stop()
        for t in self._threads:
            t.join()
        if self._http is not None:
            self._http.stop()
            self._http = None
        metrics.activate(None)
        self.stopped.set()
        log.info("maild stopped")

    def _smtp_listener(self) -> IntakeController:
        from maild.intake.smtp import IntakeController, IntakeHandler

        cfg = self.app.config
        handler = IntakeHandler(cfg, self.app.registry, self.app.factory, on_stored=self.intake.poke,
                                clock=self.app.clock, lmtp=cfg.intake.smtp.protocol == "lmtp")
        return IntakeController(handler, cfg)

    def _start_http(self) -> None:
        from maild import httpd

        served = httpd.serve(self.app, phase=lambda: self.phase)
        if served is not None:
            counters, self._http = served
            metrics.activate(counters)
            self._http.start()

    def reload(self) -> None:
        """Re-read templates and rules; on any error keep the running ones, and log why.

        Queues and agents are not reloaded (they need a restart), so the new rules are
        checked against the ones running.
        """
        running = self.app.config
        try:
            fresh = config_mod.load(running.source)
            renderer = Renderer(fresh.paths.templates)
            renderer.check(required_templates(running))
            ruleset = load_rules(running.model_copy(update={"paths": fresh.paths}))
        except ConfigError as exc:
            log.error("reload refused, keeping the running templates and rules: %s", exc)
            return
        self.app.renderer, self.app.rules = renderer, ruleset
        synced = self.app.sync_registry(ruleset)  # new subjects get their rows before any case uses them
        self._context_value = replace(self._context_value, renderer=renderer, rules=ruleset, registry=synced)
        log.info("reloaded templates from %s and %d rule(s) from %s", fresh.paths.templates,
                 len(ruleset.creation) + len(ruleset.routing), fresh.paths.rules)

    def serve_forever(self) -> None:
        """Install signal handlers (main thread only), reload on SIGHUP, and block until
        SIGTERM/SIGINT."""
        signals = Signals()
        for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(each, signals.handler)
        self.start()
        while (signum := signals.next()) not in _STOP:
            if signum == signal.SIGHUP:
                self.reload()
            elif signum is None:
                time.sleep(0.2)
        log.info("signal %s: finishing the message in hand, then exiting", signal.Signals(signum).name)
        self.stop()


_STOP: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)


class Signals:
    """The signals received, in order, for the main loop to act on.

    A handler runs in the main thread between any two of its bytecodes, so it must take no
    lock the main thread may hold: one that set a threading.Event while the main thread's
    wait() on that Event held its lock deadlocked the daemon on SIGTERM, now and then. The
    handler only appends to a list, which takes none."""

    def __init__(self) -> None:
        self._received: list[int] = []

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self._received.append(signum)

    def next(self) -> int | None:
        """The oldest signal not yet acted on, or None."""
        return self._received.pop(0) if self._received else None


def make_pollers(app: App, on_stored: Callable[[], None] = lambda: None, worker: str | None = None) -> list[ImapPoller]:
    lease = timedelta(seconds=app.config.intake.mailbox_lease_seconds)
    return [
        ImapPoller(name, app.registry.queue_id(name), queue.imap, app.factory, worker_id=worker or worker_id(),
                   lease=lease,
                   clock=app.clock, on_stored=on_stored)
        for name, queue in app.config.queues.items()
        if queue.imap is not None
    ]


def run_once(app: App, transport: Transport | None = None) -> tuple[int, int]:
    """Drain every IMAP mailbox, process every pending message, send everything due.

    Returns (processed, sent). A mailbox that cannot be reached is logged and recorded in
    ``maild mailboxes list``; the others are still drained.
    """
    transport = transport or from_config(app.config.outgoing)
    presence = presence_for(app.engine)  # held for the whole pass, so no other worker reaps it
    try:
        return _drain(app, transport, presence)
    finally:
        presence.close()


def _drain(app: App, transport: Transport, presence: Presence) -> tuple[int, int]:
    # One step after the other, except that cases are written between a poll's chunks
    # (_Behind). Fetching, processing and sending side by side in threads (as the daemon
    # does) was measured no faster here: the steps share one interpreter lock.
    reap(app.factory, presence, app.clock())
    ctx = app.intake_context()
    intake = IntakeRunner(app.factory, lambda: ctx, clock=app.clock, worker=presence.worker_id,
                          parser=parser_for(app.config), batch=batch_for(app.config))
    dispatch = DispatchRunner(app.factory, transport, app.config.outgoing, clock=app.clock, worker=presence.worker_id)
    behind = _Behind(intake)
    try:
        for poller in make_pollers(app, worker=presence.worker_id):
            try:
                while poller.run_once(between_chunks=behind.stored) > 0:
                    pass
            finally:
                poller.close()
        processed = behind.processed
        while (n := intake.run_once()) > 0:
            processed += n
    finally:
        intake.close()
    sweeper = SlaRunner(app.factory, lambda: ctx.rules, escalation.act(ctx), clock=app.clock)
    while sweeper.run_once() > 0:
        pass
    ReportMailRunner(app.factory, app.config, lambda: ctx.renderer, clock=app.clock).run_once()
    sent = 0
    while (n := dispatch.run_once()) > 0:
        sent += n
    return processed, sent


class _Behind:
    """Writes what a poll stores while the poll goes on, a batch behind it.

    Polling a whole mailbox before writing any of it left the parse worker idle for the
    poll, and the writer then waited on it (a quarter of its time, on a 10,000-message
    mailbox). Written between the poll's chunks, with the last stored batches left claimed
    (IntakeRunner parses the batches after the one it writes in a worker), those are parsed
    while the poll fetches and stores the next chunk."""

    def __init__(self, intake: IntakeRunner) -> None:
        self.intake = intake
        self.waiting = 0  # stored by the poll and not yet written (a batch claimed ahead included)
        self.processed = 0

    def stored(self, count: int) -> None:
        self.waiting += count
        # One batch to write, and whole ones left to parse (processing.AHEAD) meanwhile.
        while self.waiting >= (AHEAD + 1) * self.intake.batch:
            written = self.intake.run_once()
            if written == 0:
                return
            self.waiting -= written
            self.processed += written
