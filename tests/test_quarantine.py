"""A message that cannot be processed is kept and quarantined with its reason, then retried after a fix."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from conftest import REPO, Env, mail
from maild import config as config_mod
from maild import inbound
from maild.app import App
from maild.cases import Outcome
from maild.processing import SWEEP_INTERVAL, IntakeRunner


def test_broken_template_quarantines_then_retry_after_fix_creates_the_case(make_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    env: Env = make_env(templates=templates.as_posix())
    good = (templates / "acknowledgement.txt.j2").read_text()
    (templates / "acknowledgement.txt.j2").write_text(good.replace("{{ case.reference }}", "{{ case.no_such_field }}"))

    raw = mail(message_id="<poison@customer.test>")
    env.inject(raw)
    env.ok("run", "--once")
    assert env.json("cases", "list") == [], "the case must roll back with its acknowledgement"
    [row] = env.json("inbound", "list", "--quarantined")
    assert "no_such_field" in row["error"]
    shown = env.ok("inbound", "show", str(row["id"]))
    assert "quarantined" in shown and "no_such_field" in shown
    raw_out = env.maild("inbound", "show", str(row["id"]), "--raw")
    assert raw_out.stdout == raw, "the stored bytes are exactly what was received"

    (templates / "acknowledgement.txt.j2").write_text(good)
    assert "1 message(s) queued" in env.ok("inbound", "retry", str(row["id"]))
    env.ok("run", "--once")
    assert len(env.json("cases", "list")) == 1
    assert env.json("inbound", "list")[0]["state"] == "processed"
    assert len(env.peer.wait_for(1)) == 1


def test_one_bad_message_in_a_batch_costs_only_that_message(make_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A batch is written without per-message savepoints; when one message fails, the batch
    is written again with them: the others become cases once, the bad one is quarantined."""
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    env: Env = make_env(templates=templates.as_posix())
    ack = templates / "acknowledgement.txt.j2"
    ack.write_text('{% if "poison" in case.title %}{{ case.no_such_field }}{% endif %}' + ack.read_text())
    for subject in ("Printer on fire", "A poison message", "Scanner jammed", "Toner empty"):
        env.inject(mail(subject=subject, message_id=f"<{subject.split()[-1].lower()}@customer.test>"))
    env.ok("run", "--once")  # the four in one batch (intake takes up to 20)
    titles = sorted(c["title"] for c in env.json("cases", "list"))
    assert titles == ["Printer on fire", "Scanner jammed", "Toner empty"], "each good message exactly once"
    [row] = env.json("inbound", "list", "--quarantined")
    assert "no_such_field" in row["error"]
    [poison] = env.rows(f"SELECT message_id FROM inbound_message WHERE id = {row['id']}")
    assert poison[0] == "<message@customer.test>"
    assert len(env.peer.wait_for(3)) == 3
    assert len(env.rows("SELECT id FROM outbound_message")) == 3, "one acknowledgement per case, none for the bad one"


def refuse_activities_about(env: Env, word: str) -> None:
    """A trigger that makes the database itself refuse the activity row of a mail whose
    subject has ``word``: an error only the write of that row can meet."""
    with env.engine().begin() as conn:
        if env.db_url.startswith("postgresql"):
            conn.execute(sa.text(
                "CREATE FUNCTION refuse_activity() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.subject LIKE '%{word}%' THEN RAISE EXCEPTION 'refused: %', NEW.subject; END IF; "
                "RETURN NEW; END $$"))
            conn.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON activity FOR EACH ROW "
                                 "EXECUTE FUNCTION refuse_activity()"))
        else:  # SQLite: json() of a subject fails when it runs, that is for that row only
            conn.execute(sa.text(f"CREATE TRIGGER refuse BEFORE INSERT ON activity WHEN NEW.subject LIKE '%{word}%' "
                                 "BEGIN SELECT json(NEW.subject); END"))


def test_a_row_the_database_refuses_when_the_batch_is_written_costs_only_its_message(env: Env) -> None:
    """A batch's rows are flushed together at its end. When the database refuses one of them
    there, the batch is written again message by message: the others become cases once, and
    only the message the row belongs to is quarantined, with the database's reason."""
    refuse_activities_about(env, "poison")
    for subject in ("Printer on fire", "A poison message", "Scanner jammed", "Toner empty"):
        env.inject(mail(subject=subject))
    env.ok("run", "--once")  # the four in one batch (intake takes up to 20)
    titles = sorted(c["title"] for c in env.json("cases", "list"))
    assert titles == ["Printer on fire", "Scanner jammed", "Toner empty"], "each good message exactly once"
    [row] = env.json("inbound", "list", "--quarantined")
    assert ("refused: A poison message" if env.db_url.startswith("postgresql") else "malformed JSON") in row["error"]
    assert len(env.peer.wait_for(3)) == 3
    assert env.count("SELECT count(*) FROM outbound_message") == 3, "one acknowledgement per case"


def test_a_customer_made_by_a_message_that_failed_is_made_again_by_the_next(env: Env) -> None:
    """The batch remembers the customers it looked up or made; the refused message made
    this one in its savepoint, which took it away again, so the next message makes it anew."""
    refuse_activities_about(env, "poison")
    for subject in ("A poison message", "Printer on fire"):
        env.inject(mail(subject=subject, sender="New Customer <new@customer.test>"))
    env.ok("run", "--once")
    assert [c["title"] for c in env.json("cases", "list")] == ["Printer on fire"]
    assert len(env.json("inbound", "list", "--quarantined")) == 1
    assert env.count("SELECT count(*) FROM contact WHERE email = 'new@customer.test'") == 1


def test_a_batch_written_again_message_by_message_still_limits_acknowledgements(make_env) -> None:  # type: ignore[no-untyped-def]
    """Written again with a savepoint per message, each message's acknowledgement is written
    before the next is looked at: the sender's count includes it, and the limit holds."""
    env = make_env(ack_limit=1)
    refuse_activities_about(env, "poison")
    for subject in ("Printer on fire", "Scanner jammed", "A poison message"):
        env.inject(mail(subject=subject))
    env.ok("run", "--once")
    assert sorted(c["title"] for c in env.json("cases", "list")) == ["Printer on fire", "Scanner jammed"]
    assert env.count("SELECT count(*) FROM outbound_message") == 1, "one acknowledgement an hour, as configured"


def test_case_numbers_go_on_after_a_batch_written_again_and_into_the_next(env: Env) -> None:
    """A batch counts case numbers on in memory (SQLite: the counter is written once, at the
    flush): a message's rolled-back savepoint may leave a gap, but no number is given twice."""
    refuse_activities_about(env, "poison")
    for subject in ("Printer on fire", "A poison message", "Scanner jammed"):
        env.inject(mail(subject=subject))
    env.ok("run", "--once")
    env.inject(mail(subject="Toner empty"))
    env.ok("run", "--once")
    cases = sorted(env.json("cases", "list"), key=lambda c: c["reference"])
    assert [c["title"] for c in cases] == ["Printer on fire", "Scanner jammed", "Toner empty"]
    numbers = [int(c["reference"].split("-")[1]) for c in cases]
    assert numbers == sorted(set(numbers)), f"each number once, in order: {numbers}"


def test_a_batch_written_again_still_finds_its_own_duplicates(env: Env) -> None:
    """The batch's Message-IDs are looked up once, at its start; written again with a
    savepoint per message (each flushes the messages before it), a message sent to two
    queues must still find the case its first copy made, in that flush."""
    refuse_activities_about(env, "poison")
    raw = mail(subject="Printer on fire", message_id="<twice@customer.test>")
    env.inject(raw)
    env.inject(raw.replace(b"To: support@example.test", b"To: billing@example.test"), "--queue", "billing")
    env.inject(mail(subject="A poison message"))  # last: nothing rolls back between the two copies
    env.ok("run", "--once")
    assert [c["title"] for c in env.json("cases", "list")] == ["Printer on fire"]
    outcomes = sorted(r["outcome"] or r["state"] for r in env.json("inbound", "list"))
    assert outcomes == ["created", "duplicate", "quarantined"]


def test_unparseable_bytes_are_quarantined_not_dropped(env: Env) -> None:
    env.inject(b"\x00\x01\x02 this is not a mail message \xff\xfe", "--queue", "support")
    env.ok("run", "--once")
    [row] = env.json("inbound", "list")
    assert row["state"] == "quarantined"
    assert row["error"].startswith("cannot parse")


def test_retry_all_and_unknown_ids(env: Env) -> None:
    env.inject(b"\x00garbage one", "--queue", "support")
    env.inject(b"\x00garbage two", "--queue", "support")
    env.ok("run", "--once")
    assert "2 message(s) queued" in env.ok("inbound", "retry", "--all-quarantined")
    result = env.cli("inbound", "retry", "999")
    assert result.exit_code == 1 and "no inbound message with id 999" in result.output


def test_a_message_that_keeps_killing_workers_is_quarantined_after_max_attempts(env: Env) -> None:
    """A worker that dies mid-message leaves a lease; after max_attempts leases the message is given up.

    The first death costs the message nothing: it was claimed in a batch, and any message
    of the batch may have killed the worker. From then on it is a suspect, claimed alone
    and charged an attempt each time (tests/test_crash_accounting.py has the batches)."""
    env.inject(mail())
    app = App(config_mod.load(env.config))
    start = datetime.now(timezone.utc)
    try:
        for attempt in range(6):  # six workers claim it and "die" (never finish)
            now = start + timedelta(minutes=10 * attempt)
            claimed = inbound.claim(app.factory, now=now, lease=timedelta(minutes=5), max_attempts=5)
            assert [(c.attempts, c.charged) for c in claimed] == [(attempt, attempt > 0)]
        later = start + timedelta(hours=2)
        assert inbound.claim(app.factory, now=later, lease=timedelta(minutes=5), max_attempts=5) == []
    finally:
        app.engine.dispose()
    [row] = env.json("inbound", "list")
    assert row["state"] == "quarantined" and "gave up after 5 attempts" in row["error"]


def kill_workers_over(app: App, start: datetime, attempts: int = 5, step: timedelta = timedelta(minutes=10)
                      ) -> datetime:
    """Workers claim the pending message, ``step`` apart, and "die" each time (never finish)
    until ``attempts`` are charged to it (the first claim is free: see the test above);
    returns the moment the last one's lease (half a step) ran out."""
    for attempt in range(attempts + 1):
        now = start + step * attempt
        assert len(inbound.claim(app.factory, now=now, lease=step / 2, max_attempts=99)) == 1
    return now + step / 2


def test_a_message_whose_attempts_ran_out_is_never_claimed_again_even_before_a_sweep(env: Env) -> None:
    env.inject(mail())
    app = App(config_mod.load(env.config))
    try:
        later = kill_workers_over(app, datetime.now(timezone.utc)) + timedelta(seconds=1)
        lease = timedelta(minutes=5)
        assert inbound.claim(app.factory, now=later, lease=lease, max_attempts=5, sweep=False) == []
        assert env.json("inbound", "list")[0]["state"] == "received", "not swept yet"
        assert inbound.claim(app.factory, now=later, lease=lease, max_attempts=5) == []  # sweeps
    finally:
        app.engine.dispose()
    assert env.json("inbound", "list")[0]["state"] == "quarantined"


def test_the_intake_runner_sweeps_for_spent_messages_once_an_interval(env: Env) -> None:
    """A sweep reads the whole backlog, so a runner draining one sweeps at its first claim
    and then once per SWEEP_INTERVAL, not before every batch."""
    app = App(config_mod.load(env.config))
    app.prepare()
    swept = datetime.now(timezone.utc)
    clock = [swept]
    runner = IntakeRunner(app.factory, app.intake_context, clock=lambda: clock[0])
    try:
        runner.run_once()  # the first claim sweeps (nothing to find yet)
        env.inject(mail(subject="spent"))
        # Spent within the interval: five workers die on it, a second apart.
        clock[0] = kill_workers_over(app, swept, step=timedelta(seconds=1)) + timedelta(seconds=0.5)
        assert clock[0] < swept + SWEEP_INTERVAL
        runner.run_once()
        assert [r["state"] for r in env.json("inbound", "list")] == ["received"], "neither claimed nor swept yet"
        clock[0] = swept + SWEEP_INTERVAL
        runner.run_once()
        assert [r["state"] for r in env.json("inbound", "list")] == ["quarantined"]
    finally:
        runner.close()
        app.close()


def test_claimed_rows_are_not_claimed_twice_while_leased(env: Env) -> None:
    for i in range(5):
        env.inject(mail(subject=f"m{i}"))
    first, second = App(config_mod.load(env.config)), App(config_mod.load(env.config))
    now = datetime.now(timezone.utc)
    try:
        a = inbound.claim(first.factory, now=now, lease=timedelta(minutes=5), max_attempts=5, limit=3)
        b = inbound.claim(second.factory, now=now, lease=timedelta(minutes=5), max_attempts=5, limit=3)
        assert len(a) == 3 and len(b) == 2
        assert not {c.id for c in a} & {c.id for c in b}
    finally:
        first.engine.dispose()
        second.engine.dispose()


def process_while(env: Env, break_it: Callable[[], Callable[[], None]]) -> Outcome:
    """Claim the pending message, break something, process it, then repair: the outcome."""
    app = App(config_mod.load(env.config))
    app.prepare()
    try:
        runner = IntakeRunner(app.factory, app.intake_context)
        [item] = inbound.claim(app.factory, now=datetime.now(timezone.utc), lease=timedelta(minutes=5),
                               max_attempts=5)
        repair = break_it()
        try:
            return runner.process(item, app.intake_context())
        finally:
            repair()
    finally:
        app.engine.dispose()


def test_a_database_error_that_will_not_clear_quarantines(env: Env) -> None:
    def rename(a: str, b: str) -> None:
        with env.engine().begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {a} RENAME TO {b}"))

    def drop_cases() -> Callable[[], None]:
        rename("cases", "cases_away")
        return lambda: rename("cases_away", "cases")

    env.inject(mail())
    # A missing table is not a temporary failure: it is quarantined, with the database's reason.
    assert process_while(env, drop_cases).action == "quarantined"
    env.ok("inbound", "retry", "--all-quarantined")
    env.ok("run", "--once")
    assert len(env.json("cases", "list")) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # SQLite's writer lock
def test_locked_sqlite_defers_the_message_and_it_is_processed_later(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(busy_timeout=0.2)

    def lock() -> Callable[[], None]:
        locker = env.engine().connect()
        locker.exec_driver_sql("SELECT 1")  # our engine begins IMMEDIATE: this holds the write lock
        return lambda: (locker.rollback(), locker.close())  # type: ignore[func-returns-value]

    env.inject(mail())
    assert process_while(env, lock).action == "deferred"
    assert env.json("inbound", "list")[0]["state"] == "received"  # back in line, retried after RETRY_DELAY


@pytest.mark.parametrize("conflict", [True, False], ids=["deadlock", "outage"])
def test_a_deadlock_between_workers_is_retried_at_once_an_outage_later(env: Env, monkeypatch, conflict) -> None:  # type: ignore[no-untyped-def]
    """A deadlock (SQLSTATE 40P01) clears as soon as the batch is tried again; a database
    that went away needs longer. Either way the message waits, unharmed."""
    import psycopg

    from maild import processing
    from maild.models import InboundMessage

    orig = psycopg.errors.DeadlockDetected("deadlock detected") if conflict \
        else psycopg.OperationalError("server closed the connection unexpectedly")

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise sa.exc.OperationalError("SELECT 1", {}, orig)

    env.inject(mail())
    app = App(config_mod.load(env.config))
    app.prepare()
    now = datetime.now(timezone.utc)
    try:
        monkeypatch.setattr(processing, "apply", fail)
        runner = IntakeRunner(app.factory, app.intake_context, clock=lambda: now)
        [item] = inbound.claim(app.factory, now=now, lease=timedelta(minutes=5), max_attempts=5)
        assert runner.process(item, app.intake_context()).action == "deferred"
        with app.factory() as session:
            row = session.get(InboundMessage, item.id)
            assert row is not None and row.state == "received"
            until = row.claimed_until
    finally:
        app.close()
    assert until == now + (processing.CONFLICT_DELAY if conflict else processing.RETRY_DELAY)
