"""``maild queues``: the work waiting in each queue."""

from __future__ import annotations

import click

from maild import views
from maild.cli.state import State, pass_state, print_rows
from maild.db import transaction


@click.group("queues")
def command() -> None:
    """See the queues and their work."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, as_json: bool) -> None:
    """Each queue with its open, unassigned and high-priority case counts."""
    app = state.app
    with transaction(app.factory) as session:
        rows = views.queue_overview(session, list(app.config.queues))
    for row in rows:
        row["address"] = app.config.queues[row["queue"]].addresses[0]
    print_rows(rows, ["queue", "address", "open", "unassigned", "high_priority"], "no queues", as_json)
