"""The review queue API (dispatch desk, admin token): appeals the classifier was unsure about, and
a reviewer's correction (checked in `review.py`), which is stored as a labelled example and
published as a classification."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from services.classifier import review, service
from shared.auth import Principal, require_admin
from shared.bus import publish
from shared.errors import DomainError
from shared.events import AppealClassified, now_utc
from shared.feedback import record_example
from shared.http import domain_error

router = APIRouter(prefix="/api/v1/review", tags=["review"])


class Correction(BaseModel):
    category: str = Field(description="the leaf category id the appeal belongs to")
    grid: str | None = Field(None, description="the grid id, when the classifier's grid was wrong or missing")


def _item(r: AppealClassified) -> dict:
    return {
        "ticket_no": r.ticket_no,
        "title": r.appeal.title,
        "text": r.appeal.text,
        "address": r.appeal.address,
        "received_at": r.appeal.received_at.isoformat(),
        "category": r.category,
        "category_names": list(r.category_names),
        "confidence": r.confidence,
        "top": [s.model_dump() for s in r.top],
        "grid": r.grid.model_dump(),
        "appeal_type": r.appeal_type,
        "urgent": r.urgent,
        "model_version": r.model_version,
    }


@router.get("")
async def list_review(
    request: Request,
    _: Principal = Depends(require_admin),
    page: int | None = Query(None, ge=1, description="a page of the queue (else every appeal in it)"),
    size: int = Query(50, ge=1, le=200, description="appeals a page, with `page`"),
) -> dict:
    """Appeals waiting for a person, oldest first: every one, or with `page` a page of `size`.
    `count`: how many wait. Tickets settled another way (an operator assigned them at the dispatch
    desk) leave the queue."""
    count, waiting = await service.review_page(request.app.state.redis, page, size)
    paged = {"page": page, "size": size} if page is not None else {}
    return {"count": count, **paged, "items": [_item(r) for r in waiting]}


@router.post("/{ticket_no}")
async def correct(
    ticket_no: str, correction: Correction, request: Request, principal: Principal = Depends(require_admin)
):
    state = request.app.state
    original = await service.in_review(state.redis, ticket_no)
    reviewer = principal.department or principal.role
    try:
        if original is None:
            raise review.not_in_review(ticket_no)
        fixed = review.corrected(
            state.city,
            original,
            category=correction.category,
            grid=correction.grid,
            reviewer=reviewer,
            now=now_utc(),
        )
    except DomainError as e:
        return domain_error(e)
    example = await record_example(
        state.redis,
        ticket_no=ticket_no,
        title=original.appeal.title,
        text=original.appeal.text,
        label=fixed.category,
        grid=fixed.grid.grid,
        source="review",
        by=reviewer,
    )
    await publish(state.publisher, [fixed])
    await service.done_reviewing(state.redis, [ticket_no])
    return {
        "ticket_no": ticket_no,
        "event_id": fixed.event_id,
        "category": fixed.category,
        "category_names": list(fixed.category_names),
        "grid": fixed.grid.grid,
        "example": example,
    }
