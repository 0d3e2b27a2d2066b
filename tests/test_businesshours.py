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


# Business-time arithmetic ----------------------------------------------------------------

from datetime import timedelta  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BERLIN = BusinessCalendar(BusinessHoursConfig(timezone="Europe/Berlin", holidays="DE", holiday_region="BY",
                                              start="08:00", end="18:00", extra_holidays=(date(2026, 12, 24),)))
NEW_YORK = BusinessCalendar(BusinessHoursConfig(timezone="America/New_York", days=("mon", "tue", "wed", "thu",
                                                                                   "fri", "sat"),
                                                start="00:00", end="24:00", holidays="US"))
moments = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31),
                       timezones=st.just(timezone.utc))
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40))
calendars = st.sampled_from([BERLIN, NEW_YORK])


@settings(max_examples=300, deadline=None)
@given(calendars, moments, durations)
def test_adding_then_measuring_gives_the_duration_back(cal: BusinessCalendar, start: datetime, d: timedelta) -> None:
    assert cal.elapsed(start, cal.add(start, d)) == d


@settings(max_examples=300, deadline=None)
@given(calendars, moments, st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=40)))
def test_a_due_time_lands_in_open_time_never_on_a_closed_day(cal: BusinessCalendar, start: datetime,
                                                              d: timedelta) -> None:
    due = cal.add(start, d)
    just_before = due - timedelta(microseconds=1)
    assert cal.is_open(just_before), "the last instant counted is business time"
    local = just_before.astimezone(cal.zone).date()
    assert local.weekday() in cal.days and not cal.is_holiday(local)


@settings(max_examples=200, deadline=None)
@given(calendars, moments, moments)
def test_elapsed_is_additive_and_never_more_than_real_time(cal: BusinessCalendar, a: datetime, b: datetime) -> None:
    a, b = min(a, b), max(a, b)
    mid = a + (b - a) / 2
    assert cal.elapsed(a, b) == cal.elapsed(a, mid) + cal.elapsed(mid, b)
    assert timedelta(0) <= cal.elapsed(a, b) <= b - a


def test_friday_evening_is_due_monday_and_a_holiday_shifts_it() -> None:
    friday_evening = datetime(2026, 11, 27, 17, 30, tzinfo=timezone.utc)  # 18:30 in Berlin: closed
    assert BERLIN.add(friday_evening, timedelta(minutes=15)) == datetime(2026, 11, 30, 7, 15, tzinfo=timezone.utc)
    # Before Christmas: Thu 24 Dec is a company day off, Fri 25 and Sat 26 holidays, Sunday closed.
    wednesday_evening = datetime(2026, 12, 23, 17, 0, tzinfo=timezone.utc)
    assert BERLIN.add(wednesday_evening, timedelta(hours=1)) == datetime(2026, 12, 28, 8, 0, tzinfo=timezone.utc)


def test_dst_days_count_their_real_length() -> None:
    # New York springs forward on Sun 8 Mar 2026, a closed day: the days around it are whole.
    sat = datetime(2026, 3, 7, 5, 0, tzinfo=timezone.utc)  # Sat 00:00 EST
    tue = datetime(2026, 3, 10, 4, 0, tzinfo=timezone.utc)  # Tue 00:00 EDT: 71 real hours later
    assert NEW_YORK.elapsed(sat, tue) == timedelta(hours=24 + 24)  # Sat + Mon; Sunday is closed
    spring = BusinessCalendar(BusinessHoursConfig(timezone="Europe/Berlin", days=("sun",), start="00:00",
                                                  end="24:00"))
    day = datetime(2026, 3, 28, 23, 0, tzinfo=timezone.utc)  # Sun 29 Mar 2026 00:00 CET
    assert spring.elapsed(day, day + timedelta(days=1)) == timedelta(hours=23), "the short day is 23 hours"
