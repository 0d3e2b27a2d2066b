"""Database engines, sessions and schema migrations for SQLite and PostgreSQL.

SQLite runs in WAL mode with synchronous=FULL: intake promises a sender that a message is
stored, so a commit must survive a power cut, not just a crash. busy_timeout lets a second
process (``maild inject`` beside ``maild run``) wait for the writer instead of failing.

A transaction whose commit promises nothing outside the database may commit lazily
(``transaction(factory, lazy=True)``): SQLite's synchronous=NORMAL, PostgreSQL's
``synchronous_commit = off``. It survives a crash of maild; a power cut may lose it, and
then only with every commit after it, since the log is written in order and any durable
commit flushes all of it (SQLite's WAL: one fsync of the file; PostgreSQL's asynchronous
commit, documented so). Every promise to the outside follows a durable commit: a sender's
250, an IMAP message moved or flagged, an inject's exit status, a message handed to the
transport (its outbox row marked sending). So what a power cut can take is the processing
of stored messages, which are then processed again, with nothing sent for them yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from maild.errors import SchemaOutOfDate, TemporaryFailure

T = TypeVar("T")

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration. Checked at start-up without importing alembic (it costs a tenth of
# a second on every `maild inject`); tests/test_migrations.py keeps it equal to alembic's head.
SCHEMA_HEAD = "0016"
# The knowledge-base search index (an FTS5 table and its shadow tables on SQLite, a generated
# tsvector column and its GIN index on PostgreSQL) is built per database by migration 0010,
# not by the models.
SEARCH_INDEX_PREFIX = "kb_fts"


def in_models(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's include_name: everything but the per-database search index."""
    return not (name or "").startswith(SEARCH_INDEX_PREFIX)


def make_engine(url: str, echo: bool = False, busy_timeout: float = 30.0) -> Engine:
    """Create an engine; SQLite gets its pragmas and its parent folder on first connect.

    ``busy_timeout`` is how long a writer waits for a lock (SQLite) or a connection
    (PostgreSQL) before the operation counts as a temporary failure.
    """
    if url.startswith("sqlite"):
        return _sqlite_engine(url, echo, busy_timeout)
    engine = create_engine(
        url, echo=echo, pool_pre_ping=True, connect_args={"connect_timeout": max(1, int(busy_timeout))}
    )
    # Many rows of one INSERT without RETURNING (a batch's audit events, outbox rows) as one
    # multi-row statement, as SQLAlchemy does for psycopg2, rather than psycopg's pipelined
    # executemany, which the server still runs row by row.
    engine.dialect.use_insertmanyvalues_wo_returning = True

    @event.listens_for(engine, "begin")
    def _lazy_commit(conn: Connection) -> None:
        if conn.get_execution_options().get(_LAZY):
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO off")

    @event.listens_for(engine, "connect")
    def _session_settings(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(_SESSION_SETTINGS)
        dbapi_conn.commit()

    return engine


# Set on every PostgreSQL connection, in one round trip.
# - plan_cache_mode: psycopg prepares a statement on the server after five runs, and
#   PostgreSQL then keeps one generic plan for it, made from the table's size at that moment.
#   On a new installation that is a handful of rows, and until ANALYZE runs (autovacuum) the
#   plan stays: an index chosen for the queue alone read every stored message of it, 8.5 ms
#   a lookup at 20,000 messages against 0.05 ms with a plan for the values given.
# - default_toast_compression: values over about 2 KB (every stored message, most outgoing
#   ones and long bodies) are compressed, by default with pglz. lz4 took a fifth of its CPU
#   on 2,000 stored messages (0.10 s against 0.50 s) and made them smaller (28.9 MB against
#   29.9 MB). Set only where the server was built with it (PostgreSQL 14 and later, as
#   Debian's and the official images are); elsewhere pglz stays, without an error.
_SESSION_SETTINGS = """
SET plan_cache_mode = force_custom_plan;
SELECT set_config(name, 'lz4', false) FROM pg_settings
 WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)
"""


def _sqlite_engine(url: str, echo: bool, busy_timeout: float) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None hands transaction control to our BEGIN IMMEDIATE below, so a
    # writer takes the lock up front instead of failing on upgrade from a read lock.
    engine = create_engine(url, echo=echo, connect_args={"timeout": busy_timeout, "isolation_level": None})

    found = False  # whether this engine has connected to an existing database file yet

    @event.listens_for(engine, "do_connect")
    def _never_a_new_file(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        # Once the database exists, a new connection must fail rather than make an empty
        # one in its place (the file deleted or moved away while maild runs): whatever was
        # written there would be lost, and `/healthz` could not tell that it is gone.
        if found and path and path != ":memory:":
            cargs[0] = f"{Path(path).absolute().as_uri()}?mode=rw"
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        nonlocal found
        found = True
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        record.info[_SYNCHRONOUS] = "FULL"
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # The level is the connection's, not the transaction's: set it only when it changes.
        level = "NORMAL" if conn.get_execution_options().get(_LAZY) else "FULL"
        if conn.info.get(_SYNCHRONOUS) != level:
            conn.exec_driver_sql(f"PRAGMA synchronous={level}")
            conn.info[_SYNCHRONOUS] = level
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def hold(session: Session, objects: Iterable[object]) -> None:
    """Keep ``objects`` in the session's identity map for its life: it holds only objects
    something refers to, and a later ``session.get`` would otherwise load them again."""
    session.info.setdefault("maild.held", []).extend(objects)


def pending(session: Session, kind: type[T]) -> Iterator[T]:
    """The ``kind`` rows added to ``session`` and not yet written, each class's in the order added.

    Intake writes a batch's rows once, at its end; lookups that must see what the batch's
    earlier messages made read these instead of flushing (a flush per lookup, of the batch
    so far, cost more than all the rest of threading a reply). They are kept by class as
    they are added: going through ``session.new`` went through every row of every class,
    each time (400 type checks a message in a batch of 50)."""
    for cls, rows in session.info.get(_PENDING, {}).items():
        if issubclass(cls, kind):
            yield from rows


_PENDING = "maild.pending"  # {class: [rows]}: added, and neither written nor taken away since


@event.listens_for(Session, "transient_to_pending")
def _track_pending(session: Session, instance: object) -> None:
    session.info.setdefault(_PENDING, {}).setdefault(type(instance), []).append(instance)


@event.listens_for(Session, "pending_to_transient")
def _untrack_pending(session: Session, instance: object) -> None:
    # Expunged, or its transaction (or savepoint) rolled back: rare, so a plain search.
    rows = session.info.get(_PENDING, {}).get(type(instance), [])
    for i, row in enumerate(rows):
        if row is instance:
            del rows[i]
            return


@event.listens_for(Session, "after_flush_postexec")
def _forget_written(session: Session, _context: Any) -> None:
    session.info.pop(_PENDING, None)  # all written; a row added from here on is tracked anew


def get_unflushed(session: Session, kind: type[T], ident: int, **options: Any) -> T | None:
    """``session.get`` that finds a pending row and does not flush the batch to find one."""
    found = next((row for row in pending(session, kind) if getattr(row, "id", None) == ident), None)
    if found is not None:
        return found
    with session.no_autoflush:
        return session.get(kind, ident, **options)


def given(**values: Any) -> dict[str, Any]:
    """A new ORM object's constructor arguments without those that are None or an empty list.

    Each attribute set on an ORM object costs an event (a new case's rows set about sixty),
    and its INSERT writes an unset attribute as it writes None: the column's default, or
    NULL. Not for a JSON column that keeps None as JSON null (none_as_null=False): there
    None is a value. An unset collection reads as empty."""
    return {key: value for key, value in values.items() if value is not None and not (isinstance(value, list)
                                                                                      and not value)}


def insert_after_flush(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert plain ``rows`` into ``table`` on the session's connection, after the rows the
    session holds pending (which they may point at) are written: at once if there are
    none, else right after the next flush. Intake writes a batch at its end; flushing it
    early for such rows cost a flush per message. A value that is an ORM object stands for
    its primary key, read when the row is written: a pending row's is known only then."""
    if not session.new:
        _forget_counts(session)  # they counted what the database held before these rows
        session.connection().execute(insert(table), _resolved(rows))
        return
    session.info.setdefault(_AFTER_FLUSH, []).append((table, rows))


def insert_returning_ids(session: Session, model: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Insert plain ``rows`` into ``model``'s table in one statement; their new ids, in order.

    On SQLite the ids are chosen first, as SQLite would choose them (see _number_new_rows):
    it cannot say which RETURNING row is whose in a many-row INSERT, so SQLAlchemy would
    write them one by one. PostgreSQL's many-row INSERT ... RETURNING is ordered."""
    connection = session.connection()
    key = inspect(model).mapper.primary_key[0]
    if connection.dialect.name == "sqlite":
        start = largest_id(connection, model) + 1
        ids = list(range(start, start + len(rows)))
        connection.execute(insert(model), [{**row, key.key: ident} for row, ident in zip(rows, ids)])
        return ids
    return list(connection.execute(insert(model).returning(key, sort_by_parameter_order=True), rows).scalars())


def pending_inserts(session: Session, table: Any) -> Iterator[dict[str, Any]]:
    """The rows given to ``insert_after_flush`` for ``table`` and not written yet, in order."""
    for each, rows in session.info.get(_AFTER_FLUSH, []):
        if each is table:
            yield from rows


def _resolved(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: _primary_key(value) if hasattr(value, "_sa_instance_state") else value
             for key, value in row.items()} for row in rows]


def _primary_key(obj: Any) -> Any:
    return inspect(obj).mapper.primary_key_from_instance(obj)[0]


def write_at_flush(session: Session, key: str, statement: Any, params: dict[str, Any]) -> None:
    """Run ``statement`` with the session's next flush (or its commit, if nothing is left to
    flush), in place of any given earlier under ``key``: for a value a transaction counts on
    in memory and writes once (SQLite's case counter), instead of a write each time it moves
    on. Forgotten on a rollback."""
    session.info.setdefault(_AT_FLUSH, {})[key] = (statement, params)


_AFTER_FLUSH = "maild.insert_after_flush"
_AT_FLUSH = "maild.write_at_flush"
# session.info keys whose contents a rollback, or a flush, may have made wrong (see
# forget_on_rollback).
_ROLLBACK_SCOPED = {_AFTER_FLUSH, _AT_FLUSH}
_FLUSH_SCOPED: set[str] = set()


def forget_on_rollback(key: str, *, on_flush: bool = False) -> None:
    """Drop ``session.info[key]`` whenever a session rolls back, a savepoint included: for
    what a batch remembers about rows that the rollback may have taken away. ``on_flush``:
    also at every flush (and every write of insert_after_flush's rows), for what counts the
    rows still pending, which a flush writes."""
    _ROLLBACK_SCOPED.add(key)
    if on_flush:
        _FLUSH_SCOPED.add(key)


@event.listens_for(Session, "before_flush")
def _number_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    """On SQLite, give new rows their ids before they are written, as SQLite would choose
    them (the largest plus one: no table uses AUTOINCREMENT, and the writer holds the
    database from BEGIN IMMEDIATE to its commit, so nobody else can take one meanwhile).

    SQLite cannot say which RETURNING row belongs to which row of a many-row INSERT, so the
    ORM writes every new row whose id the database chooses as an INSERT of its own: an
    intake batch's activities and outgoing mail were one statement per row. With the ids
    given, a table's rows are one executemany. PostgreSQL needs none of this: its many-row
    INSERT ... RETURNING is ordered.
    """
    if not session.new or session.get_bind().dialect.name != "sqlite":
        return
    unnumbered: dict[tuple[Any, str], list[Any]] = {}
    given: dict[Any, int] = {}  # the largest id already given to a pending row (a new case's)
    for obj in session.new:
        state = inspect(obj)
        key = _numbered_key(state.mapper)
        if key is None:
            continue
        if (ident := getattr(obj, key)) is None:
            unnumbered.setdefault((state.mapper, key), []).append(state)
        else:
            given[state.mapper] = max(given.get(state.mapper, 0), ident)
    for (mapper, key), states in unnumbered.items():
        # In the order they were added, as their INSERTs would have numbered them: a case's
        # activities are listed by id.
        start = max(largest_id(session.connection(), mapper), given.get(mapper, 0)) + 1
        for number, state in enumerate(sorted(states, key=lambda s: s.insert_order), start=start):
            setattr(state.obj(), key, number)


@lru_cache(maxsize=None)
def _numbered_key(mapper: Any) -> str | None:
    """The attribute of a mapper's id if the database would choose it (one integer column)."""
    column = mapper.local_table.autoincrement_column
    if len(mapper.primary_key) != 1 or column is not mapper.primary_key[0]:
        return None
    return str(mapper.get_property_by_column(column).key)


def largest_id(connection: Connection, model: Any) -> int:
    """The largest id stored in a model's (or mapper's) table, 0 if it is empty: on SQLite,
    the next new row's id is this plus one."""
    return int(connection.execute(_largest_id_query(inspect(model).mapper)).scalar_one())


@lru_cache(maxsize=None)
def _largest_id_query(mapper: Any) -> Any:
    return select(func.coalesce(func.max(mapper.primary_key[0]), 0))


def _forget_counts(session: Session) -> None:
    for key in _FLUSH_SCOPED:
        session.info.pop(key, None)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    _forget_counts(session)
    # The rows of insert_after_flush: one executemany per table, its rows in the order
    # given (they point only at rows the flush has just written, never at each other).
    by_table: dict[Any, list[dict[str, Any]]] = {}
    for table, rows in session.info.pop(_AFTER_FLUSH, []):
        by_table.setdefault(table, []).extend(rows)
    for table, rows in by_table.items():
        session.connection().execute(insert(table), _resolved(rows))
    _write_now(session)


@event.listens_for(Session, "before_commit")
def _write_now(session: Session) -> None:
    for statement, params in session.info.pop(_AT_FLUSH, {}).values():
        session.connection().execute(statement, params)


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, _previous: Any) -> None:
    # The rows they would point at were rolled back (a message's savepoint, or the batch).
    for key in _ROLLBACK_SCOPED:
        session.info.pop(key, None)


_LAZY = "maild_lazy_commit"  # an execution option of the transaction's connection
_SYNCHRONOUS = "maild.synchronous"  # SQLite's level on a pooled connection, in its info


@contextmanager
def transaction(factory: sessionmaker[Session], *, lazy: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error.

    A locked SQLite database or an unreachable PostgreSQL is a TemporaryFailure, so
    callers (the SMTP listener, ``maild inject``) can tell the sender to try again.
    ``lazy``: the commit need not reach the disk before it returns, for work that promises
    nothing outside the database (see the module's docstring).
    """
    session = factory()
    try:
        if lazy:
            session.connection(execution_options={_LAZY: True})
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        _raise_if_temporary(exc)
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def autocommit(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """A connection on which each statement commits on its own, durably: for work that is one
    statement, one round trip instead of three (BEGIN, the statement, COMMIT). Errors as
    ``transaction``'s."""
    engine: Engine = factory.kw["bind"]
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn
    except OperationalError as exc:
        _raise_if_temporary(exc)
        raise


def _raise_if_temporary(exc: OperationalError) -> None:
    if is_temporary(exc):
        raise TemporaryFailure(f"database unavailable: {_short(exc)}") from exc


_SQLITE_TEMPORARY = ("locked", "busy", "unable to open", "disk i/o", "database or disk is full")


def is_temporary(exc: OperationalError) -> bool:
    """Will this clear by itself? SQLite reports a missing table as OperationalError too, and
    that needs an admin, so only lock, I/O and connection trouble counts as temporary."""
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    if "sqlite" in type(exc.orig).__module__:
        return any(word in text for word in _SQLITE_TEMPORARY)
    # psycopg raises OperationalError for connection trouble; SQL errors are other classes.
    return True


def again_on_conflict(work: Callable[[], T]) -> T:
    """Run ``work`` (its own transaction); if a concurrent worker inserted the same unique row
    first, run it once more: the second pass finds the row and updates it instead."""
    try:
        return work()
    except IntegrityError:
        return work()


def _short(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


# Schema migrations ---------------------------------------------------------


def _alembic_config(engine: Engine | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """The head according to alembic's scripts (for tests and `db status`)."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    return str(heads[0])


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except ProgrammingError:  # PostgreSQL: undefined table, i.e. no schema yet
            return None
        except OperationalError as exc:
            if "no such table" in str(exc.orig):  # SQLite's way of saying the same
                return None
            raise


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate the schema to ``revision``; returns (before, after)."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), revision)
    return before, current_revision(engine) or ""


def check_schema(engine: Engine) -> None:
    """Refuse to work on a schema this code was not written for, and say how to fix it."""
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise TemporaryFailure(f"database unavailable: {_short(exc)}") from exc
    if current == SCHEMA_HEAD:
        return
    if current is None:
        raise SchemaOutOfDate("the database has no maild schema yet; run `maild db upgrade`")
    raise SchemaOutOfDate(
        f"the database schema is at revision {current} but this maild needs {SCHEMA_HEAD}; run `maild db upgrade`"
    )
