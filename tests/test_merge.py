"""并案 through the running system: the dispatch desk merges a duplicate into the ticket already being
handled. Both tickets change together, the duplicate's resident is texted which ticket to follow
and may ask about it by SMS, the record folds both sides, and the counters count the merge."""

from __future__ import annotations

import random

import pytest

from tests.conftest import as_department, as_sms_gateway, days_since, eventually, local_today
from tests.test_pipeline_e2e import outbox_for, submit, ticket_when

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]


def new_phone() -> str:
    return "137" + "".join(random.choices("0123456789", k=8))


async def test_the_desk_merges_a_duplicate_into_the_ticket_being_handled(api, redis, pool, settings):
    first_day = local_today(settings.timezone)  # the counters' local day may turn meanwhile
    first, second = new_phone(), new_phone()
    # A building of this test's own: many tests report the same street light, and the candidates
    # are the ten most alike, so the main ticket must be more like the duplicate than theirs are.
    building = f"阳光花园{random.randint(100, 999)}号楼"
    main_no = await submit(api, first, text=f"{building}门口的路灯坏了，晚上很黑", address=building)
    dup_no = await submit(api, second, text=f"{building}门口那盏路灯不亮了，晚上很黑，麻烦派人修一下")
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

    async def counted():
        period = days_since(first_day, settings.timezone)
        r = await api.get("/api/v1/stats", params={"group_by": "department", **period})
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
    building = f"阳光花园{random.randint(100, 999)}号楼"  # of its own, as in the test above
    main_no = await submit(api, new_phone(), text=f"{building}前面的路灯坏了", address=building)
    dup_no = await submit(api, new_phone(), text=f"{building}前面的路灯坏了好几天，晚上看不见路")
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


async def test_a_ticket_with_duplicates_is_merged_into_another_and_takes_them_along(api, redis, pool):
    """并案, chained: D was merged into A; A is merged into M. D follows A to M, M lists both, the
    residents of A and D are texted M's number, and the record follows. A cycle is refused."""
    a_phone, d_phone, m_phone = new_phone(), new_phone(), new_phone()
    a_no = await submit(
        api, a_phone, text="阳光花园9号楼东门的路灯坏了，晚上一片漆黑", address="阳光花园9号楼"
    )
    d_no = await submit(api, d_phone, text="阳光花园9号楼东门路灯不亮，麻烦派人修理")
    m_no = await submit(api, m_phone, text="阳光花园9号楼东门那盏路灯坏了好几天了", address="阳光花园9号楼")
    for no in (a_no, d_no, m_no):
        await ticket_when(api, no, lambda t: t["status"] in ("assigned", "review"))
    reason = "同一盏路灯，邻居重复反映"
    r = await api.post(f"/api/v1/tickets/{d_no}/merge", json={"into": a_no, "reason": reason})
    assert r.status_code == 200, r.text

    # A cycle: A into its own duplicate.
    r = await api.post(f"/api/v1/tickets/{a_no}/merge", json={"into": d_no, "reason": reason})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (409, "merge_cycle", "into"), r.text
    assert f"工单{d_no}已并入本工单（工单{a_no}）合并办理，两张工单不能互相并入" in r.json()["message"]

    # Asked first (the console's confirmation of a typed number): what would happen, nothing done;
    # a number that cannot take it refused in the merge's own words.
    preview = f"/api/v1/tickets/{a_no}/merge/preview"
    r = await api.post(preview, json={"into": m_no, "reason": reason})
    assert r.status_code == 200, r.text
    assert (r.json()["into"]["ticket_no"], r.json()["moved"]) == (m_no, [d_no])
    assert r.json()["into"]["status_name"]
    for wrong, status, field, words in (
        ({"into": "20991231-000001", "reason": reason}, 404, "into", "工单20991231-000001不存在"),
        ({"into": d_no, "reason": reason}, 409, "into", "两张工单不能互相并入"),
        ({"into": m_no, "reason": "重复"}, 422, "reason", "并案原因"),
    ):
        r = await api.post(preview, json=wrong)
        assert (r.status_code, r.json()["field"]) == (status, field), r.text
        assert words in r.json()["message"]
        merged = await api.post(f"/api/v1/tickets/{a_no}/merge", json=wrong)
        assert (merged.status_code, merged.json()["message"]) == (status, r.json()["message"])
    r = await api.post(f"/api/v1/tickets/{m_no}/merge/preview", json={"into": a_no, "reason": reason})
    assert r.status_code == 200  # either way round would do, before one is made
    assert (await api.get(f"/api/v1/tickets/{a_no}")).json()["merged"] == [d_no]  # nothing changed

    r = await api.post(f"/api/v1/tickets/{a_no}/merge", json={"into": m_no, "reason": reason})
    assert r.status_code == 200, r.text
    a = r.json()
    assert (a["status"], a["merged_into"], a["merged"], a["flags"]) == ("closed", m_no, [], ["已并案"])
    assert a["history"][-1]["merge"]["moved"] == [d_no]
    main = (await api.get(f"/api/v1/tickets/{m_no}")).json()
    assert main["merged"] == [a_no, d_no]
    assert "并案2件" in main["flags"]
    assert (
        main["history"][-1]["note"]
        == f"并案：工单{a_no}并入本工单（{reason}），原并入该工单的工单{d_no}随同并入"
    )
    d = (await api.get(f"/api/v1/tickets/{d_no}")).json()
    assert (d["status"], d["merged_into"]) == ("closed", m_no)
    last = d["history"][-1]
    assert (last["action"], last["note"]) == ("remerged", f"随工单{a_no}并入工单{m_no}合并办理：{reason}")
    assert last["merge"] == {
        "into": m_no,
        "duplicate": d_no,
        "response_on_time": None,
        "moved": [],
        "via": a_no,
    }

    # A's resident is told to follow M; D's, told A before, is told M now; M's hears nothing.
    async def texted(phone: str, n: int):
        found = await outbox_for(redis, phone, "progress")
        return found if len(found) >= n else None

    [to_a] = await eventually(lambda: texted(a_phone, 1))
    assert to_a["text"] == (
        f"【12345】您反映的问题（工单号{a_no}）与工单{m_no}为同一问题，已合并办理，可回复“查询{m_no}”了解进度。"
    )
    to_d = await eventually(lambda: texted(d_phone, 2))
    assert sorted(m["text"] for m in to_d) == [
        f"【12345】您反映的问题（工单号{d_no}）与工单{a_no}为同一问题，已合并办理，可回复“查询{a_no}”了解进度。",
        f"【12345】您反映的问题（工单号{d_no}）此前并入的工单{a_no}已与工单{m_no}合并办理，"
        f"请改为回复“查询{m_no}”了解进度。",
    ]
    assert await outbox_for(redis, m_phone, "progress") == []
    # D's resident asks by the number they were told first, or by the new one: their ticket, which
    # M handles now.
    gateway = await as_sms_gateway(redis)
    for asked in (a_no, m_no):
        r = await api.post(
            "/api/v1/sms/inbound", json={"phone": d_phone, "text": f"查询{asked}"}, headers=gateway
        )
        assert r.json() == {"kind": "query", "tickets": [d_no], "sms": "sent"}, asked
    answers = await outbox_for(redis, d_phone, "query")
    assert all(f"工单号{d_no}，与工单{m_no}为同一问题" in a["text"] for a in answers)

    # The record: D follows to M, A lists nobody, M lists both; the merges are counted once each
    # (D's when it was merged, A's now), the carrying along not at all.
    async def recorded():
        async with pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT ticket_no, status, merged_into, merged FROM tickets WHERE ticket_no = ANY(%s)",
                    ([a_no, d_no, m_no],),
                )
            ).fetchall()
        by_no = {row["ticket_no"]: row for row in rows}
        done = len(by_no) == 3 and by_no[d_no]["merged_into"] == m_no and by_no[m_no]["merged"]
        return by_no if done else None

    rows = await eventually(recorded)
    assert (rows[a_no]["status"], rows[a_no]["merged_into"], rows[a_no]["merged"]) == ("closed", m_no, [])
    assert (rows[d_no]["status"], rows[d_no]["merged_into"]) == ("closed", m_no)
    assert rows[m_no]["merged"] == [a_no, d_no]

    async def counted():
        async with pool.connection() as conn:
            found = await (
                await conn.execute(
                    "SELECT e.payload->>'action' AS action, count(*) AS n FROM ticket_events e "
                    "WHERE e.ticket_no = ANY(%s) AND e.topic = 'ticket.updated' GROUP BY 1",
                    ([a_no, d_no],),
                )
            ).fetchall()
        n = {r["action"]: r["n"] for r in found}
        return n if n.get("merged") == 2 and n.get("remerged") == 1 else None

    await eventually(counted)


async def test_a_ticket_whose_address_names_another_grid_is_offered_that_grids_tickets_too(api):
    """定位与地址不一致: the resident's phone was in the next grid, the address names the building
    another ticket is about. The problem may be at either place, so the desk is offered the open
    tickets of both grids to merge into."""
    building = f"阳光花园{random.randint(100, 999)}号楼"  # in s01c01g01, of this test's own
    main_no = await submit(api, new_phone(), text=f"{building}门口的路灯坏了，晚上很黑", address=building)
    main = await ticket_when(api, main_no, lambda t: t["status"] in ("assigned", "review"))
    assert main["grid"]["grid"] == "s01c01g01"
    located = {"lng": 116.33, "lat": 39.97}  # s01c01g02
    text = f"{building}门口那盏路灯不亮了，晚上很黑"
    dup_no = await submit(api, new_phone(), text=text, address=building, location=located)
    dup = await ticket_when(api, dup_no, lambda t: t["status"] in ("assigned", "review"))
    assert (dup["grid"]["grid"], dup["grid"]["address_grid"]) == ("s01c01g02", "s01c01g01")

    async def offered() -> list[str] | None:
        r = await api.get(f"/api/v1/tickets/{dup_no}/merge/candidates")
        assert r.status_code == 200, r.text
        found = [c["ticket_no"] for c in r.json()["candidates"]]
        return found if main_no in found else None

    assert dup_no not in await eventually(offered)
    r = await api.post("/api/v1/tickets/merge/candidates", json={"ticket_nos": [dup_no]})
    assert main_no in [c["ticket_no"] for c in r.json()["results"][0]["candidates"]]
