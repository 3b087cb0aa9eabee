"""Staff credentials through the API (/api/v1/tokens) and `appeals token`, against the started
system: the desk issues, lists and revokes them, every change audited; no one else may; a grant is
refused beside its field; a revoked token's live console page ends. Each test issues and revokes
only its own tokens (staff ids drawn for it), so tests beside it keep theirs."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from datetime import datetime

import httpx
import pytest

from shared.auth import AUDIT_KEY, KEY_PREFIX, issue_token, token_id_of
from shared.settings import Settings
from tests.conftest import System, settings_env
from tests.test_intake_security import assert_error_shape, bearer, cli

pytestmark = pytest.mark.integration
PREVIEW = {"caller_phone": "13612345678", "text": "建设路菜市场门口占道经营严重，车辆过不去"}


def staff_id() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def desk(redis, note: str = "") -> tuple[dict[str, str], str]:
    """A desk token's headers, and its id (who the audit names)."""
    token = await issue_token(redis, "admin", note=note)
    return bearer(token), token_id_of(token)


async def audited(api: httpx.AsyncClient, headers: dict, token_id: str, action: str) -> dict:
    r = await api.get("/api/v1/tokens/audit", params={"limit": 200}, headers=headers)
    assert r.status_code == 200, r.text
    [entry] = [e for e in r.json()["entries"] if e["token_id"] == token_id and e["action"] == action]
    return entry


async def test_the_desk_issues_lists_and_revokes_a_credential_every_step_audited(api, redis):
    admin, admin_id = await desk(redis, note="王五")
    op = staff_id()
    r = await api.post(
        "/api/v1/tokens", json={"role": "operator", "operator": op, "note": "张三"}, headers=admin
    )
    assert r.status_code == 201, r.text
    issued = r.json()
    token, token_id = issued["token"], issued["token_id"]
    assert token_id == token_id_of(token)
    assert (issued["role"], issued["operator"], issued["note"]) == ("operator", op, "张三")
    assert issued["expires_at"] is not None  # TOKEN_TTL_DAYS by default
    assert "只显示这一次" in issued["message"]
    assert (await api.post("/api/v1/appeals/preview", json=PREVIEW, headers=bearer(token))).status_code == 200

    # Stored hashed: the token is in no value Redis keeps for it, nor in its audit.
    stored = [await redis.get(k) async for k in redis.scan_iter(match=f"{KEY_PREFIX}{token_id}*")]
    assert len(stored) == 1
    assert token not in stored[0].decode()
    assert all(token not in raw.decode() for raw in await redis.lrange(AUDIT_KEY, 0, -1))

    # Listed by role and words, with its last use.
    r = await api.get("/api/v1/tokens", params={"role": "operator", "q": op}, headers=admin)
    assert r.status_code == 200, r.text
    [listed] = r.json()["tokens"]
    assert "token" not in listed
    assert (listed["token_id"], listed["note"]) == (token_id, "张三")
    assert listed["last_used_at"] is not None
    assert r.json()["total"] == 1
    r = await api.get("/api/v1/tokens", params={"role": "department", "q": op}, headers=admin)
    assert r.json()["tokens"] == []
    r = await api.get("/api/v1/tokens", params={"q": "张三"}, headers=admin)
    assert token_id in [t["token_id"] for t in r.json()["tokens"]]

    entry = await audited(api, admin, token_id, "issue")
    assert (entry["actor"], entry["actor_note"]) == (f"admin:{admin_id}", "王五")
    assert (entry["role"], entry["operator"], entry["note"]) == ("operator", op, "张三")

    # The desk's own token is not revoked here; a malformed id names nothing.
    r = await api.delete(f"/api/v1/tokens/{admin_id}", headers=admin)
    assert "当前登录" in assert_error_shape(r, 409)["message"]
    assert assert_error_shape(await api.delete("/api/v1/tokens/not-an-id", headers=admin), 404)["field"] == (
        "token_id"
    )

    r = await api.delete(f"/api/v1/tokens/{token_id}", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["revoked"]["token_id"] == token_id
    assert f"话务员 {op}" in r.json()["message"]
    assert_error_shape(await api.post("/api/v1/appeals/preview", json=PREVIEW, headers=bearer(token)), 401)
    r = await api.delete(f"/api/v1/tokens/{token_id}", headers=admin)
    assert "已被吊销" in assert_error_shape(r, 404)["message"]
    r = await api.get("/api/v1/tokens", params={"q": op}, headers=admin)
    assert r.json()["tokens"] == []
    entry = await audited(api, admin, token_id, "revoke")
    assert (entry["actor"], entry["operator"], entry["note"]) == (f"admin:{admin_id}", op, "张三")


async def test_an_issue_sent_twice_issues_once(api, redis):
    admin, _ = await desk(redis)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"role": "department", "department": "water", "days": 1, "note": staff_id()}
    first = await api.post("/api/v1/tokens", json=body, headers={**admin, **key})
    assert first.status_code == 201, first.text
    again = await api.post("/api/v1/tokens", json=body, headers={**admin, **key})
    assert first.json()["token_id"] in assert_error_shape(again, 409)["message"]
    r = await api.get("/api/v1/tokens", params={"q": body["note"]}, headers=admin)
    assert [t["token_id"] for t in r.json()["tokens"]] == [first.json()["token_id"]]
    created = time.time()
    expires = r.json()["tokens"][0]["expires_at"]
    assert abs(datetime.fromisoformat(expires).timestamp() - created - 86400) < 60
    # Refused requests keep no key: the same one is accepted once the form is put right.
    retry = {"Idempotency-Key": uuid.uuid4().hex}
    r = await api.post("/api/v1/tokens", json={**body, "department": "nowhere"}, headers={**admin, **retry})
    assert r.status_code == 422
    assert (await api.post("/api/v1/tokens", json=body, headers={**admin, **retry})).status_code == 201
    for t in (await api.get("/api/v1/tokens", params={"q": body["note"]}, headers=admin)).json()["tokens"]:
        assert (await api.delete(f"/api/v1/tokens/{t['token_id']}", headers=admin)).status_code == 200


async def test_only_the_desk_manages_credentials(api, redis):
    others = {
        "operator": await issue_token(redis, "operator", operator=staff_id()),
        "department": await issue_token(redis, "department", "water"),
        "grid_worker": await issue_token(redis, "grid_worker", operator=staff_id(), grid="s01c01g02"),
        "sms_gateway": await issue_token(redis, "sms_gateway"),
    }
    victim = token_id_of(others["operator"])
    for role, token in others.items():
        for method, path, body in (
            ("GET", "/api/v1/tokens", None),
            ("GET", "/api/v1/tokens/audit", None),
            ("POST", "/api/v1/tokens", {"role": "admin"}),
            ("DELETE", f"/api/v1/tokens/{victim}", None),
        ):
            r = await api.request(method, path, json=body, headers=bearer(token))
            assert "派单中心" in assert_error_shape(r, 403)["message"], (role, method, path)
    assert_error_shape(await api.get("/api/v1/tokens"), 401)
    # Nothing was issued or revoked by them.
    assert (
        await api.post("/api/v1/appeals/preview", json=PREVIEW, headers=bearer(others["operator"]))
    ).status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "said"),
    [
        ({"role": "boss"}, "role", "请选择角色"),
        ({"role": "operator"}, "operator", "请填写话务员的工号"),
        ({"role": "operator", "operator": "张 三"}, "operator", "工号只能由字母、数字"),
        ({"role": "department", "department": "nowhere"}, "department", "没有编号为“nowhere”的承办单位"),
        ({"role": "department", "department": "dispatch_desk"}, "department", "请签发派单中心凭证"),
        ({"role": "grid_worker", "operator": "W1"}, "grid", "请选择网格员负责的网格"),
        ({"role": "grid_worker", "operator": "W1", "grid": "nowhere"}, "grid", "没有编号为“nowhere”的网格"),
        (
            {"role": "department", "department": "water", "operator": "0231"},
            "operator",
            "承办单位凭证不填工号",
        ),
        ({"role": "admin", "days": 5000}, "days", "有效天数须在0到3650之间"),
        ({"role": "admin", "days": "三十"}, "days", "请求参数days不符合要求（须为整数）"),
        ({"role": "admin", "note": "很长的备注" * 11}, "note", "备注最多50个字"),
    ],
)
async def test_a_grant_is_refused_beside_its_field_in_chinese(api, redis, body, field, said):
    admin, _ = await desk(redis)
    r = await api.post("/api/v1/tokens", json=body, headers=admin)
    refused = assert_error_shape(r, 422)
    assert (refused["field"], said in refused["message"]) == (field, True), refused


async def test_appeals_token_is_audited_as_the_shell_user_and_lists_the_note(api, redis, settings: Settings):
    env = settings_env(settings)
    op = staff_id()
    token = (await cli(env, "token", "--operator", op, "--note", "赵六 夜班")).strip()
    token_id = token_id_of(token)
    [row] = [line for line in (await cli(env, "token", "--list")).splitlines() if line.startswith(token_id)]
    assert op in row
    assert row.endswith("赵六 夜班")
    assert "used -" in row  # not used yet
    admin, _ = await desk(redis)
    entry = await audited(api, admin, token_id, "issue")
    assert entry["actor"].startswith("cli:")
    assert (entry["operator"], entry["note"]) == (op, "赵六 夜班")
    await cli(env, "token", "--revoke", token_id)
    assert (await audited(api, admin, token_id, "revoke"))["actor"] == entry["actor"]


def session_key(cookie: str) -> str:
    return "console:session:" + hashlib.sha256(cookie.encode()).hexdigest()


async def console_session(system: System, token: str) -> httpx.AsyncClient:
    """A browser's cookies, signed in to the console with `token` (the sign-in form, CSRF and all)."""
    client = httpx.AsyncClient(base_url=system.base_url, timeout=30)
    page = await client.get("/console/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    r = await client.post("/console/signin", data={"csrf": csrf[1], "token": token})
    assert r.status_code == 303, r.text
    return client


async def test_a_live_page_ends_when_its_token_is_revoked(api, redis, system: System):
    """A department's queue left open: its live stream stops within seconds of the revocation, and
    the stream's reconnection is refused, which sends the page to sign in (console.js)."""
    admin, _ = await desk(redis)
    r = await api.post(
        "/api/v1/tokens",
        json={"role": "department", "department": "water", "note": staff_id()},
        headers=admin,
    )
    token_id = r.json()["token_id"]
    browser = await console_session(system, r.json()["token"])
    try:
        sse = {"Accept": "text/event-stream"}
        async with browser.stream("GET", "/console/department/live", headers=sse) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()

            async def until_ready() -> None:
                async for line in lines:
                    if line == "event: ready":
                        return

            await asyncio.wait_for(until_ready(), timeout=60)
            assert (await api.delete(f"/api/v1/tokens/{token_id}", headers=admin)).status_code == 200
            revoked = time.monotonic()
            # Its session's record went with it, not at the end of its 12 hours.
            assert not await redis.exists(session_key(browser.cookies["appeals_console"]))

            async def rest() -> list[str]:
                return [line async for line in lines]

            after = await asyncio.wait_for(rest(), timeout=20)  # ends by itself: no exception here
            assert time.monotonic() - revoked < 15
            assert not any(line.startswith("event: ticket") for line in after)
        again = await browser.get("/console/department/live", headers=sse)
        assert again.status_code == 401
        assert again.headers["X-Sign-In"] == "/console/signin"
        page = await browser.get("/console/department")
        assert (page.status_code, page.headers["location"]) == (303, "/console/signin")
    finally:
        await browser.aclose()
