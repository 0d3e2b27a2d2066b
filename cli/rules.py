"""``maild rules``: check the rule files, and see what they would do to a message before trusting them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from maild.app import load_rules
from maild.cli.state import State, pass_state, print_json, print_table
from maild.rules import RuleFileError


@click.group("rules")
def command() -> None:
    """Check and dry-run the record-creation and routing rules."""


@command.command("check")
@pass_state
def check(state: State) -> None:
    """Validate every rule file; exit 1 listing every problem."""
    config = state.app.config
    try:
        ruleset = load_rules(config)
    except RuleFileError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {config.paths.rules}", err=True)
        sys.exit(1)
    click.echo(f"{len(ruleset.creation)} creation rule(s) and {len(ruleset.routing)} routing rule(s) in "
               f"{len(ruleset.files)} file(s) under {config.paths.rules}: all valid")


@command.command("test")
@click.argument("message", type=click.File("rb"))
@click.option("--queue", "-q", help="The queue it arrives in; default: from its recipients.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def test(state: State, message: Any, queue: str | None, as_json: bool) -> None:
    """Show what intake would do with MESSAGE (an .eml file), writing nothing."""
    from maild.db import transaction
    from maild.dryrun import explain
    from maild.intake.inject import choose_queue
    from maild.parse import parse

    app = state.app
    app.prepare()
    raw = message.read()
    name = choose_queue(app.config, raw, queue, {})
    with transaction(app.factory) as session:
        result = explain(session, app.intake_context(), parse(raw), name, app.clock())
        session.rollback()  # a dry run: nothing it touched is kept
    if as_json:
        print_json(result.as_dict())
        return
    _print(result.as_dict())


def _print(r: dict[str, Any]) -> None:
    click.echo(f"queue:        {r['queue']}")
    c = r["customer"]
    known = (f"{c['account']} ({c['tier'] or 'no tier'})" if c["account"] else "known, no account") \
        if c["known"] else "not in the customer records"
    click.echo(f"customer:     {c['email'] or '(no sender)'}: {known}")
    if r["thread"]:
        click.echo(f"thread:       {r['thread']['case']} (via {r['thread']['via']} {r['thread']['key']})")
    click.echo(f"outcome:      {r['outcome']}" + (f" ({r['reason']})" if r["reason"] else ""))
    click.echo("rules:" + ("" if r["rules"] else "        none apply"))
    for hit in r["rules"]:
        mark = "MATCH" if hit["matched"] else "no"
        click.echo(f"  {hit['kind']:<9} {mark:<6} {hit['rule']!r} ({hit['origin']})")
        for line in hit["conditions"]:
            click.echo(f"      {line}")
    if r["case"]:
        c = r["case"]
        click.echo(f"new case:     {c['title']!r} in {c['queue']}, owner {c['owner'] or '(queue)'}, "
                   f"priority {c['priority']}" + (f", severity {c['severity']}" if c["severity"] else "")
                   + f", origin {c['origin']}")
    ack = r["acknowledgement"]
    click.echo(f"acknowledge:  {'yes, to ' + ack['to'] if ack['sent'] else 'no: ' + ack['reason']}")


@command.command("replay")
@click.option("--since", default="30d", show_default=True, help="How far back: 30m, 24h, 7d, 2w.")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A candidate rules directory; default: the configured one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def replay(state: State, since: str, rules_dir: Path | None, as_json: bool) -> None:
    """Run stored mail through the rules, writing nothing, and show what would change."""
    from maild import replay as replay_mod
    from maild import rules as rules_mod
    from maild.db import transaction

    app = state.app
    app.prepare()
    config = app.config
    candidate = app.rules if rules_dir is None else rules_mod.load(
        rules_dir, queues=config.queues, agents=[a.name for a in config.agents], teams=[t.name for t in config.teams])
    now = app.clock()
    with transaction(app.factory) as session:
        report = replay_mod.replay(session, app.intake_context(), candidate,
                                   since=now - replay_mod.parse_duration(since), now=now)
        session.rollback()  # nothing a dry run touched is kept
    result = report.as_dict()
    if as_json:
        print_json(result)
        return
    click.echo(f"{result['messages']} stored message(s) since {since} replayed through "
               f"{rules_dir or config.paths.rules}")
    print_table(result["queues"], ["queue", "before", "after"], "no new cases either way")
    if not result["changes"]:
        click.echo("no message would change its outcome")
        return
    click.echo(f"\n{len(result['changes'])} message(s) would change:")
    print_table(result["changes"], ["inbound_id", "received_at", "sender", "subject", "before", "after", "rule"], "")
