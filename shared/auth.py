"""Bearer tokens for hotline operators, departments, the dispatch desk (admin) and the SMS provider's
gateway. Stored hashed in Redis.

  auth:token:{sha256(token)} -> JSON {"role": "operator"|"department"|"admin"|"sms_gateway",
                                      "department": id|null, "operator": id|null}

`appeals token --operator ID` / `--department DEPT_ID` / `--admin` / `--sms-gateway` mint one and
print it once. An operator token registers appeals (hotline, preview, suggestion-box uploads) and
reads nothing else: the preview shows a caller's open appeals, which is no one else's business. The
gateway token can only push incoming SMS and delivery receipts: a forged "1" from a resident's number
would close a ticket as satisfied, so those callbacks are not open, yet the provider needs no more.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

Role = Literal["operator", "department", "admin", "sms_gateway"]


@dataclass(frozen=True)
class Principal:
    role: Role
    department: str | None = None  # the department a department token acts for
    operator: str | None = None  # the hotline operator an operator token belongs to
    token_id: str = ""  # names the token (a prefix of its hash) in listings, logs and key scopes

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str:
        """Whose request this is, for what must not be shared between callers (idempotency keys):
        the operator or department, else the token itself."""
        return f"{self.role}:{self.operator or self.department or self.token_id}"


def _key(token: str) -> str:
    return "auth:token:" + hashlib.sha256(token.encode()).hexdigest()


async def issue_token(
    redis: Redis, role: Role, department: str | None = None, operator: str | None = None
) -> str:
    token = secrets.token_urlsafe(32)
    await redis.set(_key(token), json.dumps({"role": role, "department": department, "operator": operator}))
    return token


async def revoke_token(redis: Redis, token: str) -> bool:
    return bool(await redis.delete(_key(token)))


async def lookup(redis: Redis, token: str) -> Principal | None:
    raw = await redis.get(_key(token))
    if raw is None:
        return None
    data = json.loads(raw)
    return Principal(
        role=data["role"],
        department=data.get("department"),
        operator=data.get("operator"),
        token_id=_key(token).rsplit(":", 1)[1][:16],
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


async def require_admin(principal: Principal = Depends(current_principal)) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status_code=403, detail="只有派单中心（管理员）可以执行此操作")
    return principal


async def require_intake_staff(principal: Principal = Depends(current_principal)) -> Principal:
    """Registering appeals by hand: hotline operators, and the dispatch desk."""
    if principal.role not in ("operator", "admin"):
        raise HTTPException(status_code=403, detail="只有话务员（或派单中心）可以登记诉求")
    return principal


async def require_sms_gateway(principal: Principal = Depends(current_principal)) -> Principal:
    """The SMS provider's callbacks (incoming messages, receipts); the dispatch desk may use them too."""
    if principal.role not in ("sms_gateway", "admin"):
        raise HTTPException(status_code=403, detail="只有短信服务商网关（或派单中心）可以推送短信和回执")
    return principal
