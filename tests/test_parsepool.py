"""A backlog is parsed in a worker process while the writer stores the batch before it."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from conftest import Env, mail
from maild import config as config_mod
from maild import inbound
from maild.app import App
from maild.errors import ParseError
from maild.parsepool import GIVE_UP_AFTER, POOL_FROM, Parser, Worker, parse_one, usable_cpus
from maild.processing import AHEAD, IntakeRunner

BACKLOG = 2 * POOL_FROM + 5


def letters(count: int) -> list[bytes]:
    return [mail(subject=f"Question {n}", message_id=f"<q{n}@customer.test>",
                 sender=f"Customer {n} <c{n}@customer.test>") for n in range(count)]


@pytest.fixture
def app(env: Env) -> Iterator[App]:
    app = App(config_mod.load(env.config))
    app.prepare()
    queue = app.registry.queue_id("support")
    for raw in letters(BACKLOG):
        inbound.add(app.factory, [queue], raw, source="test", now=datetime.now(UTC))
    yield app
    app.close()


def test_a_worker_parses_exactly_as_the_writer_would() -> None:
    raws = [*letters(POOL_FROM), b"\x00 not mail at all"]
    parser = Parser(workers=1)
    try:
        pending = parser.submit(raws)
        assert pending.in_worker
        got = pending.result()
    finally:
        parser.close()
    want = [parse_one(raw) for raw in raws]
    assert got[:-1] == want[:-1]
    assert isinstance(got[-1], ParseError) and str(got[-1]) == str(want[-1])


def with_file(n: int) -> bytes:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"c{n}@customer.test", "support@example.test", f"log {n}"
    msg.set_content("See the log.\n")
    msg.add_attachment(f"line {n}\n".encode() * 50, maintype="text", subtype="plain", filename="app.log")
    return msg.as_bytes()


def test_a_worker_stores_the_attachments_so_the_writer_need_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from maild.attachments import load

    parser = Parser(workers=1, store=tmp_path)
    try:
        pending = parser.submit([with_file(n) for n in range(POOL_FROM)])
        assert pending.in_worker
        got = pending.result()
    finally:
        parser.close()
    for n, parsed in enumerate(got):
        assert not isinstance(parsed, ParseError)
        [att] = parsed.attachments
        assert att.sha256 is not None and load(tmp_path, att.sha256) == att.content == f"line {n}\n".encode() * 50


def test_the_next_messages_are_parsed_while_an_attachment_is_written(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Any) -> None:
    # Each write ends in an fsync; parsing waited for every one of them.
    from maild import attachments, parsepool

    raws = [with_file(n) for n in range(5)]
    parsed_all = threading.Event()

    def parse_counting(raw: bytes) -> Any:
        result = parse_one(raw)
        if raw is raws[-1]:
            parsed_all.set()
        return result

    def slow_store(data_dir: Any, content: bytes) -> str:
        assert parsed_all.wait(10), "parsing waited for the first attachment's write"
        return "digest"

    monkeypatch.setattr(parsepool, "parse_one", parse_counting)
    monkeypatch.setattr(attachments, "store", slow_store)
    got = parsepool.parse_all_and_store(raws, tmp_path)
    assert [att.sha256 for parsed in got for att in parsed.attachments] == ["digest"] * 5


def test_an_attachment_that_could_not_be_written_is_left_to_the_writer(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Any) -> None:
    from maild import attachments, parsepool

    def full_disk(data_dir: Any, content: bytes) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(attachments, "store", full_disk)
    [parsed] = parsepool.parse_all_and_store([with_file(1)], tmp_path)
    [att] = parsed.attachments
    assert att.sha256 is None and att.content == b"line 1\n" * 50


def test_a_small_batch_is_parsed_in_process() -> None:
    parser = Parser(workers=1)
    pending = parser.submit(letters(POOL_FROM - 1))
    assert not pending.in_worker and parser._workers == []  # no worker started for a trickle
    assert len(pending.result()) == POOL_FROM - 1


def runner(app: App) -> IntakeRunner:
    return IntakeRunner(app.factory, app.intake_context, batch=POOL_FROM, parser=Parser(workers=1))


def claimed_rows(env: Env) -> int:
    return env.count("SELECT count(*) FROM inbound_message WHERE state = 'received' AND claimed_until IS NOT NULL")


def test_a_backlog_drains_into_one_case_per_message(env: Env, app: App) -> None:
    intake = runner(app)
    try:
        assert intake.run_once() == POOL_FROM
        # The next batches, AHEAD of them, are claimed and parsing while this one is written.
        assert AHEAD == 2 and claimed_rows(env) == min(AHEAD * POOL_FROM, BACKLOG - POOL_FROM) == 15
        while intake.run_once():
            pass
    finally:
        intake.close()
    assert env.count("SELECT count(*) FROM cases") == BACKLOG
    assert env.count("SELECT count(*) FROM inbound_message WHERE state = 'processed'") == BACKLOG
    assert env.count("SELECT count(DISTINCT case_id) FROM inbound_message") == BACKLOG


def test_stopping_hands_back_the_batches_claimed_ahead(env: Env, app: App) -> None:
    intake = runner(app)
    intake.run_once()
    intake.close()
    assert claimed_rows(env) == 0, "another worker may take them at once"
    IntakeRunner(app.factory, app.intake_context, batch=BACKLOG).run_once()
    assert env.count("SELECT count(*) FROM cases") == BACKLOG


def test_a_runner_told_to_stop_hands_back_what_it_claimed(env: Env, app: App) -> None:
    intake = runner(app)
    try:
        assert intake.run_once() == POOL_FROM
        assert claimed_rows(env) == BACKLOG - POOL_FROM
        intake.stop()
        assert intake.run_once() == 0
        assert claimed_rows(env) == 0, "the batch in hand and every batch claimed ahead are free again"
    finally:
        intake.close()


def test_a_parser_process_that_dies_costs_no_message(env: Env, app: App) -> None:
    intake = runner(app)
    try:
        intake.run_once()
        workers = intake.parser._workers
        assert workers
        for worker in workers:  # the worker crashes mid-batch, as a parser bug could make it
            os.kill(worker.process.pid, signal.SIGKILL)
        while intake.run_once():
            pass
    finally:
        intake.close()
    assert env.count("SELECT count(*) FROM cases") == BACKLOG
    assert env.count("SELECT count(*) FROM inbound_message WHERE state = 'quarantined'") == 0


def test_maild_run_with_a_parse_worker_turns_a_backlog_into_cases(env: Env) -> None:
    """As an admin runs it: `parse_workers = 1` in the config, the installed `maild run --once`
    parses the backlog in its worker process (it never falls back) and acknowledges every case."""
    env.config.write_text(env.config.read_text().replace("[intake]\n", "[intake]\nparse_workers = 1\n", 1))
    count = POOL_FROM + 2
    for raw in letters(count):
        env.inject(raw)
    done = env.maild("run", "--once", timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert b"parser process died" not in done.stderr, "parsed by the worker, not in-process after a failure"
    assert env.count("SELECT count(*) FROM cases") == count
    assert len(env.peer.wait_for(count)) == count, "one acknowledgement per case"


def test_maild_run_by_default_parses_in_a_worker_on_sqlite_only(env: Env) -> None:
    """The shipped default ("auto"): the installed `maild run --once` starts a parse worker
    on SQLite when a second CPU is there, and none on PostgreSQL (more daemons scale it)."""
    assert "parse_workers" not in env.config.read_text()
    count = POOL_FROM + 2
    for raw in letters(count):
        env.inject(raw)
    done = env.maild("run", "--once", timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    started = b"started 1 parse worker process(es)" in done.stderr
    assert started == (env.db_url.startswith("sqlite") and usable_cpus() >= 2), done.stderr.decode()[-2000:]
    assert b"parser process died" not in done.stderr
    assert env.count("SELECT count(*) FROM cases") == count
    assert len(env.peer.wait_for(count)) == count, "one acknowledgement per case"


def test_a_worker_that_cannot_start_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Worker, "COMMAND", ("/nonexistent/python3", "-m", "maild.parseworker"))
    raws = letters(POOL_FROM)
    parser = Parser(workers=1)
    pending = parser.submit(raws)
    assert not pending.in_worker and parser.failures == 1
    assert pending.result() == [parse_one(raw) for raw in raws]


def test_workers_that_keep_dying_are_given_up(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A broken installation must not start a dying worker for every batch forever."""
    monkeypatch.setattr(Worker, "COMMAND", (sys.executable, "-c", "import sys; sys.exit(3)"))
    raws = letters(POOL_FROM)
    want = [parse_one(raw) for raw in raws]
    parser = Parser(workers=1)
    try:
        with caplog.at_level(logging.WARNING, logger="maild.intake"):
            for _ in range(GIVE_UP_AFTER):
                pending = parser.submit(raws)
                assert pending.in_worker
                assert pending.result() == want, "each failed batch is parsed in-process"
        assert parser.workers == 0
        assert "parsing in-process from now on" in caplog.text
        assert not parser.submit(raws).in_worker and parser._workers == []
    finally:
        parser.close()


def test_a_batch_the_workers_parse_clears_earlier_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    raws = letters(POOL_FROM)
    parser = Parser(workers=1)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(Worker, "COMMAND", (sys.executable, "-c", "import sys; sys.exit(3)"))
            parser.submit(raws).result()
        assert parser.failures == 1
        pending = parser.submit(raws)
        assert pending.in_worker
        assert pending.result() == [parse_one(raw) for raw in raws]
        assert parser.failures == 0 and parser.workers == 1
    finally:
        parser.close()



@pytest.mark.parametrize("setting", ["auto", 7])
def test_maild_run_writes_a_backlog_in_batches_of_intake_batch(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                                setting: str | int) -> None:
    """`intake.batch`, as `run --once` (and the daemon) use it: "auto" is 50 messages a
    transaction on SQLite, where one writer holds the database, and 20 on PostgreSQL, where
    workers share a backlog; a number is taken as it is."""
    from maild.daemon import run_once
    from maild.models import Queue
    from maild.transport import MemoryTransport

    if setting != "auto":
        env.config.write_text(env.config.read_text().replace("[intake]\n", f"[intake]\nbatch = {setting}\n", 1))
    sizes: list[int] = []
    write = IntakeRunner.process_batch

    def counted(self: IntakeRunner, items: list[Any], *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(items))
        return write(self, items, *args, **kwargs)

    monkeypatch.setattr(IntakeRunner, "process_batch", counted)
    app = App(config_mod.load(env.config))
    app.prepare()
    try:
        with app.factory() as session:
            queue_id = session.scalars(select(Queue.id).where(Queue.name == "support")).one()
        for raw in letters(55):
            inbound.add(app.factory, [queue_id], raw, source="inject", now=datetime.now(UTC))
        assert run_once(app, MemoryTransport())[0] == 55
    finally:
        app.close()
    batch = setting if isinstance(setting, int) else 50 if env.db_url.startswith("sqlite") else 20
    assert sizes == [batch] * (55 // batch) + [55 % batch]
