"""Business hours: when the support team works, in its own time zone, minus public holidays.

Rules ask whether a message arrived within them; SLA clocks count only this time, with
``add`` (the instant a business-time duration after a start ends) and ``elapsed`` (the
business time between two instants). Holidays come from the ``holidays`` package (country
and optional region), plus dates the config lists itself (company days off).

Opening hours are wall-clock times in the calendar's zone, turned into real instants day by
day, so a day that is an hour shorter or longer at a DST change counts as exactly that.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from collections.abc import Iterator
from functools import cached_property
from zoneinfo import ZoneInfo

import holidays as holidays_lib

from maild.config import BusinessHoursConfig

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# No calendar is closed for longer than this; a duration that would need more is refused.
HORIZON_DAYS = 3 * 366


class BusinessCalendar:
    def __init__(self, config: BusinessHoursConfig) -> None:
        self.config = config
        self.zone = ZoneInfo(config.timezone)
        self.days = {DAYS.index(d) for d in config.days}
        self.start, self.end = time.fromisoformat(config.start), time.fromisoformat(config.end)
        self._to_midnight = self.end >= time(23, 59, 59)  # "24:00"

    @cached_property
    def _public(self) -> holidays_lib.HolidayBase | None:
        if not self.config.holidays:
            return None
        return holidays_lib.country_holidays(self.config.holidays, subdiv=self.config.holiday_region)

    def is_holiday(self, day: date) -> bool:
        return day in self.config.extra_holidays or (self._public is not None and day in self._public)

    def is_open(self, moment: datetime) -> bool:
        """Whether ``moment`` (timezone-aware) falls within business hours."""
        local = moment.astimezone(self.zone)
        before_close = self._to_midnight or local.time() < self.end
        return (local.weekday() in self.days and self.start <= local.time() and before_close
                and not self.is_holiday(local.date()))

    def opening(self, day: date) -> tuple[datetime, datetime] | None:
        """The open interval of local ``day`` as UTC instants, or None if closed all day."""
        if day.weekday() not in self.days or self.is_holiday(day):
            return None
        start = datetime.combine(day, self.start, tzinfo=self.zone)
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.zone) if self._to_midnight \
            else datetime.combine(day, self.end, tzinfo=self.zone)
        return start.astimezone(timezone.utc), end.astimezone(timezone.utc)

    def _days_from(self, moment: datetime) -> Iterator[date]:
        first = moment.astimezone(self.zone).date() - timedelta(days=1)  # an interval may start the day before
        return (first + timedelta(days=i) for i in range(HORIZON_DAYS + 2))

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant at which ``duration`` of business time after ``start`` has passed."""
        left = duration
        for day in self._days_from(start):
            opened = self.opening(day)
            if opened is None or opened[1] <= start:
                continue
            begin = max(opened[0], start)
            if begin + left <= opened[1]:
                return begin + left
            left -= opened[1] - begin
        raise ValueError(f"{duration} of business time does not fit in {HORIZON_DAYS} days of this calendar")

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """The business time between two instants (zero if ``end`` is not after ``start``)."""
        total = timedelta(0)
        if end <= start:
            return total
        for day in self._days_from(start):
            opened = self.opening(day)
            if opened is None:
                continue
            if opened[0] >= end:
                break
            total += max(min(opened[1], end) - max(opened[0], start), timedelta(0))
        return total
