"""The trend report's arithmetic (shared.trend): the periods a period is compared with, the change
with a zero base, the order of the groups and the report's sentence. Pure."""

from __future__ import annotations

from datetime import date

import pytest

from shared.errors import DomainError
from shared.periods import counted_period
from shared.trend import (
    change,
    described,
    falling,
    previous_period,
    ranked,
    rising,
    summary,
    whole_months,
    year_before,
)


@pytest.mark.parametrize(
    ("start", "end", "previous"),
    [
        # A week: the seven days before.
        (date(2026, 11, 23), date(2026, 11, 29), (date(2026, 11, 16), date(2026, 11, 22))),
        # A month: the month before, whatever its length (March against February, not 29 January on).
        (date(2026, 3, 1), date(2026, 3, 31), (date(2026, 2, 1), date(2026, 2, 28))),
        (date(2026, 1, 1), date(2026, 1, 31), (date(2025, 12, 1), date(2025, 12, 31))),
        # A quarter: the quarter before.
        (date(2026, 4, 1), date(2026, 6, 30), (date(2026, 1, 1), date(2026, 3, 31))),
        # Month to date: the same days of the month before (上月同期), as far as that month goes.
        (date(2026, 12, 1), date(2026, 12, 10), (date(2026, 11, 1), date(2026, 11, 10))),
        (date(2026, 12, 1), date(2026, 12, 1), (date(2026, 11, 1), date(2026, 11, 1))),
        (date(2026, 1, 1), date(2026, 1, 15), (date(2025, 12, 1), date(2025, 12, 15))),
        (date(2026, 3, 1), date(2026, 3, 30), (date(2026, 2, 1), date(2026, 2, 28))),
        # Any other period: as many days just before.
        (date(2026, 12, 2), date(2026, 12, 10), (date(2026, 11, 23), date(2026, 12, 1))),
    ],
)
def test_the_previous_period(start, end, previous):
    assert previous_period(start, end) == previous


def test_whole_months():
    assert whole_months(date(2026, 11, 1), date(2026, 12, 31)) == 2
    assert whole_months(date(2028, 2, 1), date(2028, 2, 29)) == 1
    assert whole_months(date(2028, 2, 1), date(2028, 2, 28)) is None  # a leap year's February is 29 days
    assert whole_months(date(2026, 11, 2), date(2026, 11, 30)) is None


def test_the_same_dates_a_year_before():
    assert year_before(date(2026, 11, 23), date(2026, 11, 29)) == (date(2025, 11, 23), date(2025, 11, 29))
    # A leap day has no twin: the day before it stands in.
    assert year_before(date(2028, 2, 29), date(2028, 3, 6)) == (date(2027, 2, 28), date(2027, 3, 6))
    # A whole February stays a whole February.
    assert year_before(date(2028, 2, 1), date(2028, 2, 29)) == (date(2027, 2, 1), date(2027, 2, 28))
    assert year_before(date(2029, 2, 1), date(2029, 2, 28)) == (date(2028, 2, 1), date(2028, 2, 29))


def test_change_in_numbers_and_percent():
    assert change(1234, 1097) == {"change": 137, "change_percent": 12.5}
    assert change(31, 32) == {"change": -1, "change_percent": -3.1}
    assert change(5, 5) == {"change": 0, "change_percent": 0.0}


def test_a_zero_base_has_no_percent_and_is_said_new():
    assert change(3, 0) == {"change": 3, "change_percent": None}
    assert change(0, 0) == {"change": 0, "change_percent": None}
    assert described(3, 0) == "新增"
    assert described(0, 0) == "持平"
    assert described(0, 4) == "下降100.0%"


def test_the_reports_sentence():
    assert summary(1234, 1097, 1273) == "本期受理1,234件，环比上升12.5%，同比下降3.1%"
    assert summary(7, 0, 7) == "本期受理7件，环比新增，同比持平"


def test_groups_ranked_by_the_largest_rise_and_the_lists_either_way():
    groups = ranked(
        [
            {"group": "utility.heating", "count": 40, "previous": 4, "last_year": 30},
            {"group": "env.noise", "count": 10, "previous": 25, "last_year": 0},
            {"group": "city.facility.drainage", "count": 12, "previous": 0, "last_year": 2},
            {"group": "transport.bus", "count": 3, "previous": 3, "last_year": 3},
            {"group": "housing.elevator", "count": 0, "previous": 2, "last_year": 1},
        ]
    )
    assert [g["group"] for g in groups] == [
        "utility.heating",
        "city.facility.drainage",
        "transport.bus",
        "housing.elevator",
        "env.noise",
    ]
    heating = groups[0]
    assert (heating["change"], heating["change_percent"]) == (36, 900.0)
    assert (heating["year_change"], heating["year_change_percent"]) == (10, 33.3)
    assert groups[1]["change_percent"] is None  # new this period: no percent of nothing
    assert groups[4]["year_change_percent"] is None
    assert [g["group"] for g in rising(groups)] == ["utility.heating", "city.facility.drainage"]
    assert [g["group"] for g in falling(groups)] == ["env.noise", "housing.elevator"]
    assert len(rising([{**groups[0], "group": str(i)} for i in range(9)])) == 5


TODAY = date(2026, 12, 3)
NOT_STARTED = "统计期尚未开始（起始日期{}在今天之后），请选择今天或以前的日期"


def d(month: int, day: int, year: int = 2026) -> date:
    return date(year, month, day)


@pytest.mark.parametrize(
    ("asked", "counted", "previous"),
    [
        # Ends after today: counted to today, and compared with as many days of the month before
        # (上月同期), not with 1 to 10 November against seven days that have not happened.
        ((d(12, 1), d(12, 10)), (d(12, 1), TODAY), (d(11, 1), d(11, 3))),
        # Not from a first of the month: the four days before the four counted.
        ((d(11, 30), d(12, 31)), (d(11, 30), TODAY), (d(11, 26), d(11, 29))),
        ((d(12, 3), d(1, 1, 2027)), (TODAY, TODAY), (d(12, 2), d(12, 2))),
        # Nothing to come: as asked; none asked, this month so far.
        ((d(11, 1), d(11, 30)), (d(11, 1), d(11, 30)), (d(10, 1), d(10, 31))),
        ((None, None), (d(12, 1), TODAY), (d(11, 1), d(11, 3))),
    ],
)
def test_a_period_ending_after_today_is_counted_to_today_against_as_many_days(asked, counted, previous):
    assert counted_period(*asked, TODAY) == counted
    assert previous_period(*counted) == previous


@pytest.mark.parametrize(
    ("start", "end", "said"),
    [
        (d(12, 5), d(12, 10), NOT_STARTED.format("2026-12-05")),
        (d(12, 4), None, NOT_STARTED.format("2026-12-04")),
        (d(12, 10), d(12, 5), "起始日期2026-12-10晚于结束日期2026-12-05"),
        (d(12, 1, 2025), d(1, 1, 2027), "统计区间最长366天"),
    ],
)
def test_a_period_not_started_is_refused_beside_the_start(start, end, said):
    with pytest.raises(DomainError) as refused:
        counted_period(start, end, TODAY)
    assert (refused.value.code, refused.value.field) == ("invalid_period", "from")
    assert refused.value.message == said
    # The length is of the days counted: a year to come is no reason to refuse the days that were.
    assert counted_period(d(12, 4, 2025), d(6, 1, 2027), TODAY) == (d(12, 4, 2025), TODAY)
