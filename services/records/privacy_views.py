"""Residents' erasure requests, handled by the dispatch desk (admin token only):

    POST /api/v1/records/privacy/erasures/preview   {"phone" | "ticket_no", "reason"?}: the tickets
                                                    it would reach, and the resident (masked); the
                                                    reason as the audit would keep it (masked)
    POST /api/v1/records/privacy/erasures           {"phone" | "ticket_no", "reason"}: erase, with
                                                    an audit entry
    GET  /api/v1/records/privacy/audit?page=&size=  the audit entries, newest first

The resident is found by the phone they give or by the number of one of their tickets (exactly
one: `erasure.checked_lookup`); by number, the ticket's caller is the resident, whatever channel
it came by. The phone or openid is never sent back (a preview shows it masked, as staff see it
everywhere else). With PostgreSQL down these answer 503 with Retry-After, as the search does.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from services.records.erasure import Erasures, checked_lookup, checked_reason
from services.records.retention import Retention
from services.records.views import UNAVAILABLE, records_pool, unavailable
from shared.auth import Principal, require_admin

router = APIRouter(prefix="/api/v1/records/privacy", tags=["records"])


class ErasureRequest(BaseModel):
    phone: str = Field(
        "", description="the resident's phone, as they give it (+86, spaces and dashes allowed)"
    )
    ticket_no: str = Field(
        "", description="or the number of one of the resident's tickets: its caller is the resident"
    )
    reason: str = Field("", description="why: goes into the audit entry")


class PreviewRequest(BaseModel):
    phone: str = Field("", description="the resident's phone, as they give it")
    ticket_no: str = Field("", description="or the number of one of the resident's tickets")
    reason: str | None = Field(None, description="checked as the erasure would check it, when given")


async def erasures_of(request: Request) -> Erasures:
    """The API's erasure service, made on first use (the API starts without the record)."""
    state = request.app.state
    pool = await records_pool(request)
    if getattr(state, "privacy_erasures", None) is None:
        state.privacy_erasures = Erasures(pool, Retention(pool, state.store, state.settings))
    return state.privacy_erasures


@router.post("/erasures/preview")
async def preview_erasure(body: PreviewRequest, request: Request, _: Principal = Depends(require_admin)):
    """What erasing this resident's personal data would reach; changes nothing. With a reason, the
    reason as the erasure would write it into the audit (`reason`: the phone and ID numbers typed
    into it masked, `checked_reason`), and whether any was (`reason_masked`), so the desk confirms
    what will be kept, not what it typed."""
    lookup = checked_lookup(body.phone, body.ticket_no)
    kept = checked_reason(body.reason) if body.reason is not None else None
    try:
        erasures = await erasures_of(request)
        found = await erasures.preview(await erasures.subject(lookup))
    except UNAVAILABLE:
        return unavailable()
    if body.reason is None or kept is None:
        return found
    # Its spaces run together (as checked_reason does) are no masking: only a number hidden is said.
    return {**found, "reason": kept, "reason_masked": kept != " ".join(body.reason.split())}


@router.post("/erasures")
async def erase(body: ErasureRequest, request: Request, principal: Principal = Depends(require_admin)):
    """Every ticket of the resident, in the record and in Redis, loses its personal data; the
    contact record goes; the audit entry names the token that did it (`appeals token --list`) and
    how the resident was found."""
    lookup = checked_lookup(body.phone, body.ticket_no)
    reason = checked_reason(body.reason)
    try:
        erasures = await erasures_of(request)
        return await erasures.erase(await erasures.subject(lookup), principal.scope, reason)
    except UNAVAILABLE:
        return unavailable()


@router.get("/audit")
async def audit(
    request: Request,
    page: int = Query(1, ge=1, le=100_000),  # bounded: the offset it makes must fit the database's
    size: int = Query(20, ge=1, le=200),
    _: Principal = Depends(require_admin),
):
    try:
        return await (await erasures_of(request)).audit(page, size)
    except UNAVAILABLE:
        return unavailable()
