"""The figures of ``maild report``: one function per section, each returning typed rows.

Periods are half-open, ``since <= t < until``. Which cases a section counts:

- backlog and agent load: the cases open *now* (the period does not apply);
- created/resolved per day, subjects: cases created (resolved) in the period, by day in the
  business calendar's time zone;
- first-response and resolution times: cases first answered (resolved) in the period; a
  case with SLA clocks is measured in business time, any other in wall-clock time;
- SLA: the clocks started in the period (clocks cancelled before they could fail are left out);
- closed: cases resolved or cancelled in the period;
- entitlements: every entitlement whose term overlaps the period.

Counting is done in Python over narrow column queries, so both databases give exactly the
same answer (no dialect-specific date arithmetic).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from maild import csat
from maild.businesshours import BusinessCalendar
from maild.db import transaction
from maild.errors import MaildError
from maild.models import (ACTIVE, CANCELLED, KPI_CANCELLED, KPI_SUCCEEDED, RESOLVED, Account, Agent, Case,
                          Contact, Entitlement, Queue, SlaKpi, Subject)

if TYPE_CHECKING:
    from maild.app import App

AGE_BUCKETS = (("age_under_1d", timedelta(days=1)), ("age_1d_to_3d", timedelta(days=3)),
               ("age_3d_to_7d", timedelta(days=7)), ("age_over_7d", None))
UNASSIGNED, NO_SUBJECT, ALL_QUEUES = "(unassigned)", "(no subject)", "(all)"
DEFAULT_DAYS = 30
TITLES = {
    "backlog": "Open cases per queue and status reason, by age",
    "daily": "Cases created and resolved per day",
    "times": "First-response and resolution times (business time where an SLA applies)",
    "sla": "SLA clocks per queue and KPI: met, near breach, breached",
    "closed": "Closed cases by status reason and resolution type",
    "subjects": "Cases created per subject branch",
    "agents": "Load per agent",
    "entitlements": "Entitlement consumption per customer",
    "csat": "Customer satisfaction per queue",
}


@dataclass(frozen=True)
class Scope:
    since: datetime
    until: datetime
    queue: str | None = None


@dataclass(frozen=True)
class BacklogRow:
    queue: str
    status_reason: str
    open: int
    age_under_1d: int
    age_1d_to_3d: int
    age_3d_to_7d: int
    age_over_7d: int


@dataclass(frozen=True)
class DailyRow:
    day: str
    created: int
    resolved: int


@dataclass(frozen=True)
class TimeRow:
    queue: str
    measure: str  # first_response | resolution
    cases: int
    business_time_cases: int
    average_minutes: float | None
    median_minutes: float | None


@dataclass(frozen=True)
class SlaRow:
    queue: str
    kpi: str
    clocks: int
    met: int
    near_breach: int
    breached: int
    compliance_pct: float | None


@dataclass(frozen=True)
class ClosedRow:
    status: str
    status_reason: str
    resolution_type: str
    cases: int


@dataclass(frozen=True)
class SubjectRow:
    subject: str
    cases: int  # this subject and everything below it
    direct: int


@dataclass(frozen=True)
class AgentRow:
    agent: str
    open: int
    open_high_priority: int
    resolved: int


@dataclass(frozen=True)
class EntitlementRow:
    customer: str
    entitlement: str
    unit: str  # cases | hours
    total: float
    used: float
    remaining: float
    used_pct: float | None
    cases_in_period: int


@dataclass(frozen=True)
class CsatRow:
    queue: str
    surveys: int
    answers: int
    average: float | None


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    scope: Scope
    timezone: str
    backlog: list[BacklogRow]
    daily: list[DailyRow]
    times: list[TimeRow]
    sla: list[SlaRow]
    closed: list[ClosedRow]
    subjects: list[SubjectRow]
    agents: list[AgentRow]
    entitlements: list[EntitlementRow]
    csat: list[CsatRow]

    def sections(self) -> dict[str, list[dict[str, Any]]]:
        """Every section as plain rows, in the order they are shown."""
        return {f.name: [asdict(row) for row in getattr(self, f.name)] for f in fields(self)
                if f.name not in ("generated_at", "scope", "timezone")}

    def as_dict(self) -> dict[str, Any]:
        return {"generated_at": self.generated_at.isoformat(), "since": self.scope.since.isoformat(),
                "until": self.scope.until.isoformat(), "queue": self.scope.queue, "timezone": self.timezone,
                **self.sections()}


def build(session: Session, scope: Scope, now: datetime, calendar: BusinessCalendar) -> Report:
    """Every section of the report for ``scope``; open-case sections are as of ``now``."""
    return Report(
        generated_at=now, scope=scope, timezone=calendar.config.timezone,
        backlog=backlog(session, scope, now), daily=daily(session, scope, calendar),
        times=times(session, scope, calendar), sla=sla_breaches(session, scope), closed=closed(session, scope),
        subjects=subjects(session, scope), agents=agents(session, scope),
        entitlements=entitlements(session, scope, calendar), csat=satisfaction(session, scope),
    )


def _in_queue(scope: Scope) -> list[ColumnElement[bool]]:
    if scope.queue is None:
        return []
    return [Case.queue_id.in_(select(Queue.id).where(Queue.name == scope.queue).scalar_subquery())]


def _within(column: Any, scope: Scope) -> list[ColumnElement[bool]]:
    return [column >= scope.since, column < scope.until]


def backlog(session: Session, scope: Scope, now: datetime) -> list[BacklogRow]:
    """Open cases per queue and status reason, by age."""
    rows = session.execute(select(Queue.name, Case.status_reason, Case.created_at)
                           .join(Queue, Queue.id == Case.queue_id).where(Case.status == ACTIVE, *_in_queue(scope)))
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for queue, reason, created in rows:
        counts[queue, reason][_age_bucket(now - created)] += 1
    return [BacklogRow(queue, reason, sum(c.values()), *(c[name] for name, _ in AGE_BUCKETS))
            for (queue, reason), c in sorted(counts.items())]


def _age_bucket(age: timedelta) -> str:
    return next(name for name, limit in AGE_BUCKETS if limit is None or age < limit)


def daily(session: Session, scope: Scope, calendar: BusinessCalendar) -> list[DailyRow]:
    """Cases created and resolved per local day of the period, days without any included."""
    created = session.scalars(select(Case.created_at).where(*_within(Case.created_at, scope), *_in_queue(scope)))
    resolved = session.scalars(select(Case.resolved_at).where(*_within(Case.resolved_at, scope), *_in_queue(scope)))
    per_created = Counter(t.astimezone(calendar.zone).date() for t in created)
    per_resolved = Counter(t.astimezone(calendar.zone).date() for t in resolved if t is not None)
    return [DailyRow(day.isoformat(), per_created[day], per_resolved[day]) for day in _days(scope, calendar)]


def _days(scope: Scope, calendar: BusinessCalendar) -> list[date]:
    first = scope.since.astimezone(calendar.zone).date()
    last = (scope.until - timedelta(microseconds=1)).astimezone(calendar.zone).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def times(session: Session, scope: Scope, calendar: BusinessCalendar) -> list[TimeRow]:
    """Average and median first-response and resolution times, for all queues and per queue."""
    timed = select(SlaKpi.case_id).distinct().scalar_subquery()
    rows: list[TimeRow] = []
    for measure, end, extra in (("first_response", Case.first_response_at, []),
                                ("resolution", Case.resolved_at, [Case.status == RESOLVED])):
        found = session.execute(
            select(Queue.name, Case.created_at, end, Case.id.in_(timed))
            .join(Queue, Queue.id == Case.queue_id).where(*_within(end, scope), *extra, *_in_queue(scope))).all()
        spans: dict[str, list[tuple[float, bool]]] = defaultdict(list)
        for queue, start, stop, business in found:
            assert stop is not None  # the period filter excludes NULL
            took = calendar.elapsed(start, stop) if business else max(stop - start, timedelta(0))
            for key in (ALL_QUEUES, queue):
                spans[key].append((took.total_seconds() / 60, bool(business)))
        rows += [_time_row(queue, measure, spans[queue]) for queue in [ALL_QUEUES, *sorted(set(spans) - {ALL_QUEUES})]]
    return rows


def _time_row(queue: str, measure: str, spans: list[tuple[float, bool]]) -> TimeRow:
    minutes = [m for m, _ in spans]
    return TimeRow(queue, measure, len(spans), sum(1 for _, b in spans if b),
                   round(statistics.fmean(minutes), 1) if minutes else None,
                   round(statistics.median(minutes), 1) if minutes else None)


def sla_breaches(session: Session, scope: Scope) -> list[SlaRow]:
    """SLA clocks started in the period per queue and KPI: met, near breach (warned, not failed), breached."""
    found = session.execute(
        select(Queue.name, SlaKpi.kpi, SlaKpi.state, SlaKpi.warned_at.is_not(None), SlaKpi.failed_at.is_not(None))
        .join(Case, Case.id == SlaKpi.case_id).join(Queue, Queue.id == Case.queue_id)
        .where(*_within(SlaKpi.started_at, scope), *_in_queue(scope)))
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for queue, kpi, state, warned, failed in found:
        if state == KPI_CANCELLED and not failed:
            continue  # never measured: the case went away first
        c = counts[queue, kpi]
        c["clocks"] += 1
        c["met"] += state == KPI_SUCCEEDED
        c["near_breach"] += bool(warned and not failed)
        c["breached"] += bool(failed)
    return [SlaRow(queue, kpi, c["clocks"], c["met"], c["near_breach"], c["breached"],
                   round(100 * (c["clocks"] - c["breached"]) / c["clocks"], 1))
            for (queue, kpi), c in sorted(counts.items())]


def closed(session: Session, scope: Scope) -> list[ClosedRow]:
    """Cases resolved or cancelled in the period, by status, status reason and resolution type."""
    # A cancellation leaves resolved_at empty; the case's last update is when it was cancelled.
    closed_at = func.coalesce(Case.resolved_at, Case.updated_at)
    found = session.execute(
        select(Case.status, Case.status_reason, Case.resolution_type, func.count(Case.id))
        .where(Case.status.in_((RESOLVED, CANCELLED)), *_within(closed_at, scope), *_in_queue(scope))
        .group_by(Case.status, Case.status_reason, Case.resolution_type))
    rows = [ClosedRow(status, reason, kind or "", n) for status, reason, kind, n in found]
    return sorted(rows, key=lambda r: (r.status, r.status_reason, r.resolution_type))


def subjects(session: Session, scope: Scope) -> list[SubjectRow]:
    """Cases created in the period per subject; a branch counts the cases of everything below it."""
    tree = {s.id: (s.name, s.parent_id) for s in session.scalars(select(Subject))}
    created = session.execute(select(Case.subject_id, func.count(Case.id))
                              .where(*_within(Case.created_at, scope), *_in_queue(scope)).group_by(Case.subject_id))
    direct: Counter[int | None] = Counter({subject_id: n for subject_id, n in created})
    total: Counter[int] = Counter()
    for subject_id, n in direct.items():
        node = subject_id
        while node is not None and node in tree:
            total[node] += n
            node = tree[node][1]
    rows = sorted((SubjectRow(_path(tree, sid), n, direct[sid]) for sid, n in total.items()), key=lambda r: r.subject)
    return rows + ([SubjectRow(NO_SUBJECT, direct[None], direct[None])] if direct[None] else [])


def _path(tree: dict[int, tuple[str, int | None]], node: int | None) -> str:
    names: list[str] = []
    while node is not None and node in tree:
        names.insert(0, tree[node][0])
        node = tree[node][1]
    return " > ".join(names)


def agents(session: Session, scope: Scope) -> list[AgentRow]:
    """Per agent: open cases owned now (and how many are high or urgent), cases resolved in the period."""
    names = {a.id: a.name for a in session.scalars(select(Agent))}
    counts: dict[str, Counter[str]] = {name: Counter() for name in sorted(names.values())}
    open_rows = session.execute(select(Case.owner_id, Case.priority).where(Case.status == ACTIVE, *_in_queue(scope)))
    for owner, priority in open_rows:
        c = counts.setdefault(names.get(owner or 0, UNASSIGNED), Counter())
        c["open"] += 1
        c["high"] += priority in ("high", "urgent")
    resolved = session.scalars(select(Case.owner_id).where(*_within(Case.resolved_at, scope), *_in_queue(scope)))
    for owner in resolved:
        counts.setdefault(names.get(owner or 0, UNASSIGNED), Counter())["resolved"] += 1
    return [AgentRow(name, c["open"], c["high"], c["resolved"]) for name, c in counts.items()]


def entitlements(session: Session, scope: Scope, calendar: BusinessCalendar) -> list[EntitlementRow]:
    """Consumption of every entitlement whose term overlaps the period (hours are shown in hours)."""
    first = scope.since.astimezone(calendar.zone).date()
    last = (scope.until - timedelta(microseconds=1)).astimezone(calendar.zone).date()
    found = session.execute(
        select(Entitlement, Account.name, Contact.email)
        .join(Account, Account.id == Entitlement.account_id, isouter=True)
        .join(Contact, Contact.id == Entitlement.contact_id, isouter=True)
        .where(Entitlement.start_date <= last, Entitlement.end_date >= first)).all()
    charged = {ent_id: n for ent_id, n in session.execute(
        select(Case.entitlement_id, func.count(Case.id))
        .where(Case.entitlement_id.is_not(None), *_within(Case.created_at, scope), *_in_queue(scope))
        .group_by(Case.entitlement_id))}
    rows = [_entitlement_row(ent, account or contact or "", charged.get(ent.id, 0)) for ent, account, contact in found]
    return sorted(rows, key=lambda r: (r.customer, r.entitlement))


def _entitlement_row(ent: Entitlement, customer: str, cases: int) -> EntitlementRow:
    scale = 60 if ent.allocation == "hours" else 1  # hours are stored in minutes
    total, remaining = ent.total / scale, ent.remaining / scale
    used = total - remaining
    return EntitlementRow(customer, ent.name, ent.allocation, round(total, 2), round(used, 2), round(remaining, 2),
                          round(100 * used / total, 1) if total else None, cases)


def satisfaction(session: Session, scope: Scope) -> list[CsatRow]:
    """Surveys sent in the period per queue (maild.csat's figures)."""
    rows = csat.report(session, scope.since, until=scope.until)["queues"]
    return [CsatRow(r["queue"], r["surveys"], r["answers"], r["average"]) for r in rows
            if scope.queue is None or r["queue"] == scope.queue]


def generate(app: App, since: date | None, until: date | None, queue: str | None) -> Report:
    """The report for whole days ``since`` to ``until`` (see scope_for_days), as of the app's clock."""
    calendar, now = BusinessCalendar(app.config.business_hours), app.clock()
    scope = scope_for_days(calendar, now, since, until, queue, app.config.queues)
    with transaction(app.factory) as session:
        return build(session, scope, now, calendar)


def scope_for_days(calendar: BusinessCalendar, now: datetime, since: date | None, until: date | None,
                   queue: str | None, queues: Collection[str]) -> Scope:
    """The period from the start of day ``since`` to the end of day ``until`` in the calendar's
    zone; by default the last 30 days, today included."""
    today = now.astimezone(calendar.zone).date()
    last = until or today
    first = since or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise MaildError(f"--since {first} is after --until {last}")
    if queue is not None and queue not in queues:
        raise MaildError(f"unknown queue {queue!r}; queues: {', '.join(sorted(queues))}")
    return Scope(_midnight(first, calendar), _midnight(last + timedelta(days=1), calendar), queue)


def _midnight(day: date, calendar: BusinessCalendar) -> datetime:
    return datetime.combine(day, time(0), tzinfo=calendar.zone).astimezone(timezone.utc)


def to_csv(report: Report) -> str:
    """All sections as one CSV: a ``section`` column, then the union of every section's
    columns (a column that does not belong to a row's section is empty)."""
    sections = report.sections()
    columns = list(dict.fromkeys(key for rows in sections.values() for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, ["section", *columns], lineterminator="\n")
    writer.writeheader()
    for name, rows in sections.items():
        writer.writerows({"section": name, **row} for row in rows)
    return out.getvalue()
