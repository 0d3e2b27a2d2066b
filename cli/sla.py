"""``maild sla``: the SLA clocks of open cases, and the timeline of one case."""

from __future__ import annotations

import click

from maild.cli.state import State, pass_state, print_json, print_table


@click.group("sla")
def command() -> None:
    """SLA clocks: status and explanations."""


def _left(seconds: int | None) -> str:
    if seconds is None:
        return ""
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@command.command("status")
@click.option("--breaching", is_flag=True, help="Only clocks nearing noncompliance or noncompliant.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def status(state: State, breaching: bool, as_json: bool) -> None:
    """Open SLA clocks with their state and business time left."""
    from sqlalchemy import select

    from maild import sla
    from maild.db import transaction
    from maild.models import KPI_NEARING, KPI_NONCOMPLIANT, KPI_PAUSED, Case, SlaKpi

    app = state.app
    ctx = app.intake_context()
    assert ctx.calendar is not None
    wanted = (KPI_NEARING, KPI_NONCOMPLIANT) if breaching else (*sla.OPEN, KPI_PAUSED)
    with transaction(app.factory) as session:
        rows = session.execute(
            select(SlaKpi, Case.reference, Case.status).join(Case, Case.id == SlaKpi.case_id)
            .where(SlaKpi.state.in_(wanted), SlaKpi.ended_at.is_(None)).order_by(SlaKpi.fail_at)
        ).all()
        views = [{"case": ref, **sla.explain(row, ctx.calendar, app.clock())} for row, ref, _ in rows]
    if as_json:
        print_json(views)
        return
    for v in views:
        v["left"] = _left(v["business_seconds_left"])
    print_table(views, ["case", "sla", "kpi", "state", "fail_at", "left"], "no open SLA clocks")


@command.command("explain")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def explain(state: State, reference: str, as_json: bool) -> None:
    """The timeline of a case's SLA clocks: start, pauses, warning and failure, actions, end."""
    from sqlalchemy import select

    from maild import sla
    from maild.db import transaction
    from maild.errors import NotFound
    from maild.models import Case, SlaKpi

    app = state.app
    ctx = app.intake_context()
    assert ctx.calendar is not None
    hours = app.config.business_hours
    calendar = (f"{hours.timezone}, {'/'.join(hours.days)} {hours.start}-{hours.end}"
                + (f", holidays {hours.holidays}{'-' + hours.holiday_region if hours.holiday_region else ''}"
                   if hours.holidays else ""))
    with transaction(app.factory) as session:
        case_id = session.scalar(select(Case.id).where(Case.reference == reference.strip().upper()))
        if case_id is None:
            raise NotFound(f"no case {reference}")
        rows = session.scalars(select(SlaKpi).where(SlaKpi.case_id == case_id).order_by(SlaKpi.id)).all()
        views = [sla.explain(r, ctx.calendar, app.clock()) for r in rows]
    if as_json:
        print_json({"case": reference.upper(), "calendar": calendar, "kpis": views})
        return
    if not views:
        click.echo(f"{reference.upper()} has no SLA clocks (no SLA applied when it was created)")
        return
    click.echo(f"calendar: {calendar}")
    for v in views:
        click.echo(f"\n{v['kpi'].replace('_', ' ')} (SLA {v['sla']}): {v['state']}, warning at {v['warn_at']}, "
                   f"failure at {v['fail_at']}" + (f", {_left(v['business_seconds_left'])} left"
                                                   if v["business_seconds_left"] is not None else ""))
        for h in v["history"]:
            extra = "; ".join(h.get("actions", [])) or h.get("reason") or h.get("state") or ""
            click.echo(f"  {h['at']}  {h['event']}" + (f"  ({extra})" if extra else ""))
