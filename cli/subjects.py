"""``maild subjects``: the subject tree defined in the rule files."""

from __future__ import annotations

import click

from maild.cli.state import State, pass_state, print_json


@click.group("subjects")
def command() -> None:
    """The hierarchical case subjects."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, as_json: bool) -> None:
    """Print the subject tree (defined by `subjects = [...]` in rule files)."""
    from maild import subjects
    from maild.db import transaction

    app = state.app
    app.prepare()  # mirrors the rule files' tree into the database first
    with transaction(app.factory) as session:
        paths = subjects.all_paths(session)
    if as_json:
        print_json(sorted(paths))
        return
    lines = subjects.tree_lines(paths, app.rules.subjects)
    click.echo("\n".join(lines) if lines else "no subjects: list them as `subjects = [\"Billing > Refund\"]` in a rule file")
