"""The knowledge base's entries, kept in the record (知识库管理):

    GET  /api/v1/knowledge/entries?q=&department=&category=&due=&retired=&page=&size=
                                                      operators, departments, desk
    POST /api/v1/knowledge/entries                    add (the desk)
    GET  /api/v1/knowledge/entries/{id}               one entry with its revisions (who, when, what)
    PUT  /api/v1/knowledge/entries/{id}               edit (the desk: any; a department: its own,
                                                      which counts as its review)
    POST /api/v1/knowledge/entries/{id}/confirm       确认有效 (the owning department, or the desk)
    POST /api/v1/knowledge/entries/{id}/retire        停用, with a reason (the desk)

The operators' search (`GET /api/v1/knowledge?q=&category=`, intake's) suggests the entries not retired. With
PostgreSQL down these answer 503 with Retry-After, as the ticket search does; operators are still
suggested the entries loaded last.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from services.records.knowledge import PAGE_SIZE_MAX, KnowledgeService
from services.records.views import UNAVAILABLE, unavailable
from shared.auth import Principal, require_role

router = APIRouter(prefix="/api/v1/knowledge/entries", tags=["knowledge"])

require_reader = require_role(
    "operator", "department", "admin", refusal="只有话务员、承办单位和派单中心可以查看知识库"
)
require_keeper = require_role(
    "department", "admin", refusal="只有负责答复的单位和派单中心可以修改、确认知识库条目"
)
require_desk = require_role("admin", refusal="只有派单中心（管理员）可以新增或停用知识库条目")


class EntryIn(BaseModel):
    """An entry's fields; in an edit, a field left out keeps its value."""

    question: str | None = Field(None, examples=["社保卡丢了怎么补办？"], description="as residents ask it")
    answer: str | None = Field(None, description="what the operator may say")
    category: str | None = Field(None, examples=["labor.social_insurance"])
    keywords: list[str] | str | None = Field(None, description="residents' other words for it (10 at most)")
    department: str | None = Field(None, examples=["hrss"], description="who owns the answer")


class NewEntry(EntryIn):
    id: str | None = Field(None, description="optional: lower-case letters, digits and dashes")


class Retirement(BaseModel):
    reason: str = Field("", description="why (goes into the entry's history)")


async def knowledge_of(request: Request) -> KnowledgeService:
    """The API's knowledge service (services/api.py makes it, with the record's pool, the first time
    the record answers)."""
    service: KnowledgeService = await request.app.state.knowledge_service_of()
    return service


def _fields(body: BaseModel) -> dict[str, Any]:
    return body.model_dump(exclude_unset=True)


@router.get("")
async def list_entries(
    request: Request,
    q: str = Query("", max_length=100, description="words in the question, the answer or the keywords"),
    department: str | None = Query(None, max_length=64, description="the owning department"),
    category: str | None = Query(
        None, max_length=100, description="a category id; a branch includes the categories under it"
    ),
    due: bool = Query(False, description="only those due for a review (待复核)"),
    retired: bool = Query(False, description="the retired ones instead (停用)"),
    page: int = Query(1, ge=1, le=10_000),
    size: int = Query(20, ge=1, le=PAGE_SIZE_MAX),
    principal: Principal = Depends(require_reader),
):
    """Entries, those longest without a review first; each says what the caller may do with it."""
    try:
        service = await knowledge_of(request)
        return await service.search(
            principal,
            q=q,
            department=department,
            category=category,
            due=due,
            retired=retired,
            page=page,
            size=size,
        )
    except UNAVAILABLE:
        return unavailable()


@router.post("", status_code=201)
async def add_entry(body: NewEntry, request: Request, principal: Principal = Depends(require_desk)):
    """A new entry (the desk), confirmed as of today; operators are offered it within seconds."""
    try:
        return await (await knowledge_of(request)).add(_fields(body), principal)
    except UNAVAILABLE:
        return unavailable()


@router.get("/{entry_id}")
async def get_entry(entry_id: str, request: Request, principal: Principal = Depends(require_reader)):
    """One entry, retired or not, with its revisions, newest first."""
    try:
        return await (await knowledge_of(request)).get(entry_id, principal)
    except UNAVAILABLE:
        return unavailable()


@router.put("/{entry_id}")
async def edit_entry(
    entry_id: str, body: EntryIn, request: Request, principal: Principal = Depends(require_keeper)
):
    """Edit an entry: the desk any, a department its own (its edit sets `reviewed` to today)."""
    try:
        return await (await knowledge_of(request)).edit(entry_id, _fields(body), principal)
    except UNAVAILABLE:
        return unavailable()


@router.post("/{entry_id}/confirm")
async def confirm_entry(entry_id: str, request: Request, principal: Principal = Depends(require_keeper)):
    """确认有效: the answer is still right; `reviewed` becomes today."""
    try:
        return await (await knowledge_of(request)).confirm(entry_id, principal)
    except UNAVAILABLE:
        return unavailable()


@router.post("/{entry_id}/retire")
async def retire_entry(
    entry_id: str, body: Retirement, request: Request, principal: Principal = Depends(require_desk)
):
    """停用: operators are no longer offered it; it stays, with its history, and is not seeded again."""
    try:
        return await (await knowledge_of(request)).retire(entry_id, body.reason, principal)
    except UNAVAILABLE:
        return unavailable()
