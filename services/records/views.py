"""Search and export over the record (PostgreSQL), and tickets and joint meetings that have left Redis.

    GET /api/v1/tickets?status=&department=&category=&street=&community=&grid=&channel=&urgent=
                       &overdue=&verified=&answer=&reopened=&response=&answered=&from=&to=&q=
                       &sort=&page=&size=
    GET /api/v1/tickets/export?format=csv|xlsx&<the same filters>
    GET /api/v1/tickets/reported?state=all|open|done&page=&size=   a grid worker's own reports

The dispatch desk (admin) sees every ticket, a department the tickets it leads or co-handles, a
grid worker its grid's. A department summoned to a joint meeting reads the meeting's tickets by
number (the meeting's page links them) but does not list them: its list, like its queue, is what it
handles. With PostgreSQL down these answer 503 with Retry-After; taking appeals does not need the
database and goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout

from services.records import db
from services.records.db import Pool
from services.records.projection import in_order, meeting_of, ticket_of
from services.records.query import (
    ANSWERS_SQL,
    GRID_CHOSEN_SQL,
    MEETING_BY,
    Search,
    answers_words,
    build,
    reported,
)
from services.router.meetings import Meeting
from shared.auth import Principal, current_principal, require_role
from shared.city import City
from shared.errors import DomainError
from shared.http import api_error, domain_error
from shared.spreadsheets import download
from shared.tickets import CHANNEL_NAMES, MEDIATION_OUTCOME_NAMES, RATING_NAMES, STATUS_NAMES, Ticket

router = APIRouter(prefix="/api/v1", tags=["records"])

FILTERS = (
    "status", "department", "category", "street", "community", "grid", "channel", "urgent", "overdue",
    "verified", "phone", "caller", "answer", "reopened", "response", "answered",
)  # fmt: skip
LIST_COLUMNS = (
    # The text's start (excerpt) for a row with neither title nor address: an SMS, a WeChat message.
    "ticket_no, status, channel, title, address, left(text, 40) AS excerpt, urgent, overdue, "
    "escalated, received_at, category, category_names, grid, community, street, department, "
    "department_name, co_departments, "
    "respond_by, resolve_by, accepted_at, resolved_at, closed_at, rating, solved, masked_phone, "
    "caller_id, reopens, returns, urges, verified_at, verified_by, verification, mediation_outcome, "
    f"merged_into, merged, updated_at, {ANSWERS_SQL} AS answers, "
    # A meeting's deadline (query.MEETING_BY): read for the page's rows only.
    f"{MEETING_BY} AS meeting_by"
)
# The export's columns: header (Chinese, for the people who open it in Excel) -> column.
EXPORT = {
    "工单号": "ticket_no",
    "状态": "status",
    "渠道": "channel",
    "受理时间": "received_at",
    "分类": "category_names",
    "街道": "street",
    "社区": "community",
    "网格": "grid",
    "承办单位": "department_name",
    "协办单位": "co_departments",  # a department's export (department=) has the tickets it co-handles
    "紧急": "urgent",
    "超期": "overdue",
    "响应时限": "respond_by",
    "办结时限": "resolve_by",
    "响应时间": "accepted_at",
    "办结时间": "resolved_at",
    "结案时间": "closed_at",
    "催办次数": "urges",
    "现场核查": "verification",
    "核查时间": "verified_at",
    "调解结果": "mediation_outcome",
    "调解协议": "mediation_agreement",
    "并入": "merged_into",  # 并案: the main ticket a duplicate was merged into
    "并案": "merged",  # the duplicates merged into this one (the cell joins them with /)
    "满意度": "rating",  # the last answer (the ticket's rating)
    "历次回访": "answers",  # every answer, as the rates count them (`answers_words`)
    "来电号码": "masked_phone",
    "标题": "title",
    "诉求内容": "text",
    "地址": "address",
}
UNAVAILABLE = (psycopg.OperationalError, PoolTimeout)
RETRY_AFTER = "5"


async def records_pool(request: Request) -> Pool:
    """The API's connections to the record, opened on first use (the API starts without them)."""
    return await open_pool(request.app.state)


async def open_pool(state: Any) -> Pool:
    """The API process's pool (`app.state.records_pool`), made and the schema migrated the first time
    the record answers."""
    # One lock per app (not per module): each app runs on its own event loop.
    if getattr(state, "records_pool_lock", None) is None:
        state.records_pool_lock = asyncio.Lock()
    async with state.records_pool_lock:
        if getattr(state, "records_pool", None) is None:
            pool = db.pool(state.settings.database_url, max_size=8)
            await db.migrate(state.settings.database_url)
            await pool.open(wait=False)
            state.records_pool = pool
    return state.records_pool


def unavailable() -> JSONResponse:
    return api_error(
        503,
        "records_unavailable",
        "工单档案库（PostgreSQL）暂时无法访问，请稍后重试；受理诉求不受影响",
        headers={"Retry-After": RETRY_AFTER},
    )


def scope_of(principal: Principal) -> tuple[str | None, str | None]:
    """The department and the grid whose tickets are visible; (None, None): everything (the desk)."""
    if principal.is_admin:
        return None, None
    if principal.role == "department" and principal.department:
        return principal.department, None
    if principal.role == "grid_worker" and principal.grid:
        return None, principal.grid
    raise DomainError("forbidden", "此凭证无权查询工单", kind="forbidden")


def search_of(request: Request, principal: Principal, page: int, size: int, max_size: int = 500) -> Search:
    raw = {name: request.query_params.get(name) for name in (*FILTERS, "from", "to", "q", "sort")}
    department, grid = scope_of(principal)
    return build(
        raw,
        tz=ZoneInfo(request.app.state.settings.timezone),
        city=request.app.state.city,
        department_scope=department,
        grid_scope=grid,
        page=page,
        size=size,
        max_size=max_size,
    )


@router.get("/tickets")
async def search_tickets(
    request: Request,
    page: int = Query(1),
    size: int = Query(50),
    principal: Principal = Depends(current_principal),
):
    """Tickets matching the filters, newest first (or `sort`), a page at a time, with the total."""
    try:
        search = search_of(request, principal, page, size)
        total, items = await page_of(request, LIST_COLUMNS, search)
    except DomainError as e:
        return domain_error(e)
    except UNAVAILABLE:
        return unavailable()
    for item in items:
        item["answers"] = answers_words(item["answers"])
    return {"total": total, "page": search.page, "size": search.size, "items": items}


async def page_of(request: Request, columns: str, search: Search) -> tuple[int, list[dict[str, Any]]]:
    """How many tickets match `search`, and the `columns` of its page of them."""
    pool = await records_pool(request)
    async with pool.connection() as conn:
        total = await (
            await conn.execute(f"SELECT count(*) AS n FROM tickets WHERE {search.where}", search.params)
        ).fetchone()
        cur = await conn.execute(
            f"SELECT {columns} FROM tickets WHERE {search.where} "
            f"ORDER BY {search.order_by} LIMIT %s OFFSET %s",
            [*search.params, search.size, search.offset],
        )
        return (total["n"] if total else 0), await cur.fetchall()


# 我上报的: what the worker's list shows of each report. The report's opening words (its own, which it
# reads on the ticket's page too), never the resident's phone or caller id: the list needs neither.
REPORTED_COLUMNS = (
    "ticket_no, status, channel, left(text, 41) AS text, address, urgent, overdue, escalated, "
    "received_at, category_names, grid, community, street, department, department_name, respond_by, "
    "resolve_by, resolved_at, closed_at, verification, verified_at, assigned_via, reopens, merged_into, "
    f"{MEETING_BY} AS meeting_by, {GRID_CHOSEN_SQL} AS grid_chosen"
)
reporting_worker = require_role("grid_worker", refusal="只有网格员可以查看自己上报的工单")


@router.get("/tickets/reported")
async def reported_tickets(
    request: Request,
    state: str = Query("all", description="all, open (未办结) or done (已办结, 回访中, 已关闭)"),
    page: int = Query(1),
    size: int = Query(20),
    principal: Principal = Depends(reporting_worker),
):
    """我上报的: the reports the signed-in grid worker filed on patrol, newest first, wherever the
    desk placed them and once closed, a page at a time, with the total. Whose they are comes from
    the token (its 工号) alone: no parameter names another worker."""
    if not principal.operator:
        refusal = "此凭证未记录工号，无法查看上报记录；请派单中心重新签发"
        return domain_error(DomainError("no_staff_id", refusal, kind="forbidden"))
    try:
        search = reported(principal.operator, state, page=page, size=size)
        total, items = await page_of(request, REPORTED_COLUMNS, search)
    except DomainError as e:
        return domain_error(e)
    except UNAVAILABLE:
        return unavailable()
    return {
        "total": total,
        "state": state,
        "page": search.page,
        "size": search.size,
        "items": items,
    }


def _cell(value: Any, tz: ZoneInfo) -> Any:
    if isinstance(value, datetime):
        # The city's local time, as the console shows it: Excel's dates have no time zone.
        return value.astimezone(tz).replace(tzinfo=None, microsecond=0)
    if isinstance(value, list):
        return "/".join(map(str, value))
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value  # a cell that Excel would run as a formula
    return value


@router.get("/tickets/export")
async def export_tickets(
    request: Request,
    format: str = Query("csv", pattern="^(csv|xlsx)$"),
    principal: Principal = Depends(current_principal),
):
    """The tickets matching the filters as CSV (UTF-8 with BOM, for Excel) or XLSX, streamed."""
    settings = request.app.state.settings
    cap = settings.records_export_max_rows
    try:
        search = search_of(request, principal, 1, 1)
        pool = await records_pool(request)
        async with pool.connection() as conn:
            cur = await conn.execute(f"SELECT count(*) AS n FROM tickets WHERE {search.where}", search.params)
            row = await cur.fetchone()
            total = row["n"] if row else 0
    except DomainError as e:
        return domain_error(e)
    except UNAVAILABLE:
        return unavailable()
    if total > cap:
        return api_error(
            422,
            "too_many_rows",
            f"符合条件的工单有{total}条，超过单次导出上限{cap}条；请缩小日期范围或增加筛选条件后分批导出",
            total=total,
            limit=cap,
        )
    tz = ZoneInfo(settings.timezone)
    rows = _rows(pool, search, tz, request.app.state.city)
    stamp = datetime.now(tz).strftime("%Y%m%d-%H%M")
    return download("xlsx" if format == "xlsx" else "csv", f"tickets-{stamp}", list(EXPORT), rows, "工单")


def export_names(city: City) -> dict[str, dict[Any, str]]:
    """Columns whose codes the export writes as words: the people who open it in Excel read
    已派单 and 和平街道, not assigned and s01."""
    streets = city.district.streets
    return {
        "status": {str(st): name for st, name in STATUS_NAMES.items()},
        "channel": CHANNEL_NAMES,
        "street": {st.id: st.name for st in streets},
        "community": {c.id: c.name for st in streets for c in st.communities},
        "grid": {gid: info.grid.name for gid, info in city.grids.items()},
        "rating": dict(RATING_NAMES),
        "verification": {"solved": "已解决", "not_solved": "未解决"},
        "mediation_outcome": dict(MEDIATION_OUTCOME_NAMES),
    }


async def _rows(pool: Pool, search: Search, tz: ZoneInfo, city: City) -> AsyncIterator[list[Any]]:
    """The rows through a server-side cursor: a thousand at a time in memory, whatever the total."""
    names = export_names(city)
    columns = ", ".join(f"{ANSWERS_SQL} AS answers" if c == "answers" else c for c in EXPORT.values())
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(name="export")
        await cur.execute(
            f"SELECT {columns} FROM tickets WHERE {search.where} ORDER BY {search.order_by}",
            search.params,
        )
        while batch := await cur.fetchmany(1000):
            for r in batch:
                r["answers"] = answers_words(r["answers"])
                r["co_departments"] = "、".join(city.department_names(r["co_departments"]))
                yield [_cell(names[c].get(r[c], r[c]) if c in names else r[c], tz) for c in EXPORT.values()]


async def archived_ticket(
    request: Request,
    ticket_no: str,
    may_read: Callable[[Ticket, Sequence[str]], Awaitable[bool]],
) -> tuple[Ticket, list[dict[str, Any]]] | JSONResponse:
    """A ticket that has left Redis, from the record: the ticket as the working set held it
    (`projection.ticket_of`) and its history. `may_read` is the router's rule for every ticket,
    given those the record has summoned to the ticket's joint meeting, for a meeting Redis no
    longer holds. 404 as for any ticket the caller may not read."""
    not_found = api_error(404, "not_found", f"工单{ticket_no}不存在")
    try:
        pool = await records_pool(request)
        async with pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT t.*, m.summoned AS meeting_summoned FROM tickets t "
                    "LEFT JOIN meetings m ON m.meeting_id = t.meeting_id WHERE t.ticket_no = %s",
                    (ticket_no,),
                )
            ).fetchone()
            if row is None:
                return not_found
            ticket = ticket_of(row, request.app.state.city)
            if not await may_read(ticket, row["meeting_summoned"] or ()):
                return not_found
            cur = await conn.execute(
                "SELECT payload FROM ticket_events WHERE ticket_no = %s ORDER BY occurred_at, recorded_at",
                (ticket_no,),
            )
            # The fold's order: a time shared by two events (an assignment carries the time of
            # the classification it answers) is settled by the pipeline, not by arrival.
            history = [dict(e) for e in in_order(r["payload"] for r in await cur.fetchall())]
    except UNAVAILABLE:
        return unavailable()
    return ticket, history


async def archived_meeting(
    request: Request, meeting_id: str, may_read: Callable[[Meeting], bool]
) -> Meeting | JSONResponse:
    """A joint meeting that has left Redis, from the record: the meeting as the working set held it
    (`projection.meeting_of`). `may_read` is the router's rule for every meeting. 404 as for any
    meeting the caller may not read."""
    not_found = api_error(404, "not_found", f"联席会议{meeting_id}不存在")
    try:
        pool = await records_pool(request)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT * FROM meetings WHERE meeting_id = %s", (meeting_id,))
            row = await cur.fetchone()
    except UNAVAILABLE:
        return unavailable()
    if row is None:
        return not_found
    meeting = meeting_of(row, ZoneInfo(request.app.state.settings.timezone))
    return meeting if may_read(meeting) else not_found
