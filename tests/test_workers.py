"""Several workers on one database: every message is processed exactly once, with no lost cases."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from conftest import Env, mail
from maild import config as config_mod
from maild.app import App
from maild.processing import IntakeRunner


def test_two_workers_process_every_message_exactly_once(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=1000)
    senders = [f"customer{i % 7}@customer.test" for i in range(40)]  # shared senders: contacts race
    for i, sender in enumerate(senders):
        env.inject(mail(subject=f"problem {i}", sender=sender))
    apps = [App(config_mod.load(env.config)) for _ in range(2)]
    for app in apps:
        app.prepare()
    counts = [0, 0]

    def work(n: int) -> None:
        runner = IntakeRunner(apps[n].factory, apps[n].intake_context, batch=3)
        deadline = time.monotonic() + 60  # bounded: a lost message must fail the test, not hang it
        while time.monotonic() < deadline:
            handled = runner.run_once()
            counts[n] += handled
            if not handled:
                time.sleep(0.05)
            with env.engine().connect() as conn:
                left = conn.execute(sa.text(
                    "SELECT count(*) FROM inbound_message WHERE state = 'received'")).scalar_one()
            if left == 0:
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for app in apps:
        app.engine.dispose()

    with env.engine().connect() as conn:
        states = conn.execute(sa.text("SELECT state, count(*) FROM inbound_message GROUP BY state")).all()
        refs = conn.execute(sa.text("SELECT reference FROM cases")).scalars().all()
        contacts = conn.execute(sa.text("SELECT count(*) FROM contact")).scalar_one()
        acks = conn.execute(sa.text("SELECT count(*) FROM outbound_message")).scalar_one()
    assert dict(states) == {"processed": 40}
    assert len(refs) == len(set(refs)) == 40
    numbers = sorted(int(r.split("-")[1]) for r in refs)
    assert len(set(numbers)) == 40, "case numbers never repeat"
    if env.engine().dialect.name == "sqlite":  # PostgreSQL's sequence may skip a number a retried batch took
        assert numbers == list(range(1, 41)), "case numbers have no gaps"
    assert contacts == 7
    assert acks == 40
    assert sum(counts) >= 40
    if env.engine().dialect.name == "postgresql":  # SQLite serialises writers: one may take every batch
        assert min(counts) > 0, f"both workers took part: {counts}"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_daemons_started_together_never_quarantine_over_a_conflict(make_env) -> None:  # type: ignore[no-untyped-def]
    """Shared senders and replies make the workers touch the same contacts and cases; case
    numbers, contacts and threads must not deadlock them into quarantining mail."""
    import subprocess

    from conftest import MAILD

    env: Env = make_env(ack_limit=10_000)
    originals = [mail(subject=f"issue {i}", sender=f"c{i % 9}@customer.test", message_id=f"<o{i}@c.test>")
                 for i in range(160)]
    replies = [mail(subject=f"more on {i}", sender=f"c{i % 9}@customer.test",
                    headers={"In-Reply-To": f"<o{i}@c.test>"}) for i in range(0, 160, 2)]
    for raw in originals + replies:
        env.inject(raw)
    procs = [subprocess.Popen([MAILD, "--config", str(env.config), "run"], stdout=subprocess.DEVNULL,
                              stderr=open(env.path / f"w{n}.log", "wb"), cwd=env.path) for n in range(2)]
    try:
        deadline = time.monotonic() + 120  # bounded
        while time.monotonic() < deadline:
            with env.engine().connect() as conn:
                left = conn.execute(sa.text("SELECT count(*) FROM inbound_message WHERE state = 'received'")
                                    ).scalar_one()
            if left == 0:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            p.terminate()
            assert p.wait(30) == 0, (env.path / "w0.log").read_text() + (env.path / "w1.log").read_text()
    with env.engine().connect() as conn:
        states = dict(conn.execute(sa.text("SELECT state, count(*) FROM inbound_message GROUP BY state")).all())
        cases = conn.execute(sa.text("SELECT count(DISTINCT reference) FROM cases")).scalar_one()
    assert states == {"processed": 240}
    assert cases == 160, "every reply threaded onto its case"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_listener_hears_of_committed_stores_only(env: Env) -> None:
    """A stored message's NOTIFY arrives when its transaction commits, never on a rollback."""
    from maild import inbound, wakeups
    from maild.clock import utcnow
    from maild.db import transaction

    app = App(config_mod.load(env.config))
    app.prepare()
    pokes: list[int] = []
    listener = wakeups.Listener(app.engine, lambda: pokes.append(1), wait=0.3)
    try:
        assert listener.run_once() == 0, "listening now; nothing stored yet"
        with pytest.raises(RuntimeError), transaction(app.factory) as session:
            wakeups.announce(session)
            raise RuntimeError("rolled back")
        assert listener.run_once() == 0 and pokes == []
        inbound.add(app.factory, [app.registry.queue_id("support")], mail(), source="inject", now=utcnow())
        assert listener.run_once() == 1 and pokes == [1]
        inbound.add(app.factory, [app.registry.queue_id("support")], mail(message_id="<same@c.test>"),
                    source="inject", now=utcnow())
        inbound.add(app.factory, [app.registry.queue_id("support")], mail(message_id="<same@c.test>"),
                    source="inject", now=utcnow())
        assert listener.run_once() == 1 and listener.run_once() == 0, "a duplicate stores nothing: no notice"
    finally:
        listener.close()
        app.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_idle_daemon_takes_mail_stored_by_another_process_at_once(make_env) -> None:  # type: ignore[no-untyped-def]
    """With a two-minute intake poll interval, only the stored message's notice can start the
    daemon's intake within the bounded wait below."""
    import subprocess

    from conftest import MAILD

    env: Env = make_env()
    text = env.config.read_text()
    assert "[intake]\npoll_interval = 0.2" in text
    env.config.write_text(text.replace("[intake]\npoll_interval = 0.2", "[intake]\npoll_interval = 120"))
    log = env.path / "daemon.log"
    proc = subprocess.Popen([MAILD, "--config", str(env.config), "run"], stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"), cwd=env.path)
    try:
        deadline = time.monotonic() + 30
        while "maild started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # its first intake pass found nothing: it now waits for the poll interval
        env.inject(mail(subject="wake up"))  # another process (an MTA's pipe) stores it
        deadline = time.monotonic() + 30  # bounded, and well under the poll interval
        while not env.json("cases", "list") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [c["title"] for c in env.json("cases", "list")] == ["wake up"], log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()


def test_a_reply_whose_parent_commits_between_lookups_still_threads(env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Another worker commits the message a reply answers just after the reply's thread
    lookup and before its in-line check: the reply must still thread, not open a case."""
    from maild import cases

    env.inject(mail(subject="original", message_id="<p@c.test>"))
    env.ok("run", "--once")
    env.inject(mail(subject="the reply", headers={"In-Reply-To": "<p@c.test>"}))
    real, calls = cases.find_thread, []

    def first_look_too_early(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return None if len(calls) == 1 else real(*args, **kwargs)  # the snapshot before the commit

    monkeypatch.setattr(cases, "find_thread", first_look_too_early)
    app = App(config_mod.load(env.config))
    try:
        IntakeRunner(app.factory, app.intake_context).run_once()
    finally:
        app.close()
    assert len(calls) == 2
    assert [c["title"] for c in env.json("cases", "list")] == ["original"], "threaded, not a second case"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_listener_that_loses_its_connection_listens_again(env: Env, caplog) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL restarts or an admin ends the listening session: the listener says so,
    backs off, listens on a new connection, and hears the next store."""
    from maild import inbound, wakeups
    from maild.clock import utcnow

    app = App(config_mod.load(env.config))
    app.prepare()
    pokes: list[int] = []
    listener = wakeups.Listener(app.engine, lambda: pokes.append(1), wait=0.3)
    try:
        assert listener.run_once() == 0
        pid = listener._raw.driver_connection.info.backend_pid
        with env.engine().connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert listener.run_once() == 0 and listener.failures == 1
        assert "cannot listen for stored messages" in caplog.text
        assert listener.run_once() == 0 and listener.failures == 0, "listening again"
        inbound.add(app.factory, [app.registry.queue_id("support")], mail(), source="inject", now=utcnow())
        assert listener.run_once() == 1 and pokes == [1]
    finally:
        listener.close()
        app.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_contact_another_worker_is_writing_is_used_not_made_twice(make_env) -> None:  # type: ignore[no-untyped-def]
    """Both workers looked the sender up and found nobody: the second insert waits for the
    first worker's commit and then takes its contact."""
    from maild import cases
    from maild.clock import utcnow

    env: Env = make_env()
    app = App(config_mod.load(env.config))
    app.prepare()
    found: list[int] = []
    try:
        with app.factory() as first, app.factory() as second:
            made = cases._insert_contact(first, "jane@customer.test", "Jane", utcnow(), None).id
            racer = threading.Thread(target=lambda: found.append(
                cases._insert_contact(second, "jane@customer.test", "Jane D.", utcnow(), None).id))
            racer.start()
            racer.join(0.5)
            assert racer.is_alive(), "waits on the first worker's uncommitted row"
            first.commit()
            racer.join(10)
            second.commit()
        assert found == [made]
        with env.engine().connect() as conn:
            assert conn.execute(sa.text("SELECT count(*), min(name) FROM contact")).one() == (1, "Jane")
    finally:
        app.close()
