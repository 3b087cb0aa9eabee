"""我上报的: a grid worker's own patrol reports and what became of each, newest first, by where they
stand (全部 / 未办结 / 已办结). The grid's list shows only the grid's open tickets: a report the
desk placed in another grid, or one closed, drops out of it, and the worker who found the problem
lost sight of it. The API reads them from the record by the worker's 工号 (its token's, never a
parameter: `GET /api/v1/tickets/reported`), and each opens the ticket's page, which a grid worker
reads for its own reports wherever they are (`router.views.reported_it`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from services.console import present, session
from services.console.views import STATUS_LABELS, api, as_grid_worker, city_of, page, page_number, tz_of
from services.records.query import REPORTED_STATE_NAMES, REPORTED_STATES
from shared.city import City

router = APIRouter(prefix="/console", include_in_schema=False)
PAGE_SIZE = 20  # a phone's screenful or two; older ones a page further
SHORT_TEXT = 40  # characters of the report's text in the list (the API sends one more, to know)
FINISHED = ("resolved", "surveyed", "closed")


def deadline_state(item: dict[str, Any], tz: ZoneInfo, now: datetime) -> tuple[str, bool]:
    """The list's 时限 cell and whether it is late: the deadline that runs now with the time left
    (as a department's queue counts it, `present.due_of`), else what the ticket waits for, or how
    it ended."""
    status = item.get("status") or ""
    # A mark left from the department's deadline is not the meeting's (see views.row).
    marked = bool(item.get("overdue")) and status != "meeting"
    if (due := present.due_of(item)) is not None:
        left, late = present.time_left(due, now)
        said = f"{present.due_label(status)} {present.local(due, tz)}（{left}）"
        # Late is said in words, not by the row's colour alone.
        return (said if late or not marked else f"超期：{said}"), late or marked
    if item.get("merged_into"):
        return f"已并入工单{item['merged_into']}", False
    if status in FINISHED:
        when = present.local(item.get("resolved_at") or item.get("closed_at"), tz)
        return f"{'超期办结' if marked else '办结'}{'于' + when if when else ''}", marked
    if status == "review":
        return "待人工派单，时限自派单起算", False
    if status == "meeting":
        return "待联席会议决定", False
    return "待分类派单", False


def report_row(
    item: dict[str, Any], tz: ZoneInfo, city: City, now: datetime, worker_grid: str | None = None
) -> dict[str, Any]:
    text = item.get("text") or ""
    deadline, late = deadline_state(item, tz, now)
    return {
        **item,
        "department_name": present.holder_name(item),  # 待会议确定 while a joint meeting holds it
        "status_name": STATUS_LABELS.get(item.get("status", ""), item.get("status", "")),
        "received": present.local(item.get("received_at"), tz),
        "short_text": text[:SHORT_TEXT] + ("…" if len(text) > SHORT_TEXT else ""),
        "place": city.place_name(item.get("grid")),
        "deadline": deadline,
        "late": late,
        "verification_name": {"solved": "核查已解决", "not_solved": "核查未解决"}.get(
            item.get("verification") or "", ""
        ),
        # Resolved in the worker's own grid and not checked yet: its page has the check (现场核查).
        "awaits_check": present.awaits_check(item, worker_grid),
    }


@router.get("/reported")
async def reported_page(request: Request, s: session.Session = Depends(as_grid_worker)) -> Response:
    # An unknown state in a hand-made address shows them all, as the page's own links would.
    state = request.query_params.get("state") or "all"
    state = state if state in REPORTED_STATES else "all"
    page_no = page_number(request)
    reply = await api(request, s).get("/api/v1/tickets/reported", state=state, page=page_no, size=PAGE_SIZE)
    links = [
        (key, name, "/console/reported" + (f"?state={key}" if key != "all" else ""))
        for key, name in REPORTED_STATE_NAMES.items()
    ]
    context: dict[str, Any] = {"s": s, "state": state, "states": links, "rows": None, "error": ""}
    if not reply.ok:  # the record away, or a token without a 工号: said in place of the list
        return await page(request, "reported.html", reply.status, **context | {"error": reply.message})
    total = reply.body["total"]
    pages = present.page_count(total, PAGE_SIZE)
    if page_no > pages:  # past the end (the list got shorter since the link): its last page
        return RedirectResponse(f"/console/reported?{urlencode({'state': state, 'page': pages})}", 303)
    tz, city, now = tz_of(request), city_of(request), datetime.now(UTC)
    return await page(
        request,
        "reported.html",
        **context
        | {
            "rows": [report_row(item, tz, city, now, s.principal.grid) for item in reply.body["items"]],
            "total": total,
            "page_no": page_no,
            "pages": pages,
            "state_name": REPORTED_STATE_NAMES[state],
            "urlencode": urlencode,
        },
    )
