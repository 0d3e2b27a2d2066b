"""``maild cases``: list and show cases."""

from __future__ import annotations

import click

from maild import views
from maild.cli.state import State, actor, pass_state, print_json, print_table
from maild.db import transaction
from maild.statuses import ACTIVE, CANCELLED, RESOLVED, status_of


@click.group("cases")
def command() -> None:
    """List and inspect cases."""


@command.command("list")
@click.option("--queue", help="Only cases in this queue.")
@click.option("--status", help="A status (Active, Resolved, Cancelled) or a status reason (On Hold).")
@click.option("--unassigned", is_flag=True, help="Only active cases nobody owns yet.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(state: State, queue: str | None, status: str | None, unassigned: bool, limit: int, as_json: bool) -> None:
    """List cases, newest first."""
    if status and status_of(status, state.app.config.cases.status_reasons.all()) is None and \
            status.capitalize() not in (ACTIVE, RESOLVED, CANCELLED):
        raise click.BadParameter(f"{status!r} is neither a status nor a status reason (see `maild cases statuses`)",
                                 param_hint="--status")
    with transaction(state.app.factory) as session:
        rows = views.list_cases(session, queue=queue, status=status, limit=limit, unassigned=unassigned)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["reference", "status", "status_reason", "queue", "owner", "priority", "customer_email",
                           "title", "created_at"], "no cases")


@command.command("statuses")
@pass_state
def statuses(state: State) -> None:
    """List the case statuses and their status reasons (built-in and configured)."""
    rows = [{"status": s, "status_reason": r} for s, reasons in state.app.config.cases.status_reasons.all().items()
            for r in reasons]
    print_table(rows, ["status", "status_reason"], "")


@command.command("show")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def show(state: State, reference: str, as_json: bool) -> None:
    """Show a case with its activities."""
    with transaction(state.app.factory) as session:
        view = views.show_case(session, reference)
    if as_json:
        print_json(view)
        return
    for key in ("reference", "title", "status", "status_reason", "queue", "priority", "severity", "subject",
                "customer_email",
                "owner", "created_at", "first_response_at", "resolved_at", "previous_case", "merged_into"):
        if view.get(key) is not None:
            click.echo(f"{key.replace('_', ' ') + ':':<19} {view[key]}")
    for hit in view["rules"]:
        click.echo(f"{'rule:':<19} {hit['kind']} {hit['rule']!r} ({hit['origin']}): {'; '.join(hit['conditions'])}")
    for act in view["activities"]:
        click.echo(f"\n--- {act['kind'].replace('_', ' ')} {act['created_at']}  from {act['from']}  to {act['to']}")
        click.echo(f"    subject: {act['subject']}")
        for att in act["attachments"]:
            click.echo(f"    attachment: {att['filename']!r} ({att['content_type']}, {att['size']} bytes)")
        click.echo("")
        click.echo((act["text"] or "").rstrip())



@command.command("pick")
@click.argument("reference")
@click.option("--agent", required=True, help="The agent taking the case.")
@pass_state
def pick(state: State, reference: str, agent: str) -> None:
    """An agent takes an unassigned case from its queue."""
    from maild import casework

    app = state.app
    click.echo(casework.pick(app.factory, app.registry, reference, agent, actor=actor(), now=app.clock()))


@command.command("assign")
@click.argument("reference")
@click.option("--agent", help="Give the case to this agent.")
@click.option("--queue", help="Move the case to this queue (without --agent: unassigned in it).")
@pass_state
def assign(state: State, reference: str, agent: str | None, queue: str | None) -> None:
    """Assign a case to an agent, or move it to a queue."""
    from maild import casework

    app = state.app
    click.echo(casework.assign(app.factory, app.registry, reference, agent=agent, queue=queue, actor=actor(),
                               now=app.clock()))


@command.command("resolve")
@click.argument("reference")
@click.option("--type", "resolution_type", required=True, help="A Resolved status reason, e.g. \"Problem Solved\".")
@click.option("--narrative", required=True, help="How the case was resolved.")
@click.option("--time-spent", help="Time spent, e.g. 1h30m, 45m or 90 (minutes).")
@pass_state
def resolve(state: State, reference: str, resolution_type: str, narrative: str, time_spent: str | None) -> None:
    """Resolve a case with a resolution type and narrative."""
    from maild import casework

    app = state.app
    minutes = casework.parse_time_spent(time_spent) if time_spent else None
    click.echo(casework.resolve(app.factory, app.config.cases.status_reasons.all(), reference,
                                resolution_type=resolution_type, narrative=narrative, minutes=minutes,
                                actor=actor(), now=app.clock(), cascade=app.config.cases.resolve_children))


@command.command("cancel")
@click.argument("reference")
@click.option("--reason", required=True, help="Why; kept in the audit trail.")
@pass_state
def cancel(state: State, reference: str, reason: str) -> None:
    """Cancel a case; what it drew from an entitlement is given back."""
    from maild import casework

    app = state.app
    click.echo(casework.cancel(app.factory, reference, reason=reason, actor=actor(), now=app.clock()))


@command.command("set-status")
@click.argument("reference")
@click.option("--reason", required=True, help="An Active status reason, e.g. \"On Hold\".")
@pass_state
def set_status(state: State, reference: str, reason: str) -> None:
    """Change an active case's status reason; SLA clocks pause or resume as their SLA says."""
    from maild import casework

    app = state.app
    app.prepare()
    ctx = app.intake_context()
    assert ctx.calendar is not None
    click.echo(casework.set_reason(app.factory, app.config.cases.status_reasons.all(), reference, reason,
                                   rules=ctx.rules, calendar=ctx.calendar, actor=actor(), now=app.clock()))


@command.command("link")
@click.argument("reference")
@click.option("--parent", required=True, help="The parent case.")
@pass_state
def link(state: State, reference: str, parent: str) -> None:
    """Make a case the child of another (resolving the parent resolves its open children)."""
    from maild import caselinks

    app = state.app
    click.echo(caselinks.link(app.factory, reference, parent, actor=actor(), now=app.clock()))


@command.command("merge")
@click.argument("source")
@click.option("--into", "target", required=True, help="The case that absorbs SOURCE.")
@pass_state
def merge(state: State, source: str, target: str) -> None:
    """Merge SOURCE into another case: its mail moves over, it becomes Cancelled/Merged."""
    from maild import caselinks

    app = state.app
    click.echo(caselinks.merge(app.factory, source, target, actor=actor(), now=app.clock()))


@command.command("reopen")
@click.argument("reference")
@click.option("--reason", required=True, help="Why; kept in the audit trail.")
@pass_state
def reopen(state: State, reference: str, reason: str) -> None:
    """Make a resolved or cancelled case active again."""
    from maild import caselinks

    app = state.app
    click.echo(caselinks.reopen(app.factory, reference, reason=reason, actor=actor(), now=app.clock()))


@command.command("history")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def history(state: State, reference: str, as_json: bool) -> None:
    """Every change to a case: who, what and when (its audit trail)."""
    with transaction(state.app.factory) as session:
        events = views.show_case(session, reference)["audit"]
    if as_json:
        print_json(events)
        return
    for e in events:
        e["details"] = ", ".join(f"{k}={v}" for k, v in (e["details"] or {}).items() if v is not None)
    print_table(events, ["at", "actor", "action", "details"], "no history")
