"""The period a statistics endpoint counts over (`from`/`to`, local days, both included), checked
the one way for every such endpoint: the rankings (/stats) and the trend (/stats/trend)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from fastapi import Query, Request

from shared.errors import DomainError

MAX_DAYS = 366


def stats_period(
    request: Request,
    from_: date | None = Query(None, alias="from", description="YYYY-MM-DD, default: first of this month"),
    to: date | None = Query(None, description="YYYY-MM-DD, default: today"),
) -> tuple[date, date]:
    """The period asked for (default: this month so far, in the city's timezone); 422 saying why
    it cannot be counted."""
    end = to or datetime.now(ZoneInfo(request.app.state.settings.timezone)).date()
    start = from_ or end.replace(day=1)
    if start > end:
        raise DomainError("invalid_period", f"起始日期{start}晚于结束日期{end}", kind="invalid", field="from")
    if (end - start).days >= MAX_DAYS:
        raise DomainError("invalid_period", f"统计区间最长{MAX_DAYS}天", kind="invalid", field="from")
    return start, end
