"""What every command shares: the config path, loaded lazily into an App, and output helpers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from maild.app import App
from maild import config as config_mod

if TYPE_CHECKING:
    from datetime import datetime

    from rich.console import Console
    from sqlalchemy.orm import Session

    from maild.cases import IntakeContext
    from maild.models import Case

    CaseChange = Callable[[Session, IntakeContext, Case, datetime], str]


class State:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = App(config_mod.load(self.config_path))
        return self._app

    def context(self) -> IntakeContext:
        """What a change to a case may need besides the case: config, rules, templates (for
        the mails some changes send), checked as the daemon checks them at start-up."""
        self.app.prepare()
        return self.app.intake_context()

    def change(self, reference: str, apply: CaseChange) -> None:
        """Run one change on the locked case ``reference`` in its own transaction, with the
        intake context and the time, and print what it did."""
        from maild import casework

        ctx, now = self.context(), self.app.clock()
        click.echo(casework.change(self.app.factory, reference, lambda session, case: apply(session, ctx, case, now)))

    def close(self) -> None:
        """Release pooled connections: a long test session must not exhaust PostgreSQL."""
        if self._app is not None:
            self._app.close()


pass_state = click.make_pass_decorator(State)


def actor() -> str:
    """Who made a change from the command line, for the audit trail."""
    import getpass

    return f"cli:{getpass.getuser()}"


def console() -> Console:
    from rich.console import Console

    # Not a terminal (a pipe, a test): do not squeeze tables into 80 columns.
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "200"))
    return Console(width=width, soft_wrap=False, highlight=False)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def print_rows(rows: list[dict[str, Any]], columns: list[str], empty: str, as_json: bool) -> None:
    """A listing as JSON (every field) or as a table of ``columns``."""
    if as_json:
        print_json(rows)
    else:
        print_table(rows, columns, empty)


def print_table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> None:
    if not rows:
        click.echo(empty)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col.replace("_", " "), overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console().print(table)
