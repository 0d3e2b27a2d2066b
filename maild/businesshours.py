"""Business hours: when the support team works, in its own time zone, minus public holidays.

Rules ask whether a message arrived within them; the SLA clocks will count only this time.
Holidays come from the ``holidays`` package (country and optional region), plus dates the
config lists itself (company days off).
"""

from __future__ import annotations

from datetime import date, datetime, time
from functools import cached_property
from zoneinfo import ZoneInfo

import holidays as holidays_lib

from maild.config import BusinessHoursConfig

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class BusinessCalendar:
    def __init__(self, config: BusinessHoursConfig) -> None:
        self.config = config
        self.zone = ZoneInfo(config.timezone)
        self.days = {DAYS.index(d) for d in config.days}
        self.start, self.end = time.fromisoformat(config.start), time.fromisoformat(config.end)

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
        return (local.weekday() in self.days and self.start <= local.time() < self.end
                and not self.is_holiday(local.date()))
