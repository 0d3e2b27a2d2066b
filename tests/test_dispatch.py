"""The dispatcher sends each outbox row once, backs off on temporary failures, sends a row
whose fate a crash left unknown again with the same bytes (or parks it, with
``[outgoing] unknown = "hold"``), and never mails a suppressed address."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import Env, mail
from maild import config as config_mod
from maild import metrics
from maild.app import App
from maild.dispatch import DispatchRunner, backoff
from maild.errors import PermanentFailure, TemporaryFailure
from maild.prometheus_exporter import Metrics
from maild.transport import Envelope, MemoryTransport, SmtpTransport


class FakeClock:
    """Starts just after the real now, so rows queued in real time are already due."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now


def _queued(env: Env, count: int = 1, senders: tuple[str, ...] = ()) -> App:
    """``count`` new cases' acknowledgements in the outbox (one per sender, if given)."""
    for i in range(count):
        env.inject(mail(subject=f"case {i}"))
    for sender in senders:
        env.inject(mail(subject=f"from {sender}", sender=sender))
    app = App(config_mod.load(env.config))
    app.prepare()
    from maild.processing import IntakeRunner

    IntakeRunner(app.factory, app.intake_context).run_once()
    return app


def _states(env: Env) -> list[tuple[str, int]]:
    return [(r["state"], r["attempts"]) for r in env.json("outbox", "list")]


def test_temporary_failure_backs_off_then_sends(env: Env) -> None:
    app = _queued(env)
    clock = FakeClock()
    transport = MemoryTransport(fail_with=TemporaryFailure("451 try later"))
    runner = DispatchRunner(app.factory, transport, app.config.outgoing, clock=clock)
    try:
        assert runner.run_once() == 1
        assert _states(env) == [("pending", 1)]
        assert runner.run_once() == 0, "not due again before the backoff runs out"
        transport.fail_with = None
        clock.now += timedelta(seconds=2)  # backoff_initial is 1 s in the test config (+-10%)
        assert runner.run_once() == 1
    finally:
        app.engine.dispose()
    assert _states(env) == [("sent", 2)]
    assert len(transport.sent) == 1


def test_permanent_failure_is_not_retried(env: Env) -> None:
    app = _queued(env)
    transport = MemoryTransport(fail_with=PermanentFailure("550 no such user"))
    runner = DispatchRunner(app.factory, transport, app.config.outgoing, clock=FakeClock())
    try:
        runner.run_once()
        assert runner.run_once() == 0
    finally:
        app.engine.dispose()
    [row] = env.json("outbox", "list")
    assert row["state"] == "failed" and "550 no such user" in row["last_error"]
    env.ok("outbox", "retry", str(row["id"]))
    assert env.json("outbox", "list")[0]["state"] == "pending"


def test_gives_up_after_max_attempts(env: Env) -> None:
    app = _queued(env)
    clock = FakeClock()
    runner = DispatchRunner(app.factory, MemoryTransport(fail_with=TemporaryFailure("down")),
                            app.config.outgoing.model_copy(update={"max_attempts": 3}), clock=clock)
    try:
        for _ in range(5):
            runner.run_once()
            clock.now += timedelta(hours=2)
    finally:
        app.engine.dispose()
    [row] = env.json("outbox", "list")
    assert row["state"] == "failed" and row["attempts"] == 3 and "gave up after 3 attempts" in row["last_error"]


@contextmanager
def counting(app: App) -> Iterator[Metrics]:
    """The metrics a daemon serves on /metrics, counting while the block runs."""
    m = Metrics({}, app.factory)
    metrics.activate(m)
    try:
        yield m
    finally:
        metrics.activate(None)


class DiesAfterHandingOver(MemoryTransport):
    """The relay takes the first message, then the worker dies before it can record that
    (an error no handler expects stands in for the kill: the row stays 'sending')."""

    def send(self, envelope: Envelope) -> None:
        super().send(envelope)
        if len(self.sent) == 1:
            raise RuntimeError("killed")


def test_crash_mid_send_sends_the_same_bytes_again_after_the_lease(env: Env) -> None:
    app = _queued(env)
    clock = FakeClock()
    transport = DiesAfterHandingOver()
    runner = DispatchRunner(app.factory, transport, app.config.outgoing, clock=clock)
    try:
        with counting(app) as m:
            with pytest.raises(RuntimeError):
                runner.run_once()
            assert _states(env) == [("sending", 1)]
            assert runner.run_once() == 0, "still leased: the worker may be alive"
            clock.now += timedelta(minutes=6)
            assert runner.run_once() == 1
            assert runner.run_once() == 0, "sent once more, not again and again"
            assert m.registry.get_sample_value("maild_outbox_resent_total") == 1
    finally:
        app.engine.dispose()
    first, again = transport.sent
    assert again == first, "the same stored bytes, so the same Message-ID"
    [row] = env.json("outbox", "list")
    assert f"Message-ID: {row['message_id']}".encode() in again.raw
    assert (row["state"], row["attempts"]) == ("sent", 2), "the interrupted attempt counts"
    assert "interrupted mid-send and sent again with the same Message-ID" in row["last_error"]


def _interrupted(env: Env, clock: FakeClock, attempts: int = 1) -> None:
    """A process that marked the row 'sending' and died before recording the result."""
    engine = env.engine()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE outbound_message SET state='sending', attempts=:n, claimed_until=:t"),
                         {"n": attempts, "t": clock.now + timedelta(minutes=5)})
    finally:
        engine.dispose()


def test_crash_mid_send_with_unknown_hold_parks_the_row_and_never_resends_it(env: Env) -> None:
    app = _queued(env)
    clock = FakeClock()
    try:
        _interrupted(env, clock)
        transport = MemoryTransport()
        hold = app.config.outgoing.model_copy(update={"unknown": "hold"})
        runner = DispatchRunner(app.factory, transport, hold, clock=clock)
        with counting(app) as m:
            assert runner.run_once() == 0, "still leased: the other process may be alive"
            clock.now += timedelta(minutes=6)
            runner.run_once()
            runner.run_once()
            assert m.registry.get_sample_value("maild_outbox_resent_total") == 0
            assert m.registry.get_sample_value("maild_outbox_messages", {"state": "unknown"}) == 1
        assert transport.sent == []
        [row] = env.json("outbox", "list")
        assert row["state"] == "unknown" and "maild outbox retry" in row["last_error"]
        env.ok("outbox", "retry", str(row["id"]))  # the admin checked the relay's log
        clock.now = datetime.now(timezone.utc) + timedelta(seconds=1)
        runner.run_once()
        assert len(transport.sent) == 1
    finally:
        app.engine.dispose()


def test_an_interrupted_row_that_used_up_its_attempts_is_parked_not_resent(env: Env) -> None:
    """A message that kills its worker each time it is sent is not sent forever."""
    app = _queued(env)
    clock = FakeClock()
    try:
        _interrupted(env, clock, attempts=3)
        transport = MemoryTransport()
        three = app.config.outgoing.model_copy(update={"max_attempts": 3})
        clock.now += timedelta(minutes=6)
        DispatchRunner(app.factory, transport, three, clock=clock).run_once()
    finally:
        app.engine.dispose()
    assert transport.sent == []
    assert _states(env) == [("unknown", 3)]


def test_rows_are_sent_exactly_once_by_two_dispatchers(env: Env) -> None:
    app = _queued(env, count=5)  # the ack rate limit in the test config is 5 per sender
    other = App(config_mod.load(env.config))
    transport = MemoryTransport()
    clock = FakeClock()
    try:
        a = DispatchRunner(app.factory, transport, app.config.outgoing, clock=clock, batch=3)
        b = DispatchRunner(other.factory, transport, app.config.outgoing, clock=clock, batch=3)
        a._claim(clock.now)  # a holds a lease on three rows, as if mid-batch
        assert b.run_once() == 2, "b takes only the rows a did not claim"
        clock.now += timedelta(minutes=6)  # a's lease ran out without a sending anything
        assert a.run_once() == 3
        assert a.run_once() == b.run_once() == 0
    finally:
        app.engine.dispose()
        other.engine.dispose()
    ids = [e.raw.split(b"Message-ID: ")[1].split(b"\r\n")[0] for e in transport.sent]
    assert len(ids) == 5 == len(set(ids))


def test_smtp_transport_classifies_relay_answers(env: Env) -> None:
    from maild.config import SmtpRelayConfig
    from maild.transport import Envelope

    import pytest

    transport = SmtpTransport(SmtpRelayConfig(host="127.0.0.1", port=env.peer.port, timeout=5))
    envelope = Envelope("support@example.test", ["jane@customer.test"], mail())
    transport.send(envelope)
    assert len(env.peer.received) == 1
    env.peer.refuse_with = "451 4.3.0 busy"
    with pytest.raises(TemporaryFailure):
        transport.send(envelope)
    env.peer.refuse_with = "554 5.7.1 rejected"
    with pytest.raises(PermanentFailure):
        transport.send(envelope)
    from conftest import free_port

    closed = SmtpTransport(SmtpRelayConfig(host="127.0.0.1", port=free_port(), timeout=5))
    with pytest.raises(TemporaryFailure):
        closed.send(envelope)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    assert 27 <= backoff(1, 30, 3600) <= 33
    assert 108 <= backoff(3, 30, 3600) <= 132
    assert backoff(20, 30, 3600) <= 3960


def test_a_failure_mid_batch_keeps_what_was_sent_and_resends_only_the_message_in_flight(env: Env) -> None:
    """A row's result is written with the next row's 'sending' mark; when the transport
    raises something unforeseen, the rows already sent are still recorded as sent."""

    class BreaksOnSecond(MemoryTransport):
        broke = False

        def send(self, envelope):  # type: ignore[no-untyped-def]
            if len(self.sent) == 1 and not self.broke:
                self.broke = True
                raise RuntimeError("a bug in a transport")
            super().send(envelope)

    app = _queued(env, count=3)
    clock = FakeClock()
    transport = BreaksOnSecond()
    try:
        runner = DispatchRunner(app.factory, transport, app.config.outgoing, clock=clock)
        try:
            runner.run_once()
        except RuntimeError:
            pass
        else:
            raise AssertionError("the transport's error reached the runner")
        assert sorted(_states(env)) == [("pending", 0), ("sending", 1), ("sent", 1)]
        [sent] = [r for r in env.json("outbox", "list") if r["state"] == "sent"]
        assert _activity_sent(env, sent) == [True]
        clock.now += timedelta(minutes=6)
        assert runner.run_once() == 2, "the untouched row is sent later, the one in flight again"
    finally:
        app.engine.dispose()
    assert sorted(_states(env)) == [("sent", 1), ("sent", 1), ("sent", 2)]
    assert len(transport.sent) == 3


class FailsFirst(MemoryTransport):
    """Refuses the first message (temporarily or for good), takes the rest."""

    def __init__(self, failure: Exception) -> None:
        super().__init__()
        self.failure: Exception | None = failure

    def send(self, envelope):  # type: ignore[no-untyped-def]
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure
        super().send(envelope)


def _activity_sent(env: Env, outbox_row: dict) -> list[bool]:  # type: ignore[type-arg]
    case = env.json("cases", "show", outbox_row["case"])
    return [a["sent_at"] is not None for a in case["activities"] if a["kind"] == "outgoing_email"]


def test_each_result_is_recorded_with_the_next_rows_mark(env: Env) -> None:
    """A retry, a failure and a send, each recorded in the commit that marks the next row
    (on PostgreSQL one statement): the state, error, next attempt and the case's record."""
    # The failure first: a row left pending would be due again (1 s) while the next round queues.
    for failure, state in [(PermanentFailure("550 no"), "failed"), (TemporaryFailure("451 later"), "pending")]:
        app = _queued(env, count=2)
        clock = FakeClock()
        try:
            assert DispatchRunner(app.factory, FailsFirst(failure), app.config.outgoing, clock=clock).run_once() == 2
        finally:
            app.engine.dispose()
        rows = sorted(env.json("outbox", "list"), key=lambda r: r["id"])[-2:]
        assert [r["state"] for r in rows] == [state, "sent"]
        assert str(failure) in rows[0]["last_error"] and rows[1]["last_error"] is None
        assert [_activity_sent(env, r) for r in rows] == [[False], [True]]
        if state == "pending":  # backed off: backoff_initial is 1 s in the test config (+-10%)
            assert datetime.fromisoformat(rows[0]["next_attempt_at"]) > clock.now


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_sends_a_message_for_one_statement(env: Env) -> None:
    """On PostgreSQL each send is one autocommitted statement (its mark, with the previous
    result), not BEGIN, three statements and COMMIT."""
    app = _queued(env, count=4)
    statements: list[str] = []
    commits = 0

    def capture(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("SET LOCAL synchronous_commit"):  # the lazy commits' setting
            statements.append(statement.split()[0])

    def commit(conn: Any) -> None:
        nonlocal commits
        commits += 1

    sa.event.listen(app.engine, "before_cursor_execute", capture)
    sa.event.listen(app.engine, "commit", commit)
    try:
        assert DispatchRunner(app.factory, MemoryTransport(), app.config.outgoing, clock=FakeClock()).run_once() == 4
    finally:
        sa.event.remove(app.engine, "before_cursor_execute", capture)
        sa.event.remove(app.engine, "commit", commit)
        app.engine.dispose()
    # Parking (1), claiming (2: SELECT ... SKIP LOCKED, UPDATE), then one per message (the
    # first a mark alone, each other with the result before it as CTEs) and one for the last
    # result; COMMIT only for the parking and the claim.
    assert statements == ["UPDATE", "SELECT", "UPDATE", "UPDATE"] + ["WITH"] * 4, statements
    assert commits == 2
    assert [r["state"] for r in env.json("outbox", "list")] == ["sent"] * 4


def _suppression(env: Env, sql: str, **params: Any) -> None:
    engine = env.engine()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), {"now": datetime.now(timezone.utc), **params})
    finally:
        engine.dispose()


def test_a_suppressed_address_is_not_mailed_until_the_suppression_is_lifted(env: Env) -> None:
    """Suppressed when its row has suppressed_at (maild.bounces sets it after hard bounces);
    recipients are matched whatever their case, since the address is stored lower-case."""
    app = _queued(env, count=0, senders=("Jane Doe <Jane@Customer.test>", "Bob <bob@customer.test>"))
    _suppression(env, "INSERT INTO suppression (email, hard_bounces, last_bounce_at, suppressed_at, reason) "
                 "VALUES ('jane@customer.test', 3, :now, :now, '550 5.1.1 no such user')")
    clock = FakeClock()
    transport = MemoryTransport()
    runner = DispatchRunner(app.factory, transport, app.config.outgoing, clock=clock)
    try:
        with counting(app) as m:
            assert runner.run_once() == 2, "both handled: one sent, one suppressed"
            assert runner.run_once() == 0
            assert m.registry.get_sample_value("maild_outbox_messages", {"state": "suppressed"}) == 1
        assert [e.rcpt_to for e in transport.sent] == [["bob@customer.test"]]
        [jane] = env.json("outbox", "list", "--state", "suppressed")
        assert jane["recipient"].lower() == "jane@customer.test" and jane["attempts"] == 0
        assert "jane@customer.test is suppressed" in jane["last_error"]
        assert "`maild bounces lift jane@customer.test`" in jane["last_error"]

        env.ok("outbox", "retry", str(jane["id"]))  # too early: the address is still suppressed
        clock.now = datetime.now(timezone.utc) + timedelta(seconds=1)
        assert runner.run_once() == 1
        assert len(transport.sent) == 1
        assert [(r["state"], r["attempts"]) for r in env.json("outbox", "list") if r["id"] == jane["id"]] \
            == [("suppressed", 0)]

        _suppression(env, "UPDATE suppression SET suppressed_at = NULL, lifted_at = :now, lifted_by = 'admin'")
        env.ok("outbox", "retry", str(jane["id"]))
        clock.now = datetime.now(timezone.utc) + timedelta(seconds=1)
        assert runner.run_once() == 1
    finally:
        app.engine.dispose()
    assert [e.rcpt_to[0].lower() for e in transport.sent] == ["bob@customer.test", "jane@customer.test"]
    assert _states(env) == [("sent", 1), ("sent", 1)]
