"""db.insert_after_flush: plain rows that point at pending ORM rows are written after them,
without an early flush, and are forgotten with the rows they point at on a rollback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from maild.db import (forget_on_rollback, insert_after_flush, insert_returning_ids, make_engine, make_sessionmaker,
                      pending_inserts)


class _Base(DeclarativeBase):
    pass


class Parent(_Base):
    __tablename__ = "t_parent"
    id: Mapped[int] = mapped_column(primary_key=True)


class Child(_Base):
    __tablename__ = "t_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("t_parent.id"))


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    engine = make_engine(db_url)  # foreign keys enforced on both databases
    _Base.metadata.create_all(engine)
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


def _children(session: Session) -> list[int]:
    return list(session.connection().scalars(sa.select(Child.parent_id).order_by(Child.id)))


def test_rows_wait_for_the_pending_rows_they_point_at(session: Session) -> None:
    session.add(Parent(id=1))
    insert_after_flush(session, Child, [{"parent_id": 1}, {"parent_id": 1}])
    assert _children(session) == [], "nothing written early, and the parent is not flushed for them"
    session.flush()
    assert _children(session) == [1, 1]
    session.commit()


def test_rows_given_in_several_calls_keep_their_order(session: Session) -> None:
    session.add_all([Parent(id=6), Parent(id=7)])
    insert_after_flush(session, Child, [{"parent_id": 7}])
    insert_after_flush(session, Child, [{"parent_id": 6}, {"parent_id": 7}])
    session.flush()
    assert _children(session) == [7, 6, 7]


def test_with_nothing_pending_rows_are_written_at_once(session: Session) -> None:
    session.add(Parent(id=2))
    session.flush()
    insert_after_flush(session, Child, [{"parent_id": 2}])
    assert _children(session) == [2]


def test_a_rolled_back_savepoint_takes_its_rows_with_it(session: Session) -> None:
    session.add(Parent(id=3))
    session.flush()
    with pytest.raises(RuntimeError):
        with session.begin_nested():
            session.add(Parent(id=4))
            insert_after_flush(session, Child, [{"parent_id": 4}])
            raise RuntimeError("this message failed")
    session.add(Parent(id=5))
    session.flush()  # would fail on the missing parent 4 if its rows were still waiting
    assert _children(session) == []
    session.commit()


def test_an_orm_object_stands_for_its_id_read_when_the_row_is_written(session: Session) -> None:
    parent = Parent()  # its id is chosen at the flush (PostgreSQL: the sequence, read back)
    session.add(parent)
    insert_after_flush(session, Child, [{"parent_id": parent}])
    assert [row["parent_id"] for row in pending_inserts(session, Child)] == [parent], "kept as given until then"
    session.flush()
    assert parent.id is not None and _children(session) == [parent.id]
    assert list(pending_inserts(session, Child)) == [], "written: no longer pending"


def test_rows_written_at_once_drop_what_counted_the_pending_rows(session: Session) -> None:
    """A count of pending rows made before (forget_on_rollback's on_flush) no longer holds
    once insert_after_flush's rows are in the database, whether a flush or the call wrote them."""
    forget_on_rollback("test.counted", on_flush=True)
    session.add(Parent(id=8))
    session.flush()
    session.info["test.counted"] = 0
    insert_after_flush(session, Child, [{"parent_id": 8}])
    assert _children(session) == [8] and "test.counted" not in session.info


def test_rows_inserted_together_get_their_ids_in_order(session: Session) -> None:
    session.add_all([Parent(id=20), Parent(id=21)])
    session.flush()
    ids = insert_returning_ids(session, Child, [{"parent_id": 21}, {"parent_id": 20}, {"parent_id": 20}])
    assert len(set(ids)) == 3
    by_id = dict(session.connection().execute(sa.select(Child.id, Child.parent_id)).all())
    assert [by_id[i] for i in ids] == [21, 20, 20], "each id is its own row's"
    assert insert_returning_ids(session, Child, [{"parent_id": 20}])[0] > max(ids)


def test_many_plain_rows_reach_postgresql_as_one_statement(session: Session) -> None:
    """psycopg's executemany pipelines the rows, but the server still runs one INSERT per
    row (and its plan, its executor start): on PostgreSQL the rows go as one multi-row
    INSERT. SQLite's executemany runs in-process and is kept."""
    session.add(Parent(id=1))
    session.flush()
    sent: list[tuple[str, bool]] = []

    def record(_conn: object, _cursor: object, sql: str, _params: object, _context: object, many: bool) -> None:
        if sql.startswith("INSERT INTO t_child"):
            sent.append((sql, many))

    engine = session.get_bind()
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        insert_after_flush(session, Child, [{"parent_id": 1}] * 3)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert _children(session) == [1, 1, 1]
    [(sql, _many)] = sent
    rows_in_statement = sql.count("), (") + 1
    assert rows_in_statement == (3 if engine.dialect.name == "postgresql" else 1), sql
