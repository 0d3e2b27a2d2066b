"""Migrations: the schema they build is the one the models describe, and the head constant is right."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
import sqlalchemy as sa

from conftest import Env
from maild import db
from maild.models import Base


def test_schema_head_constant_matches_alembic() -> None:
    assert db.SCHEMA_HEAD == db.head_revision()


def test_migrations_build_exactly_the_models(env: Env) -> None:
    engine = env.engine()
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_name": db.in_models})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], "models changed without a migration: run alembic revision --autogenerate"


def test_upgrade_is_idempotent(env: Env) -> None:
    assert "up to date (revision" in env.ok("db", "upgrade")
    status = env.ok("db", "status")
    assert f"current revision: {db.SCHEMA_HEAD}" in status


def test_database_errors_in_commands_are_one_line_with_the_fix(env: Env) -> None:
    with env.engine().begin() as conn:
        conn.execute(sa.text("DROP TABLE mailbox_state"))
    result = env.cli("mailboxes", "list")
    assert result.exit_code == 1 and result.output.startswith("maild: database error: ")
    assert "mailbox_state" in result.output and len(result.output.strip().splitlines()) == 1, "no traceback, no SQL"
    with env.engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM alembic_version"))
    result = env.cli("mailboxes", "list")
    assert result.exit_code == 1
    assert result.output.strip() == "maild: the database has no maild schema yet; run `maild db upgrade`"


def test_the_inbound_bytes_move_between_tables_both_ways(env: Env) -> None:
    from alembic import command

    raw = b"From: a@example.test\r\nSubject: kept\r\nMessage-ID: <kept@example.test>\r\n\r\nbody \xff\r\n"
    env.inject(raw, "--queue", "support")
    engine = env.engine()
    try:
        command.downgrade(db._alembic_config(engine), "0014")
        assert env.rows("SELECT raw FROM inbound_message") == [(raw,)]
        assert "inbound_raw" not in sa.inspect(engine).get_table_names()
        db.upgrade(engine)
        assert env.rows("SELECT m.message_id, r.raw FROM inbound_message m JOIN inbound_raw r ON r.inbound_id = m.id"
                        ) == [("<kept@example.test>", raw)]
        assert "raw" not in {column["name"] for column in sa.inspect(engine).get_columns("inbound_message")}
    finally:
        engine.dispose()
