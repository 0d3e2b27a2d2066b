"""Which commits wait for the disk (maild.db's lazy commits).

A commit that promises nothing outside the database may be lazy: SQLite's
synchronous=NORMAL, PostgreSQL's synchronous_commit off. Every promise to the outside must
follow a durable one: storing a message (before a 250, an IMAP move, an inject's exit) and
marking an outbox row sending (before the transport has it). The level is read from the
database itself at each commit, with the driver's own cursor."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from conftest import Env, mail
from maild import config as config_mod
from maild import inbound
from maild.app import App
from maild.daemon import make_pollers
from maild.dispatch import DispatchRunner
from maild.models import Queue
from maild.processing import IntakeRunner
from maild.transport import Envelope, MemoryTransport


def _durable(engine: sa.Engine, dbapi_conn: Any) -> bool:
    cur = dbapi_conn.cursor()
    try:
        if engine.dialect.name == "sqlite":
            cur.execute("PRAGMA synchronous")
            return bool(cur.fetchone()[0] >= 2)  # 2 FULL, 1 NORMAL
        cur.execute("SHOW synchronous_commit")
        return bool(cur.fetchone()[0] != "off")
    finally:
        cur.close()


class Commits:
    """Each commit's durability, in order, and what the transport saw when it was handed a
    message. A commit is a transaction's COMMIT, or a statement run in autocommit (each of
    the dispatcher's sends on PostgreSQL), which commits by itself."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine, self.levels = engine, []  # type: list[bool]
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "after_cursor_execute", self._statement)

    def _commit(self, conn: sa.Connection) -> None:
        self.levels.append(_durable(self.engine, conn.connection.dbapi_connection))

    def _statement(self, conn: sa.Connection, *_args: Any) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            self._commit(conn)

    def take(self) -> list[bool]:
        taken, self.levels = self.levels, []
        return taken


class WatchingTransport(MemoryTransport):
    def __init__(self, commits: Commits) -> None:
        super().__init__()
        self.commits = commits
        self.last_commit_durable: list[bool] = []

    def send(self, envelope: Envelope) -> None:
        self.last_commit_durable.append(self.commits.levels[-1])
        super().send(envelope)


def test_storing_and_sending_commit_durably_and_the_work_between_lazily(env: Env) -> None:
    app = App(config_mod.load(env.config))
    app.prepare()
    commits = Commits(app.engine)
    try:
        with app.factory() as session:
            queue_id = session.scalars(sa.select(Queue.id).where(Queue.name == "support")).one()
        now = datetime.now(timezone.utc)
        for i in range(3):
            inbound.add(app.factory, [queue_id], mail(subject=f"Printer {i}"), source="inject", now=now)
        assert commits.take() == [True] * 3, "a stored message is promised to its sender: durable"

        assert IntakeRunner(app.factory, app.intake_context).run_once() == 3
        processing = commits.take()
        assert len(processing) >= 2 and not any(processing), f"the claim and the batch commit lazily: {processing}"

        transport = WatchingTransport(commits)
        assert DispatchRunner(app.factory, transport, app.config.outgoing).run_once() == 3
        assert len(transport.sent) == 3
        assert transport.last_commit_durable == [True] * 3, \
            "each message reaches the transport only after a durable commit (its row marked sending)"
        dispatching = commits.take()
        assert dispatching[:2] == [False, False], "parking interrupted sends and the claim are lazy"
        assert dispatching[2:] == [True] * 4, "three marked sending (each with the previous result), then the last result"

        # The same pooled connection goes back to durable commits after lazy ones.
        with app.factory.begin() as session:
            session.execute(sa.text("SELECT 1"))
        assert commits.take() == [True]
    finally:
        app.close()


def test_imap_stores_durably_before_the_move_and_records_the_move_lazily(make_env, mailbox) -> None:  # type: ignore[no-untyped-def]
    """The stored chunk is promised to the server by the move: durable first. The record that
    the move was done promises nothing: lazy."""
    env: Env = make_env(extra=mailbox.toml())
    mailbox.append(mail(subject="one"), mail(subject="two"))
    app = App(config_mod.load(env.config))
    app.prepare()
    commits = Commits(app.engine)
    [poller] = make_pollers(app)
    client = poller.connection()
    moved_at: list[int] = []  # how many commits there had been
    real_move = client.move

    def move(*args: Any, **kwargs: Any) -> Any:
        moved_at.append(len(commits.levels))
        return real_move(*args, **kwargs)

    client.move = move  # type: ignore[method-assign]
    try:
        assert poller.run_once() == 2
        [at] = moved_at
        assert commits.levels[at - 1] is True, "the chunk's store committed durably before the move"
        assert commits.levels[at] is False, f"the move's record committed lazily: {commits.levels}"
    finally:
        poller.close()
        app.close()
