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
    it cannot be counted. See `counted_period`."""
    today = datetime.now(ZoneInfo(request.app.state.settings.timezone)).date()
    return counted_period(from_, to, today)


def counted_period(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """The days counted for a period asked for on `today`: the days to come have nothing to count,
    so a period that has not started is refused, and one that ends after today is counted up to
    today (统计至今天: the answer's `to` says so). Counting the days to come as empty compared them
    with days that happened: 5 to 10 December asked on the 3rd "fell 100%" against 29 November to 4
    December, and 1 to 10 December, three days of it counted, against ten days of November; up to
    today, 1 to 3 December compares with 1 to 3 November (`shared.trend.previous_period`).
    DomainError (422, beside the field at fault) saying why a period cannot be counted."""
    start = start or (end or today).replace(day=1)
    # A start after the end asked for is said so; after today with no end asked, not started yet.
    if end is not None and start > end:
        raise DomainError("invalid_period", f"起始日期{start}晚于结束日期{end}", kind="invalid", field="from")
    if start > today:
        raise DomainError(
            "invalid_period",
            f"统计期尚未开始（起始日期{start}在今天之后），请选择今天或以前的日期",
            kind="invalid",
            field="from",
        )
    end = min(end or today, today)
    if (end - start).days >= MAX_DAYS:
        raise DomainError("invalid_period", f"统计区间最长{MAX_DAYS}天", kind="invalid", field="from")
    return start, end
