"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie; the bearer token it stands
for, the role and a CSRF token stay server-side in Redis.

  console:session:{sha256(id)} -> JSON {"token", "role", "department", "operator", "csrf"}

Signing in checks the pasted token against `shared.auth` (the same tokens the desk's access page
and `appeals token` mint), and so does every request after it: a revoked token ends its sessions at
the next request, and an open live stream within seconds (`alive`). Forms carry the session's CSRF token;
the sign-in form, which has no session yet, uses a double-submit cookie."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.access import ROLE_NAMES as ALL_ROLE_NAMES
from shared.auth import Principal, lookup

COOKIE = "appeals_console"
LOGIN_CSRF_COOKIE = "appeals_console_csrf"
TTL_SECONDS = 12 * 3600  # one working shift; each request extends it
# The roles that sign in here: people (the SMS gateway's token is a machine's).
ROLE_NAMES = {role: name for role, name in ALL_ROLE_NAMES.items() if role != "sms_gateway"}


@dataclass(frozen=True)
class Session:
    token: str
    principal: Principal
    csrf: str


def _key(session_id: str) -> str:
    return "console:session:" + hashlib.sha256(session_id.encode()).hexdigest()


async def sign_in(redis: Redis, token: str) -> tuple[str, Principal] | None:
    """A new session for a valid staff token; None when the token is unknown or cannot sign in."""
    principal = await lookup(redis, token)
    if principal is None or principal.role not in ROLE_NAMES:
        return None
    session_id = secrets.token_urlsafe(32)
    data = {
        "token": token,
        "role": principal.role,
        "department": principal.department,
        "operator": principal.operator,
        "csrf": secrets.token_urlsafe(24),
    }
    await redis.set(_key(session_id), json.dumps(data), ex=TTL_SECONDS)
    return session_id, principal


async def load(redis: Redis, session_id: str | None) -> Session | None:
    """The live session, or None (no cookie, expired, or its token was revoked)."""
    if not session_id:
        return None
    raw = await redis.get(_key(session_id))
    if raw is None:
        return None
    data = json.loads(raw)
    principal = await lookup(redis, data["token"])
    if principal is None:
        await redis.delete(_key(session_id))
        return None
    await redis.expire(_key(session_id), TTL_SECONDS)
    return Session(token=data["token"], principal=principal, csrf=data["csrf"])


async def alive(redis: Redis, session_id: str | None, s: Session) -> bool:
    """Whether a session still stands (not signed out, expired, or its token revoked), for what
    outlives a request: a live stream asks this now and then and ends when it no longer does.
    Unlike `load`, it does not extend the session: a page left open is not a person at work."""
    return (
        bool(session_id)
        and bool(await redis.exists(_key(session_id or "")))
        and (await lookup(redis, s.token) is not None)
    )


async def sign_out(redis: Redis, session_id: str | None) -> None:
    if session_id:
        await redis.delete(_key(session_id))


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def new_csrf() -> str:
    return secrets.token_urlsafe(24)
