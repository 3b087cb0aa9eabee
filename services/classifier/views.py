"""The review queue API (dispatch desk, admin token): appeals the classifier was unsure about, and
a reviewer's correction, which is stored as a labelled example and published as a classification."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from services.classifier import service
from shared.auth import Principal, require_admin
from shared.bus import publish
from shared.events import AppealClassified, CategoryScore, GridMatch, now_utc
from shared.feedback import record_example
from shared.http import api_error
from shared.tickets import RECEIVED, REVIEW

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
async def list_review(request: Request, _: Principal = Depends(require_admin)) -> dict:
    """Appeals waiting for a person, oldest first. Tickets settled another way (an operator assigned
    them at the dispatch desk) leave the queue."""
    state = request.app.state
    waiting = await service.waiting_for_review(state.redis)
    tickets = await state.store.get_many([r.ticket_no for r in waiting])
    settled = [
        r.ticket_no
        for r, t in zip(waiting, tickets, strict=False)
        if t is not None and t.status not in (RECEIVED, REVIEW)
    ]
    await service.done_reviewing(state.redis, settled)
    items = [_item(r) for r in waiting if r.ticket_no not in settled]
    return {"count": len(items), "items": items}


@router.post("/{ticket_no}")
async def correct(
    ticket_no: str, correction: Correction, request: Request, principal: Principal = Depends(require_admin)
):
    state = request.app.state
    city = state.city
    original = await service.in_review(state.redis, ticket_no)
    if original is None:
        return api_error(404, "not_in_review", f"工单{ticket_no}不在待复核队列中（可能已处理）")
    if correction.category not in city.leaf_categories:
        return api_error(
            422,
            "invalid_category",
            f"分类{correction.category!r}不是诉求分类目录中的末级分类，请选择末级分类编号",
        )
    if correction.grid is not None and correction.grid not in city.grids:
        return api_error(422, "invalid_grid", f"网格{correction.grid!r}不存在，请检查网格编号")
    if correction.grid is None and original.grid.grid is None:
        return api_error(422, "grid_required", "分类器没有找到网格，请同时指定网格编号（grid）")
    reviewer = principal.department or principal.role
    if correction.grid is not None:
        info = city.grids[correction.grid]
        grid = GridMatch(
            grid=correction.grid,
            community=info.community_id,
            street=info.street_id,
            method="reviewer",
            confidence=1.0,
            evidence="人工复核",
        )
    else:
        grid = original.grid
    # The same correction posted twice is the same fact (same id): consumers drop the copy.
    event_id = uuid.uuid5(
        uuid.NAMESPACE_URL, f"{original.event_id}/review/{correction.category}/{grid.grid}"
    ).hex
    corrected = original.model_copy(
        update={
            "event_id": event_id,
            "caused_by": original.event_id,
            "occurred_at": now_utc(),
            "category": correction.category,
            "category_names": city.category_names(correction.category),
            "confidence": 1.0,
            "top": (CategoryScore(category=correction.category, probability=1.0),),
            "grid": grid,
            "needs_review": False,
            "reviewed_by": reviewer,
        }
    )
    corrected = AppealClassified.model_validate(corrected.model_dump())  # re-validated, still frozen
    example = await record_example(
        state.redis,
        ticket_no=ticket_no,
        title=original.appeal.title,
        text=original.appeal.text,
        label=correction.category,
        grid=grid.grid,
        source="review",
        by=reviewer,
    )
    await publish(state.publisher, [corrected])
    await service.done_reviewing(state.redis, [ticket_no])
    return {
        "ticket_no": ticket_no,
        "event_id": event_id,
        "category": correction.category,
        "category_names": list(corrected.category_names),
        "grid": grid.grid,
        "example": example,
    }
