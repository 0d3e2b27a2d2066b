"""``maild run`` as operators run it: /metrics scraped over HTTP, /healthz failing when a
mailbox (a private Dovecot, stopped) or the database cannot be reached, and log lines
(plain or JSON) carrying the case key and Message-ID. Every wait is bounded."""

from __future__ import annotations

import json
import smtplib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import dovecot
from conftest import Env, Mailbox, mail, require_dovecot
from dovecot import free_port
from faultproxy import FaultProxy
from test_imap_daemon import start, stop, wait_until


def metrics_toml(port: int, max_age: str = "10m", log_format: str = "json") -> str:
    return (f'\n[metrics]\nlisten = "127.0.0.1:{port}"\nhealth_max_poll_age = "{max_age}"\n'
            f'\n[logging]\nformat = "{log_format}"\n')


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, frozenset(labels.items())), -1.0)


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}  # not listening yet


def wait_health(port: int, status: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (got := health(port))[0] != status:
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for /healthz {status} at {datetime.now(timezone.utc)}: {got}"
        time.sleep(0.2)
    return got[1]


def send(env: Env, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=10) as smtp:
        smtp.sendmail("jane@customer.test", ["support@example.test"], raw)


@pytest.fixture
def daemon() -> Iterator[Callable[[Env], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def run(env: Env) -> subprocess.Popen[bytes]:
        started.append(start(env))
        return started[-1]

    yield run
    for proc in started:
        if proc.poll() is None:
            stop(proc)


def log_lines(env: Env) -> list[str]:
    return (env.path / "maild.log").read_text().splitlines()


def test_metrics_are_scraped_over_http_during_a_run(make_env, daemon) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env: Env = make_env(smtp_enabled="true", extra=metrics_toml(port))
    env.peer.refuse_with = "451 4.3.0 relay busy"  # the acknowledgement's first attempt fails
    proc = daemon(env)
    assert wait_health(port, 200, 30) == {"status": "ok", "database": "ok", "mailboxes": {}}
    send(env, mail(message_id="<first@customer.test>"))
    send(env, b"\x00\x01 not a mail message at all\r\n")
    wait_until(lambda: sample(port, "maild_messages_quarantined_total", queue="support") == 1, 30, "the quarantine")
    wait_until(lambda: sample(port, "maild_outbox_send_failures_total", kind="temporary") >= 1, 30, "a failed send")
    env.peer.refuse_with = None
    env.peer.wait_for(1)
    wait_until(lambda: sample(port, "maild_outbox_sent_total") == 1, 30, "the sent counter")
    got = scrape(port)

    def value(name: str, **labels: str) -> float:
        return got[name, frozenset(labels.items())]

    assert value("maild_messages_received_total", queue="support") == 2
    assert value("maild_messages_received_total", queue="billing") == 0
    assert value("maild_messages_processed_total", queue="support", outcome="created") == 1
    assert value("maild_processing_latency_seconds_count", queue="support") == 2
    assert value("maild_inbound_messages", queue="support", state="quarantined") == 1
    assert value("maild_inbound_messages", queue="support", state="received") == 0
    assert value("maild_outbox_messages", state="pending") == 0
    assert value("maild_outbox_send_failures_total", kind="permanent") == 0
    assert value("maild_database_up") == 1
    assert not any(name.endswith("_created") for name, _ in got), "no per-series creation timestamps"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)
    assert missing.value.code == 404
    assert stop(proc) == 0
    [case] = env.json("cases", "list")
    entries = [json.loads(line) for line in log_lines(env)]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    created = [e for e in entries if e["logger"] == "maild.intake" and "created" in e["message"]]
    assert [(e["case"], e["msgid"]) for e in created] == [(case["reference"], "<first@customer.test>")]
    assert any(e["logger"] == "maild.intake" and e["level"] == "WARNING" and "case" not in e for e in entries), \
        "the quarantined message has no case and no Message-ID"


def test_plain_log_lines_carry_the_case_key_and_message_id(env: Env) -> None:
    env.inject(mail(message_id="<plain@customer.test>"), "--queue", "support")
    result = env.maild("run", "--once")
    assert result.returncode == 0, result.stderr
    [case] = env.json("cases", "list")
    [line] = [ln for ln in result.stderr.decode().splitlines() if "maild.intake:" in ln]
    assert line.endswith(f"created {case['reference']} acknowledged case={case['reference']} "
                         "msgid=<plain@customer.test>"), line


@pytest.fixture
def own_dovecot() -> Iterator[dovecot.Dovecot]:
    """A Dovecot of this test's own: stopping it must not disturb other tests' mailboxes."""
    require_dovecot()
    server = dovecot.start(users={"healthbox": "pw-health"})
    try:
        yield server
    finally:
        server.stop()


def test_healthz_fails_when_dovecot_stops_and_recovers(make_env, own_dovecot, daemon) -> None:  # type: ignore[no-untyped-def]
    box = Mailbox(own_dovecot, "healthbox", "pw-health")
    port = free_port()
    env: Env = make_env(extra=box.toml(poll_interval=0.5, idle=False, timeout=2) + metrics_toml(port, "3s"))
    daemon(env)
    box.append(mail(subject="before the outage"))
    wait_until(lambda: len(env.json("cases", "list")) == 1, 30, "the case from IMAP")
    wait_until(lambda: health(port)[1]["mailboxes"]["support"]["last_success"] is not None, 30, "a healthy poll")
    assert health(port)[0] == 200
    assert sample(port, "maild_messages_received_total", queue="support") == 1
    own_dovecot.stop()
    # A stopped Dovecot still serves connections already open for up to half a minute, and
    # polls over them succeed; the mailbox fails once that connection goes too.
    body = wait_health(port, 503, 90)
    [problem] = body["problems"]
    assert problem.startswith("mailbox support has not polled successfully since "), problem
    assert "cannot connect to 127.0.0.1" in problem, "the mailbox's last error says why"
    assert body["database"] == "ok"
    assert sample(port, "maild_mailbox_failing", queue="support") == 1
    assert sample(port, "maild_mailbox_poll_errors_total", queue="support") >= 1
    own_dovecot.start()
    wait_health(port, 200, 60)
    assert sample(port, "maild_mailbox_failing", queue="support") == 0
    assert sample(port, "maild_mailbox_last_success_timestamp_seconds", queue="support") > 0


def test_a_deleted_sqlite_database_is_never_made_again_empty(tmp_path: Path) -> None:
    """Once maild has opened its database, a new connection to a file deleted meanwhile
    fails instead of making an empty database in its place, where whatever maild wrote
    would be lost (and which /healthz would take for a broken one, not a missing one)."""
    import sqlalchemy as sa

    from maild.db import make_engine

    database = tmp_path / "maild.db"
    engine = make_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (a INTEGER)"))
    engine.dispose()  # no pooled connection left: the next one opens the file anew
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    with pytest.raises(sa.exc.OperationalError, match="unable to open"):
        engine.connect()
    assert not database.exists()


def test_healthz_fails_when_the_database_cannot_be_reached(make_env, db_url: str, daemon) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    proxy = None
    if db_url.startswith("postgresql"):
        proxy = FaultProxy(5432)  # the real server, behind a connection the test can cut
        assert "@127.0.0.1:5432/" in db_url
    env: Env = make_env(extra=metrics_toml(port))
    if proxy is not None:
        env.config.write_text(env.config.read_text().replace(db_url, db_url.replace(":5432/", f":{proxy.port}/")))
    try:
        daemon(env)
        wait_health(port, 200, 30)
        if proxy is not None:
            proxy.cut()
            body = wait_health(port, 503, 30)
            assert body["problems"][0].startswith("database unreachable: "), body
            assert sample(port, "maild_database_up") == 0
            proxy.resume()
            wait_health(port, 200, 30)
            assert sample(port, "maild_database_up") == 1
        else:
            database = Path(db_url.split("///", 1)[1])
            for suffix in ("", "-wal", "-shm"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
            body = wait_health(port, 503, 30)
            assert body["problems"] == [f"the SQLite database file {database} is gone"]
    finally:
        if proxy is not None:
            proxy.close()


def test_metrics_listen_must_be_loopback(env: Env) -> None:
    with env.config.open("a") as config:
        config.write('\n[metrics]\nlisten = "0.0.0.0:9464"\n')
    result = env.maild("run")
    assert result.returncode == 2
    assert result.stderr.decode() == (
        f"maild: {env.config}: metrics.listen: 0.0.0.0 is not a loopback address; /metrics and /healthz have no "
        "authentication, so maild serves them on 127.0.0.1 or [::1] only (put a proxy in front to publish them)\n")


def test_a_bad_max_poll_age_names_the_key(env: Env) -> None:
    with env.config.open("a") as config:
        config.write('\n[metrics]\nlisten = "127.0.0.1:9464"\nhealth_max_poll_age = "ten minutes"\n')
    result = env.cli("mailboxes", "list")
    assert result.exit_code == 2
    assert f"{env.config}: metrics.health_max_poll_age: expected a duration like 10m, 1h30m or 30s, " \
        "got 'ten minutes'" in result.output


def test_a_metrics_port_in_use_stops_the_daemon_with_one_line(make_env) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env: Env = make_env(extra=metrics_toml(port))
        result = env.maild("run", timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        f"maild: metrics.listen: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert b"Traceback" not in result.stderr


def test_sla_warnings_and_breaches_are_counted_per_queue(make_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from test_sla import T0, app_at, sla_env, sweep

    from maild import metrics
    from maild.daemon import run_once
    from maild.prometheus_exporter import Metrics
    from maild.transport import MemoryTransport

    env = sla_env(make_env, tmp_path)
    env.inject(mail(subject="slow", message_id="<slow@customer.test>"))
    app = app_at(env, T0)
    counted = Metrics({i: n for n, i in app.registry.queue_ids.items()}, app.factory)
    metrics.activate(counted)
    try:
        run_once(app, MemoryTransport())
        for minutes in (11, 12, 16, 17):  # warning, nothing, breach (which moves the case to billing), nothing
            sweep(env, T0 + timedelta(minutes=minutes))
    finally:
        metrics.activate(None)
        app.close()

    def value(name: str, queue: str) -> float | None:
        return counted.registry.get_sample_value(name, {"queue": queue})

    assert (value("maild_sla_warnings_total", "support"), value("maild_sla_breaches_total", "support")) == (1, 1)
    assert (value("maild_sla_warnings_total", "billing"), value("maild_sla_breaches_total", "billing")) == (0, 0)
    assert counted.registry.get_sample_value("maild_messages_processed_total",
                                             {"queue": "support", "outcome": "created"}) == 1
    assert counted.registry.get_sample_value("maild_inbound_messages", {"queue": "support", "state": "received"}) == 0


def test_healthz_is_ok_only_while_the_daemon_runs(make_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # /healthz answers from the daemon's first moment (a port conflict should stop it before
    # it takes mail), but a client waiting for it must find the SMTP port open, and a
    # balancer must stop sending to a daemon on its way out: "starting" and "stopping" (503).
    import smtplib
    import threading

    from maild.daemon import Daemon
    from maild.intake.smtp import IntakeController
    from maild.transport import MemoryTransport

    port = free_port()
    env: Env = make_env(smtp_enabled="true", extra=metrics_toml(port))
    gate = threading.Event()
    for name in ("start", "stop"):  # each holds the daemon at its listener until the gate opens
        original = getattr(IntakeController, name)

        def held(self: IntakeController, original: Callable[[IntakeController], None] = original) -> None:
            assert gate.wait(30), "the test never opened the gate"
            original(self)

        monkeypatch.setattr(IntakeController, name, held)
    app = env.app()
    daemon = Daemon(app, MemoryTransport())
    try:
        starting = threading.Thread(target=daemon.start)
        starting.start()
        assert wait_health(port, 503, 10)["status"] == "starting"
        with pytest.raises(OSError):
            smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=2)
        gate.set()
        starting.join(30)
        assert wait_health(port, 200, 10)["status"] == "ok"
        smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=10).quit()  # open by the time /healthz said ok
        gate.clear()
        stopping = threading.Thread(target=daemon.stop)
        stopping.start()
        assert wait_health(port, 503, 10)["status"] == "stopping"
        gate.set()
        stopping.join(30)
        assert daemon.stopped.is_set()
    finally:
        gate.set()
        if not daemon.stopped.is_set():
            daemon.stop()
        app.close()
