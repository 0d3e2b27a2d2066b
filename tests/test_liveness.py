"""Taking over from a worker that died: its leases are freed at once, not when they run out.
And a reply never opens a second case because it came up before the message it answers."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from conftest import Env, mail
from maild import inbound
from maild.app import App
from maild.clock import utcnow
from maild.liveness import AdvisoryPresence, SoleProcess, presence_for, reap
from maild.processing import IntakeRunner


def _claim_as(app: App, worker: str) -> list[int]:
    claimed = inbound.claim(app.factory, now=utcnow(), lease=timedelta(minutes=5), max_attempts=5, worker=worker)
    return [c.id for c in claimed]


def _held(env: Env) -> dict[int, str | None]:
    with env.engine().connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, claimed_by FROM inbound_message WHERE state = 'received' AND claimed_until > :now"),
            {"now": utcnow()}).all()
    return {r[0]: r[1] for r in rows}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_every_other_holder_is_dead(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    env.inject(mail(subject="one"))
    env.inject(mail(subject="two"))
    app: App = env.app()
    try:
        [first] = inbound.claim(app.factory, now=utcnow(), lease=timedelta(minutes=5), max_attempts=5, limit=1,
                                worker="gone:1")
        _claim_as(app, "me:2")
        assert set(_held(env).values()) == {"gone:1", "me:2"}
        assert reap(app.factory, SoleProcess("me:2"), utcnow()) == 1
        assert set(_held(env).values()) == {"me:2"}
        # The freed message is claimable again, and its worker's death counts towards poison:
        # it is a suspect, claimed alone and charged an attempt (its first claim charged none).
        again = inbound.claim(app.factory, now=utcnow() + timedelta(seconds=1), lease=timedelta(minutes=5),
                              max_attempts=5, worker="me:2")
        assert [(c.id, c.attempts, c.charged) for c in again] == [(first.id, 1, True)]
    finally:
        app.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_on_postgresql_a_live_worker_keeps_its_leases_and_a_dead_one_loses_them(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    for i in range(4):
        env.inject(mail(subject=f"m{i}"))
    app: App = env.app()
    me = presence_for(app.engine, "host-a:1")
    other = AdvisoryPresence(app.engine, "host-b:2")  # another worker, on another host
    try:
        assert isinstance(me, AdvisoryPresence)
        assert me.alive("host-b:2") and other.alive("host-a:1")
        inbound.claim(app.factory, now=utcnow(), lease=timedelta(minutes=5), max_attempts=5, limit=2,
                      worker="host-b:2")
        assert reap(app.factory, me, utcnow()) == 0, "a live worker's leases are left alone"
        assert set(_held(env).values()) == {"host-b:2"}
        other.close()  # its connection ends, as when the process is killed
        assert not me.alive("host-b:2")
        assert reap(app.factory, me, utcnow()) == 2
        assert _held(env) == {}
        assert me.alive("host-a:1"), "asking about itself never drops its own lock"
    finally:
        other.close()
        me.close()
        app.close()


def test_a_reply_waits_for_the_message_it_answers(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env()
    env.inject(mail(subject="printer broken", message_id="<orig@customer.test>"))
    env.inject(mail(subject="Re: printer broken", headers={"In-Reply-To": "<orig@customer.test>"}))
    app: App = env.app()
    try:
        [held] = inbound.claim(app.factory, now=utcnow(), lease=timedelta(minutes=5), max_attempts=5, limit=1,
                               worker="busy:1")  # another worker is still on the original
        runner = IntakeRunner(app.factory, app.intake_context)
        assert runner.run_once() == 1
        with env.engine().connect() as conn:
            reply = conn.execute(sa.text("SELECT state, attempts FROM inbound_message WHERE id <> :id"),
                                 {"id": held.id}).one()
            assert tuple(reply) == ("received", 0), "waiting is not a failed attempt"
            assert conn.execute(sa.text("SELECT count(*) FROM cases")).scalar_one() == 0
        # The original's worker dies; the survivor takes over and processes both in order.
        presence = presence_for(app.engine, runner.worker)
        try:
            reap(app.factory, presence, utcnow())
        finally:
            presence.close()
        runner.clock = lambda: utcnow() + timedelta(seconds=5)
        while runner.run_once():
            pass
        cases = env.json("cases", "list")
        assert len(cases) == 1
        assert len(env.json("cases", "show", cases[0]["reference"])["activities"]) >= 2
    finally:
        app.close()


def test_a_reply_to_a_message_handled_earlier_in_its_batch_does_not_wait(make_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The batch is written at its end: the message answered is still 'received' in the
    table while its batch runs, but it is handled, so the reply goes on at once."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-creation.toml").write_text(
        '[[creation]]\nname = "newsletters"\nwhen = { field = "from_domain", in = ["news.example"] }\n'
        'action = "ignore"\nreason = "newsletters are not cases"\n')
    env: Env = make_env(rules=rules.as_posix())
    env.inject(mail(subject="Our newsletter", sender="news@news.example", message_id="<letter@news.example>"))
    env.inject(mail(subject="Re: Our newsletter", headers={"In-Reply-To": "<letter@news.example>"}))
    app: App = env.app()
    try:
        assert IntakeRunner(app.factory, app.intake_context).run_once() == 2
        assert sorted(r["outcome"] for r in env.json("inbound", "list")) == ["created", "ignored"]
    finally:
        app.close()
