"""A worker's death is charged to the message it was processing, not to the batches it held.

Intake claims messages in batches (and batches ahead, for the parse worker). A kill -9 used
to charge an attempt to every message claimed, so a few kills quarantined innocent mail
"gave up after 5 attempts". Now a message whose claim was never finished or released is a
suspect: claimed alone, charged, then processed. These tests kill workers by abandoning
them (their claims stay held, their leases run out on the injected clock)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from conftest import Env, mail
from maild import config as config_mod
from maild import cases, inbound, processing
from maild.app import App
from maild.parsepool import Parser
from maild.processing import IntakeRunner

MAX_ATTEMPTS = 3
BATCH = 10  # parsepool.POOL_FROM: a batch this size goes to the parse worker, and batches are claimed ahead


class Clock:
    """Time for the runners: a millisecond passes at every look, so the order in which
    messages were processed can be read from their processed_at."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def past_the_lease(self, app: App) -> None:
        self.now += timedelta(seconds=app.config.intake.lease_seconds + 1)


class Killed(BaseException):
    """The worker process dies (kill -9, a segfault): nothing after it runs, nothing is given back."""


@pytest.fixture
def app(env: Env) -> Iterator[App]:
    config = env.config.read_text()
    env.config.write_text(config.replace("[intake]\n", f"[intake]\nmax_attempts = {MAX_ATTEMPTS}\n", 1))
    app = App(config_mod.load(env.config))
    app.prepare()
    try:
        yield app
    finally:
        app.close()


def store_conversations(app: App, originals: int) -> list[int]:
    """``originals`` messages, a reply to every fourth one stored a few messages after it; their ids."""
    queue = app.registry.queue_id("support")
    raws: list[bytes] = []
    for i in range(originals):
        raws.append(mail(subject=f"issue {i}", sender=f"c{i % 7}@customer.test", message_id=f"<o{i}@c.test>"))
        if i % 4 == 3:  # answers the message three before it
            raws.append(mail(subject=f"Re: issue {i - 3}", sender=f"c{(i - 3) % 7}@customer.test",
                             headers={"In-Reply-To": f"<o{i - 3}@c.test>"}))
    now = datetime.now(timezone.utc)
    return [inbound.add(app.factory, [queue], raw, source="inject", now=now)[0].id for raw in raws]


def runner(app: App, clock: Clock, life: int) -> IntakeRunner:
    return IntakeRunner(app.factory, app.intake_context, clock=clock, batch=BATCH, worker=f"worker-{life}",
                        parser=Parser(1))


def die(worker: IntakeRunner) -> None:
    """The process is gone: its parse worker with it; what it claimed stays claimed."""
    worker.parser.close()


def rows(env: Env) -> list[Any]:
    return env.rows("SELECT id, state, attempts, processed_at, error FROM inbound_message ORDER BY id")


def assert_processed_in_order(env: Env) -> None:
    processed = [r for r in rows(env) if r.state == "processed"]
    times = [r.processed_at for r in processed]
    assert times == sorted(times), "processed oldest first"


def test_a_suspect_is_claimed_alone_and_charged_and_the_rest_in_batches_without_a_charge(
        env: Env, app: App) -> None:
    ids = store_conversations(app, 4)  # five messages
    start, lease = datetime.now(timezone.utc), timedelta(minutes=5)

    def claim(**kwargs: Any) -> list[tuple[int, int, bool]]:
        claimed = inbound.claim(app.factory, lease=lease, max_attempts=MAX_ATTEMPTS, worker="me", **kwargs)
        return [(c.id, c.attempts, c.charged) for c in claimed]

    assert claim(now=start, limit=2) == [(ids[0], 0, False), (ids[1], 0, False)]  # its worker then dies
    later = start + lease + timedelta(seconds=1)
    assert claim(now=later, suspects=False) == [], "a batch claimed ahead takes no suspect, nor skips one"
    first = inbound.claim(app.factory, now=later, lease=lease, max_attempts=MAX_ATTEMPTS, worker="me")
    assert [(c.id, c.attempts, c.charged) for c in first] == [(ids[0], 1, True)]
    assert claim(now=later) == [(ids[1], 1, True)], "suspects come one at a time, in order"
    rest = inbound.claim(app.factory, now=later, lease=lease, max_attempts=MAX_ATTEMPTS, worker="me")
    assert [(c.id, c.attempts, c.charged) for c in rest] == [(i, 0, False) for i in ids[2:]]

    # Given back (a shutdown, a deferral): no charge is left behind, and no suspect.
    inbound.release(app.factory, first + rest)
    assert [(r[0], r[1]) for r in env.rows("SELECT attempts, claimed_by FROM inbound_message ORDER BY id")] == [
        (0, None), (1, "me"), (0, None), (0, None), (0, None)]
    # The second worker dies on ids[1]: a batch stops before it, and it comes next, alone.
    latest = later + lease + timedelta(seconds=1)
    assert claim(now=latest) == [(ids[0], 0, False)], "a batch stops before a suspect"
    assert claim(now=latest) == [(ids[1], 2, True)]
    assert claim(now=latest) == [(i, 0, False) for i in ids[2:]]


def test_kills_in_mid_batch_more_often_than_max_attempts_quarantine_nothing(env: Env, app: App) -> None:
    """Ten workers die one after another (more than three times max_attempts), each after
    a little progress, in the middle of its next claim: every message is processed once,
    in order, and none is quarantined."""
    ids = store_conversations(app, 64)  # 80 messages
    clock, charged_deaths, batch_deaths = Clock(), 0, 0
    for life in range(3 * MAX_ATTEMPTS + 1):
        worker = runner(app, clock, life)
        worker.run_once()  # some progress: a batch, or a suspect alone
        # Killed in the middle of its next batch (or of the suspect it claimed alone):
        held = inbound.claim(app.factory, now=clock(), lease=timedelta(seconds=app.config.intake.lease_seconds),
                             max_attempts=MAX_ATTEMPTS, limit=BATCH, worker=worker.worker)
        charged_deaths += any(c.charged for c in held)
        batch_deaths += len(held) > 1
        die(worker)
        clock.past_the_lease(app)
    assert charged_deaths and batch_deaths, "both kinds of death happened"

    survivor = runner(app, clock, 99)
    try:
        while survivor.run_once():
            pass
    finally:
        survivor.close()
    found = rows(env)
    assert [r.error for r in found if r.state == "quarantined"] == []
    assert [r.state for r in found] == ["processed"] * len(ids)
    assert max(r.attempts for r in found) <= 2, "charged when it died alone, and when processed after"
    assert_processed_in_order(env)
    assert len(env.json("cases", "list")) == 64, "every reply found the case of the message it answers"


def test_a_message_that_kills_its_worker_every_time_is_quarantined_and_its_batch_is_not(
        env: Env, app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its worker dies whenever it is processed (the fault injected where intake calls apply): it is
    quarantined after max_attempts deaths alone, and the messages around it are processed."""
    ids = store_conversations(app, 40)  # 50 messages; the poison, an original nobody answers, is the 13th
    poison = ids[12]

    def apply(session: Any, ctx: Any, inbound_id: int, *args: Any, **kwargs: Any) -> Any:
        if inbound_id == poison:
            raise Killed
        return cases.apply(session, ctx, inbound_id, *args, **kwargs)

    monkeypatch.setattr(processing, "apply", apply)
    clock, deaths = Clock(), 0
    for life in range(10):  # bounded
        worker = runner(app, clock, life)
        try:
            while worker.run_once():
                pass
        except Killed:
            deaths += 1
            die(worker)
            clock.past_the_lease(app)
        else:
            worker.close()
            break
    # Once in its batch (that costs nobody anything), then max_attempts times alone.
    assert deaths == MAX_ATTEMPTS + 1
    found = {r.id: r for r in rows(env)}
    assert found[poison].state == "quarantined"
    assert f"gave up after {MAX_ATTEMPTS} attempts" in found[poison].error
    others = [r for i, r in found.items() if i != poison]
    assert [r.state for r in others] == ["processed"] * (len(ids) - 1)
    assert max(r.attempts for r in others) <= 1, "the poison's batch: processed alone once, charged once"
    assert_processed_in_order(env)
    assert len(env.json("cases", "list")) == 39


def test_a_reply_that_waits_for_its_parent_is_no_suspect(env: Env, app: App) -> None:
    """Waiting is a release: the reply is claimed again in a batch, not alone and charged."""
    queue, now = app.registry.queue_id("support"), datetime.now(timezone.utc)
    inbound.add(app.factory, [queue], mail(subject="printer", message_id="<p@c.test>"), source="inject", now=now)
    [reply] = inbound.add(app.factory, [queue], mail(subject="Re: printer", headers={"In-Reply-To": "<p@c.test>"}),
                          source="inject", now=now)
    lease = timedelta(minutes=5)
    inbound.claim(app.factory, now=now, lease=lease, max_attempts=MAX_ATTEMPTS, limit=1, worker="busy")
    clock = Clock()
    worker = IntakeRunner(app.factory, app.intake_context, clock=clock, worker="me")
    try:
        assert worker.run_once() == 1  # the reply, which waits
    finally:
        worker.close()
    [(state, attempts, claimed_by)] = env.rows(
        f"SELECT state, attempts, claimed_by FROM inbound_message WHERE id = {reply.id}")
    assert (state, attempts, claimed_by) == ("received", 0, None)
