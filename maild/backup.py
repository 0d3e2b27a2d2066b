"""``maild db backup``: a consistent copy of the database, safe to take while maild runs.

SQLite is copied with its online backup API (a snapshot read in one step: in WAL mode the
daemon keeps writing meanwhile); PostgreSQL with ``pg_dump`` in its custom format, which
``pg_restore`` reads. Either way the copy is written beside the target and renamed into
place only when complete, so a backup file that exists is a whole backup.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from maild.errors import MaildError


def backup(engine: Engine, target: Path, *, force: bool = False, busy_timeout: float = 30.0) -> str:
    """Write a backup of ``engine``'s database to ``target``; return a one-line description."""
    if target.exists() and not force:
        raise MaildError(f"{target} already exists; choose another name or use --force")
    if not target.parent.is_dir():
        raise MaildError(f"folder {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial")
    try:
        if engine.dialect.name == "sqlite":
            what = _sqlite_backup(engine.url, partial, busy_timeout)
        elif engine.dialect.name == "postgresql":
            what = _pg_dump(engine, partial)
        else:
            raise MaildError(f"cannot back up a {engine.dialect.name} database")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return f"{what} to {target} ({target.stat().st_size} bytes)"


def _sqlite_backup(url: URL, partial: Path, busy_timeout: float) -> str:
    source = url.database
    if not source or source == ":memory:":
        raise MaildError("an in-memory SQLite database has nothing to back up")
    if not Path(source).is_file():  # sqlite3.connect would quietly create an empty one
        raise MaildError(f"no SQLite database at {source}")
    partial.unlink(missing_ok=True)  # a leftover from an interrupted run would be appended to
    try:
        src = sqlite3.connect(source, timeout=busy_timeout)
        try:
            dest = sqlite3.connect(partial)
            try:
                src.backup(dest)  # all pages in one step: one consistent snapshot
                # One self-contained file (no -wal beside it); maild turns WAL back on when it opens it.
                dest.execute("PRAGMA journal_mode=DELETE")
                check = dest.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                dest.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise MaildError(f"SQLite backup of {source} failed: {exc}") from exc
    if check != "ok":
        raise MaildError(f"the SQLite backup of {source} failed its check: {check}")
    _fsync(partial)
    return f"SQLite database {source} copied (online backup, checked)"


def _pg_dump(engine: Engine, partial: Path) -> str:
    exe = shutil.which("pg_dump")
    if exe is None:
        raise MaildError("pg_dump is not on PATH; install the PostgreSQL client tools "
                         "(the server's major version or newer), e.g. `apt install postgresql-client`")
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one_or_none()
    if schema is None:
        raise MaildError("the database's search_path names no existing schema; run `maild db upgrade` first")
    url = engine.url
    env = dict(os.environ)
    if url.password is not None:  # not on the command line, where `ps` would show it
        env["PGPASSWORD"] = str(url.password)
    dsn = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    # maild's tables live in one schema (public unless the URL sets search_path): dump that one.
    command = [exe, "--format=custom", f'--schema="{schema}"', f"--file={partial}", f"--dbname={dsn}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise MaildError(f"pg_dump failed: {reason}")
    return f"PostgreSQL schema {schema} of {url.database} dumped (pg_dump custom format)"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
