"""``maild report``: figures for support leads: the full report (text, JSON, CSV, HTML) and satisfaction."""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

from maild.cli.state import State, pass_state, print_json, print_table
from maild.db import transaction
from maild.errors import MaildError

if TYPE_CHECKING:
    from maild.reports import Report


@click.group("report", invoke_without_command=True)
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (default: 29 days before --until).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day, included (default: today).")
@click.option("--queue", help="Only this queue's cases.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV with a `section` column.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page with charts to this file.")
@click.pass_context
def command(ctx: click.Context, since: datetime | None, until: datetime | None, queue: str | None, as_json: bool,
            as_csv: bool, html_file: Path | None) -> None:
    """The full report: backlog, volume, response and resolution times, SLAs, closures, subjects,
    agents, entitlements, satisfaction. Days are in the business-hours time zone."""
    if ctx.invoked_subcommand is not None:
        return
    if as_json + as_csv > 1:
        raise click.UsageError("give at most one of --json and --csv")
    from maild import reporthtml, reports

    state = ctx.find_object(State)
    assert state is not None  # the top-level `maild` group always sets it
    report = reports.generate(state.app, since.date() if since else None, until.date() if until else None, queue)
    if html_file is not None:
        try:
            html_file.write_text(reporthtml.render(report), encoding="utf-8")
        except OSError as exc:
            raise MaildError(f"{html_file}: cannot write: {exc.strerror}") from None
        click.echo(f"wrote {html_file}")
    elif as_json:
        print_json(report.as_dict())
    elif as_csv:
        click.echo(reports.to_csv(report), nl=False)
    else:
        _print_text(report)


def _print_text(report: Report) -> None:
    from maild import reports

    click.echo(f"period {report.scope.since.isoformat()} to {report.scope.until.isoformat()} (excluded), "
               f"queue {report.scope.queue or 'all'}, days in {report.timezone}")
    for name, rows in report.sections().items():
        click.echo(f"\n{reports.TITLES[name]}")
        print_table(rows, list(rows[0]) if rows else [], "  (none)")


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
