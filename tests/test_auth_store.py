"""How staff tokens and their console sessions are kept in Redis (shared.auth, services.console.session),
against a real Redis: listing reads an index of the tokens, not a SCAN of the keyspace, and the tokens
stored before the index are found once; a revocation takes the token's console sessions with it.

Only Redis is needed (the `servers` fixture, not `settings`, which trains a model too). The Redis is the
session's: each test issues its own tokens and looks only at them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.console import session
from shared import auth

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(servers) -> AsyncIterator[Redis]:
    r = Redis.from_url(servers.redis_url)
    yield r
    await r.aclose()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def staff_id() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def no_scan(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a SCAN of the whole keyspace")

    monkeypatch.setattr(redis, "scan_iter", refuse)
    monkeypatch.setattr(redis, "scan", refuse)


async def test_tokens_are_listed_and_revoked_by_their_index_not_a_scan_of_the_keyspace(redis, monkeypatch):
    await auth.list_tokens(redis)  # the tokens of before the index, indexed once
    op = staff_id()
    token, info = await auth.issue(redis, "operator", operator=op, ttl_seconds=3600, actor="cli:test")
    # Written with the token: its expiry is its score.
    assert await redis.zscore(auth.INDEX_KEY, digest(token)) == info.expires_at
    no_scan(redis, monkeypatch)
    listed = [t for t in await auth.list_tokens(redis) if t.token_id == info.token_id]
    assert [(t.role, t.operator) for t in listed] == [("operator", op)]
    assert (await auth.revoke_token(redis, info.token_id, actor="cli:test")) == info
    assert await redis.zscore(auth.INDEX_KEY, digest(token)) is None
    assert info.token_id not in [t.token_id for t in await auth.list_tokens(redis)]
    assert await auth.lookup(redis, token) is None


async def test_a_token_that_never_expires_is_listed_until_revoked(redis):
    token, info = await auth.issue(redis, "admin", ttl_seconds=0)
    assert await redis.zscore(auth.INDEX_KEY, digest(token)) == float("inf")
    assert info.token_id in [t.token_id for t in await auth.list_tokens(redis)]
    assert await auth.revoke_token(redis, token) == info
    assert info.token_id not in [t.token_id for t in await auth.list_tokens(redis)]


async def test_expired_tokens_leave_the_index_when_it_is_listed(redis):
    token, info = await auth.issue(redis, "operator", operator=staff_id(), ttl_seconds=1)
    assert await redis.zscore(auth.INDEX_KEY, digest(token)) is not None
    await asyncio.sleep(2.1)  # past its expiry, to the second
    assert info.token_id not in [t.token_id for t in await auth.list_tokens(redis)]
    assert await redis.zscore(auth.INDEX_KEY, digest(token)) is None
    # A record gone before its listed expiry (evicted, say) leaves the index too.
    token, info = await auth.issue(redis, "operator", operator=staff_id(), ttl_seconds=3600)
    await redis.delete(auth.KEY_PREFIX + digest(token))
    assert info.token_id not in [t.token_id for t in await auth.list_tokens(redis)]
    assert await redis.zscore(auth.INDEX_KEY, digest(token)) is None


async def test_tokens_stored_before_the_index_are_listed_and_revoked(redis, monkeypatch):
    """As an earlier release stored them: the record alone. The first listing after the upgrade
    finds them by one SCAN and indexes them; later ones read the index only."""
    older = {}
    for expires_at in (int(time.time()) + 3600, None):
        token = uuid.uuid4().hex
        record = {"role": "operator", "department": None, "operator": staff_id(), "grid": None, "note": "旧"}
        record |= {"created_at": int(time.time()), "expires_at": expires_at}
        await redis.set(auth.KEY_PREFIX + digest(token), json.dumps(record, ensure_ascii=False), ex=3600)
        older[auth.token_id_of(token)] = (token, expires_at)
    await redis.delete(auth.INDEXED_KEY)  # as on a Redis the index was never written to
    assert set(older) <= {t.token_id for t in await auth.list_tokens(redis)}
    assert await redis.exists(auth.INDEXED_KEY)
    for token, expires_at in older.values():
        score = await redis.zscore(auth.INDEX_KEY, digest(token))
        assert score == (expires_at if expires_at is not None else float("inf"))
    no_scan(redis, monkeypatch)
    assert set(older) <= {t.token_id for t in await auth.list_tokens(redis)}
    for token_id in older:
        assert (await auth.revoke_token(redis, token_id)) is not None
    assert not set(older) & {t.token_id for t in await auth.list_tokens(redis)}


async def test_a_revocation_ends_the_console_sessions_its_token_opened(redis):
    token = await auth.issue_token(redis, "department", "water", ttl_seconds=3600)
    other = await auth.issue_token(redis, "department", "water", ttl_seconds=3600)
    opened = []
    for _ in range(2):
        signed = await session.sign_in(redis, token)
        assert signed is not None
        opened.append(session._key(signed[0]))
    kept = await session.sign_in(redis, other)
    assert kept is not None
    assert {k.decode() for k in await redis.smembers(auth.sessions_key(token))} == set(opened)
    assert 0 < await redis.ttl(auth.sessions_key(token)) <= session.TTL_SECONDS
    assert await redis.exists(*opened) == 2

    assert await auth.revoke_token(redis, auth.token_id_of(token), actor="cli:test") is not None
    assert await redis.exists(*opened, auth.sessions_key(token)) == 0
    # Another token's sessions stay.
    assert await session.load(redis, kept[0]) is not None
    assert await session.sign_in(redis, token) is None  # and the revoked one opens no new one
    assert await redis.exists(auth.sessions_key(token)) == 0
    await auth.revoke_token(redis, other)


async def test_a_tokens_set_of_sessions_keeps_only_the_live_ones(redis):
    token = await auth.issue_token(redis, "operator", operator=staff_id(), ttl_seconds=3600)
    first = await session.sign_in(redis, token)
    second = await session.sign_in(redis, token)
    assert first is not None
    assert second is not None
    await session.sign_out(redis, first[0])  # signed out: out of the set at once
    assert {k.decode() for k in await redis.smembers(auth.sessions_key(token))} == {session._key(second[0])}
    await redis.delete(session._key(second[0]))  # as if its shift's 12 hours had passed
    third = await session.sign_in(redis, token)  # a sign-in forgets the sessions that ended
    assert third is not None
    assert {k.decode() for k in await redis.smembers(auth.sessions_key(token))} == {session._key(third[0])}
    # A request extends the session and its token's set together.
    await redis.expire(auth.sessions_key(token), 60)
    assert await session.load(redis, third[0]) is not None
    assert await redis.ttl(auth.sessions_key(token)) > 60
    await auth.revoke_token(redis, token)
    assert await redis.exists(session._key(third[0])) == 0
