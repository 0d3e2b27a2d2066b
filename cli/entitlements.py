"""``maild entitlements``: support contracts (cases or hours over a term) for accounts and contacts."""

from __future__ import annotations

from datetime import date

import click

from maild.cli.state import State, actor, pass_state, print_json, print_rows, print_table
from maild.db import transaction



@click.group("entitlements")
def command() -> None:
    """Add, list, inspect and adjust entitlements."""


@command.command("add")
@click.option("--name", required=True, help="e.g. \"Gold support 2026\".")
@click.option("--account", help="The account it covers (all its contacts).")
@click.option("--contact", help="Or one contact, by email.")
@click.option("--cases", "cases_", type=int, help="Allocation: this many cases.")
@click.option("--hours", type=float, help="Or this many hours (charged the time spent at resolution).")
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--channels", default="email", show_default=True, help="Comma-separated: email, phone, web, chat.")
@click.option("--sla", help="The SLA that applies to its cases.")
@click.option("--decrement-on", type=click.Choice(["creation", "resolution"]), default="creation", show_default=True)
@click.option("--on-exhausted", type=click.Choice(["flag", "refuse"]), default="flag", show_default=True,
              help="flag: create the case, flag it, notify; refuse: answer with a template, keep the message.")
@pass_state
def add(state: State, name: str, account: str | None, contact: str | None, cases_: int | None, hours: float | None,
        start: date, end: date, channels: str, sla: str | None, decrement_on: str, on_exhausted: str) -> None:
    """Add an entitlement."""
    from maild import entitlements
    from maild.errors import MaildError

    if (cases_ is None) == (hours is None):
        raise MaildError("give --cases N or --hours N (one of them)")
    spec = entitlements.NewEntitlement(
        name=name, account=account, contact=contact, start=start.date() if hasattr(start, "date") else start,
        end=end.date() if hasattr(end, "date") else end, allocation="cases" if cases_ is not None else "hours",
        total=cases_ if cases_ is not None else round((hours or 0) * 60),
        channels=tuple(c.strip() for c in channels.split(",") if c.strip()), sla=sla, decrement_on=decrement_on,
        on_exhausted=on_exhausted)
    app = state.app
    new_id = entitlements.add(app.factory, spec, actor=actor(), now=app.clock())
    click.echo(f"entitlement {new_id} added: {name}")


@command.command("list")
@click.option("--account", help="Only this account's entitlements.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, account: str | None, as_json: bool) -> None:
    """List entitlements with what remains."""
    from maild import entitlements

    with transaction(state.app.factory) as session:
        rows = entitlements.list_all(session, account)
    print_rows(rows, ["id", "name", "account", "contact", "start", "end", "allocation", "total", "remaining",
                      "unit", "on_exhausted"], "no entitlements", as_json)


@command.command("show")
@click.argument("entitlement_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def show(state: State, entitlement_id: int, as_json: bool) -> None:
    """Show an entitlement, the cases drawing on it, and its history."""
    from maild import entitlements

    with transaction(state.app.factory) as session:
        view = entitlements.show(session, entitlement_id)
    if as_json:
        print_json(view)
        return
    for key in ("id", "name", "account", "contact", "start", "end", "allocation", "total", "remaining", "unit",
                "channels", "sla", "decrement_on", "on_exhausted"):
        click.echo(f"{key.replace('_', ' ') + ':':<14} {view[key] if view[key] is not None else ''}")
    print_table(view["cases"], ["reference", "status", "charged", "flag"], "no cases yet")
    print_table(view["history"], ["at", "actor", "action", "details"], "")


@command.command("adjust")
@click.argument("entitlement_id", type=int)
@click.option("--remaining", type=int, help="Set what remains.")
@click.option("--add", "add_units", type=int, help="Or add (negative: take away).")
@click.option("--reason", required=True, help="Why; kept in the audit trail.")
@pass_state
def adjust(state: State, entitlement_id: int, remaining: int | None, add_units: int | None, reason: str) -> None:
    """Change what remains of an entitlement."""
    from maild import entitlements

    app = state.app
    view = entitlements.adjust(app.factory, entitlement_id, remaining=remaining, add_units=add_units, reason=reason,
                               actor=actor(), now=app.clock())
    click.echo(f"entitlement {view['id']}: {view['remaining']} of {view['total']} {view['unit']} remaining")
