"""The knowledge base kept in the record (PostgreSQL): seeded from the city's file, changed by the
departments and the desk through the API (each role's allowed and refused actions), and followed by
the API process, so an edit reaches the operators' search within the refresh interval.

The session's system runs throughout: entries these tests add carry a tag of their own, so nothing
here depends on what other tests left in the base, and they are retired at the end."""

from __future__ import annotations

import logging
import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from redis.exceptions import BusyLoadingError

from services.api import create_app
from services.records.knowledge import SEED_ACTOR, Follower, KnowledgeService
from shared.auth import Principal, issue_token
from shared.city import City, KnowledgeEntry
from shared.embedded import free_port
from shared.settings import Settings
from tests.conftest import eventually

DESK = Principal(role="admin", token_id="kbtest")


def today(settings: Settings) -> date:
    return datetime.now(ZoneInfo(settings.timezone)).date()


def reviewed_since(first: date, settings: Settings) -> set[str]:
    """The days a review made since `first` (the city's date when the test began) may carry: that
    day, or a later one if local midnight passed meanwhile."""
    return {(first + timedelta(days=n)).isoformat() for n in range((today(settings) - first).days + 1)}


def tag() -> str:
    return str(random.randint(10**7, 10**8))


async def headers(redis, role: str, department: str | None = None, operator: str | None = None) -> dict:
    token = await issue_token(redis, role, department, operator)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


# --- seeding ---------------------------------------------------------------------------------------


async def test_the_citys_file_seeds_the_base_and_the_system_keeps_it(
    api, pool, redis, settings: Settings, system_city: City
) -> None:
    # The started API seeded the file's entries.
    file_ids = [e.id for e in system_city.knowledge]

    async def seeded() -> bool:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM knowledge WHERE id = ANY(%s)", (file_ids,))
            row = await cur.fetchone()
            return row is not None and row["n"] == len(file_ids)

    await eventually(seeded)
    desk = await headers(redis, "admin")
    r = await api.get(f"/api/v1/knowledge/entries/{file_ids[0]}", headers=desk)
    assert r.status_code == 200, r.text
    assert r.json()["revisions"][-1]["action"] == "created"
    assert r.json()["revisions"][-1]["actor"] == SEED_ACTOR

    # A restart's seed: an edited entry keeps its edit, a retired one is not added again.
    t = tag()
    kept = KnowledgeEntry(
        id=f"kb-seed-{t}", question=f"种子条目{t}怎么办理？", answer="原来的答复内容。", department="hrss"
    )
    gone = kept.model_copy(update={"id": f"kb-gone-{t}", "question": f"停用条目{t}怎么办理？"})
    service = KnowledgeService(pool, redis, system_city, timezone=settings.timezone)
    assert await service.seed([kept, gone]) == [kept.id, gone.id]
    await service.edit(kept.id, {"answer": "在系统中修改后的答复。"}, DESK)
    await service.retire(gone.id, "政策已取消", DESK)
    changed_file = [kept.model_copy(update={"answer": "文件里后来改的答复。"}), gone]
    assert await service.seed(changed_file) == []
    assert (await service.get(kept.id, DESK))["answer"] == "在系统中修改后的答复。"
    assert (await service.get(gone.id, DESK))["retired_reason"] == "政策已取消"
    assert gone.id not in {e.id for e in await service.active()}
    await service.retire(kept.id, "测试结束", DESK)


# --- each role's actions -------------------------------------------------------------------------


async def test_each_role_may_do_its_part_and_no_more(api, redis, settings: Settings) -> None:
    first_day = today(settings)
    desk = await headers(redis, "admin")
    owner = await headers(redis, "department", "hrss")
    other = await headers(redis, "department", "education")
    operator = await headers(redis, "operator", operator="0231")
    grid_worker = {
        "Authorization": f"Bearer {await issue_token(redis, 'grid_worker', operator='W1', grid='s01c01g01')}"
    }
    t = tag()
    body = {
        "question": f"养老服务补贴{t}怎么申请？",
        "answer": "携带身份证和户口簿到社区服务站申请。",
        "category": "labor.social_insurance",
        "keywords": ["养老补贴", "申请"],
        "department": "hrss",
    }

    # Adding: the desk only; refusals say why, beside the field.
    for who in (owner, operator):
        r = await api.post("/api/v1/knowledge/entries", json=body, headers=who)
        assert r.status_code == 403, r.text
    r = await api.post("/api/v1/knowledge/entries", json={**body, "department": "nobody"}, headers=desk)
    assert (r.status_code, r.json()["field"], r.json()["error"]) == (422, "department", "unknown_department")
    r = await api.post("/api/v1/knowledge/entries", json={**body, "answer": ""}, headers=desk)
    assert (r.status_code, r.json()["field"]) == (422, "answer")
    assert "答复" in r.json()["message"]
    r = await api.post("/api/v1/knowledge/entries", json=body, headers=desk)
    assert r.status_code == 201, r.text
    entry = r.json()
    no = entry["id"]
    assert entry["reviewed"] in reviewed_since(first_day, settings)
    assert entry["department_name"] == "区人力资源和社会保障局"

    # Reading: operators, departments and the desk; not a grid worker.
    for who in (operator, owner, other, desk):
        r = await api.get("/api/v1/knowledge/entries", params={"q": f"养老服务补贴{t}"}, headers=who)
        assert r.status_code == 200, r.text
        assert [e["id"] for e in r.json()["entries"]] == [no]
    assert (await api.get("/api/v1/knowledge/entries", headers=grid_worker)).status_code == 403
    mine = await api.get("/api/v1/knowledge/entries", params={"department": "hrss", "q": t}, headers=other)
    assert [e["id"] for e in mine.json()["entries"]] == [no]
    r = await api.get("/api/v1/knowledge/entries", params={"department": "nobody"}, headers=desk)
    assert (r.status_code, r.json()["field"]) == (422, "department")
    listed = (await api.get("/api/v1/knowledge/entries", params={"q": t}, headers=other)).json()["entries"][0]
    assert listed["allowed"] == {"edit": False, "confirm": False, "retire": False}

    # Editing: the desk any entry, a department its own only, and not giving it away.
    for who in (operator, other):
        r = await api.put(f"/api/v1/knowledge/entries/{no}", json={"answer": "改一下答复内容。"}, headers=who)
        assert r.status_code == 403, r.text
    r = await api.put(f"/api/v1/knowledge/entries/{no}", json={"department": "education"}, headers=owner)
    assert (r.status_code, r.json()["field"]) == (403, "department")
    r = await api.put(f"/api/v1/knowledge/entries/{no}", json={"question": "问"}, headers=owner)
    assert (r.status_code, r.json()["field"]) == (422, "question")
    r = await api.put(
        f"/api/v1/knowledge/entries/{no}",
        json={"answer": "携带身份证到社区服务站或线上申请。"},
        headers=owner,
    )
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "携带身份证到社区服务站或线上申请。"
    assert r.json()["question"] == body["question"]  # a field left out keeps its value
    assert r.json()["reviewed"] in reviewed_since(first_day, settings)  # the owner's edit is its review
    r = await api.put(
        f"/api/v1/knowledge/entries/{no}", json={"keywords": "养老补贴，高龄津贴"}, headers=desk
    )
    assert r.status_code == 200, r.text
    assert r.json()["keywords"] == ["养老补贴", "高龄津贴"]

    # Confirming: the owning department or the desk.
    for who in (operator, other):
        assert (await api.post(f"/api/v1/knowledge/entries/{no}/confirm", headers=who)).status_code == 403
    for who in (owner, desk):
        r = await api.post(f"/api/v1/knowledge/entries/{no}/confirm", headers=who)
        assert r.status_code == 200, r.text
        assert r.json()["reviewed"] in reviewed_since(first_day, settings)

    # Retiring: the desk, with a reason; then nothing more is done to it.
    assert (
        await api.post(f"/api/v1/knowledge/entries/{no}/retire", json={"reason": "x"}, headers=owner)
    ).status_code == 403
    r = await api.post(f"/api/v1/knowledge/entries/{no}/retire", json={"reason": " "}, headers=desk)
    assert (r.status_code, r.json()["field"]) == (422, "reason")
    r = await api.post(
        f"/api/v1/knowledge/entries/{no}/retire", json={"reason": "政策调整，停止受理"}, headers=desk
    )
    assert r.status_code == 200, r.text
    assert r.json()["retired_at"]
    assert r.json()["allowed"] == {
        "edit": False,
        "confirm": False,
        "retire": False,
    }
    r = await api.post(f"/api/v1/knowledge/entries/{no}/confirm", headers=owner)
    assert (r.status_code, r.json()["error"]) == (409, "entry_retired")
    r = await api.get("/api/v1/knowledge/entries", params={"q": t}, headers=desk)
    assert r.json()["entries"] == []
    r = await api.get("/api/v1/knowledge/entries", params={"q": t, "retired": "true"}, headers=desk)
    assert [e["id"] for e in r.json()["entries"]] == [no]

    # Its history: who did what, newest first, with the entry as it was after each change.
    r = await api.get(f"/api/v1/knowledge/entries/{no}", headers=operator)
    revisions = r.json()["revisions"]
    assert [v["action"] for v in revisions] == [
        "retired",
        "confirmed",
        "confirmed",
        "edited",
        "edited",
        "created",
    ]
    assert revisions[0]["note"] == "政策调整，停止受理"
    assert revisions[4]["actor"] == "department:hrss"
    assert revisions[4]["entry"]["answer"] == "携带身份证到社区服务站或线上申请。"
    r = await api.get("/api/v1/knowledge/entries/kb-no-such-entry", headers=desk)
    assert r.status_code == 404
    assert "kb-no-such-entry" in r.json()["message"]


# --- by category ---------------------------------------------------------------------------------


async def test_the_list_and_the_operators_search_narrow_to_a_category(api, redis) -> None:
    desk = await headers(redis, "admin")
    operator = await headers(redis, "operator", operator="0231")
    t = tag()
    filed = {
        "light": ("city.facility.streetlight", "urban_mgmt", f"小区路灯{t}不亮归谁管？"),
        "trash": ("city.appearance.garbage", "urban_mgmt", f"大件垃圾{t}放在哪里？"),
        "power": ("utility.power", "power", f"小区停电{t}找谁报修？"),
        "loose": (None, "urban_mgmt", f"门牌号码{t}怎么申请？"),
    }
    ids: dict[str, str] = {}
    for name, (category, department, question) in filed.items():
        r = await api.post(
            "/api/v1/knowledge/entries",
            json={
                "question": question,
                "answer": f"请拨打热线登记，工作人员{t}会联系您。",
                "category": category,
                "department": department,
            },
            headers=desk,
        )
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]

    async def listed(who: dict, **params: str) -> set[str]:
        r = await api.get("/api/v1/knowledge/entries", params={"q": t, **params}, headers=who)
        assert r.status_code == 200, r.text
        return {e["id"] for e in r.json()["entries"]}

    # A leaf: its own entries; a branch: those of every category under it; none: all of them.
    assert await listed(operator, category="city.facility.streetlight") == {ids["light"]}
    assert await listed(operator, category="city.facility") == {ids["light"]}
    assert await listed(desk, category="city") == {ids["light"], ids["trash"]}
    assert await listed(desk, category="utility") == {ids["power"]}
    assert await listed(desk, category="civil") == set()
    assert await listed(desk) == set(ids.values())
    r = await api.get(
        "/api/v1/knowledge/entries", params={"q": t, "category": "city.facility.streetlight"}, headers=desk
    )
    assert r.json()["total"] == 1
    assert r.json()["entries"][0]["category_names"] == ["城市管理", "市政设施", "路灯故障"]

    # A category the city does not have: refused in words, beside the field, never an empty list.
    for wrong, told in (("no.such", "不存在"), ("路灯故障", "city.facility.streetlight")):
        r = await api.get("/api/v1/knowledge/entries", params={"category": wrong}, headers=operator)
        assert (r.status_code, r.json()["field"], r.json()["error"]) == (422, "category", "unknown_category")
        assert told in r.json()["message"]
        r = await api.get("/api/v1/knowledge", params={"q": "路灯", "category": wrong}, headers=operator)
        assert (r.status_code, r.json()["field"], r.json()["error"]) == (422, "category", "unknown_category")

    # The operators' search answers from the chosen category alone, once it has the new entries.
    async def answered(category: str | None = None) -> set[str]:
        params = {"q": f"小区路灯{t}不亮 停电{t}", "size": "20", "category": category or ""}
        r = await api.get("/api/v1/knowledge", params=params, headers=operator)
        assert r.status_code == 200, r.text
        return {a["id"] for a in r.json()["answers"]} & set(ids.values())

    async def both() -> bool:
        return {ids["light"], ids["power"]} <= await answered()

    await eventually(both, timeout=15)
    in_city = await answered("city")  # a branch: its leaves' entries (the tag may bring 垃圾清运's)
    assert ids["light"] in in_city
    assert in_city <= {ids["light"], ids["trash"]}
    assert await answered("utility.power") == {ids["power"]}

    for entry_id in ids.values():
        r = await api.post(
            f"/api/v1/knowledge/entries/{entry_id}/retire", json={"reason": "测试结束"}, headers=desk
        )
        assert r.status_code == 200, r.text


# --- the operators' search follows the base --------------------------------------------------------


async def test_an_edit_reaches_the_operators_search_and_a_stale_answer_is_marked(
    api, pool, redis, settings: Settings, system_city: City
) -> None:
    desk = await headers(redis, "admin")
    operator = await headers(redis, "operator", operator="0231")
    t = tag()
    question = f"玉兰公园年票{t}怎么办理？"
    r = await api.post(
        "/api/v1/knowledge/entries",
        json={"question": question, "answer": "到公园东门售票处办理。", "department": "hrss"},
        headers=desk,
    )
    assert r.status_code == 201, r.text
    no = r.json()["id"]

    async def answer() -> dict | None:
        r = await api.get("/api/v1/knowledge", params={"q": question}, headers=operator)
        return next((a for a in r.json()["answers"] if a["id"] == no), None)

    await eventually(answer)
    r = await api.put(
        f"/api/v1/knowledge/entries/{no}", json={"answer": f"年票改为线上办理{t}。"}, headers=desk
    )
    assert r.status_code == 200, r.text

    async def edited() -> bool:
        found = await answer()
        return found is not None and found["answer"] == f"年票改为线上办理{t}。"

    await eventually(edited, timeout=15)
    assert (await answer() or {})["review_due"] is False

    # An entry its department has not confirmed within the city's period is marked for the operator.
    old = KnowledgeEntry(
        id=f"kb-stale-{t}",
        question=f"旧版停车证{t}怎么换领？",
        answer="到街道办事处换领。",
        department="hrss",
        reviewed=today(settings) - timedelta(days=system_city.sla.supervision.knowledge_review_days + 1),
    )
    service = KnowledgeService(pool, redis, system_city, timezone=settings.timezone)
    assert await service.seed([old]) == [old.id]

    async def stale() -> dict | None:
        r = await api.get("/api/v1/knowledge", params={"q": old.question}, headers=operator)
        return next((a for a in r.json()["answers"] if a["id"] == old.id), None)

    assert (await eventually(stale, timeout=15))["review_due"] is True
    due = await api.get("/api/v1/knowledge/entries", params={"due": "true", "q": t}, headers=desk)
    assert [e["id"] for e in due.json()["entries"]] == [old.id]

    # Retired: no longer suggested.
    for entry_id in (no, old.id):
        r = await api.post(
            f"/api/v1/knowledge/entries/{entry_id}/retire", json={"reason": "测试结束"}, headers=desk
        )
        assert r.status_code == 200, r.text

    async def gone() -> bool:
        return await answer() is None and await stale() is None

    await eventually(gone, timeout=15)


async def test_with_the_record_away_the_files_answers_are_served(settings: Settings, redis) -> None:
    """The API started with PostgreSQL away: the operators' search answers from the city's file,
    the entries' endpoints say the record is away."""
    away = settings.model_copy(
        update={"database_url": f"postgresql://appeals@127.0.0.1:{free_port()}/appeals"}
    )
    app = create_app(away)
    async with app.router.lifespan_context(app):
        operator = await headers(redis, "operator", operator="0231")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=operator) as client:
            r = await client.get("/api/v1/knowledge", params={"q": "社保卡丢了怎么补办"})
            assert r.status_code == 200, r.text
            assert r.json()["answers"][0]["id"] == "kb-social-card-replace"
            r = await client.get("/api/v1/knowledge/entries")
            assert r.status_code == 503
            assert r.headers["Retry-After"]


# --- following quietly ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "named"),
    [
        (psycopg.OperationalError("connection refused"), "the record (PostgreSQL) is not reachable"),
        # Redis reading its file back after a restart: the version key is Redis's, not the record's.
        (BusyLoadingError("Redis is loading the dataset in memory"), "Redis is not reachable"),
    ],
)
async def test_a_record_away_is_logged_once_per_interval_not_per_try(
    caplog: pytest.LogCaptureFixture, city: City, error: Exception, named: str
) -> None:
    installed: list[object] = []

    async def away() -> KnowledgeService:
        raise error

    follower = Follower(away, redis=None, seed=city.knowledge, install=installed.append)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="records.knowledge"):
        for _ in range(5):
            assert await follower.step() is False
    assert len([r for r in caplog.records if named in r.getMessage()]) == 1
    assert installed == []  # what was installed before (the file's entries) stays
