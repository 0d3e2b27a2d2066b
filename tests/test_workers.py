"""Several workers on one database: every message is processed exactly once, with no lost cases."""

from __future__ import annotations

import threading
import time

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
    assert sorted(int(r.split("-")[1]) for r in refs) == list(range(1, 41)), "case numbers have no gaps or repeats"
    assert contacts == 7
    assert acks == 40
    assert sum(counts) >= 40
    if env.engine().dialect.name == "postgresql":  # SQLite serialises writers: one may take every batch
        assert min(counts) > 0, f"both workers took part: {counts}"
