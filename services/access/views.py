"""Staff credentials, managed by the dispatch desk (admin token only):

    GET    /api/v1/tokens?role=&q=&page=&size=   the live tokens, newest first: id, role, whom it acts
                                                 for, note, created, expires, last used; never a token
    POST   /api/v1/tokens                        {"role", "operator"?, "department"?, "grid"?, "days"?,
                                                 "note"?}: a new token, in the answer once (201)
    DELETE /api/v1/tokens/{token_id}             revoke it: the API refuses it at once, and the console
                                                 sessions signed in with it are deleted with it
    GET    /api/v1/tokens/audit?limit=           the latest issues and revocations, newest first

Every issue and revocation is audited with the token's own write (shared.auth): who did it (the
desk's token id and its note), when, the role and subject, never the token. `appeals token` is the
same from a shell, its grants checked by the same rules (shared.access). Only Redis is needed:
access can be managed, and a leaked token revoked, while PostgreSQL is away.
"""

from __future__ import annotations

import hashlib
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from shared.access import ROLE_NAMES, checked_grant, checked_role, subject_words
from shared.auth import (
    AuditEntry,
    Principal,
    TokenInfo,
    audit_entries,
    issue_grant,
    list_tokens,
    require_admin,
    revoke_token,
)
from shared.city import City
from shared.errors import DomainError

router = APIRouter(prefix="/api/v1/tokens", tags=["access"])
PAGE_SIZE_MAX = 200
AUDIT_MAX = 200
ISSUED_SECONDS = 86400  # how long an Idempotency-Key of an issue is remembered


class GrantIn(BaseModel):
    role: str = Field(..., max_length=20, examples=["operator"], description=" | ".join(ROLE_NAMES))
    operator: str | None = Field(
        None, max_length=64, examples=["0231"], description="the staff id (工号): operators, grid workers"
    )
    department: str | None = Field(None, max_length=64, examples=["water"], description="departments")
    grid: str | None = Field(None, max_length=64, examples=["s01c01g02"], description="grid workers")
    days: int | None = Field(None, description="days until it expires (default TOKEN_TTL_DAYS; 0: never)")
    note: str | None = Field(None, max_length=200, examples=["张三"], description="whom it is for")


def _iso(ts: int | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def token_json(info: TokenInfo) -> dict[str, Any]:
    return {
        "token_id": info.token_id,
        "role": info.role,
        "operator": info.operator,
        "department": info.department,
        "grid": info.grid,
        "note": info.note,
        "created_at": _iso(info.created_at),
        "expires_at": _iso(info.expires_at),
        "last_used_at": _iso(info.last_used_at),
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": _iso(entry.at),
        "action": entry.action,
        "actor": entry.actor,
        "actor_note": entry.actor_note,
        "token_id": entry.token_id,
        "role": entry.role,
        "operator": entry.operator,
        "department": entry.department,
        "grid": entry.grid,
        "note": entry.note,
        "expires_at": _iso(entry.expires_at),
    }


def matches(info: TokenInfo, words: str, city: City) -> bool:
    """Whether the search words are in the token's id, subject (ids or names) or note."""
    dept = city.department_by_id.get(info.department or "")
    grid = city.grids.get(info.grid or "")
    said = [
        info.token_id,
        info.operator or "",
        info.department or "",
        dept.name if dept else "",
        info.grid or "",
        f"{grid.community_name}{grid.grid.name}" if grid else "",
        info.note,
    ]
    return words.casefold() in " ".join(said).casefold()


@router.get("")
async def list_access(
    request: Request,
    role: str = Query("", max_length=20, description="only this role's tokens"),
    q: str = Query("", max_length=50, description="words in the id, the staff id, department, grid or note"),
    page: int = Query(1, ge=1, le=10_000),
    size: int = Query(50, ge=1, le=PAGE_SIZE_MAX),
    _: Principal = Depends(require_admin),
):
    tokens = await list_tokens(request.app.state.redis)
    if role:
        wanted = checked_role(role)
        tokens = [t for t in tokens if t.role == wanted]
    if q.strip():
        tokens = [t for t in tokens if matches(t, q.strip(), request.app.state.city)]
    tokens.reverse()  # newest first: the desk looks for the one it just issued, or a recent one
    start = (page - 1) * size
    return {
        "total": len(tokens),
        "page": page,
        "size": size,
        "tokens": [token_json(t) for t in tokens[start : start + size]],
    }


@router.post("", status_code=201)
async def issue_access(
    body: GrantIn,
    request: Request,
    principal: Principal = Depends(require_admin),
    idempotency_key: str | None = Header(None, max_length=200),
):
    """A new token for a person (or the SMS provider), shown in this answer only: store it nowhere
    else. The same `Idempotency-Key` (per desk token) issues once; sent again, 409, since the token
    cannot be shown a second time."""
    state = request.app.state
    grant = checked_grant(
        state.city,
        role=body.role,
        operator=body.operator,
        department=body.department,
        grid=body.grid,
        days=body.days,
        note=body.note,
        default_days=state.settings.token_ttl_days,
    )
    redis = state.redis
    marker = None
    if idempotency_key:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
        marker = f"auth:issued:{principal.token_id}:{digest}"
        if not await redis.set(marker, "", nx=True, ex=ISSUED_SECONDS):
            earlier = await redis.get(marker)
            if not earlier:
                raise DomainError("issuing", "这次签发正在处理，请勿重复提交；稍后刷新列表查看。")
            raise DomainError(
                "already_issued",
                f"这次签发已经完成（凭证编号 {earlier.decode()}），凭证只显示一次、不能再次显示。"
                "如果没有记下，请在列表中吊销它，再重新签发。",
            )
    try:
        token, info = await issue_grant(redis, grant, actor=principal.scope, actor_note=principal.note)
    except Exception:
        if marker is not None:  # nothing was issued: the same request may be sent again
            with suppress(Exception):
                await redis.delete(marker)
        raise
    if marker is not None:
        await redis.set(marker, info.token_id, ex=ISSUED_SECONDS)
    who = subject_words(info.role, info.operator, info.department, info.grid, state.city)
    return {
        "token": token,
        **token_json(info),
        "message": f"已为{who}签发凭证 {info.token_id}。凭证只显示这一次，系统只保存其摘要，请立即交给本人。",
    }


@router.get("/audit")
async def access_audit(
    request: Request,
    limit: int = Query(20, ge=1, le=AUDIT_MAX),
    _: Principal = Depends(require_admin),
):
    return {"entries": [audit_json(e) for e in await audit_entries(request.app.state.redis, limit)]}


@router.delete("/{token_id}")
async def revoke_access(token_id: str, request: Request, principal: Principal = Depends(require_admin)):
    """Revoke a token by its id: requests with it are refused from now on (401), and console
    sessions signed in with it go to the sign-in page at their next page or within seconds for a
    live page. The desk's own token is refused here: signing itself out this way would leave the page
    half done; sign in with another desk token first."""
    if token_id == principal.token_id:
        raise DomainError(
            "own_token",
            "这是您当前登录使用的凭证，不能在此吊销：请先签发一个新的派单中心凭证并用它登录，再吊销此凭证。",
            field="token_id",
        )
    state = request.app.state
    info = await revoke_token(state.redis, token_id, actor=principal.scope, actor_note=principal.note)
    if info is None:
        raise DomainError(
            "not_found",
            f"没有编号为 {token_id} 的有效凭证：它可能已过期或已被吊销，请刷新列表。",
            kind="not_found",
            field="token_id",
        )
    who = subject_words(info.role, info.operator, info.department, info.grid, state.city)
    return {
        "revoked": token_json(info),
        "message": f"已吊销{who}的凭证 {info.token_id}，此凭证即刻失效，用它登录的控制台随即退出登录。",
    }
