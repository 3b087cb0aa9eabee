"""Which of a group's counter hashes hold a period: each whole month gone by from its month's sums,
every other day from its own."""

from __future__ import annotations

from datetime import date

from services.notifier.scorecard import period_keys


def days(month: str, first: int, last: int) -> list[tuple[str, int]]:
    return [(f"{month}{d:02d}", 0) for d in range(first, last + 1)]


def test_whole_months_gone_by_are_read_by_their_month():
    # 2026-01-30 .. 2026-04-02 in December: two days of January, February and March whole (with
    # their numbers of days), two days of April.
    assert period_keys(date(2026, 1, 30), date(2026, 4, 2), "202612") == [
        *days("202601", 30, 31),
        ("202602", 28),
        ("202603", 31),
        *days("202604", 1, 2),
    ]
    assert period_keys(date(2028, 2, 1), date(2028, 2, 29), "202812") == [("202802", 29)]  # a leap year


def test_the_current_month_and_those_after_it_are_read_day_by_day():
    assert period_keys(date(2026, 11, 1), date(2026, 12, 31), "202612") == [
        ("202611", 30),
        *days("202612", 1, 31),  # its days still change
    ]
    assert period_keys(date(2027, 1, 1), date(2027, 1, 31), "202612") == days("202701", 1, 31)


def test_a_year_is_twelve_months_and_an_empty_period_nothing():
    assert [k for k, _ in period_keys(date(2025, 1, 1), date(2025, 12, 31), "202612")] == [
        f"2025{m:02d}" for m in range(1, 13)
    ]
    assert period_keys(date(2026, 12, 2), date(2026, 12, 1), "202612") == []
