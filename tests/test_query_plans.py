"""Every lookup intake makes per message uses an index, so its cost does not grow with the
number of messages and cases already stored (checked on SQLite's query plans, not timed)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from conftest import Env, mail
from maild import config as config_mod
from maild import inbound
from maild.app import App
from maild.clock import utcnow
from maild.db import transaction
from maild.processing import IntakeRunner

# Tables that hold configuration, not traffic: a scan of them costs the same forever.
# Entitlements are contracts an admin makes; intake only asks whether there is any (one row).
SMALL = {"queue", "agent", "counter", "subject", "alembic_version", "entitlement"}


def _grows(detail: str) -> bool:
    """A full scan of a traffic table, or an index search narrowed only by the queue
    (every message of a queue: as bad as a scan)."""
    words = detail.split()
    if len(words) < 2 or words[1] in SMALL:
        return False
    return words[0] == "SCAN" or detail.endswith("(queue_id=?)")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_no_per_message_query_scans_a_growing_table(make_env) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_env(ack_limit=100)
    app = App(config_mod.load(env.config))
    app.prepare()
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")) and not executemany:
            statements.append((statement, parameters))

    sa.event.listen(app.engine, "before_cursor_execute", capture)
    try:
        qid = app.registry.queue_id("support")
        for raw in (mail(message_id="<a@c.test>"), mail(subject="Re: x", headers={"In-Reply-To": "<a@c.test>"}),
                    mail(subject="[CAS-00001-AAAAAA] about that")):
            inbound.add(app.factory, [qid], raw, source="inject", now=utcnow())
        # IMAP stores carry a source key (folder/UIDVALIDITY/UID): the third identity.
        inbound.add(app.factory, [qid], mail(subject="by imap"), source="imap", source_key="INBOX/7/1", now=utcnow())
        with transaction(app.factory) as session:  # the IMAP poller's batch: one lookup per identity
            inbound.store_batch(session, qid, [(mail(subject="fetched"), "INBOX/7/2")], source="imap", now=utcnow(),
                                acked=False)
        IntakeRunner(app.factory, app.intake_context).run_once()
    finally:
        sa.event.remove(app.engine, "before_cursor_execute", capture)
    scans = set()
    with app.engine.connect() as conn:
        for statement, params in statements:
            for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params):
                if _grows(row[-1]):
                    scans.add(f"{row[-1]}  <-  {' '.join(statement.split())[:160]}")
    app.close()
    assert len(statements) > 20, "the capture saw intake's queries"
    assert not scans, "queries that scan a growing table:\n" + "\n".join(sorted(scans))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_plans_each_statement_for_the_values_given(env: Env) -> None:
    """psycopg prepares a statement that runs often, and PostgreSQL would keep one generic plan
    for it, costed while a new installation's tables were nearly empty: the store's duplicate
    lookup then read every stored message of the queue until ANALYZE ran."""
    engine = env.engine()
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_compresses_stored_messages_with_lz4(env: Env) -> None:
    """A stored message's bytes (and any large value) are compressed with lz4, which took a
    fifth of pglz's CPU, where the server was built with it (PostgreSQL 14 and later)."""
    app = App(config_mod.load(env.config))
    app.prepare()
    try:
        body = "The printer on the third floor jams on every second page.\n" * 200  # 11 KB, compressible
        inbound.add(app.factory, [app.registry.queue_id("support")], mail(body=body), source="inject", now=utcnow())
        with app.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_column_compression(raw) FROM inbound_raw")).scalar_one() == "lz4"
    finally:
        app.close()
