"""Bearer tokens for hotline operators, grid workers, departments, the dispatch desk (admin) and the
SMS provider's gateway. Stored hashed in Redis, with an expiry.

  auth:token:{sha256(token)} -> JSON {"role": "operator"|"grid_worker"|"department"|"admin"|"sms_gateway",
                                      "department": id|null, "operator": id|null, "grid": id|null,
                                      "created_at": unix s, "expires_at": unix s|null}

`appeals token --operator ID` / `--grid-worker ID --grid GRID_ID` / `--department DEPT_ID` /
`--admin` / `--sms-gateway` mint one and
print it once (it expires after TOKEN_TTL_DAYS, or `--days`); `appeals token --list` shows every
live token by its id (a prefix of the hash), `appeals token --revoke ID` ends one. An operator
token registers appeals (hotline, preview, suggestion-box uploads) and reads nothing else: the
preview shows a caller's open appeals and history, which are no one else's business. A grid
worker's token reports what its worker finds on patrol in its one grid, and reads that grid's
tickets. The gateway token can only push incoming SMS and delivery receipts: a forged "1" from a
resident's number would close a ticket as satisfied, so those callbacks are not open, yet the
provider needs no more; and a resident's SMS comes only through it, never through a staff token.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from shared.settings import get_settings

Role = Literal["operator", "grid_worker", "department", "admin", "sms_gateway"]


@dataclass(frozen=True)
class Principal:
    role: Role
    department: str | None = None  # the department a department token acts for
    operator: str | None = None  # the person an operator's or a grid worker's token belongs to (工号)
    grid: str | None = None  # the grid a grid worker patrols
    token_id: str = ""  # names the token (a prefix of its hash) in listings, logs and key scopes

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_read(self, departments: Iterable[str | None], grid: str | None) -> bool:
        """Whose tickets this credential reads: the desk every one; a department those it leads or
        co-handles; a grid worker those in its grid (it reports there and checks on them)."""
        if self.is_admin:
            return True
        if self.role == "grid_worker":
            return self.grid is not None and grid == self.grid
        return self.role == "department" and self.department is not None and self.department in departments

    def summoned(self, departments: Iterable[str]) -> bool:
        """Whether this credential's department is among those summoned to a joint meeting (吹哨报到):
        it reads the meeting and the meeting's tickets, to come knowing the case, and acts on a
        ticket only if it handles it (`may_read`)."""
        return self.role == "department" and self.department is not None and self.department in departments

    @property
    def scope(self) -> str:
        """Whose request this is, for what must not be shared between callers (idempotency keys):
        the operator, grid worker or department, else the token itself."""
        return f"{self.role}:{self.operator or self.department or self.token_id}"


def _key(token: str) -> str:
    return KEY_PREFIX + _digest(token)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


KEY_PREFIX = "auth:token:"
TOKEN_ID_LENGTH = 16  # the digest's prefix that names a token in listings and `--revoke`


@dataclass(frozen=True)
class TokenInfo:
    """A token as `appeals token --list` shows it: never the token itself, which is not stored."""

    token_id: str
    role: Role
    department: str | None
    operator: str | None
    grid: str | None
    created_at: int | None  # unix seconds; None for tokens minted before these were recorded
    expires_at: int | None  # None: never


async def issue_token(
    redis: Redis,
    role: Role,
    department: str | None = None,
    operator: str | None = None,
    *,
    grid: str | None = None,
    ttl_seconds: int | None = None,
) -> str:
    """A new token, printed once and stored hashed. It expires after `ttl_seconds` (by default
    TOKEN_TTL_DAYS; 0: never), so a token that leaked or was forgotten stops working by itself."""
    if ttl_seconds is None:
        ttl_seconds = get_settings().token_ttl_days * 86400
    token = secrets.token_urlsafe(32)
    now = int(time.time())
    record = {
        "role": role,
        "department": department,
        "operator": operator,
        "grid": grid,
        "created_at": now,
        "expires_at": now + ttl_seconds if ttl_seconds else None,
    }
    await redis.set(_key(token), json.dumps(record), ex=ttl_seconds or None)
    return token


async def list_tokens(redis: Redis) -> list[TokenInfo]:
    """Every token that still works, oldest first."""
    keys = [k async for k in redis.scan_iter(match=KEY_PREFIX + "*", count=1000)]
    raws = await redis.mget(keys) if keys else []
    out = []
    for key, raw in zip(keys, raws, strict=True):
        if raw is None:
            continue  # expired between the scan and the read
        data = json.loads(raw)
        digest = (key.decode() if isinstance(key, bytes) else key).removeprefix(KEY_PREFIX)
        out.append(
            TokenInfo(
                token_id=digest[:TOKEN_ID_LENGTH],
                role=data["role"],
                department=data.get("department"),
                operator=data.get("operator"),
                grid=data.get("grid"),
                created_at=data.get("created_at"),
                expires_at=data.get("expires_at"),
            )
        )
    return sorted(out, key=lambda t: (t.created_at or 0, t.token_id))


async def revoke_token(redis: Redis, token_or_id: str) -> bool:
    """Revoke a token, given itself or its id from `list_tokens`. False: no such token."""
    if await redis.delete(_key(token_or_id)):
        return True
    if len(token_or_id) < TOKEN_ID_LENGTH or not all(c in "0123456789abcdef" for c in token_or_id):
        return False
    matches = [k async for k in redis.scan_iter(match=f"{KEY_PREFIX}{token_or_id}*", count=1000)]
    return len(matches) == 1 and bool(await redis.delete(matches[0]))


async def lookup(redis: Redis, token: str) -> Principal | None:
    raw = await redis.get(_key(token))
    if raw is None:
        return None
    data = json.loads(raw)
    expires_at = data.get("expires_at")
    if expires_at is not None and expires_at <= time.time():
        return None  # Redis drops it at the same moment; this covers a copy restored without its TTL
    return Principal(
        role=data["role"],
        department=data.get("department"),
        operator=data.get("operator"),
        grid=data.get("grid"),
        token_id=_digest(token)[:TOKEN_ID_LENGTH],
    )


_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Principal:
    if credentials is None:
        raise HTTPException(
            status_code=401,
            detail="需要登录凭证：请在请求头加 Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = await lookup(request.app.state.redis, credentials.credentials)
    if principal is None:
        raise HTTPException(
            status_code=401, detail="登录凭证无效或已吊销", headers={"WWW-Authenticate": "Bearer"}
        )
    return principal


def require_role(*roles: Role, refusal: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, when its token's role is one of `roles`; else 403 with `refusal`,
    which says in Chinese who may do it."""

    async def dependency(principal: Principal = Depends(current_principal)) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status_code=403, detail=refusal)
        return principal

    return dependency


require_admin = require_role("admin", refusal="只有派单中心（管理员）可以执行此操作")
# Registering appeals by hand: hotline operators, grid workers (what they find on patrol), and the
# dispatch desk.
require_intake_staff = require_role(
    "operator", "grid_worker", "admin", refusal="只有话务员、网格员（或派单中心）可以登记诉求"
)
# The SMS provider's delivery receipts; the dispatch desk may use them too.
require_sms_gateway = require_role(
    "sms_gateway", "admin", refusal="只有短信服务商网关（或派单中心）可以推送短信和回执"
)
# A resident's own words by SMS (a survey answer, a new appeal): only the provider's gateway relays
# them. Not the dispatch desk: staff answering a survey in a resident's name would close the ticket
# as the resident's verdict.
require_resident_sms = require_role(
    "sms_gateway", refusal="居民短信只能由短信服务商网关推送，其他凭证不能代居民回复"
)
