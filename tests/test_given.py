"""db.given: a new ORM object built without its None values is written as it would be with them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from maild.db import given, make_engine, make_sessionmaker


class _Base(DeclarativeBase):
    pass


class Row(_Base):
    __tablename__ = "t_given_row"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(20), default="pending")
    note: Mapped[str | None] = mapped_column(sa.Text)
    count: Mapped[int] = mapped_column(default=0)


def test_none_and_empty_lists_are_left_out_and_other_values_kept() -> None:
    assert given(a=None, b=[], c=0, d="", e=False, f=[1], g={}) == {"c": 0, "d": "", "e": False, "f": [1], "g": {}}


def test_a_row_without_its_none_values_is_written_as_with_them(db_url: str) -> None:
    engine = make_engine(db_url)
    _Base.metadata.create_all(engine)
    try:
        with make_sessionmaker(engine)() as session:
            with_nones = Row(state=None, note=None, count=None)
            without = Row(**given(state=None, note=None, count=None))
            assert without.note is None and without.state is None, "unset reads as None before the INSERT"
            session.add_all([with_nones, without, Row(**given(state="sent", note="x", count=3))])
            session.commit()
            rows = session.execute(sa.select(Row.state, Row.note, Row.count).order_by(Row.id)).all()
        assert [tuple(r) for r in rows] == [("pending", None, 0), ("pending", None, 0), ("sent", "x", 3)]
    finally:
        _Base.metadata.drop_all(engine)
        engine.dispose()
