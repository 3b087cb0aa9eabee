"""Appeals over time from the record (周报/月报): how many came in per day of a period, of the period
before it (环比) and of the same dates a year before (同比), and per category, street, department or
grid in each. Every ticket counts on the local day it was received (merged duplicates too: each was
a call). Two queries, both aggregated by PostgreSQL over the received_at index; the arithmetic of the
comparison is `shared.trend`'s."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from services.records.db import Pool
from shared import trend
from shared.city import City
from shared.errors import DomainError

TrendGroup = Literal["category", "street", "department", "grid"]
Level = Literal["top", "leaf"]
PERIODS = ("current", "previous", "last_year")
UNKNOWN_NAMES = {"category": "未分类", "street": "未定位街道", "department": "未派单", "grid": "未定位网格"}

# One row per day of each period, the days without a ticket as 0: the series is PostgreSQL's
# (generate_series), the counts are grouped by the local day (date_trunc in the city's timezone).
DAILY_SQL = """
WITH span(period, lo, hi, first, last) AS (
    VALUES ('current', %(lo0)s::timestamptz, %(hi0)s::timestamptz, %(first0)s::date, %(last0)s::date),
           ('previous', %(lo1)s, %(hi1)s, %(first1)s, %(last1)s),
           ('last_year', %(lo2)s, %(hi2)s, %(first2)s, %(last2)s)
), counted AS (
    SELECT s.period, date_trunc('day', t.received_at AT TIME ZONE %(tz)s)::date AS day, count(*) AS n
      FROM span s JOIN tickets t ON t.received_at >= s.lo AND t.received_at < s.hi
     GROUP BY s.period, day
)
SELECT s.period, d::date AS day, coalesce(c.n, 0) AS n
  FROM span s
 CROSS JOIN LATERAL generate_series(s.first, s.last, interval '1 day') AS d
  LEFT JOIN counted c ON c.period = s.period AND c.day = d::date
 ORDER BY s.period, day
"""

# Per group, the count in each period. A category at the top level is its root's: the city's tree
# says which (given as two arrays, leaf -> root), not the spelling of the ids.
GROUP_SQL = """
SELECT coalesce({group}, 'unknown') AS grp,
       count(*) FILTER (WHERE t.received_at >= %(lo0)s AND t.received_at < %(hi0)s) AS current,
       count(*) FILTER (WHERE t.received_at >= %(lo1)s AND t.received_at < %(hi1)s) AS previous,
       count(*) FILTER (WHERE t.received_at >= %(lo2)s AND t.received_at < %(hi2)s) AS last_year
  FROM tickets t {join}
 WHERE (t.received_at >= %(lo1)s AND t.received_at < %(hi0)s)
    OR (t.received_at >= %(lo2)s AND t.received_at < %(hi2)s)
 GROUP BY grp
"""
GROUP_COLUMNS = {
    "category": "t.category",
    "street": "t.street",
    "department": "t.department",
    "grid": "t.grid",
}
TOP_JOIN = (
    "LEFT JOIN unnest(%(leaves)s::text[], %(roots)s::text[]) AS top(leaf, root) ON top.leaf = t.category"
)


def periods_of(start: date, end: date) -> dict[str, trend.Period]:
    """The period and those it is compared with; 422 for dates whose comparisons (or whose next
    day, where the period ends) fall outside the calendar Python can count in (years 1 to 9999)."""
    try:
        end + timedelta(days=1)
        return {
            "current": (start, end),
            "previous": trend.previous_period(start, end),
            "last_year": trend.year_before(start, end),
        }
    except (OverflowError, ValueError):
        raise DomainError(
            "invalid_period",
            f"{start}至{end}超出可统计的日期范围，请选择公元2年至9999年间的日期",
            kind="invalid",
            field="from",
        ) from None


def _bounds(periods: dict[str, trend.Period], tz: ZoneInfo) -> dict[str, Any]:
    """Each period's first and last local day and the instants they start and end at."""
    params: dict[str, Any] = {"tz": tz.key}
    for i, name in enumerate(PERIODS):
        first, last = periods[name]
        params |= {
            f"first{i}": first,
            f"last{i}": last,
            f"lo{i}": datetime.combine(first, time(), tz),
            f"hi{i}": datetime.combine(last + timedelta(days=1), time(), tz),
        }
    return params


def name_of(city: City, group_by: str, group: str) -> str:
    if group == "unknown":
        return UNKNOWN_NAMES[group_by]
    if group_by == "category" and group in city.category_by_id:
        return "/".join(city.category_names(group))
    if group_by == "street":
        return next((s.name for s in city.district.streets if s.id == group), group)
    if group_by == "department" and group in city.department_by_id:
        return city.department_by_id[group].name
    if group_by == "grid" and group in city.grids:
        return city.grids[group].grid.name
    return group


async def appeals_trend(
    pool: Pool, city: City, start: date, end: date, tz: ZoneInfo, group_by: TrendGroup, level: Level = "leaf"
) -> dict[str, Any]:
    """The period [start, end] beside the one before it and the same dates a year before: totals,
    appeals per local day, and per group the counts and changes, the largest rise first."""
    periods = periods_of(start, end)
    params = _bounds(periods, tz)
    join = ""
    column = GROUP_COLUMNS[group_by]
    if group_by == "category" and level == "top":
        roots = {leaf: path[0] for leaf, path in city.category_path.items()}
        params |= {"leaves": list(roots), "roots": list(roots.values())}
        join, column = TOP_JOIN, "coalesce(top.root, t.category)"
    async with pool.connection() as conn:
        daily = await (await conn.execute(DAILY_SQL, params)).fetchall()
        counted = await (await conn.execute(GROUP_SQL.format(group=column, join=join), params)).fetchall()
    days: dict[str, list[dict[str, Any]]] = {name: [] for name in PERIODS}
    for r in daily:
        days[r["period"]].append({"day": r["day"].isoformat(), "count": r["n"]})
    totals = {name: sum(d["count"] for d in days[name]) for name in PERIODS}
    groups = trend.ranked(
        {
            "group": r["grp"],
            "name": name_of(city, group_by, r["grp"]),
            "count": r["current"],
            "previous": r["previous"],
            "last_year": r["last_year"],
        }
        for r in counted
    )
    return {
        "group_by": group_by,
        "level": level if group_by == "category" else None,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "periods": {
            name: {
                "from": periods[name][0].isoformat(),
                "to": periods[name][1].isoformat(),
                "total": totals[name],
                "days": days[name],
            }
            for name in PERIODS
        },
        "total": totals["current"],
        "previous_total": totals["previous"],
        "last_year_total": totals["last_year"],
        **trend.change(totals["current"], totals["previous"]),
        **{f"year_{k}": v for k, v in trend.change(totals["current"], totals["last_year"]).items()},
        "summary": trend.summary(totals["current"], totals["previous"], totals["last_year"]),
        "groups": groups,
    }
