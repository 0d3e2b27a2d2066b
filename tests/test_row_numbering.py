"""db's handling of the rows a session holds unwritten, as intake's batches use it.

Numbering on SQLite: a flush's new rows get the ids SQLite would have chosen, in the order
they were added, so each table's rows are one executemany. ``pending``: the rows added and
not yet written, which intake's lookups read instead of flushing a batch early; kept by
class as they are added, they leave when written or taken away."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from maild.db import get_unflushed, make_engine, make_sessionmaker, pending


class _Base(DeclarativeBase):
    pass


class Note(_Base):
    __tablename__ = "t_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


class Tag(_Base):
    __tablename__ = "t_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    _Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _stored(session: Session) -> list[tuple[int, str]]:
    return [(row.id, row.text) for row in session.scalars(sa.select(Note).order_by(Note.id))]


def test_new_rows_are_numbered_in_the_order_added_after_every_id_taken(engine: sa.Engine) -> None:
    inserts: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda _c, _cur, sql, *_a: inserts.append(sql) if sql.startswith("INSERT") else None)
    with make_sessionmaker(engine)() as session:
        session.add_all([Note(text="a"), Note(text="b")])
        session.commit()
        inserts.clear()
        session.add(Note(text="c"))
        session.add(Note(id=7, text="given"))  # an id chosen up front, as a new case's is
        session.add_all([Note(text="d"), Note(text="e")])
        session.commit()
        assert _stored(session) == [(1, "a"), (2, "b"), (7, "given"), (8, "c"), (9, "d"), (10, "e")] \
            if engine.dialect.name == "sqlite" else [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e"), (7, "given")]
    if engine.dialect.name == "sqlite":  # PostgreSQL's ids come back from its many-row INSERTs
        assert len(inserts) == 1, inserts


def test_a_row_deleted_from_the_end_gives_its_number_again_as_sqlite_would(engine: sa.Engine) -> None:
    with make_sessionmaker(engine)() as session:
        session.add_all([Note(text="a"), Note(text="b")])
        session.commit()
        session.execute(sa.delete(Note).where(Note.text == "b"))
        session.add(Note(text="c"))
        session.commit()
        assert [text for _, text in _stored(session)] == ["a", "c"]


def _texts(rows: Iterator[Note] | Iterator[Tag]) -> list[str]:
    return [row.text for row in rows]


def test_pending_rows_by_class_in_the_order_added_until_written(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        session.add_all([Note(text="a"), Tag(text="t"), Note(text="b")])
        assert _texts(pending(session, Note)) == ["a", "b"]
        assert _texts(pending(session, Tag)) == ["t"]
        assert len(list(pending(session, object))) == 3, "a base class finds its subclasses' rows"
        session.flush()
        assert list(pending(session, Note)) == [], "written"
        session.add(Note(text="c"))
        assert _texts(pending(session, Note)) == ["c"], "a row added after a flush is pending again"


def test_a_row_taken_away_is_no_longer_pending(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        kept, dropped = Note(text="kept"), Note(text="dropped")
        session.add_all([kept, dropped])
        session.expunge(dropped)
        assert _texts(pending(session, Note)) == ["kept"]
        session.flush()
        savepoint = session.begin_nested()
        session.add(Note(text="rolled back"))
        assert _texts(pending(session, Note)) == ["rolled back"]
        savepoint.rollback()
        assert list(pending(session, Note)) == []
        session.add(Note(text="after"))
        assert _texts(pending(session, Note)) == ["after"]
    with make_sessionmaker(engine)() as session:
        session.add(Note(text="never"))
        session.rollback()
        assert list(pending(session, Note)) == []


def test_get_unflushed_finds_a_pending_row_without_a_flush(engine: sa.Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        stored = Note(id=1, text="stored")
        session.add(stored)
        session.flush()
        fresh = Note(id=2, text="fresh")
        session.add(fresh)
        flushes: list[int] = []
        sa.event.listen(session, "before_flush", lambda *_a: flushes.append(1))
        assert get_unflushed(session, Note, 2) is fresh
        assert get_unflushed(session, Note, 1) is stored
        assert get_unflushed(session, Note, 3) is None
        assert flushes == [], "nothing flushed to find them"
