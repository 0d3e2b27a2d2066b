"""``maild outbox``: see what maild sends, and release failed, uncertain or suppressed messages."""

from __future__ import annotations

import click

from maild import views
from maild.cli.state import State, pass_state, print_rows
from maild.db import transaction
from maild.dispatch import retry as retry_rows
from maild.models import BOUNCED, FAILED, PENDING, SENDING, SENT, SUPPRESSED, UNKNOWN


@click.group("outbox")
def command() -> None:
    """Inspect and retry outgoing mail."""


@command.command("list")
@click.option("--state", "state_filter",
              type=click.Choice([PENDING, SENDING, SENT, FAILED, UNKNOWN, SUPPRESSED, BOUNCED]))
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, state_filter: str | None, limit: int, as_json: bool) -> None:
    """List outgoing messages, newest first."""
    with transaction(state.app.factory) as session:
        rows = views.list_outbox(session, state=state_filter, limit=limit)
    print_rows(rows, ["id", "kind", "case", "recipient", "state", "attempts", "created_at", "last_error"],
               "the outbox is empty", as_json)


@command.command("retry")
@click.argument("ids", type=int, nargs=-1, required=True)
@pass_state
def retry(state: State, ids: tuple[int, ...]) -> None:
    """Send failed, unknown or suppressed messages again.

    Check the relay first for unknown ones; lift a suppressed address first
    (`maild bounces lift ADDRESS`), or its messages are suppressed again."""
    count = retry_rows(state.app.factory, list(ids), state.app.clock())
    click.echo(f"{count} message(s) queued to be sent again")
