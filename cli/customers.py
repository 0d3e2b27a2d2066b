"""``maild customers``: import accounts and contacts from CSV, and look them up."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from maild.cli.state import State, console, pass_state, print_json, print_rows, print_table
from maild.db import transaction

# Below this many lines a progress bar is only noise.
PROGRESS_FROM = 2000


@click.group("customers")
def command() -> None:
    """Customer accounts and contacts."""


@command.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print every line's verdict as JSON.")
@pass_state
def import_(state: State, csv_file: Path, as_json: bool) -> None:
    """Import CSV_FILE (columns: email, name, account, tier, domain); report each line.

    Exits 1 if any line was rejected (the others are imported).
    """
    from maild import customers

    app = state.app
    total = max(sum(1 for _ in csv_file.open(encoding="utf-8-sig")) - 1, 0)
    with csv_file.open(newline="", encoding="utf-8-sig") as stream:
        rows = customers.read_rows(stream)
        if total >= PROGRESS_FROM and not as_json:
            from rich.progress import Progress

            with Progress(console=console(), transient=True) as bar:
                task = bar.add_task("importing", total=total)
                report = customers.import_rows(app.factory, rows, now=app.clock(),
                                               progress=lambda n: bar.advance(task, n))
        else:
            report = customers.import_rows(app.factory, rows, now=app.clock())
    if as_json:
        print_json([v.__dict__ for v in report.verdicts])
    else:
        for v in report.verdicts:
            if v.result != "unchanged":
                click.echo(f"line {v.line}: {v.result} {v.email}" + (f" ({v.detail})" if v.detail else ""))
        click.echo(f"{report.count('created')} created, {report.count('updated')} updated, "
                   f"{report.count('unchanged')} unchanged, {report.count('rejected')} rejected; "
                   f"{report.accounts_created} new account(s)")
    if report.count("rejected"):
        sys.exit(1)


@command.command("list")
@click.option("--account", help="Only contacts of this account.")
@click.option("--tier", help="Only contacts whose account has this tier.")
@click.option("--limit", default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, account: str | None, tier: str | None, limit: int, as_json: bool) -> None:
    """List contacts with their accounts and tiers."""
    from maild import customers

    with transaction(state.app.factory) as session:
        rows = customers.list_contacts(session, account=account, tier=tier, limit=limit)
    print_rows(rows, ["email", "name", "account", "tier", "domain"], "no customers", as_json)


@command.command("show")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def show(state: State, email: str, as_json: bool) -> None:
    """Show one contact, its account and its recent cases."""
    from maild import customers

    with transaction(state.app.factory) as session:
        view = customers.show_contact(session, email)
    if as_json:
        print_json(view)
        return
    for key in ("email", "name", "account", "tier", "domain", "created_at"):
        click.echo(f"{key + ':':<12} {view[key] or ''}")
    print_table(view["cases"], ["reference", "status", "title", "created_at"], "no cases")
