"""``maild cases``: list, show and change cases."""

from __future__ import annotations

from typing import Any

import click

from maild import views
from maild.cli.state import State, actor, pass_state, print_json, print_rows, print_table
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
    print_rows(rows, ["reference", "status", "status_reason", "queue", "owner", "priority", "customer_email",
                      "title", "created_at"], "no cases", as_json)


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
        view = views.show_case(session, reference, state.app.config.processes)
    view["agent_reply_to"] = _agent_address(state, view["reference"], view["queue"])
    if as_json:
        print_json(view)
        return
    for key in ("reference", "title", "status", "status_reason", "queue", "priority", "severity", "subject",
                "case_type", "process", "stage", "customer_email",
                "owner", "created_at", "first_response_at", "resolved_at", "previous_case", "merged_into",
                "agent_reply_to"):
        if view.get(key) is not None:
            click.echo(f"{key.replace('_', ' ') + ':':<19} {view[key]}")
    for hit in view["rules"]:
        click.echo(f"{'rule:':<19} {hit['kind']} {hit['rule']!r} ({hit['origin']}): {'; '.join(hit['conditions'])}")
    for art in view["articles"]:
        how = "suggested" if art["suggested"] else "sent" if art["sent"] else "linked"
        rated = {True: ", customer: helpful", False: ", customer: not helpful", None: ""}[art["helpful"]]
        click.echo(f"{'article:':<19} {art['number']} {art['title']!r} ({how}{rated})")
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

    state.change(reference, lambda s, ctx, case, now: casework.pick(s, ctx, case, agent, actor=actor(), now=now))


@command.command("assign")
@click.argument("reference")
@click.option("--agent", help="Give the case to this agent.")
@click.option("--queue", help="Move the case to this queue (without --agent: unassigned in it).")
@pass_state
def assign(state: State, reference: str, agent: str | None, queue: str | None) -> None:
    """Assign a case to an agent, or move it to a queue."""
    from maild import casework

    state.change(reference, lambda s, ctx, case, now: casework.assign(
        s, ctx, case, agent=agent, queue=queue, actor=actor(), now=now))


@command.command("resolve")
@click.argument("reference")
@click.option("--type", "resolution_type", required=True, help="A Resolved status reason, e.g. \"Problem Solved\".")
@click.option("--narrative", required=True, help="How the case was resolved.")
@click.option("--time-spent", help="Time spent, e.g. 1h30m, 45m or 90 (minutes).")
@pass_state
def resolve(state: State, reference: str, resolution_type: str, narrative: str, time_spent: str | None) -> None:
    """Resolve a case with a resolution type and narrative."""
    from maild import casework

    minutes = casework.parse_time_spent(time_spent) if time_spent else None
    state.change(reference, lambda s, ctx, case, now: casework.resolve(
        s, ctx, case, resolution_type=resolution_type, narrative=narrative, minutes=minutes, actor=actor(), now=now))


@command.command("cancel")
@click.argument("reference")
@click.option("--reason", required=True, help="Why; kept in the audit trail.")
@pass_state
def cancel(state: State, reference: str, reason: str) -> None:
    """Cancel a case; what it drew from an entitlement is given back."""
    from maild import casework

    state.change(reference, lambda s, ctx, case, now: casework.cancel(s, ctx, case, reason=reason, actor=actor(),
                                                                     now=now))


@command.command("set-status")
@click.argument("reference")
@click.option("--reason", required=True, help="An Active status reason, e.g. \"On Hold\".")
@pass_state
def set_status(state: State, reference: str, reason: str) -> None:
    """Change an active case's status reason; SLA clocks pause or resume as their SLA says."""
    from maild import casework

    state.change(reference, lambda s, ctx, case, now: casework.set_reason(s, ctx, case, reason, actor=actor(),
                                                                         now=now))


@command.command("set-priority")
@click.argument("reference")
@click.argument("priority", type=click.Choice(["low", "normal", "high", "urgent"], case_sensitive=False))
@pass_state
def set_priority(state: State, reference: str, priority: str) -> None:
    """Change a case's priority."""
    from maild import casework

    state.change(reference, lambda s, ctx, case, now: casework.set_priority(s, ctx, case, priority, actor=actor(),
                                                                           now=now))


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

    state.change(reference, lambda s, ctx, case, now: caselinks.reopen(s, ctx, case, reason=reason, actor=actor(),
                                                                      now=now))


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


@command.command("stage")
@click.argument("reference")
@click.option("--next", "advance", is_flag=True, help="Move on to the next stage (its fields must be set).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def stage(state: State, reference: str, advance: bool, as_json: bool) -> None:
    """Show where a case is in its business process flow, or advance it with --next."""
    from maild import casework, processes

    app = state.app
    if advance:
        said = casework.change(app.factory, reference, lambda s, case: processes.advance(
            s, app.config.processes, case, actor=actor(), now=app.clock()))
        if not as_json:
            click.echo(said)
            return
    view = processes.show(app.factory, app.config.processes, reference)
    if as_json:
        print_json(view)
    else:
        _print_stage(view)


def _print_stage(view: dict[str, Any]) -> None:
    if view["process"] is None:
        click.echo(f"{view['reference']}: no business process flow applies (see [[processes]] in the config)")
        return
    click.echo(f"{view['reference']}: process {view['process']}, stage {view['stage']} since {view['entered_at']}")
    for step in view["stages"]:
        needs = f"  requires {', '.join(step['requires'])}" if step["requires"] else ""
        click.echo(f"{'>' if step['current'] else ' '} {step['name']}{needs}")
    if view["missing"]:
        click.echo(f"still needed before the next stage: {', '.join(view['missing'])}")
    elif not view["final"]:
        click.echo("ready for the next stage (`--next`)")


@command.command("set-type")
@click.argument("reference")
@click.argument("case_type")
@pass_state
def set_type(state: State, reference: str, case_type: str) -> None:
    """Set a case's type (Question, Problem, Request, ...); it may choose another process flow."""
    from maild import casework, processes

    app = state.app
    click.echo(casework.change(app.factory, reference, lambda s, case: processes.set_type(
        s, app.config.processes, case, case_type, actor=actor(), now=app.clock())))


@command.command("to-kb")
@click.argument("reference")
@pass_state
def to_kb(state: State, reference: str) -> None:
    """Make a draft knowledge article from a resolved case (question, resolution, subject, keywords)."""
    from maild import casework, knowledge

    app = state.app
    click.echo(casework.change(app.factory, reference, lambda s, case: (
        f"article {knowledge.draft_from_case(s, case, author=actor(), now=app.clock()).number} drafted from "
        f"{case.reference}; edit it with `maild kb edit`, then `maild kb publish`")))


def _agent_address(state: State, reference: str, queue: str) -> str | None:
    """The address an agent writes to for this case: mail to it is relayed and runs commands
    (maild.replytokens); the customer's own signed address does not prove an agent."""
    from maild import replytokens

    settings = state.app.config.queues.get(queue)
    if settings is None:
        return None
    key = replytokens.load_key(state.app.config.security.reply_token_key_file)
    return replytokens.address(settings.addresses[0], reference, key, replytokens.AGENT)
