"""``maild db``: create and migrate the database schema, and back the database up."""

from __future__ import annotations

from pathlib import Path

import click

from maild import db
from maild.cli.state import State, pass_state


@click.group("db")
def command() -> None:
    """Create, migrate and inspect the database schema; back the database up."""


@command.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_state
def upgrade(state: State, revision: str) -> None:
    """Create the schema or migrate it to the latest revision."""
    before, after = db.upgrade(state.app.engine, revision)
    if before == after:
        click.echo(f"database is up to date (revision {after})")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to revision {after}")


@command.command("status")
@pass_state
def status(state: State) -> None:
    """Show the schema revision and whether it is current; exit 1 if not."""
    current, head = db.current_revision(state.app.engine), db.head_revision()
    click.echo(f"current revision: {current or 'none'}\nlatest revision:  {head}")
    if current != head:
        raise click.exceptions.Exit(1)


@command.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@pass_state
def backup(state: State, file: Path, force: bool) -> None:
    """Write a consistent backup of the database to FILE, safe while maild runs.

    SQLite: a copy made with the online backup API (open it as the database to restore).
    PostgreSQL: pg_dump's custom format (restore with pg_restore).
    """
    from maild.backup import backup as take_backup

    config = state.app.config
    click.echo(take_backup(state.app.engine, file, force=force, busy_timeout=config.database.busy_timeout))
