"""SLA clocks: start them on a new case, stop them when met, pause them on waiting status
reasons, and fire warning and failure actions exactly once (the SlaRunner).

Every instant is computed in business time by the BusinessCalendar from a clock argument,
so tests move time by passing a later ``now``. A clock's next due instant is kept in
``due_at`` (indexed): the sweeper's query touches only clocks that are due, never every
open case. Firing an action and marking it fired happen in one transaction, and rows are
claimed with SKIP LOCKED, so each action fires once across restarts and workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from maild import metrics
from maild.businesshours import BusinessCalendar
from maild.clock import Clock, utcnow
from maild.db import transaction
from maild.models import (KPI_CANCELLED, KPI_IN_PROGRESS, KPI_NEARING, KPI_NONCOMPLIANT, KPI_PAUSED, KPI_SUCCEEDED,
                          Case, SlaKpi)
from maild.rules import RuleSet
from maild.rules.conditions import holds
from maild.rules.facts import Facts
from maild.rules.slaspec import KPIS, ActionSpec, SlaRule
from maild.runner import Runner

log = logging.getLogger("maild.sla")
OPEN = (KPI_IN_PROGRESS, KPI_NEARING)


def choose(rules: RuleSet, facts: Facts, queue: str, entitlement_sla: str | None) -> SlaRule | None:
    """The entitlement's SLA if it names one, else the first whose conditions hold."""
    if entitlement_sla:
        named = next((s for s in rules.slas if s.spec.name == entitlement_sla), None)
        if named is not None:
            return named
    for sla in rules.slas:
        if sla.spec.queues and queue not in sla.spec.queues:
            continue
        if sla.condition is None or holds(sla.condition, facts):
            return sla
    return None


def start(session: Session, case: Case, sla: SlaRule, calendar: BusinessCalendar, now: datetime) -> None:
    for name in KPIS:
        kpi = sla.spec.kpi(name)
        if kpi is None:
            continue
        row = SlaKpi(case_id=case.id, sla=sla.spec.name, kpi=name, state=KPI_IN_PROGRESS, started_at=now,
                     warn_after_s=int(kpi.warn.total_seconds()), fail_after_s=int(kpi.fail.total_seconds()),
                     consumed_s=0, history=[{"at": now.isoformat(), "event": "started", "sla": sla.spec.name}])
        _run_from(row, now, calendar)
        session.add(row)


def _run_from(row: SlaKpi, now: datetime, calendar: BusinessCalendar) -> None:
    """Start a running segment at ``now`` and place the warning and failure instants."""
    used = timedelta(seconds=row.consumed_s)
    row.segment_start = now
    row.warn_at = calendar.add(now, max(timedelta(seconds=row.warn_after_s) - used, timedelta(0)))
    row.fail_at = calendar.add(now, max(timedelta(seconds=row.fail_after_s) - used, timedelta(0)))
    row.due_at = _next_due(row)


def _next_due(row: SlaKpi) -> datetime | None:
    if row.state not in OPEN:
        return None
    if row.warned_at is None:
        return row.warn_at
    return row.fail_at if row.failed_at is None else None


def met(session: Session, case_id: int, kpi: str, now: datetime) -> None:
    """The KPI's goal was reached (first agent reply; resolution)."""
    for row in _open(session, case_id, kpi):
        row.state = KPI_SUCCEEDED if row.failed_at is None else KPI_NONCOMPLIANT
        _end(row, now, "met")


def cancel(session: Session, case_id: int, now: datetime, reason: str) -> None:
    """Stop every clock still running (case cancelled; resolved before a first response)."""
    for row in _open(session, case_id, None, include_paused=True):
        row.state = KPI_CANCELLED if row.failed_at is None else KPI_NONCOMPLIANT
        _end(row, now, reason)


def _end(row: SlaKpi, now: datetime, event: str) -> None:
    row.ended_at, row.due_at, row.segment_start = now, None, None
    row.history = [*row.history, {"at": now.isoformat(), "event": event, "state": row.state}]


def status_changed(session: Session, case_id: int, reason: str, rules: RuleSet, calendar: BusinessCalendar,
                   now: datetime) -> None:
    """Pause the clocks whose SLA pauses on ``reason``; resume paused ones otherwise."""
    pauses = {s.spec.name: set(s.spec.pause_on) for s in rules.slas}
    for row in _open(session, case_id, None, include_paused=True):
        if reason in pauses.get(row.sla, set()) and row.state in OPEN:
            row.consumed_s += int(calendar.elapsed(row.segment_start or now, now).total_seconds())
            row.history = [*row.history, {"at": now.isoformat(), "event": "paused", "state_before": row.state,
                                          "reason": reason}]
            row.state, row.segment_start, row.due_at = KPI_PAUSED, None, None
        elif reason not in pauses.get(row.sla, set()) and row.state == KPI_PAUSED:
            before = next((h.get("state_before") for h in reversed(row.history) if h["event"] == "paused"), None)
            row.state = before or KPI_IN_PROGRESS
            row.history = [*row.history, {"at": now.isoformat(), "event": "resumed", "reason": reason}]
            _run_from(row, now, calendar)


def _open(session: Session, case_id: int, kpi: str | None, include_paused: bool = False) -> list[SlaKpi]:
    states = (*OPEN, KPI_PAUSED) if include_paused else OPEN
    query = select(SlaKpi).where(SlaKpi.case_id == case_id, SlaKpi.state.in_(states)).with_for_update()
    if kpi is not None:
        query = query.where(SlaKpi.kpi == kpi)
    return list(session.scalars(query))


# The sweeper -----------------------------------------------------------------------------

Act = Callable[[Session, Case, SlaKpi, ActionSpec, str, datetime], str]


class SlaRunner(Runner):
    """Fire due warnings and failures; each pass takes at most ``batch`` due clocks."""

    name = "sla"

    def __init__(self, factory: sessionmaker[Session], rules: Callable[[], RuleSet], act: Act,
                 clock: Clock = utcnow, batch: int = 500, idle_seconds: float = 5.0) -> None:
        super().__init__(idle_seconds)
        self.factory, self.rules, self.act, self.clock, self.batch = factory, rules, act, clock, batch

    def run_once(self) -> int:
        now = self.clock()
        slas = {s.spec.name: s for s in self.rules().slas}
        with transaction(self.factory) as session:
            due = list(session.scalars(
                select(SlaKpi).where(SlaKpi.due_at <= now).order_by(SlaKpi.due_at).limit(self.batch)
                .with_for_update(skip_locked=True)
            ))
            # One query for the cases, and one flush at commit: the writes batch into a few
            # executemany statements instead of a query and a flush per clock.
            cases = {c.id: c for c in session.scalars(select(Case).where(Case.id.in_({r.case_id for r in due})))}
            with session.no_autoflush:
                fired = sum(self._fire(session, row, cases.get(row.case_id), slas.get(row.sla), now) for row in due)
        return fired

    def _fire(self, session: Session, row: SlaKpi, case: Case | None, sla: SlaRule | None, now: datetime) -> int:
        fired = 0
        for stage in ("warning", "failure"):
            at = row.warn_at if stage == "warning" else row.fail_at
            done = row.warned_at if stage == "warning" else row.failed_at
            if done is not None or at is None or at > now or case is None:
                continue
            metrics.sla_fired(case.queue_id, stage)  # the queue it breached in, before an action moves it
            actions = (sla.spec.on_warning if stage == "warning" else sla.spec.on_failure) if sla else ()
            results = [self.act(session, case, row, action, stage, now) for action in actions]
            if stage == "warning":
                row.warned_at, row.state = now, KPI_NEARING
            else:
                row.failed_at, row.state = now, KPI_NONCOMPLIANT
            row.history = [*row.history, {"at": now.isoformat(), "event": stage, "due": at.isoformat(),
                                          "actions": results}]
            log.warning("case %s: SLA %s %s %s (due %s): %s", case.reference, row.sla, row.kpi, stage,
                        at.isoformat(), "; ".join(results) or "no actions")
            fired += 1
        row.due_at = _next_due(row) if row.state in OPEN else None
        return fired


def explain(row: SlaKpi, calendar: BusinessCalendar, now: datetime) -> dict[str, Any]:
    """One clock as `maild sla status` and `sla explain` show it."""
    left = None
    if row.state in OPEN and row.fail_at is not None:
        left = int(calendar.elapsed(now, row.fail_at).total_seconds()) if row.fail_at > now else \
            -int(calendar.elapsed(row.fail_at, now).total_seconds())
    return {"kpi": row.kpi, "sla": row.sla, "state": row.state, "started_at": row.started_at.isoformat(),
            "warn_at": row.warn_at.isoformat() if row.warn_at else None,
            "fail_at": row.fail_at.isoformat() if row.fail_at else None,
            "business_seconds_left": left, "history": row.history}
