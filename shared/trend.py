"""The arithmetic of a trend report (周报/月报): which periods a period is compared with, the change
between two counts, the order of the groups and the sentence a manager copies into the report.
Pure: the counting is SQL's (services/records/trend.py), the showing the console's."""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

Period = tuple[date, date]


def _month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


def whole_months(start: date, end: date) -> int | None:
    """How many calendar months [start, end] is, when it is exactly that (1 November to 31
    December: 2); None for any other period."""
    if start.day != 1 or end != _month_end(end.year, end.month):
        return None
    return (end.year - start.year) * 12 + end.month - start.month + 1


def _months_before(first: date, months: int) -> date:
    """The first of the month `months` months before `first` (a first of a month)."""
    index = first.year * 12 + first.month - 1 - months
    return date(index // 12, index % 12 + 1, 1)


def previous_period(start: date, end: date) -> Period:
    """The period of the same length just before (环比). A month's report compares with the month
    before, whatever its number of days (March with February, not with 29 January to 28 February);
    a month so far (the dashboard's default, 1 to 10 December) with the same days of the month
    before (上月同期: 1 to 10 November, not 21 to 30 November, whose month-end is another matter),
    as far as that month goes; any other period with as many days just before it."""
    months = whole_months(start, end)
    if months is not None:
        return _months_before(start, months), start - timedelta(days=1)
    if start.day == 1 and (start.year, start.month) == (end.year, end.month):
        first = _months_before(start, 1)
        return first, min(first + timedelta(days=end.day - 1), _month_end(first.year, first.month))
    days = (end - start).days + 1
    return start - timedelta(days=days), start - timedelta(days=1)


def _year_before(day: date) -> date:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February: the year before has no such day
        return date(day.year - 1, 2, 28)


def year_before(start: date, end: date) -> Period:
    """The same dates a year before (同比); whole months stay whole months (February 2028, 29 days,
    compares with February 2027, 28)."""
    if whole_months(start, end) is not None:
        return start.replace(year=start.year - 1), _month_end(end.year - 1, end.month)
    return _year_before(start), _year_before(end)


def change(current: int, base: int) -> dict[str, Any]:
    """The change from `base` to `current`, in numbers and in percent of the base (one decimal).
    A base of 0 has no percent (None, said 新增 when something came in, 持平 when nothing did)."""
    return {
        "change": current - base,
        "change_percent": None if base == 0 else round(100 * (current - base) / base, 1),
    }


def described(current: int, base: int) -> str:
    """The change in the words of a report: 上升12.5%, 下降3.1%, 持平, or 新增 (nothing before)."""
    if current == base:
        return "持平"
    percent = change(current, base)["change_percent"]
    if percent is None:
        return "新增"
    return f"{'上升' if percent > 0 else '下降'}{abs(percent):.1f}%"


def summary(total: int, previous: int, last_year: int) -> str:
    """The sentence a report opens with: 本期受理1,234件，环比上升12.5%，同比下降3.1%."""
    return f"本期受理{total:,}件，环比{described(total, previous)}，同比{described(total, last_year)}"


def ranked(groups: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each group with its change from the previous period and from a year before, the largest
    rise first (then the larger count, then the name: the same order every time)."""
    out = [
        dict(g)
        | change(g["count"], g["previous"])
        | {f"year_{k}": v for k, v in change(g["count"], g["last_year"]).items()}
        for g in groups
    ]
    return sorted(out, key=lambda g: (-g["change"], -g["count"], str(g["group"])))


def rising(groups: Iterable[Mapping[str, Any]], n: int = 5) -> list[Mapping[str, Any]]:
    """The `n` groups that rose most (上升最快), from a ranked list."""
    return [g for g in groups if g["change"] > 0][:n]


def falling(groups: Iterable[Mapping[str, Any]], n: int = 5) -> list[Mapping[str, Any]]:
    """The `n` groups that fell most (下降最多), the largest fall first."""
    return sorted((g for g in groups if g["change"] < 0), key=lambda g: (g["change"], str(g["group"])))[:n]
