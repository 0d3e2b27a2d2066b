"""Business hours: time zone, working days, opening times, public and company holidays."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from maild import config
from maild.businesshours import BusinessCalendar
from maild.config import BusinessHoursConfig
from maild.errors import ConfigError


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_opening_hours_in_the_teams_time_zone() -> None:
    cal = BusinessCalendar(BusinessHoursConfig(timezone="Europe/Berlin", start="09:00", end="17:00"))
    assert cal.is_open(utc(2026, 11, 23, 8, 0))  # Monday 09:00 in Berlin (UTC+1)
    assert not cal.is_open(utc(2026, 11, 23, 7, 59))  # 08:59 Berlin
    assert not cal.is_open(utc(2026, 11, 23, 16, 0))  # 17:00 Berlin: the end is exclusive
    assert not cal.is_open(utc(2026, 11, 28, 10, 0))  # Saturday


def test_public_holidays_by_country_and_region_and_company_days_off() -> None:
    cal = BusinessCalendar(BusinessHoursConfig(timezone="Europe/Berlin", holidays="DE", holiday_region="BY",
                                               extra_holidays=(date(2026, 12, 24),)))
    assert not cal.is_open(utc(2026, 12, 25, 10, 0))  # Christmas Day
    assert not cal.is_open(utc(2027, 1, 6, 10, 0))  # Epiphany: a holiday in Bavaria only
    assert not cal.is_open(utc(2026, 12, 24, 10, 0))  # the company's own day off
    assert cal.is_open(utc(2026, 12, 22, 10, 0))
    berlin = BusinessCalendar(BusinessHoursConfig(timezone="Europe/Berlin", holidays="DE", holiday_region="BE"))
    assert berlin.is_open(utc(2027, 1, 6, 10, 0))


def test_round_the_clock_and_weekends() -> None:
    cal = BusinessCalendar(BusinessHoursConfig(days=("sat", "sun"), start="00:00", end="24:00"))
    assert cal.is_open(utc(2026, 11, 28, 23, 59)) and not cal.is_open(utc(2026, 11, 27, 12, 0))


@pytest.mark.parametrize("snippet, problem", [
    ('timezone = "Mars/Olympus"', "business_hours.timezone: unknown time zone 'Mars/Olympus'; use an IANA name"),
    ('start = "9am"', 'business_hours.start: expected a time like "09:00", got \'9am\''),
    ('start = "18:00"', "start (18:00) must be before end (17:00)"),
    ('days = ["monday"]', "business_hours.days.0: expected 'mon'"),
    ('holidays = "XX"', "business_hours: holidays: Country XX not available"),
])
def test_bad_business_hours_name_the_key(tmp_path: Path, snippet: str, problem: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[queues.support]\naddresses = ["s@example.test"]\n[business_hours]\n{snippet}\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert problem in str(info.value)
