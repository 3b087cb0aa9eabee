"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie; the bearer token it stands
for, the role and a CSRF token stay server-side in Redis.

  console:session:{sha256(id)} -> JSON {"token", "role", "department", "operator", "csrf"}

and each session's key in its token's set (`shared.auth.sessions_key`), which the token's revocation
deletes with the sessions: they could do nothing more, yet would stay in Redis for up to a shift.

Signing in checks the pasted token against `shared.auth` (the same tokens the desk's access page
and `appeals token` mint), and so does every request after it: a revoked token's sessions are gone
(deleted with it, or refused here for one opened before the sets existed), so a page goes to sign in
at its next request, and an open live stream within seconds (`alive`). Forms carry the session's CSRF token;
the sign-in form, which has no session yet, uses a double-submit cookie."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import WatchError

from shared.access import ROLE_NAMES as ALL_ROLE_NAMES
from shared.auth import Principal, lookup, sessions_key, token_key

COOKIE = "appeals_console"
LOGIN_CSRF_COOKIE = "appeals_console_csrf"
# One working shift; each request extends it. A token's set of sessions gets the same TTL whenever
# one of its sessions does, so it outlives each of them: every expiry is set TTL_SECONDS from now.
TTL_SECONDS = 12 * 3600
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
    """A new session for a valid staff token; None when the token is unknown or cannot sign in.
    The session is written, and added to its token's set, only while the token still stands: a
    revocation between the check and the write would otherwise miss it."""
    session_id = secrets.token_urlsafe(32)
    key = _key(session_id)
    opened = sessions_key(token)
    async with redis.pipeline(transaction=True) as tx:
        while True:
            try:
                await tx.watch(token_key(token))
                principal = await lookup(redis, token)
                if principal is None or principal.role not in ROLE_NAMES:
                    return None
                data = {
                    "token": token,
                    "role": principal.role,
                    "department": principal.department,
                    "operator": principal.operator,
                    "csrf": secrets.token_urlsafe(24),
                }
                tx.multi()
                tx.set(key, json.dumps(data), ex=TTL_SECONDS)
                tx.sadd(opened, key)
                tx.expire(opened, TTL_SECONDS)
                await tx.execute()
                break
            except WatchError:
                continue
    await _forget_ended(redis, opened)
    return session_id, principal


async def _forget_ended(redis: Redis, opened: str) -> None:
    """Drop the sessions that expired or signed out from a token's set: one in daily use keeps its
    set alive, which would otherwise gain a key each sign-in. An ended session never comes back (its
    id is random), so this races with nothing."""
    keys = list(await redis.smembers(opened))
    if len(keys) < 2:
        return
    async with redis.pipeline(transaction=False) as p:
        for k in keys:
            p.exists(k)
        live = await p.execute()
    ended = [k for k, n in zip(keys, live, strict=True) if not n]
    if ended:
        await redis.srem(opened, *ended)


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
    async with redis.pipeline(transaction=False) as p:
        p.expire(_key(session_id), TTL_SECONDS)
        p.expire(sessions_key(data["token"]), TTL_SECONDS)
        await p.execute()
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
    if not session_id:
        return
    key = _key(session_id)
    raw = await redis.get(key)
    async with redis.pipeline(transaction=True) as tx:
        tx.delete(key)
        if raw is not None:
            tx.srem(sessions_key(json.loads(raw)["token"]), key)
        await tx.execute()


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


_CSRF_FORM = re.compile(r"[A-Za-z0-9_-]{32}")


def kept_csrf(cookie: str | None) -> str:
    """The anonymous forms' token: the one the browser holds already, if it is one of ours in form,
    else a new one. Every page view making a new one broke the page open in another tab (a WeChat
    resident who tapped 查看详情 twice): its form then carried a token the cookie no longer had."""
    return cookie if cookie is not None and _CSRF_FORM.fullmatch(cookie) else new_csrf()
