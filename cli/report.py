"""``maild report``: figures for support leads (customer satisfaction)."""

from __future__ import annotations

from datetime import date, datetime, time, timezone

import click

from maild.cli.state import State, pass_state, print_json, print_table
from maild.db import transaction


@click.group("report")
def command() -> None:
    """Reports over the cases."""


@command.command("csat")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Only surveys sent on or after this day.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def csat(state: State, since: datetime | None, as_json: bool) -> None:
    """Customer satisfaction (1-5): surveys sent, answers and average, per queue and per agent."""
    from maild import csat as csat_mod

    start = datetime.combine(date(since.year, since.month, since.day), time(), timezone.utc) if since else None
    with transaction(state.app.factory) as session:
        figures = csat_mod.report(session, start)
    if as_json:
        print_json(figures)
        return
    print_table(figures["queues"], ["queue", "surveys", "answers", "average"], "no surveys sent")
    if figures["agents"]:
        click.echo("")
        print_table(figures["agents"], ["agent", "surveys", "answers", "average"], "")
