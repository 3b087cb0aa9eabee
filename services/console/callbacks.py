"""The hotline operators' phone callbacks (电话回访): the residents who have not answered the SMS
survey, the longest waiting first; an operator takes one (no other operator calls that resident
meanwhile), dials the number shown, reads out what the department did and records the answer, or
that nobody answered. The API does the work (`services/notifier/views.py`, `/api/v1/callbacks`);
these pages only show it and post the forms."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console import present, session
from services.console.views import api, as_operator, checked_form, page, text, tz_of
from services.notifier.surveys import CALL_ANSWER_REQUIRED
from shared.tickets import RATING_NAMES

router = APIRouter(prefix="/console", include_in_schema=False)
PAGE_SIZE = 50


def _row(item: dict[str, Any], request: Request) -> dict[str, Any]:
    tz = tz_of(request)
    return {
        **item,
        "department_name": (item.get("department") or {}).get("name", ""),
        "surveyed": present.local(item.get("surveyed_at"), tz),
        "due": present.local(item.get("due_at"), tz),
    }


@router.get("/callbacks")
async def callbacks_page(request: Request, s: session.Session = Depends(as_operator)) -> HTMLResponse:
    reply = await api(request, s).get("/api/v1/callbacks", size=PAGE_SIZE)
    q = request.query_params
    return await page(
        request,
        "callbacks.html",
        s=s,
        calls=[_row(item, request) for item in reply.body["items"]] if reply.ok else None,
        total=reply.body["total"] if reply.ok else 0,
        callbacks_due=reply.body["total"] if reply.ok else None,  # the menu's count: the list's own
        attempts=reply.body["attempts"] if reply.ok else 0,
        after=f"{reply.body['due_after_hours']:g}" if reply.ok else "",
        error=q.get("error") or ("" if reply.ok else reply.message),
        done=q.get("done"),
    )


def _back(**message: str) -> RedirectResponse:
    return RedirectResponse(f"/console/callbacks?{urlencode(message)}", status_code=303)


@router.post("/callbacks/{survey_id}/call")
async def take_call(request: Request, survey_id: str, s: session.Session = Depends(as_operator)) -> Response:
    """Take the call: the page with the number, what to read out and the answer's form."""
    await checked_form(request, s)
    reply = await api(request, s).post(f"/api/v1/callbacks/{survey_id}/call")
    if not reply.ok:
        return _back(error=reply.message)
    return await _call_page(request, s, reply.body)


async def _call_page(
    request: Request, s: session.Session, call: dict[str, Any], status: int = 200, **context: Any
) -> HTMLResponse:
    return await page(
        request,
        "callback.html",
        status,
        s=s,
        call=_row(call, request),
        ratings=RATING_NAMES,
        answer_wanted=CALL_ANSWER_REQUIRED,  # what the API refuses an answer without, asked first
        **{"values": {}, "error": "", "error_field": None, **context},
    )


@router.post("/callbacks/{survey_id}")
async def record_call(
    request: Request, survey_id: str, s: session.Session = Depends(as_operator)
) -> Response:
    form = await checked_form(request, s)
    client = api(request, s)
    if text(form, "reached") == "no":
        reply = await client.post(f"/api/v1/callbacks/{survey_id}", {"reached": False})
        if not reply.ok:
            return _back(error=reply.message)
        again = "，稍后将再次列入待回访" if reply.body["again"] else "，已不再列入待回访（短信回访仍有效）"
        return _back(done=f"已记录未接通（第{reply.body['attempts']}次）{again}")
    rating, solved = text(form, "rating"), text(form, "solved")
    body = {
        "reached": True,
        "rating": int(rating) if rating in ("1", "2", "3") else None,
        "solved": {"yes": True, "no": False}.get(solved),
        "note": text(form, "note"),
    }
    reply = await client.post(f"/api/v1/callbacks/{survey_id}", body)
    if reply.ok:
        answer = RATING_NAMES.get(reply.body["rating"], "")
        return _back(done=f"工单{reply.body['ticket_no']}回访已记录：{answer}")
    if reply.status != 422:  # it ended meanwhile (the resident's SMS came first): back to the list
        return _back(error=reply.message)
    # Something left out: the call page again, with what was chosen and why it was not taken.
    held = await client.post(f"/api/v1/callbacks/{survey_id}/call")
    if not held.ok:
        return _back(error=held.message)
    # Its reason goes under the question left unanswered (`field`), as the form's script puts it.
    return await _call_page(
        request, s, held.body, 422, values=dict(form), error=reply.message, error_field=reply.field
    )
