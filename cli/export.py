"""``maild export cases``: cases with their activities' metadata, as JSON Lines or CSV."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from maild.cli.state import State, pass_state
from maild.db import transaction

_WHEN = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


@click.group("export")
def command() -> None:
    """Export data for other systems."""


@command.command("cases")
@click.option("--since", type=_WHEN, metavar="DAY", help="Cases created at or after this day or time (UTC).")
@click.option("--until", type=_WHEN, metavar="DAY", help="Cases created before this day or time (UTC).")
@click.option("--queue", "-q", help="Only this queue's cases.")
@click.option("--json", "fmt", flag_value="json", default=True, help="JSON Lines: one case per line (default).")
@click.option("--csv", "fmt", flag_value="csv", help="CSV: one row per activity, the case's columns repeated.")
@click.option("--bodies", is_flag=True, help="Include the mail bodies (text and HTML).")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8", lazy=True), default="-",
              help="Write here instead of standard output.")
@pass_state
def cases(state: State, since: datetime | None, until: datetime | None, queue: str | None, fmt: str,
          bodies: bool, output: click.utils.LazyFile) -> None:
    """Every case with its activities' metadata (direction, kind, from, to, date,
    Message-ID, subject, size, attachment names), oldest first, streamed."""
    from maild import db, export

    db.check_schema(state.app.engine)
    with transaction(state.app.factory) as session:
        records = export.cases(session, since=_utc(since), until=_utc(until), queue=queue, bodies=bodies)
        if fmt == "csv":
            export.write_csv(records, output, bodies)  # type: ignore[arg-type]
        else:
            export.write_jsonl(records, output)  # type: ignore[arg-type]
