"""``maild import mbox|maildir PATH --queue Q``: a mail archive into a queue, as history."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from maild.cli.state import State, pass_state

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class _Bar:
    """maild.mailimport.Reporter on a rich progress bar: one task per phase."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task: TaskID | None = None

    def start(self, what: str, total: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(what, total=total)

    def advance(self, count: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, count)


@click.command("import")
@click.argument("kind", metavar="mbox|maildir", type=click.Choice(["mbox", "maildir"]))
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--queue", "-q", required=True, help="The queue the imported mail belongs to.")
@click.option("--status", type=click.Choice(["resolved", "open"]), default="resolved", show_default=True,
              help="Status of the imported cases: history is resolved; use open for a live backlog.")
@click.option("--batch", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Messages per commit (an interrupted import redoes at most one batch).")
@pass_state
def command(state: State, kind: str, path: Path, queue: str, status: str, batch: int) -> None:
    """Import a mail archive into QUEUE as history: original dates kept, replies threaded, the
    rules applied, nothing sent and no SLA clock started. Run it again to resume: nothing
    is imported twice."""
    from rich.console import Console
    from rich.progress import Progress

    from maild import mailimport

    ctx, app = state.context(), state.app
    archive = mailimport.Archive(kind, path)
    # On stderr, and only on a terminal: standard output keeps the summary alone.
    with Progress(console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        summary = mailimport.import_archive(app.factory, ctx, archive, queue, status=status, clock=app.clock,
                                            batch=batch, reporter=_Bar(bar))
    click.echo(f"{summary.messages} message(s) in {path}: {summary.created} new case(s), {summary.threaded} "
               f"threaded onto a case, {summary.skipped} skipped (already imported), {summary.quarantined} "
               f"quarantined, {summary.ignored} ignored by the rules")
    if summary.resumed:
        click.echo(f"finished {summary.resumed} message(s) an interrupted import had stored")
    if summary.resolved:
        click.echo(f"{summary.resolved} imported case(s) marked resolved")
    if summary.quarantined:
        click.echo("quarantined messages are kept with their reason: maild inbound list --quarantined")
    if summary.pending:
        click.echo(f"{summary.pending} message(s) still pending: `maild run` (or this import again) finishes them")
