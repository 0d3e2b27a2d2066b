"""Scheduled reports (``[[reports]]`` in config): their settings, and which period is due.

A schedule is due once per period: daily at ``at``, or weekly on ``weekday`` at ``at``, in
the business calendar's time zone. Only the latest period that has started is ever due, so
a daemon that was down for a week sends one report when it comes back, not seven.
Kept free of database imports: config.py imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _email(value: str) -> str:
    from maild.config import _email as check  # config.py imports this module at its top

    return check(value)


class ScheduledReport(BaseModel):
    """One ``[[reports]]`` table: who gets which report, and when."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    schedule: Literal["daily", "weekly"]
    at: str = "08:00"  # in [business_hours] timezone
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"  # weekly only
    to: tuple[Annotated[str, AfterValidator(_email)], ...] = Field(min_length=1)
    queue: str | None = None  # only this queue's cases; it also sends the mail
    html: bool = True  # attach the HTML page with charts
    template: str = Field(default="report", min_length=1)

    @field_validator("at")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"expected a time like \"08:00\", got {value!r}")
        return value


def check(reports: tuple[ScheduledReport, ...], queues: Mapping[str, Any]) -> None:
    """Cross-checks against the rest of the config; the message names the key."""
    seen: dict[str, int] = {}
    for i, report in enumerate(reports):
        if report.queue is not None and report.queue not in queues:
            raise ValueError(f"reports.{i}.queue: unknown queue {report.queue!r}; queues are defined in [queues]")
        if report.name in seen:
            raise ValueError(f"reports.{i}.name: report {report.name!r} is already defined at "
                             f"reports.{seen[report.name]}")
        seen[report.name] = i


@dataclass(frozen=True)
class Slot:
    """One period of a schedule: its key (what is remembered as sent) and the instants it covers."""

    key: str
    since: datetime
    until: datetime  # the scheduled instant: the report covers the period that just ended


def latest_slot(report: ScheduledReport, now: datetime, zone: ZoneInfo) -> Slot:
    """The most recent scheduled instant at or before ``now``, and the period before it."""
    at = time.fromisoformat(report.at)
    day = now.astimezone(zone).date()
    if report.schedule == "weekly":
        day -= timedelta(days=(day.weekday() - WEEKDAYS.index(report.weekday)) % 7)
    step = timedelta(days=7 if report.schedule == "weekly" else 1)
    if _at(day, at, zone) > now:
        day -= step
    if report.schedule == "weekly":
        year, week, _ = day.isocalendar()
        key = f"{year}-W{week:02d}"
    else:
        key = day.isoformat()
    return Slot(key, _at(day - step, at, zone), _at(day, at, zone))


def _at(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(timezone.utc)
