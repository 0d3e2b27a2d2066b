"""``maild run`` with IMAP mailboxes as separate processes: IDLE, server restarts, SIGKILL at random
moments, several workers on PostgreSQL, and SQLite's one-process rule. Every wait is bounded."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from conftest import MAILD, Env, Mailbox, mail
from faultproxy import FaultProxy


def start(env: Env, log_name: str = "maild.log") -> subprocess.Popen[bytes]:
    log = open(env.path / log_name, "ab")
    return subprocess.Popen([MAILD, "--config", str(env.config), "run"], stdout=log, stderr=log, cwd=env.path)


def start_ready(env: Env) -> subprocess.Popen[bytes]:
    """Start a daemon and wait until it says it started: a SIGTERM before its handlers are
    installed would kill it outright, which is not what a test of a graceful stop means."""
    log, marker = env.path / "maild.log", b"maild started as worker"
    before = log.read_bytes().count(marker) if log.exists() else 0
    proc = start(env)
    wait_until(lambda: log.read_bytes().count(marker) > before, 30, "the daemon to start")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_idle_wakes_the_poller_long_before_the_poll_interval(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=mailbox.toml(poll_interval=300))
    proc = start(env)
    try:
        wait_until(lambda: env.count("SELECT count(*) FROM mailbox_state WHERE last_success_at IS NOT NULL") == 1,
                   20, "the first poll")
        mailbox.append(mail(subject="while idling"))
        # Without IDLE the next poll would be 300 s away.
        wait_until(lambda: env.count("SELECT count(*) FROM cases") == 1, 30, "the case")
    finally:
        assert stop(proc) == 0


def test_server_hangs_and_goes_down_and_nothing_is_lost(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    proxy = FaultProxy(mailbox.server.port)
    env: Env = make_env(extra=mailbox.toml(port=proxy.port, poll_interval=0.5, idle=False, timeout=2))
    proc = start(env)
    try:
        mailbox.append(mail(subject="before"))
        wait_until(lambda: env.count("SELECT count(*) FROM cases") == 1, 30, "the first case")
        proxy.stall()  # the server stops answering mid-conversation: the client must time out
        mailbox.append(mail(subject="during"))
        time.sleep(4)
        proxy.cut()  # then it goes away altogether
        time.sleep(2)
        proxy.resume()
        mailbox.append(mail(subject="after"))
        wait_until(lambda: env.count("SELECT count(*) FROM cases") == 3, 90, "the cases after the outage")
        assert proc.poll() is None, "the daemon kept running"
    finally:
        assert stop(proc) == 0
        proxy.close()
    log = (env.path / "maild.log").read_text()
    assert "imap:support:" in log and "retrying in" in log
    assert "Traceback" not in log
    assert sorted(c["title"] for c in env.json("cases", "list")) == ["after", "before", "during"]


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("MAILD_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    env: Env = make_env(extra=mailbox.toml(poll_interval=0.5, idle=False, batch=25), ack_limit=10_000)
    originals = [mail(subject=f"issue {i}", sender=f"c{i % 40}@customer.test", message_id=f"<orig{i}@c.test>")
                 for i in range(160)]
    replies = [mail(subject=f"more on issue {i}", sender=f"c{i % 40}@customer.test",
                    headers={"In-Reply-To": f"<orig{i}@c.test>"}) for i in range(0, 160, 4)]
    mailbox.append(*originals, *replies)

    for kill in range(4):  # bounded: four crashes, each within a few seconds of start
        proc = start(env)
        time.sleep(rng.uniform(0.8, 3.0))
        proc.kill()
        proc.wait(10)
    proc = start_ready(env)  # the earlier runs may have drained everything: the wait below can be over at once
    try:
        wait_until(lambda: env.count("SELECT count(*) FROM inbound_message WHERE state <> 'processed'") == 0
                   and env.count("SELECT count(*) FROM inbound_message") == 200
                   and env.count("SELECT count(*) FROM outbound_message WHERE state IN ('pending', 'sending')") == 0,
                   120, f"the drain after the crashes (seed {seed})")
    finally:
        assert stop(proc) == 0
    assert_exactly_once(env, mailbox, cases=160, messages=200, seed=seed)


def assert_exactly_once(env: Env, mailbox: Mailbox, *, cases: int, messages: int, seed: int) -> None:
    """After the crashes: every message fetched, moved and recorded once, and every case
    acknowledged once."""
    # An acknowledgement interrupted mid-send is 'unknown': the admin checks the relay and
    # releases only those that never arrived, exactly as the runbook says.
    delivered = {c.message["Message-ID"] for c in env.peer.received}
    for row in env.json("outbox", "list", "--state", "unknown"):
        if row["message_id"] not in delivered:
            env.ok("outbox", "retry", str(row["id"]))
    env.ok("run", "--once")

    assert env.count("SELECT count(*) FROM cases") == cases, f"seed {seed}"
    assert env.count("SELECT count(*) FROM activity WHERE kind = 'incoming_email'") == messages, f"seed {seed}"
    # By Message-ID: a send interrupted by the kill may be sent again, as the same message.
    acks = {c.message["Message-ID"]: c.message["Subject"] for c in env.peer.received}
    refs = [s.rsplit("[", 1)[1].rstrip("]") for s in acks.values()]
    assert len(refs) == len(set(refs)) == cases, f"exactly one acknowledgement per case (seed {seed})"
    assert mailbox.uids("INBOX") == {}
    assert len(mailbox.uids("Processed")) == messages


def test_sigkill_more_often_than_max_attempts_quarantines_nothing(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    """Six kill -9s while a daemon drains 300 messages, with max_attempts 3. A kill used to
    charge an attempt to every message the daemon had claimed (a batch and the batches
    claimed ahead), and three kills quarantined innocent mail; now only the message being
    processed is charged. Each daemon makes some progress before it is killed: a message
    being processed at three kills in a row would be poison as far as anyone can tell."""
    seed = int(os.environ.get("MAILD_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    env: Env = make_env(extra=mailbox.toml(poll_interval=0.5, idle=False), ack_limit=10_000)
    # Small batches, so that six daemons in a row each make some progress mid-drain; a parse
    # worker on PostgreSQL too, so that batches are claimed ahead there as well.
    env.config.write_text(env.config.read_text().replace(
        "[intake]\n", "[intake]\nmax_attempts = 3\nbatch = 10\nparse_workers = 1\n", 1))
    # Mostly replies, each after the message it answers: an acknowledgement per case is
    # what takes a drain longest.
    originals = [mail(subject=f"issue {i}", sender=f"c{i}@customer.test", message_id=f"<orig{i}@c.test>")
                 for i in range(60)]
    replies = [mail(subject=f"more on issue {i} ({n})", sender=f"c{i}@customer.test",
                    headers={"In-Reply-To": f"<orig{i}@c.test>"}) for n in range(4) for i in range(60)]
    mailbox.append(*originals, *replies)

    # A plain engine: maild's takes SQLite's write lock even to read, and would wait for
    # (and hold up) the daemon's writes while the test looks for progress.
    watcher = sa.create_engine(env.db_url)

    def processed() -> int:
        with watcher.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM inbound_message WHERE state = 'processed'"))
                       .scalar_one())

    at_kills: list[int] = []
    try:
        for kill in range(6):
            before = processed()
            proc = start(env)
            try:
                deadline = time.monotonic() + 30
                while processed() == before:
                    assert time.monotonic() < deadline, f"no progress before kill {kill + 1} (seed {seed})"
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, 0.05))
            finally:
                proc.kill()
                proc.wait(10)
            at_kills.append(processed())
    finally:
        watcher.dispose()
    assert at_kills[-1] < 300, f"the kills all came mid-drain (processed at each: {at_kills})"
    proc = start_ready(env)
    try:
        wait_until(lambda: env.count("SELECT count(*) FROM inbound_message WHERE state = 'received'") == 0
                   and env.count("SELECT count(*) FROM inbound_message") == 300
                   and env.count("SELECT count(*) FROM outbound_message WHERE state IN ('pending', 'sending')") == 0,
                   60, f"the drain after the crashes (seed {seed}, processed at each kill: {at_kills})")
    finally:
        assert stop(proc) == 0
    quarantined = env.count("SELECT count(*) FROM inbound_message WHERE state = 'quarantined'")
    assert quarantined == 0, f"seed {seed}, processed at each kill: {at_kills}"
    assert_exactly_once(env, mailbox, cases=60, messages=300, seed=seed)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_refuses_a_second_daemon_clearly(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    first = start(env)
    try:
        wait_until(lambda: "maild started" in (env.path / "maild.log").read_text(), 20, "the first daemon")
        second = subprocess.run([MAILD, "--config", str(env.config), "run"], capture_output=True, timeout=30)
        assert second.returncode == 1
        assert b"another `maild run` is already using the SQLite database" in second.stderr
        assert b"use PostgreSQL" in second.stderr
    finally:
        assert stop(first) == 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_workers_on_postgresql_share_a_mailbox_and_take_over(make_env, mailbox: Mailbox) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(extra=mailbox.toml(poll_interval=0.5, idle=False) + "\n", ack_limit=10_000)
    text = env.config.read_text().replace("[intake]\n", "[intake]\nmailbox_lease_seconds = 10\n", 1)
    env.config.write_text(text)
    mailbox.append(*(mail(subject=f"wave one {i}", sender=f"c{i}@customer.test") for i in range(60)))
    workers = [start(env, "worker-a.log"), start(env, "worker-b.log")]
    try:
        wait_until(lambda: env.count("SELECT count(*) FROM cases") == 60, 60, "the first wave")
        owner = env.json("mailboxes", "list")[0]["owner"]
        pid = int(owner.rsplit(":", 1)[1])
        holder = next(w for w in workers if w.pid == pid)
        holder.kill()  # the mailbox owner dies without releasing its lease
        holder.wait(10)
        mailbox.append(*(mail(subject=f"wave two {i}", sender=f"d{i}@customer.test") for i in range(20)))
        wait_until(lambda: env.count("SELECT count(*) FROM cases") == 80, 60, "the takeover")
        survivor = next(w for w in workers if w is not holder)
        assert env.json("mailboxes", "list")[0]["owner"].endswith(f":{survivor.pid}")
    finally:
        for w in workers:
            if w.poll() is None:
                assert stop(w) == 0
    assert env.count("SELECT count(*) FROM inbound_message") == 80
    assert env.count("SELECT count(DISTINCT reference) FROM cases") == 80
    assert env.count("SELECT count(*) FROM outbound_message") == 80
