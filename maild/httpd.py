"""The daemon's small HTTP server: ``/metrics`` for Prometheus and ``/healthz`` for whatever
restarts or pages (systemd, Kubernetes, a load balancer), on a loopback port.

A wsgiref server with a thread per request, so a slow scrape never holds up a health check;
it runs in a thread of its own, started and stopped by the daemon.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from maild import health
from maild.app import App
from maild.config import listen_address
from maild.errors import MaildError
from maild.health import Health
from maild.prometheus_exporter import Metrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("maild.httpd")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # an unfinished request must not keep the daemon from exiting


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape every few seconds is noise; errors still reach the log


def serve(app: App, phase: Callable[[], str] = lambda: health.RUNNING) -> tuple[Metrics, HttpServer] | None:
    """The daemon's metrics and its (bound, not yet started) server; None when ``[metrics] listen`` is unset.
    ``phase``: the daemon's (health.STARTING, RUNNING, STOPPING); /healthz is ok only while running."""
    cfg = app.config
    if cfg.metrics.listen is None:
        return None
    metrics = Metrics({i: n for n, i in app.registry.queue_ids.items()}, app.factory)
    started_at = app.clock()

    def current() -> Health:
        return health.check(app.factory, app.engine, cfg, started_at, app.clock(), phase=phase())

    host, port = listen_address(cfg.metrics.listen)
    return metrics, HttpServer(host, port, application(metrics.registry, current))


def application(registry: CollectorRegistry, check: Callable[[], Health]) -> WSGIApplication:
    """Route ``/metrics`` to prometheus_client and ``/healthz`` to ``check``; 404 otherwise."""
    metrics_app = make_wsgi_app(registry)
    was_ok = [True]  # log when health changes, not at every probe

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return _metrics(metrics_app, environ, start_response)
        if path == "/healthz":
            result = check()
            if result.ok != was_ok[0] and result.phase == health.RUNNING:
                was_ok[0] = result.ok
                log.log(logging.INFO if result.ok else logging.WARNING, "health: %s",
                        "ok again" if result.ok else "failing: " + "; ".join(result.problems))
            return _health(result, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


def _metrics(metrics_app: WSGIApplication, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    try:
        served: Iterable[bytes] = metrics_app(environ, start_response)
        return served
    except Exception:  # into maild's log (JSON lines too), not wsgiref's bare traceback on stderr
        log.exception("metrics: scrape failed")
        start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"scrape failed; see maild's log\n"]


def _health(result: Health, start_response: StartResponse) -> list[bytes]:
    body = (json.dumps(result.as_json(), indent=1) + "\n").encode()
    start_response("200 OK" if result.ok else "503 Service Unavailable",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class HttpServer:
    """Serve ``app`` on ``host:port`` in a background thread until ``stop()``."""

    def __init__(self, host: str, port: int, app: WSGIApplication) -> None:
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            raise MaildError(f"metrics.listen: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="maild-httpd", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("serving /metrics and /healthz on http://%s", self.address)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
