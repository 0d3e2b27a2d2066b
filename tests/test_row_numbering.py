"""db's numbering of new rows on SQLite: a flush's new rows get the ids SQLite would have
chosen, in the order they were added, so each table's rows are one executemany."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from maild.db import make_engine, make_sessionmaker


class _Base(DeclarativeBase):
    pass


class Note(_Base):
    __tablename__ = "t_note"
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
