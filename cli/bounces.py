"""``maild bounces``: the delivery failures that came back, and the addresses maild no longer mails."""

from __future__ import annotations

import click

from maild import bounces
from maild.cli.state import State, actor, pass_state, print_rows
from maild.db import transaction


@click.group("bounces")
def command() -> None:
    """Bounced mail and suppressed addresses."""


@command.command("list")
@click.option("--unmatched", is_flag=True, help="Only bounces that match no mail maild sent.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, unmatched: bool, limit: int, as_json: bool) -> None:
    """List received bounces, newest first: a line per recipient each one reports."""
    with transaction(state.app.factory) as session:
        rows = bounces.list_bounces(session, unmatched_only=unmatched, limit=limit)
    print_rows(rows, ["id", "received_at", "case", "outbox", "recipient", "action", "status", "hard", "diagnostic"],
               "no bounces", as_json)


@command.command("suppressed")
@click.option("--all", "include_lifted", is_flag=True, help="Also addresses whose suppression was lifted.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def suppressed(state: State, include_lifted: bool, as_json: bool) -> None:
    """List the addresses maild does not mail, after repeated hard bounces."""
    with transaction(state.app.factory) as session:
        rows = bounces.list_suppressed(session, include_lifted)
    print_rows(rows, ["email", "state", "hard_bounces", "suppressed_at", "reason", "lifted_at", "lifted_by"],
               "no address is suppressed", as_json)


@command.command("lift")
@click.argument("address")
@pass_state
def lift(state: State, address: str) -> None:
    """Mail ADDRESS again: lift its suppression and count its bounces from zero."""
    with transaction(state.app.factory) as session:
        lifted = bounces.lift(session, address, by=actor(), now=state.app.clock())
    click.echo(f"{lifted.email}: suppression lifted ({lifted.hard_bounces} hard bounce(s) forgotten)")
    if lifted.held:
        ids = " ".join(str(i) for i in lifted.held)
        click.echo(f"{len(lifted.held)} message(s) to it were held meanwhile; `maild outbox retry {ids}` sends them")
