"""并案 through the running system: the dispatch desk merges a duplicate into the ticket already being
handled. Both tickets change together, the duplicate's resident is texted which ticket to follow
and may ask about it by SMS, the record folds both sides, and the counters count the merge."""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import as_department, as_sms_gateway, eventually
from tests.test_pipeline_e2e import outbox_for, submit, ticket_when

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]


def new_phone() -> str:
    return "137" + "".join(random.choices("0123456789", k=8))


async def test_the_desk_merges_a_duplicate_into_the_ticket_being_handled(api, redis, pool, settings):
    first, second = new_phone(), new_phone()
    main_no = await submit(api, first, address="阳光花园3号楼")
    dup_no = await submit(api, second, text="阳光花园3号楼门口那盏路灯不亮了，晚上很黑，麻烦派人修一下")
    main = await ticket_when(api, main_no, lambda t: t["status"] in ("assigned", "review"))
    dup = await ticket_when(api, dup_no, lambda t: t["status"] in ("assigned", "review"))
    if main["status"] == "assigned":  # the department took it up: still a main ticket, of course
        headers = await as_department(redis, main)
        assert (await api.post(f"/api/v1/tickets/{main_no}/accept", headers=headers)).status_code == 200
    url = f"/api/v1/tickets/{dup_no}/merge"
    body = {"into": main_no, "reason": "同一盏路灯，邻居重复反映"}

    # The desk is offered the main ticket (the same grid and category, being handled), once the
    # intake worker has indexed it in its grid.
    async def offered() -> dict | None:
        r = await api.get(f"/api/v1/tickets/{dup_no}/merge/candidates")
        assert r.status_code == 200, r.text
        found = {c["ticket_no"]: c for c in r.json()["candidates"]}
        return found if main_no in found else None

    candidates = await eventually(offered)
    assert candidates[main_no]["status"] in ("accepted", "review")
    assert dup_no not in candidates

    # Refusals: another role, the ticket itself, no such main ticket, a short reason.
    r = await api.post(url, json=body, headers=await as_department(redis, dup))
    assert r.status_code == 403
    for wrong, status, field in (
        ({**body, "into": dup_no}, 422, "into"),
        ({**body, "into": "20991231-000001"}, 404, "into"),
        ({**body, "into": "路灯那张"}, 404, "into"),
        ({**body, "reason": "重复"}, 422, "reason"),
    ):
        r = await api.post(url, json=wrong)
        assert (r.status_code, r.json()["field"]) == (status, field), r.text
        assert r.json()["message"]
    # Nothing changed on either side.
    assert (await api.get(f"/api/v1/tickets/{dup_no}")).json()["status"] == dup["status"]

    r = await api.post(url, json=body)
    assert r.status_code == 200, r.text
    merged = r.json()
    assert (merged["status"], merged["merged_into"], merged["flags"]) == ("closed", main_no, ["已并案"])
    last = merged["history"][-1]
    assert (last["action"], last["note"]) == (
        "merged",
        f"并入工单{main_no}合并办理：同一盏路灯，邻居重复反映",
    )
    assert last["merge"]["into"] == main_no
    main_now = (await api.get(f"/api/v1/tickets/{main_no}")).json()
    assert main_now["merged"] == [dup_no]
    assert "并案1件" in main_now["flags"]
    assert main_now["status"] == ("accepted" if main["status"] == "assigned" else "review")
    assert main_now["history"][-1]["note"] == f"并案：工单{dup_no}并入本工单（同一盏路灯，邻居重复反映）"
    # Once is enough: the duplicate is closed now.
    r = await api.post(url, json=body)
    assert r.status_code == 409
    assert "不能并案" in r.json()["message"]
    # It left its department's (or the desk's) open queue.
    dept = dup["department"]["id"]
    queue = (await api.get(f"/api/v1/departments/{dept}/tickets", params={"size": 200})).json()
    assert dup_no not in [t["ticket_no"] for t in queue["tickets"]]

    # The duplicate's resident is told which ticket to follow, and asks about it by SMS.
    async def notice():
        return await outbox_for(redis, second, "progress")

    [sms] = await eventually(notice)
    assert sms["text"] == (
        f"【12345】您反映的问题（工单号{dup_no}）与工单{main_no}为同一问题，已合并办理，"
        f"可回复“查询{main_no}”了解进度。"
    )
    assert await outbox_for(redis, first, "progress") == []  # nothing changed for the main's resident
    gateway = await as_sms_gateway(redis)
    r = await api.post(
        "/api/v1/sms/inbound", json={"phone": second, "text": f"查询{main_no}"}, headers=gateway
    )
    assert r.json() == {"kind": "query", "tickets": [dup_no], "sms": "sent"}
    [answer] = await outbox_for(redis, second, "query")
    assert f"工单号{dup_no}，与工单{main_no}为同一问题，已并入该工单合并办理；工单{main_no}" in answer["text"]
    assert main_now["status_name"] in answer["text"]
    for private in (first, first[-4:], "阳光花园"):  # nothing of the other resident
        assert private not in answer["text"]
    # The main ticket's number is no one else's to read: a stranger still gets "not found".
    r = await api.post(
        "/api/v1/sms/inbound", json={"phone": new_phone(), "text": f"查询{main_no}"}, headers=gateway
    )
    assert r.json()["tickets"] == []

    # The record folds both sides; the counters count the merge for whoever held the duplicate.
    async def recorded():
        async with pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT ticket_no, status, merged_into, merged FROM tickets WHERE ticket_no = ANY(%s)",
                    ([dup_no, main_no],),
                )
            ).fetchall()
        by_no = {row["ticket_no"]: row for row in rows}
        done = by_no.get(dup_no, {}).get("merged_into") and by_no.get(main_no, {}).get("merged")
        return by_no if done else None

    rows = await eventually(recorded)
    assert (rows[dup_no]["status"], rows[dup_no]["merged_into"]) == ("closed", main_no)
    assert rows[main_no]["merged"] == [dup_no]
    r = await api.get("/api/v1/tickets/export", params={"q": "路灯"})
    assert r.status_code == 200, r.text
    text = r.content.decode("utf-8-sig")
    assert "并入" in text.splitlines()[0]
    assert "并案" in text.splitlines()[0]
    assert any(line.startswith(dup_no) and main_no in line for line in text.splitlines())
    today = datetime.now(ZoneInfo(settings.timezone)).date().isoformat()

    async def counted():
        r = await api.get("/api/v1/stats", params={"group_by": "department", "from": today, "to": today})
        group = next((g for g in r.json()["groups"] if g["group"] == dept), None)
        return group if group and group["merged"] >= 1 else None

    group = await eventually(counted)
    assert group["responded"] >= group["responded_on_time"]

    # The main ticket resolved: the duplicate's resident hears its result under their own number;
    # the survey is the main ticket's resident's.
    if main_now["status"] == "review":
        r = await api.post(f"/api/v1/dispatch/{main_no}/assign", json={"department": "urban_mgmt"})
        assert r.status_code == 200, r.text
    held = await ticket_when(api, main_no, lambda t: t["status"] in ("assigned", "accepted"))
    r = await api.post(
        f"/api/v1/tickets/{main_no}/resolve",
        json={"note": "已更换路灯灯泡，恢复照明"},
        headers=await as_department(redis, held),
    )
    assert r.status_code == 200, r.text
    [result] = await eventually(lambda: outbox_for(redis, second, "result"))
    assert result["text"] == f"【12345】您反映的问题（工单号{dup_no}）已办理：已更换路灯灯泡，恢复照明。"
    await eventually(lambda: outbox_for(redis, first, "survey"))
    assert await outbox_for(redis, second, "survey") == []


async def test_the_desk_asks_for_the_candidates_of_a_page_of_tickets_at_once(api, redis):
    """The desk's queue asks once per page: each ticket's candidates as the single form gives
    them, a number that does not exist refused beside it, and the request refused in words when
    it cannot be answered."""
    main_no = await submit(api, new_phone(), address="阳光花园7号楼")
    dup_no = await submit(api, new_phone(), text="阳光花园7号楼前面的路灯坏了好几天，晚上看不见路")
    await ticket_when(api, main_no, lambda t: t["status"] in ("assigned", "review"))
    dup = await ticket_when(api, dup_no, lambda t: t["status"] in ("assigned", "review"))
    missing = "20991231-000001"
    url = "/api/v1/tickets/merge/candidates"

    async def offered() -> list[dict] | None:
        r = await api.post(url, json={"ticket_nos": [dup_no, missing, f" {dup_no} ", main_no]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        return results if main_no in [c["ticket_no"] for c in results[0]["candidates"]] else None

    results = await eventually(offered)
    # In the order asked, a number asked twice answered once.
    assert [r["ticket_no"] for r in results] == [dup_no, missing, main_no]
    single = await api.get(f"/api/v1/tickets/{dup_no}/merge/candidates")
    assert single.status_code == 200, single.text
    assert [c["ticket_no"] for c in results[0]["candidates"]] == [
        c["ticket_no"] for c in single.json()["candidates"]
    ]
    assert set(results[0]["candidates"][0]) == set(single.json()["candidates"][0])  # the same fields
    assert dup_no not in [c["ticket_no"] for c in results[0]["candidates"]]
    # The number that does not exist: no candidates, and the refusal the single form gives it.
    assert results[1] == {
        "ticket_no": missing,
        "candidates": [],
        "error": {"code": "not_found", "message": f"工单{missing}不存在", "status": 404},
    }
    r = await api.get(f"/api/v1/tickets/{missing}/merge/candidates")
    assert (r.status_code, r.json()["message"]) == (404, f"工单{missing}不存在")

    # Refusals, in words: nothing asked, too many at once, another role.
    r = await api.post(url, json={"ticket_nos": []})
    assert (r.status_code, r.json()["field"]) == (422, "ticket_nos")
    assert "至少" in r.json()["message"]
    r = await api.post(url, json={"ticket_nos": [f"20991231-{i:06d}" for i in range(101)]})
    assert (r.status_code, r.json()["field"]) == (422, "ticket_nos")
    assert "一次最多查询100张工单" in r.json()["message"]
    r = await api.post(url, json={"ticket_nos": [dup_no]}, headers=await as_department(redis, dup))
    assert r.status_code == 403
