"""Intake is durable first: the SMTP/LMTP listener and ``maild inject`` against real databases."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import Env, free_port, mail
from maild.app import App
from maild import config as config_mod
from maild.intake.smtp import IntakeController, IntakeHandler


@contextmanager
def listener(env: Env) -> Iterator[int]:
    """The real aiosmtpd listener maild runs, with maild's handler, on a free port."""
    app = App(config_mod.load(env.config))
    app.prepare()
    cfg = app.config
    controller = IntakeController(IntakeHandler(cfg, app.registry, app.factory, lmtp=cfg.intake.smtp.protocol == "lmtp"),
                                  cfg)
    controller.start()
    try:
        yield cfg.intake.smtp.port
    finally:
        controller.stop()
        app.engine.dispose()


def stored_count(env: Env) -> int:
    with env.engine().connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM inbound_message")).scalar_one())


def test_smtp_accepts_queue_addresses_and_stores_before_250(env: Env) -> None:
    with listener(env) as port, smtplib.SMTP("127.0.0.1", port) as client:
        refused = client.sendmail("jane@customer.test", ["support@example.test", "Invoices@Example.test"],
                                  mail(to="support@example.test, invoices@example.test"))
        assert refused == {}
        # The 250 came back, so both rows (one per queue) are committed already.
        assert stored_count(env) == 2
    env.ok("run", "--once")
    # One message to two queues is one case (in the first queue that processed it), not two.
    assert len(env.json("cases", "list")) == 1
    assert sorted(r["outcome"] for r in env.json("inbound", "list")) == ["created", "duplicate"]


def test_smtp_refuses_unknown_recipient_at_rcpt_with_550(env: Env) -> None:
    with listener(env) as port, smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo()
        client.mail("jane@customer.test")
        code, text = client.rcpt("nobody@example.test")
        assert code == 550 and b"no such queue" in text
        client.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("jane@customer.test", ["nobody@example.test"], mail())
    assert stored_count(env) == 0


def test_smtp_refuses_oversized_message_with_552(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(max_size=2048)
    with listener(env) as port, smtplib.SMTP("127.0.0.1", port) as client:
        with pytest.raises(smtplib.SMTPResponseException) as err:
            client.sendmail("jane@customer.test", ["support@example.test"], mail(body="x" * 5000))
        assert err.value.smtp_code == 552
    assert stored_count(env) == 0


def test_smtp_answers_451_when_the_store_fails_and_nothing_is_lost(env: Env) -> None:
    raw = mail(message_id="<retry-me@customer.test>")
    with listener(env) as port:
        with env.engine().begin() as conn:
            conn.execute(sa.text("ALTER TABLE inbound_message RENAME TO inbound_message_away"))
        try:
            with smtplib.SMTP("127.0.0.1", port) as client, pytest.raises(smtplib.SMTPDataError) as err:
                client.sendmail("jane@customer.test", ["support@example.test"], raw)
            assert err.value.smtp_code == 451
        finally:
            with env.engine().begin() as conn:
                conn.execute(sa.text("ALTER TABLE inbound_message_away RENAME TO inbound_message"))
        # The sender kept the message (451) and retries: now it is stored.
        with smtplib.SMTP("127.0.0.1", port) as client:
            assert client.sendmail("jane@customer.test", ["support@example.test"], raw) == {}
    assert stored_count(env) == 1


def test_lmtp_gives_one_status_per_recipient(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env()
    text = env.config.read_text().replace('port = ', 'protocol = "lmtp"\nport = ', 1)
    env.config.write_text(text)
    with listener(env) as port:
        client = smtplib.LMTP("127.0.0.1", port)
        try:
            assert client.sendmail("jane@customer.test", ["support@example.test", "billing@example.test"], mail()) == {}
        finally:
            client.quit()
    assert stored_count(env) == 2


def test_inject_stores_and_exits_0(env: Env) -> None:
    result = env.maild("inject", "--queue", "support", input=mail())
    assert result.returncode == 0, result.stderr
    assert b"stored as inbound 1 in queue support" in result.stdout
    assert stored_count(env) == 1


def test_inject_loads_no_other_commands_modules(env: Env) -> None:
    """An MTA runs `maild inject` for every message: it imports its own command only, not
    the rest of the command line (reports, exports, the daemon), which cost a third of its
    start-up."""
    shows_modules = ("import sys\nfrom maild.cli.main import main\ntry:\n    main()\nfinally:\n"
                     "    print(' '.join(sorted(m for m in sys.modules if m.startswith('maild.'))))")
    result = subprocess.run([sys.executable, "-c", shows_modules, "--config", str(env.config), "inject", "-q",
                             "support"], input=mail(), capture_output=True, timeout=60, cwd=env.path)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.decode().split())
    assert {m for m in loaded if m.startswith("maild.cli.")} == {"maild.cli.main", "maild.cli.state",
                                                                 "maild.cli.inject"}
    assert not loaded & {"maild.views", "maild.daemon", "maild.reports", "maild.export", "maild.cases"}
    assert stored_count(env) == 1


def test_inject_finds_the_queue_from_the_recipients(env: Env) -> None:
    result = env.maild("inject", input=mail(to="Billing <invoices@example.test>"))
    assert result.returncode == 0, result.stderr
    assert b"queue billing" in result.stdout


def test_inject_unknown_queue_is_a_clear_error_with_ex_nouser(env: Env) -> None:
    result = env.maild("inject", "--queue", "sales", input=mail())
    assert result.returncode == 67
    assert b"unknown queue 'sales'" in result.stderr and b"Traceback" not in result.stderr
    result = env.maild("inject", input=mail(to="someone@else.test"))
    assert result.returncode == 67
    assert b"pass --queue" in result.stderr
    assert stored_count(env) == 0


def test_inject_empty_input_is_a_data_error(env: Env) -> None:
    result = env.maild("inject", "--queue", "support", input=b"")
    assert result.returncode == 65
    assert b"empty message" in result.stderr


def test_inject_temporary_failure_exits_75_so_the_mta_retries(env: Env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A database that cannot be reached: PostgreSQL on a closed port.
    bad = env.config.read_text().replace(f'url = "{env.db_url}"',
                                         f'url = "postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"')
    (tmp_path / "down.toml").write_text(bad)
    result = env.maild("--config", str(tmp_path / "down.toml"), "inject", "--queue", "support", input=mail())
    assert result.returncode == 75, result.stderr
    assert b"temporary failure" in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # SQLite's writer lock
def test_inject_exits_75_while_sqlite_is_locked(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(busy_timeout=0.2)
    locker = env.engine().connect()
    try:
        locker.exec_driver_sql("SELECT 1")  # our engine begins IMMEDIATE: this connection now holds the write lock
        result = env.maild("inject", "--queue", "support", input=mail())
        assert result.returncode == 75, result.stderr
    finally:
        locker.rollback()
        locker.close()
    assert env.maild("inject", "--queue", "support", input=mail()).returncode == 0


def test_daemon_and_inject_refuse_an_out_of_date_schema(make_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = make_env()
    with env.engine().begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0000'"))
    run = env.maild("run", "--once")
    assert run.returncode == 1
    assert b"run `maild db upgrade`" in run.stderr and b"Traceback" not in run.stderr
    inject = env.maild("inject", "--queue", "support", input=mail())
    assert inject.returncode == 75 and b"maild db upgrade" in inject.stderr


def test_a_fetched_batch_is_stored_once_per_message(env: Env) -> None:
    """The IMAP poller's batch store knows a message by its bytes, its Message-ID or its
    source key, whether it was stored before or earlier in the same batch."""
    from maild import inbound
    from maild.clock import utcnow
    from maild.db import transaction

    app = App(config_mod.load(env.config))
    app.prepare()
    qid = app.registry.queue_id("support")
    first, second = mail(message_id="<one@c.test>"), mail(message_id="<two@c.test>")
    try:
        with transaction(app.factory) as session:
            assert inbound.store_batch(session, qid, [(first, "INBOX/1/1")], source="imap", now=utcnow(),
                                       acked=False) == [False]
        batch = [
            (first, "INBOX/1/9"),  # the same bytes again
            (mail(message_id="<one@c.test>", subject="resent"), "INBOX/1/10"),  # the same Message-ID
            (mail(message_id="<new@c.test>"), "INBOX/1/1"),  # the same source key
            (second, "INBOX/1/11"),  # new
            (second, "INBOX/1/12"),  # new, then again in the same batch
            (mail(message_id="<two@c.test>", subject="again"), "INBOX/1/13"),
            (mail(subject="no id").replace(b"Message-ID:", b"X-Old-ID:"), "INBOX/1/14"),  # new, without an id
        ]
        with transaction(app.factory) as session:
            duplicates = inbound.store_batch(session, qid, batch, source="imap", now=utcnow(), acked=False)
        assert duplicates == [True, True, True, False, True, True, False]
    finally:
        app.close()
    rows = env.rows("SELECT message_id, source_key, source_acked FROM inbound_message ORDER BY id")
    assert [tuple(r) for r in rows] == [("<one@c.test>", "INBOX/1/1", False), ("<two@c.test>", "INBOX/1/11", False),
                                        (None, "INBOX/1/14", False)]


def _claim_all(env: Env) -> list[Any]:
    from datetime import UTC, datetime, timedelta

    from maild import inbound
    from maild.db import make_engine, make_sessionmaker

    engine = make_engine(env.db_url)
    try:
        return inbound.claim(make_sessionmaker(engine), now=datetime.now(UTC), lease=timedelta(minutes=5),
                             max_attempts=5, limit=100)
    finally:
        engine.dispose()


def test_a_claim_does_not_write_the_claimed_bytes_again(env: Env) -> None:
    # SQLite writes an updated row out whole, overflow pages and all: the bytes live in a
    # table of their own (inbound_raw) so that claiming a row (and later marking its
    # outcome) does not write its 20 KB to the WAL again. On PostgreSQL (which keeps large
    # values out of line anyway) the bytes' rows keep their versions (xmin).
    import sqlite3
    from contextlib import closing
    from pathlib import Path

    body = "A long report line that fills the page.\n" * 500  # 20 KB
    for n in range(20):
        env.inject(mail(subject=f"report {n}", body=body, message_id=f"<report{n}@customer.test>"))
    if not env.db_url.startswith("sqlite"):
        versions = "SELECT inbound_id, xmin::text FROM inbound_raw ORDER BY inbound_id"
        before = env.rows(versions)
        assert len(_claim_all(env)) == 20
        assert env.rows(versions) == before and len(before) == 20
        return
    path = sa.engine.make_url(env.db_url).database
    # Held open, so the WAL file stays (SQLite removes it when its last connection closes).
    with closing(sqlite3.connect(path, isolation_level=None)) as watcher:
        watcher.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size == 0
        claimed = _claim_all(env)
        assert len(claimed) == 20 and all(len(item.raw) > 20_000 for item in claimed)
        assert wal.stat().st_size < 100_000, "a claim of 20 rows wrote 400 KB of their bytes again"
