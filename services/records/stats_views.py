"""Appeals over time, for the weekly and monthly reports (周报/月报), from the record:

    GET /api/v1/stats/trend?from=&to=&group_by=category|street|department&level=top|leaf
    GET /api/v1/stats/trend/export?<the same>&format=xlsx|csv

The desk (admin token), as for the rankings of /api/v1/stats; the same period rules (local days,
at most a year). With PostgreSQL down these answer 503 with Retry-After, as the search does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request

from services.records.trend import Level, TrendGroup, appeals_trend
from services.records.views import UNAVAILABLE, records_pool, unavailable
from shared.auth import Principal, require_admin
from shared.periods import stats_period
from shared.spreadsheets import Format, Percent, download, each

router = APIRouter(prefix="/api/v1", tags=["stats"])

GROUP_NAMES = {"category": "诉求分类", "street": "街道", "department": "承办单位", "grid": "网格"}


async def _trend(request: Request, group_by: TrendGroup, level: Level, period: tuple[date, date]) -> Any:
    state = request.app.state
    start, end = period
    try:
        pool = await records_pool(request)
        return await appeals_trend(
            pool, state.city, start, end, ZoneInfo(state.settings.timezone), group_by, level
        )
    except UNAVAILABLE:
        return None


@router.get("/stats/trend")
async def trend(
    request: Request,
    group_by: TrendGroup = "category",
    level: Level = Query("leaf", description="categories: top-level (top) or as classified (leaf)"),
    _: Principal = Depends(require_admin),  # first: who asks, then what
    period: tuple[date, date] = Depends(stats_period),
):
    """The period's appeals beside the period before (环比) and the same dates a year before (同比):
    totals, appeals per local day (days without any as 0), and per group the counts, the change
    and the change in percent (null when the base is 0), the largest rise first."""
    body = await _trend(request, group_by, level, period)
    return unavailable() if body is None else body


def _percent(value: float | None, count: int) -> Percent | str | None:
    """The change in percent (12.5 for +12.5%) as a number; from nothing, 新增 if there are some
    now, else no value (an empty cell: Excel counts it as nothing, not as 0)."""
    if value is None:
        return "新增" if count else None
    return Percent(value / 100, signed=True)


# The trend table as managers put it in a report: this period, the one before, the change, a year before.
COLUMNS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "本期": lambda g: g["count"],
    "上期": lambda g: g["previous"],
    "环比增减": lambda g: g["change"],
    "环比": lambda g: _percent(g["change_percent"], g["count"]),
    "去年同期": lambda g: g["last_year"],
    "同比增减": lambda g: g["year_change"],
    "同比": lambda g: _percent(g["year_change_percent"], g["count"]),
}


@router.get("/stats/trend/export")
async def trend_export(
    request: Request,
    group_by: TrendGroup = "category",
    level: Level = "leaf",
    format: Format = "xlsx",
    _: Principal = Depends(require_admin),
    period: tuple[date, date] = Depends(stats_period),
):
    """The trend table of /stats/trend to open in Excel (趋势表): the total first, then each group,
    the largest rise first."""
    body = await _trend(request, group_by, level, period)
    if body is None:
        return unavailable()
    total = {
        "count": body["total"],
        "previous": body["previous_total"],
        "last_year": body["last_year_total"],
        **{k: body[k] for k in ("change", "change_percent", "year_change", "year_change_percent")},
    }
    when = {
        "本期": body["periods"]["current"],
        "上期": body["periods"]["previous"],
        "去年同期": body["periods"]["last_year"],
    }
    header = [
        GROUP_NAMES[group_by],
        *(f"{c}（{when[c]['from']}至{when[c]['to']}）" if c in when else c for c in COLUMNS),
    ]
    rows = [["合计", *(cell(total) for cell in COLUMNS.values())]]
    rows += [[g["name"], *(cell(g) for cell in COLUMNS.values())] for g in body["groups"]]
    start, end = period
    name = f"trend-{group_by}-{start:%Y%m%d}-{end:%Y%m%d}"
    return download(format, name, header, each(rows), f"按{GROUP_NAMES[group_by]}趋势")
