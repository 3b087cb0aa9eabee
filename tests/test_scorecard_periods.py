"""Which of a group's counter hashes hold a period: whole months by their month's hash, from the
first month counted whole that way on; every other day by its own."""

from __future__ import annotations

from datetime import date

from services.notifier.scorecard import next_month, period_keys


def test_whole_months_from_since_on_are_read_by_their_month():
    # 2026-01-30 .. 2026-04-02 with months counted whole from February: two days of January,
    # February and March whole, two days of April.
    assert period_keys(date(2026, 1, 30), date(2026, 4, 2), "202602") == [
        "20260130",
        "20260131",
        "202602",
        "202603",
        "20260401",
        "20260402",
    ]


def test_months_before_since_or_before_any_are_read_day_by_day():
    january = [f"202601{d:02d}" for d in range(1, 32)]
    assert period_keys(date(2026, 1, 1), date(2026, 2, 28), "202602") == [*january, "202602"]
    assert period_keys(date(2026, 1, 1), date(2026, 1, 31), None) == january


def test_a_year_is_twelve_months_and_a_part_month_is_its_days():
    assert period_keys(date(2027, 1, 1), date(2027, 12, 31), "202612") == [
        f"2027{m:02d}" for m in range(1, 13)
    ]
    assert period_keys(date(2026, 12, 1), date(2026, 12, 2), "202612") == ["20261201", "20261202"]
    assert period_keys(date(2026, 12, 2), date(2026, 12, 1), "202612") == []  # an empty period


def test_the_first_month_counted_whole_is_the_one_after_today():
    assert next_month(date(2026, 12, 2)) == "202701"
    assert next_month(date(2026, 1, 31)) == "202602"
