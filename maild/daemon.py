"""Build maild's runners from config, run them, and handle SIGTERM (finish and exit) and SIGHUP (reload).

One process: the SMTP/LMTP listener runs in aiosmtpd's controller thread, and each runner
(intake, dispatch) is a thread of its own looping over ``run_once``. On PostgreSQL more
processes can run the same config side by side; the runners claim rows with SKIP LOCKED.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from types import FrameType
from typing import Any

from maild import config as config_mod
from maild import escalation, httpd, metrics
from maild.app import App, load_rules, required_templates
from maild.cases import IntakeContext
from maild.dispatch import DispatchRunner
from maild.errors import ConfigError
from maild.intake.imap import ImapPoller
from maild.intake.smtp import IntakeController, IntakeHandler
from maild.liveness import Presence, ReaperRunner, presence_for, reap, worker_id
from maild.parsepool import Parser, auto_workers
from maild.processing import IntakeRunner
from maild.reportmail import ReportMailRunner
from maild.runner import Runner
from maild.sla import SlaRunner
from maild.templates import Renderer
from maild.transport import Transport, from_config

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
                                   worker=me, parser=Parser(auto_workers(app.config.intake.parse_workers)))
        self.pollers = make_pollers(app, on_stored=self.intake.poke, worker=me)
        self.reaper = ReaperRunner(app.factory, self.presence, clock=app.clock)
        self.sla = SlaRunner(app.factory, lambda: self._context().rules, self._act, clock=app.clock)
        self.runners: list[Runner] = [self.intake, self.dispatch, *self.pollers, self.reaper, self.sla]
        self.runners += [ReportMailRunner(app.factory, app.config, lambda: self._context().renderer, clock=app.clock)]
        self._threads: list[threading.Thread] = []
        self._listener: IntakeController | None = None
        self._http: httpd.HttpServer | None = None
        self.stopped = threading.Event()

    def _context(self) -> IntakeContext:
        return self._context_value

    def _act(self, *args: Any) -> str:
        return escalation.act(self._context())(*args)  # the running templates, even after SIGHUP

    def start(self) -> None:
        cfg = self.app.config
        self._start_http()  # first: a port already taken stops the daemon before it takes any mail
        if cfg.intake.smtp.enabled:
            handler = IntakeHandler(cfg, self.app.registry, self.app.factory, on_stored=self.intake.poke,
                                    clock=self.app.clock, lmtp=cfg.intake.smtp.protocol == "lmtp")
            self._listener = IntakeController(handler, cfg)
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
        log.info("maild started as worker %s: %d queue(s), %d IMAP mailbox(es), outgoing via %s",
                 self.presence.worker_id, len(cfg.queues), len(self.pollers), cfg.outgoing.transport)

    def stop(self) -> None:
        """Stop taking mail first, then let each runner finish the item in hand."""
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

    def _start_http(self) -> None:
        served = httpd.serve(self.app)
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
        """Install signal handlers (main thread only) and block until SIGTERM/SIGINT."""
        term, hup = threading.Event(), threading.Event()

        def on_term(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: finishing the message in hand, then exiting", signal.Signals(signum).name)
            term.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, lambda signum, frame: hup.set())
        self.start()
        while not term.wait(0.2):
            if hup.is_set():
                hup.clear()
                self.reload()
        self.stop()


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
    ``maild mailboxes list``; the others are still drained. As in the daemon, fetching,
    processing and sending overlap: messages are processed as they are stored, and
    acknowledgements go out while later messages are processed.
    """
    transport = transport or from_config(app.config.outgoing)
    presence = presence_for(app.engine)  # held for the whole pass, so no other worker reaps it
    try:
        return _drain(app, transport, presence)
    finally:
        presence.close()


def _drain(app: App, transport: Transport, presence: Presence) -> tuple[int, int]:
    reap(app.factory, presence, app.clock())
    ctx = app.intake_context()
    dispatch = DispatchRunner(app.factory, transport, app.config.outgoing, clock=app.clock, worker=presence.worker_id)
    intake = IntakeRunner(app.factory, lambda: ctx, clock=app.clock, worker=presence.worker_id,
                          on_processed=dispatch.poke, parser=Parser(auto_workers(app.config.intake.parse_workers)))
    pollers = make_pollers(app, on_stored=intake.poke, worker=presence.worker_id)
    fetching = _Until(pollers, intake.poke)
    sending, processed = _Until([dispatch]), 0
    fetching.start()
    sending.start()
    try:
        processed = _process(intake, fetching)
        sweeper = SlaRunner(app.factory, lambda: ctx.rules, escalation.act(ctx), clock=app.clock)
        while sweeper.run_once() > 0:
            pass
        ReportMailRunner(app.factory, app.config, lambda: ctx.renderer, clock=app.clock).run_once()
    finally:
        stopped = [_finished(fetching), _finished(sending)]  # the sender sends what is still due
        intake.close()
        for poller in pollers:
            poller.close()
    failed = next((error for error in stopped if error is not None), None)
    if failed is not None:
        raise failed
    return processed, sending.handled


def _finished(thread: _Until) -> BaseException | None:
    try:
        thread.finish()
    except BaseException as exc:  # noqa: BLE001 - handed back: the caller raises the first one
        return exc
    return None


def _process(intake: IntakeRunner, fetching: _Until) -> int:
    """Process stored messages until the mailboxes are drained and nothing is left."""
    processed = 0
    while True:
        fetched = fetching.done.is_set()  # read first: an empty claim after it means all is in
        n = intake.run_once()
        processed += n
        if n == 0:
            if fetched:
                return processed
            intake.pause(0)  # until the pollers store more (they poke) or the poll interval


class _Until(threading.Thread):
    """Runs runners until each has nothing left, after ``finish()`` is called or by itself.

    Fetchers (pollers) stop by themselves once their mailboxes are empty; the sender keeps
    going while messages are still processed, and empties the outbox once told to finish.
    """

    def __init__(self, runners: list[Any], on_done: Callable[[], None] = lambda: None) -> None:
        super().__init__(name=f"maild-{'-'.join(sorted({r.name for r in runners})) or 'idle'}", daemon=True)
        self.runners, self.on_done = runners, on_done
        self.by_itself = all(isinstance(r, ImapPoller) for r in runners)
        self.done, self.finishing, self.handled = threading.Event(), threading.Event(), 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                last_pass = self.by_itself or self.finishing.is_set()
                n = sum(runner.run_once() for runner in self.runners)
                self.handled += n
                if n == 0 and last_pass:
                    return
                if n == 0 and self.runners:
                    self.runners[0].wakeup.wait(0.2)  # poked when there is more (an acknowledgement queued)
                    self.runners[0].wakeup.clear()
        except BaseException as exc:  # re-raised in the main thread by finish()
            self.error = exc
        finally:
            self.done.set()
            self.on_done()

    def finish(self) -> None:
        self.finishing.set()
        for runner in self.runners:
            runner.poke()
        self.join()
        if self.error is not None:
            raise self.error
