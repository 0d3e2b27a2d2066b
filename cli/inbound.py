"""``maild inbound``: see stored messages, why some were quarantined, and retry them."""

from __future__ import annotations

import sys

import click

from maild import inbound, views
from maild.cli.state import State, pass_state, print_json, print_rows
from maild.db import transaction
from maild.models import PROCESSED, QUARANTINED, RECEIVED

STATES = click.Choice([RECEIVED, PROCESSED, QUARANTINED])


@click.group("inbound")
def command() -> None:
    """Inspect and retry stored inbound messages."""


@command.command("list")
@click.option("--state", "state_filter", type=STATES, help="Only messages in this state.")
@click.option("--quarantined", is_flag=True, help="Shorthand for --state quarantined.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, state_filter: str | None, quarantined: bool, limit: int, as_json: bool) -> None:
    """List inbound messages, newest first."""
    with transaction(state.app.factory) as session:
        rows = views.list_inbound(session, state=QUARANTINED if quarantined else state_filter, limit=limit)
    print_rows(rows, ["id", "queue", "state", "source", "received_at", "outcome", "error"],
               "no inbound messages", as_json)


@command.command("show")
@click.argument("inbound_id", type=int)
@click.option("--raw", is_flag=True, help="Write the message exactly as received to stdout.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def show(state: State, inbound_id: int, raw: bool, as_json: bool) -> None:
    """Show one inbound message: its state, error and headers."""
    with transaction(state.app.factory) as session:
        view, raw_bytes = views.show_inbound(session, inbound_id)
    if raw:
        sys.stdout.buffer.write(raw_bytes)
        sys.stdout.buffer.flush()
    elif as_json:
        print_json(view)
    else:
        for key, value in view.items():
            click.echo(f"{key + ':':<14} {'' if value is None else value}")


@command.command("retry")
@click.argument("inbound_ids", type=int, nargs=-1)
@click.option("--all-quarantined", is_flag=True, help="Retry every quarantined message.")
@pass_state
def retry(state: State, inbound_ids: tuple[int, ...], all_quarantined: bool) -> None:
    """Put quarantined messages back in line; `maild run` (or --once) processes them again."""
    ids = list(inbound_ids)
    if all_quarantined:
        with transaction(state.app.factory) as session:
            ids += [r["id"] for r in views.list_inbound(session, state=QUARANTINED, limit=1_000_000)]
    if not ids:
        raise click.UsageError("name at least one inbound id, or --all-quarantined")
    count = inbound.retry(state.app.factory, ids)
    click.echo(f"{count} message(s) queued for another attempt")
    if count < len(set(ids)):
        click.echo(f"{len(set(ids)) - count} message(s) were not quarantined and were left as they are")
