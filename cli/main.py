"""The ``maild`` command: a thin click layer over the maild package.

Every command parses its arguments, calls one maild function and prints the result.
Errors maild raises on purpose become one line on stderr, with no traceback: exit 2
for a bad config, 1 for everything else.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from maild import __version__
from maild.errors import ConfigError, MaildError
from maild.cli.state import State


class Failure(click.ClickException):
    """A ClickException with our own exit code and a ``maild:`` prefix."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"maild: {self.format_message()}", err=True)


class MaildGroup(click.Group):
    """The commands, each imported only when it runs (or for ``--help``): an MTA runs
    ``maild inject`` for every message, and loading every command's modules for it cost a
    third of its imports (0.50 s against 0.33 s)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMANDS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = importlib.import_module(f"maild.cli.{module}").command
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise Failure(str(exc), 2) from None
        except MaildError as exc:
            raise Failure(str(exc), 1) from None
        except DBAPIError as exc:
            raise Failure(_database_problem(ctx, exc), 1) from None


def _database_problem(ctx: click.Context, exc: DBAPIError) -> str:
    """What a database error in a command means: most often a schema never created or left
    behind by an upgrade of maild, which the schema check names with its fix."""
    from maild import db

    state = ctx.find_object(State)
    try:
        if state is not None:
            db.check_schema(state.app.engine)
    except MaildError as schema:
        return str(schema)
    first_line = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
    return f"database error: {first_line}"


@click.group(cls=MaildGroup)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="MAILD_CONFIG",
    default="config.toml", show_default=True, help="Configuration file (or set MAILD_CONFIG).",
)
@click.version_option(__version__, prog_name="maild")
@click.pass_context
def cli(ctx: click.Context, config_path: Path) -> None:
    """maild: email-driven case management."""
    ctx.obj = State(config_path)
    ctx.call_on_close(ctx.obj.close)


# Command name -> its module in maild.cli, which defines it as ``command``.
_COMMANDS = {name: name for name in ("init", "db", "run", "inject", "inbound", "cases", "outbox", "bounces", "queues",
                                     "mailboxes", "rules", "customers", "subjects", "entitlements", "sla", "report", "kb",
                                     "export")}
_COMMANDS["import"] = "mailimport"


def main() -> None:
    # Pipes closed early (`maild cases list | head`) must not print a traceback.
    try:
        cli.main(prog_name="maild")
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
