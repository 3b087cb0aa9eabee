"""Bearer tokens for hotline operators, grid workers, departments, the dispatch desk (admin) and the
SMS provider's gateway. Stored hashed in Redis, with an expiry.

  auth:token:{sha256(token)} -> JSON {"role": "operator"|"grid_worker"|"department"|"admin"|"sms_gateway",
                                      "department": id|null, "operator": id|null, "grid": id|null,
                                      "note": who it is for (a name), "created_at": unix s,
                                      "expires_at": unix s|null}
  auth:tokens                -> sorted set {sha256(token): expires_at (inf: never)}: the tokens
                                to list, written and deleted in the token's own transaction
  auth:tokens:indexed        -> present once the tokens stored before that index are in it
  auth:sessions:{sha256(token)} -> set of the console session keys the token opened (12 h, renewed
                                with them), deleted with them when the token is revoked
  auth:used                  -> hash {token id: unix s of its last use, to the minute}
  auth:audit                 -> list of JSON entries, newest first (the last AUDIT_KEEP): who issued
                                or revoked which token, for whom; never the token

The dispatch desk issues, lists and revokes them on the console's access page (/console/access,
through /api/v1/tokens); `appeals token --operator ID` / `--grid-worker ID --grid GRID_ID` /
`--department DEPT_ID` / `--admin` / `--sms-gateway` does the same from a shell and prints it once
(it expires after TOKEN_TTL_DAYS, or `--days`); `appeals token --list` shows every live token by its
id (a prefix of the hash), `appeals token --revoke ID` ends one. Both are audited with the token's
own write. An operator
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
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis
from redis.exceptions import WatchError

from shared.access import Grant, Role
from shared.settings import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    role: Role
    department: str | None = None  # the department a department token acts for
    operator: str | None = None  # the person an operator's or a grid worker's token belongs to (工号)
    grid: str | None = None  # the grid a grid worker patrols
    token_id: str = ""  # names the token (a prefix of its hash) in listings, logs and key scopes
    note: str = ""  # whom the desk issued it to, in its words (an admin token's holder in the audit)

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


def token_key(token: str) -> str:
    """The Redis key of a token's record: what a session's sign-in watches, so that a revocation
    between its check and its write is not missed."""
    return _key(token)


def sessions_key(token: str) -> str:
    """The Redis set of the console sessions a token opened (their keys), which its revocation
    deletes: services.console.session adds each sign-in to it."""
    return SESSIONS_PREFIX + _digest(token)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


KEY_PREFIX = "auth:token:"
# Listing reads this index, not a SCAN of the whole keyspace: on a Redis holding millions of ticket
# keys a SCAN for a few hundred tokens walks all of them.
INDEX_KEY = "auth:tokens"
INDEXED_KEY = "auth:tokens:indexed"
SESSIONS_PREFIX = "auth:sessions:"
TOKEN_ID_LENGTH = 16  # the digest's prefix that names a token in listings and `--revoke`
USED_KEY = "auth:used"
# A token's last use is written at most this often by each process: a request reads its token
# anyway, and one write a minute per token and process adds nothing a request waits for.
USE_RESOLUTION_SECONDS = 60
AUDIT_KEY = "auth:audit"
# About 2.5 MB at most: years of a centre's staff changes. The entries are also logged, for a
# deployment that keeps its logs longer.
AUDIT_KEEP = 10_000


def token_id_of(token: str) -> str:
    return _digest(token)[:TOKEN_ID_LENGTH]


@dataclass(frozen=True)
class TokenInfo:
    """A token as the lists show it: never the token itself, which is not stored."""

    token_id: str
    role: Role
    department: str | None
    operator: str | None
    grid: str | None
    created_at: int | None  # unix seconds; None for tokens minted before these were recorded
    expires_at: int | None  # None: never
    note: str = ""
    last_used_at: int | None = None  # unix seconds, to the minute; None: not used since recorded


def _info(token_id: str, data: dict) -> TokenInfo:
    return TokenInfo(
        token_id=token_id,
        role=data["role"],
        department=data.get("department"),
        operator=data.get("operator"),
        grid=data.get("grid"),
        created_at=data.get("created_at"),
        expires_at=data.get("expires_at"),
        note=data.get("note") or "",
    )


@dataclass(frozen=True)
class AuditEntry:
    """One issue or revocation: when, by whom, which token for whom. Never the token."""

    at: int  # unix seconds
    action: str  # "issue" | "revoke"
    actor: str  # "admin:<token id>" (the desk's token that did it) or "cli:<user>" (appeals token)
    actor_note: str  # the acting token's note (the desk's person), when it has one
    token_id: str
    role: str
    operator: str | None
    department: str | None
    grid: str | None
    note: str
    expires_at: int | None


def _audit_entry(action: str, actor: str, actor_note: str, info: TokenInfo) -> str:
    entry = AuditEntry(
        at=int(time.time()),
        action=action,
        actor=actor,
        actor_note=actor_note,
        token_id=info.token_id,
        role=info.role,
        operator=info.operator,
        department=info.department,
        grid=info.grid,
        note=info.note,
        expires_at=info.expires_at,
    )
    log.info(
        "token %s %s: %s %s by %s",
        info.token_id,
        "issued" if action == "issue" else "revoked",
        info.role,
        info.operator or info.department or "",
        actor,
    )
    return json.dumps(asdict(entry), ensure_ascii=False)


async def issue(
    redis: Redis,
    role: Role,
    *,
    department: str | None = None,
    operator: str | None = None,
    grid: str | None = None,
    ttl_seconds: int | None = None,
    note: str = "",
    actor: str | None = None,
    actor_note: str = "",
) -> tuple[str, TokenInfo]:
    """A new token (to be shown once) and how it is listed; stored hashed. It expires after
    `ttl_seconds` (by default TOKEN_TTL_DAYS; 0: never), so a token that leaked or was forgotten
    stops working by itself. `actor`: who asked (see AuditEntry), audited in the same transaction as
    the token's write; None only where code mints a token for itself (the tests' fixtures)."""
    if ttl_seconds is None:
        ttl_seconds = get_settings().token_ttl_days * 86400
    token = secrets.token_urlsafe(32)
    now = int(time.time())
    expires_at = now + ttl_seconds if ttl_seconds else None
    record = {
        "role": role,
        "department": department,
        "operator": operator,
        "grid": grid,
        "note": note,
        "created_at": now,
        "expires_at": expires_at,
    }
    info = _info(token_id_of(token), record)
    async with redis.pipeline(transaction=True) as tx:
        tx.set(_key(token), json.dumps(record, ensure_ascii=False), ex=ttl_seconds or None)
        tx.zadd(INDEX_KEY, {_digest(token): _expiry_score(expires_at)})
        # The index stays as small as the live tokens even where no one lists them.
        tx.zremrangebyscore(INDEX_KEY, "-inf", now)
        if actor is not None:
            tx.lpush(AUDIT_KEY, _audit_entry("issue", actor, actor_note, info))
            tx.ltrim(AUDIT_KEY, 0, AUDIT_KEEP - 1)
        await tx.execute()
    return token, info


async def issue_grant(
    redis: Redis, grant: Grant, *, actor: str, actor_note: str = ""
) -> tuple[str, TokenInfo]:
    """`issue` what `shared.access.checked_grant` allowed: the API's and the CLI's way to a token."""
    return await issue(
        redis,
        grant.role,
        department=grant.department,
        operator=grant.operator,
        grid=grant.grid,
        ttl_seconds=grant.ttl_seconds,
        note=grant.note,
        actor=actor,
        actor_note=actor_note,
    )


async def issue_token(
    redis: Redis, role: Role, department: str | None = None, operator: str | None = None, **options: Any
) -> str:
    """A new token, printed once and stored hashed: `issue`'s, with its other keywords."""
    token, _ = await issue(redis, role, department=department, operator=operator, **options)
    return token


def _expiry_score(expires_at: int | None) -> float:
    return float(expires_at) if expires_at is not None else float("inf")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _index_older_tokens(redis: Redis) -> None:
    """Put the tokens stored before the index existed into it, once.

    A fallback run by whatever lists or revokes first, rather than a migration at start-up: the
    command line and every API replica reach the tokens without one start-up they share, and a
    Redis restored from a backup taken before the index has neither the index nor the marker, so it
    is filled again the same way. The one SCAN of the keyspace happens once per Redis; afterwards
    this is one EXISTS. Two callers racing here both scan, harmlessly (ZADD of the same members).
    A token written by a process of an older release still running after this (a rolling upgrade)
    is not indexed: restart every API process with the new release, or DEL auth:tokens:indexed to
    scan once more."""
    if await redis.exists(INDEXED_KEY):
        return
    keys = [_text(k) async for k in redis.scan_iter(match=KEY_PREFIX + "*", count=1000)]
    if keys:
        raws = await redis.mget(keys)
        found = {
            key.removeprefix(KEY_PREFIX): _expiry_score(json.loads(raw).get("expires_at"))
            for key, raw in zip(keys, raws, strict=True)
            if raw is not None
        }
        if found:
            # A token revoked between the MGET and this write comes back as an index entry whose
            # record is gone: the next listing drops it, and a revocation finds nothing to end.
            await redis.zadd(INDEX_KEY, found)
    await redis.set(INDEXED_KEY, int(time.time()))
    log.info("token index filled with the %d tokens stored before it", len(keys))


async def list_tokens(redis: Redis) -> list[TokenInfo]:
    """Every token that still works, oldest first, with its last use. Reads the index, pruning it
    of the tokens that expired (or were otherwise dropped) since it was last read."""
    await _index_older_tokens(redis)
    await redis.zremrangebyscore(INDEX_KEY, "-inf", int(time.time()))
    digests = [_text(m) for m in cast("list[bytes]", await redis.zrange(INDEX_KEY, 0, -1))]
    raws = await redis.mget([KEY_PREFIX + d for d in digests]) if digests else []
    used = {_text(k): int(v) for k, v in (await redis.hgetall(USED_KEY)).items()}
    out = []
    gone = []
    for digest, raw in zip(digests, raws, strict=True):
        if raw is None:
            # Its record left before its listed expiry (the key's TTL runs a moment ahead of the
            # score, or Redis evicted it); issue and revoke write a record and its entry together.
            gone.append(digest)
            continue
        token_id = digest[:TOKEN_ID_LENGTH]
        info = _info(token_id, json.loads(raw))
        out.append(TokenInfo(**{**asdict(info), "last_used_at": used.pop(token_id, None)}))
    if gone:
        await redis.zrem(INDEX_KEY, *gone)
    if used:  # the last uses of tokens that expired: nothing will read them again
        await redis.hdel(USED_KEY, *used)
    return sorted(out, key=lambda t: (t.created_at or 0, t.token_id))


async def revoke_token(
    redis: Redis, token_or_id: str, *, actor: str | None = None, actor_note: str = ""
) -> TokenInfo | None:
    """Revoke a token, given itself or its id from `list_tokens`: what it was, or None when there
    is no such token. In one transaction: the token, its index entry and last use, the console
    sessions it opened (they could do nothing more, yet would linger for hours) and, with `actor`,
    the audit entry."""
    digest = _digest(token_or_id)
    if not await redis.exists(KEY_PREFIX + digest):
        if len(token_or_id) < TOKEN_ID_LENGTH or not all(c in "0123456789abcdef" for c in token_or_id):
            return None
        await _index_older_tokens(redis)
        # The id is hex (checked above), so no glob character: the match is a plain prefix.
        matches = [_text(m) async for m, _ in redis.zscan_iter(INDEX_KEY, match=f"{token_or_id}*")]
        if len(matches) != 1:
            return None
        digest = matches[0]
    key = KEY_PREFIX + digest
    sessions = SESSIONS_PREFIX + digest
    token_id = digest[:TOKEN_ID_LENGTH]
    async with redis.pipeline(transaction=True) as tx:
        while True:
            try:
                # What is audited is what was deleted, not what was read before; and a session
                # opened meanwhile is deleted with the others.
                await tx.watch(key, sessions)
                raw = await tx.get(key)
                if raw is None:
                    return None  # expired, or revoked by someone else just now
                info = _info(token_id, json.loads(raw))
                opened = [_text(k) for k in await tx.smembers(sessions)]
                tx.multi()
                tx.delete(key, sessions, *opened)
                tx.zrem(INDEX_KEY, digest)
                tx.hdel(USED_KEY, token_id)
                if actor is not None:
                    tx.lpush(AUDIT_KEY, _audit_entry("revoke", actor, actor_note, info))
                    tx.ltrim(AUDIT_KEY, 0, AUDIT_KEEP - 1)
                await tx.execute()
                return info
            except WatchError:
                continue


async def audit_entries(redis: Redis, limit: int) -> list[AuditEntry]:
    """The latest issues and revocations, newest first."""
    raws = await redis.lrange(AUDIT_KEY, 0, max(0, limit - 1))
    return [AuditEntry(**json.loads(raw)) for raw in raws]


# Per process: when each token's last use was last written (token id -> unix seconds).
_use_written: dict[str, float] = {}
_USE_MEMORY = 100_000  # tokens remembered before the memory starts over (a few MB at most)


async def _note_use(redis: Redis, token_id: str) -> None:
    now = time.time()
    if now - _use_written.get(token_id, 0.0) < USE_RESOLUTION_SECONDS:
        return
    if len(_use_written) >= _USE_MEMORY:
        _use_written.clear()
    _use_written[token_id] = now
    await redis.hset(USED_KEY, token_id, int(now))


async def lookup(redis: Redis, token: str) -> Principal | None:
    raw = await redis.get(_key(token))
    if raw is None:
        return None
    data = json.loads(raw)
    expires_at = data.get("expires_at")
    if expires_at is not None and expires_at <= time.time():
        return None  # Redis drops it at the same moment; this covers a copy restored without its TTL
    token_id = token_id_of(token)
    await _note_use(redis, token_id)
    return Principal(
        role=data["role"],
        department=data.get("department"),
        operator=data.get("operator"),
        grid=data.get("grid"),
        token_id=token_id,
        note=data.get("note") or "",
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
