"""Grid workers (网格员) on patrol, through the running processes: a report takes the worker's grid
(or the phone's position), is routed like any appeal, or is resolved by the grid's street office
when the worker dealt with it on the spot; the worker reads its own grid's tickets and no others."""

from __future__ import annotations

import pytest

from shared.auth import issue_token
from tests.conftest import days_since, eventually, local_today
from tests.test_pipeline_e2e import ticket_when

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]

GRID = "s01c01g02"  # 和平里社区第二网格, street s01 (和平街道): lng 116.32-116.34, lat 39.96-39.98
NEIGHBOUR = "s01c01g01"  # lng 116.30-116.32, the same latitudes


async def grid_worker(redis, grid: str = GRID, worker: str = "W017") -> dict:
    token = await issue_token(redis, "grid_worker", operator=worker, grid=grid)
    return {"Authorization": f"Bearer {token}"}


async def test_a_patrol_report_is_routed_in_the_workers_grid_and_the_worker_follows_it(api, redis):
    worker = await grid_worker(redis)
    text = "巡查发现路边一盏路灯灯杆倾斜，灯罩脱落，夜间不亮，存在安全隐患"
    r = await api.post("/api/v1/appeals", json={"text": text}, headers=worker)
    assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]
    ticket = await ticket_when(api, no, lambda t: t["status"] in ("assigned", "review", "meeting"))
    assert ticket["channel"] == "patrol"
    assert ticket["grid"]["grid"] == GRID
    assert ticket["grid"]["method"] == "patrol"
    # The worker reads its grid's ticket, from Redis now and from the record once it is there.
    r = await api.get(f"/api/v1/tickets/{no}", headers=worker)
    assert r.status_code == 200
    assert r.json()["ticket_no"] == no

    async def listed():
        r = await api.get("/api/v1/tickets", params={"size": 50}, headers=worker)
        assert r.status_code == 200, r.text
        return r.json() if any(i["ticket_no"] == no for i in r.json()["items"]) else None

    found = await eventually(listed)
    assert {i["grid"] for i in found["items"]} == {GRID}  # nothing from another grid, whatever the filter
    r = await api.get("/api/v1/tickets", params={"grid": NEIGHBOUR}, headers=worker)
    assert r.json()["total"] == 0
    # Another grid's worker sees no such ticket, and cannot act on it as a department would.
    other = await grid_worker(redis, NEIGHBOUR, "W018")
    assert (await api.get(f"/api/v1/tickets/{no}", headers=other)).status_code == 404
    r = await api.post(f"/api/v1/tickets/{no}/accept", headers=worker)
    assert r.status_code == 403


async def test_the_phones_position_decides_the_grid_over_the_workers_own(api, redis):
    worker = await grid_worker(redis)
    r = await api.post(
        "/api/v1/appeals",
        json={
            "text": "巡查发现人行道上有一处井盖缺失，行人容易踩空",
            "location": {"lng": 116.31, "lat": 39.97},
        },
        headers=worker,
    )
    assert r.status_code == 201, r.text
    ticket = await ticket_when(api, r.json()["ticket_no"], lambda t: t["grid"] is not None)
    assert ticket["grid"]["grid"] == NEIGHBOUR
    assert ticket["grid"]["method"] == "coordinates"
    assert ticket["location"] == {"lng": 116.31, "lat": 39.97}


async def test_an_address_in_another_grid_is_said_and_a_patrol_report_waits_for_the_desk(api, redis):
    """定位与地址不一致: a report placed by the worker's grid whose address is a compound of the next
    grid waits at the dispatch desk, saying both grids, and the desk places it as it dispatches it;
    one placed by the phone's position is routed by its rule (a streetlight is the district's
    anywhere), the disagreement carried for the department to read."""
    worker = await grid_worker(redis)
    admin = {"Authorization": f"Bearer {await issue_token(redis, 'admin')}"}
    said = "上报网格与地址不一致：网格员所属和平里社区第二网格，地址在和平里社区第一网格"
    text = "巡查发现小区门口一盏路灯灯杆倾斜，灯罩脱落，夜间不亮，存在安全隐患"
    r = await api.post("/api/v1/appeals", json={"text": text, "address": "和平里小区3号楼"}, headers=worker)
    assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]
    waiting = await ticket_when(api, no, lambda t: t["status"] == "review")
    grid = waiting["grid"]
    assert (grid["grid"], grid["method"], grid["address_grid"]) == (GRID, "patrol", NEIGHBOUR)
    classified = next(h for h in waiting["history"] if h["topic"] == "appeal.classified")
    assert (classified["version"], classified["needs_review"]) == (2, True)
    at_desk = waiting["history"][-1]
    assert (at_desk["topic"], at_desk["via"]) == ("ticket.assigned", "dispatch_desk")
    assert at_desk["explanation"].startswith(f"{said}，请核实事发网格后人工派单")
    r = await api.post(
        f"/api/v1/dispatch/{no}/assign", headers=admin, json={"department": "urban_mgmt", "grid": NEIGHBOUR}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["grid"]["grid"], r.json()["grid"]["method"]) == (NEIGHBOUR, "desk")
    assert r.json()["grid"].get("address_grid") is None  # settled by a person

    r = await api.post(
        "/api/v1/appeals",
        json={"text": text, "address": "翠竹苑3号楼", "location": {"lng": 116.31, "lat": 39.97}},
        headers=worker,
    )
    assert r.status_code == 201, r.text
    routed = await ticket_when(api, r.json()["ticket_no"], lambda t: t["status"] in ("assigned", "review"))
    grid = routed["grid"]
    assert (grid["grid"], grid["method"], grid["address_grid"]) == (NEIGHBOUR, "coordinates", GRID)
    assert (routed["status"], routed["department"]["id"]) == ("assigned", "urban_mgmt")
    assigned = routed["history"][-1]
    assert assigned["explanation"].endswith(
        "；定位与地址不一致：定位在和平里社区第一网格，地址在和平里社区第二网格，请核实事发位置"
    )


async def test_what_the_worker_dealt_with_on_the_spot_is_resolved_by_its_street_office(api, redis):
    first_day = local_today()  # before the report: the figures' local day may turn meanwhile
    worker = await grid_worker(redis, worker="W019")
    done = "已现场联系物业清理楼道堆放的纸箱杂物，通道已畅通"
    r = await api.post(
        "/api/v1/appeals",
        json={"text": "巡查发现3号楼楼道堆放大量纸箱杂物，堵塞消防通道", "direct_answer": done},
        headers=worker,
    )
    assert r.status_code == 201, r.text
    assert "现场处置" in r.json()["message"]
    no = r.json()["ticket_no"]
    # Nobody to survey and nothing to check: resolved, then closed when its survey is skipped. Wait
    # for the end (resolved alone may pass between two polls).
    ticket = await ticket_when(api, no, lambda t: t["status"] == "closed")
    actions = [h.get("action") for h in ticket["history"] if h["topic"] == "ticket.updated"]
    assert actions == ["accepted", "resolved", "closed"]
    assert ticket["department"]["id"] == "street_s01"
    assert ticket["assigned_via"] == "on_spot"
    assert ticket["resolution_note"] == done
    assigned = next(h for h in ticket["history"] if h["topic"] == "ticket.assigned")
    assert "网格员W019巡查发现并现场处置" in assigned["explanation"]
    assert ticket["meeting_id"] is None  # done: it joins no hotspot meeting

    # Counted apart from the hotline's direct answers (the record's count: tests/test_records.py).
    async def counted():
        r = await api.get("/api/v1/stats", params={"group_by": "department", **days_since(first_day)})
        assert r.status_code == 200, r.text
        street = next((g for g in r.json()["groups"] if g["group"] == "street_s01"), None)
        return street if street and street["handled_on_spot"] >= 1 else None

    street = await eventually(counted)
    assert street["answered_directly"] == 0


async def test_a_grid_worker_can_only_report_on_patrol(api, redis):
    worker = await grid_worker(redis)
    r = await api.post(
        "/api/v1/appeals", json={"channel": "hotline", "text": "巡查发现小区门口路灯不亮"}, headers=worker
    )
    assert r.status_code == 422
    assert r.json()["field"] == "channel"
    r = await api.post(
        "/api/v1/appeals/batch", files={"file": ("slips.csv", b"text\n", "text/csv")}, headers=worker
    )
    assert r.status_code == 403
    assert "网格员" in r.json()["message"]
    # A worker's token without a grid (minted by hand, wrongly) is refused with what to do.
    token = await issue_token(redis, "grid_worker", operator="W020")
    r = await api.post(
        "/api/v1/appeals",
        json={"text": "巡查发现小区门口路灯不亮"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 422
    assert "appeals token --grid-worker" in r.json()["message"]


async def test_a_workers_own_reports_follow_it_to_another_grid_and_to_their_end(api, redis):
    """我上报的: a worker's reports, from the record, newest first, with where each stands; one the
    desk placed in another grid stays in the list (人工选定) and the worker still reads its page;
    another worker of the same grid, and a hotline operator with the same 工号, have none of them."""
    worker = await grid_worker(redis, worker="W061")
    colleague = await grid_worker(redis, worker="W062")  # the same grid: the list is by reporter
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='W061')}"}
    admin = {"Authorization": f"Bearer {await issue_token(redis, 'admin')}"}

    async def report(body: dict, headers: dict = worker) -> str:
        r = await api.post("/api/v1/appeals", json=body, headers=headers)
        assert r.status_code == 201, r.text
        return r.json()["ticket_no"]

    moved = await report(
        {"text": "巡查发现小区门口一盏路灯灯杆倾斜，灯罩脱落，夜间不亮", "address": "和平里小区3号楼",
         "caller_phone": "13912345678"}
    )  # fmt: skip
    await ticket_when(api, moved, lambda t: t["status"] == "review")  # 定位与地址不一致: at the desk
    placing = {"department": "urban_mgmt", "grid": NEIGHBOUR}
    r = await api.post(f"/api/v1/dispatch/{moved}/assign", headers=admin, json=placing)
    assert r.status_code == 200, r.text
    handled = await report({"text": "巡查发现翠竹苑2号楼楼道堆放纸箱杂物", "direct_answer": "已联系物业清理"})
    await ticket_when(api, handled, lambda t: t["status"] == "closed")
    words = "来电反映小区门口路灯不亮好几天了，晚上出行不便"
    by_phone = await report({"channel": "hotline", "text": words}, operator)

    async def in_the_record() -> bool:  # the operator's ticket, recorded with its 工号 W061
        r = await api.get("/api/v1/tickets", params={"q": words}, headers=admin)
        return any(i["ticket_no"] == by_phone for i in r.json()["items"])

    await eventually(in_the_record, timeout=60)

    async def reports(headers: dict = worker, **params) -> dict:
        r = await api.get("/api/v1/tickets/reported", params=params, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def both_recorded() -> dict | None:
        body = await reports()
        items = {i["ticket_no"]: i for i in body["items"]}
        placed = items.get(moved, {}).get("grid") == NEIGHBOUR
        return body if placed and items.get(handled, {}).get("status") == "closed" else None

    mine = await eventually(both_recorded, timeout=60)
    assert [i["ticket_no"] for i in mine["items"]] == [handled, moved]  # newest first
    assert (mine["total"], mine["state"]) == (2, "all")
    placed = mine["items"][1]
    assert (placed["status"], placed["department_name"], placed["grid_chosen"]) == (
        "assigned",
        "区城市管理委员会",
        True,
    )
    assert placed["resolve_by"] is not None
    assert mine["items"][0]["grid_chosen"] is False
    assert not {"masked_phone", "caller_id", "caller"} & set(placed)  # no resident's contact in a list
    # By where they stand; another worker's 工号 in the address changes nothing.
    assert [i["ticket_no"] for i in (await reports(state="open"))["items"]] == [moved]
    assert [i["ticket_no"] for i in (await reports(state="done"))["items"]] == [handled]
    assert (await reports(operator_id="W062", operator="W062"))["total"] == 2
    assert (await reports(colleague))["total"] == 0
    assert by_phone not in {i["ticket_no"] for i in mine["items"]}
    r = await api.get("/api/v1/tickets/reported", params={"state": "closed"}, headers=worker)
    assert (r.status_code, r.json()["field"]) == (422, "state")
    for other in (operator, admin):  # the list is a grid worker's own: no one else has one
        assert (await api.get("/api/v1/tickets/reported", headers=other)).status_code == 403

    # Its page, in the other grid now, for the worker who reported it; not for its colleague, whose
    # grid it left; and reading is all: checking it on the spot is the other grid's worker's.
    r = await api.get(f"/api/v1/tickets/{moved}", headers=worker)
    assert (r.status_code, r.json()["grid"]["grid"]) == (200, NEIGHBOUR)
    assert (await api.get(f"/api/v1/tickets/{moved}", headers=colleague)).status_code == 404
    r = await api.post(f"/api/v1/tickets/{moved}/verify", json={"solved": True}, headers=worker)
    assert r.status_code == 404

    # Placed again later, from its page (事发网格): the list follows it there, 人工选定 still.
    r = await api.post(f"/api/v1/tickets/{moved}/place", json={"grid": "s02c01g01"}, headers=admin)
    assert r.status_code == 200, r.text

    async def placed_again() -> dict | None:
        item = next(i for i in (await reports())["items"] if i["ticket_no"] == moved)
        return item if item["grid"] == "s02c01g01" else None

    assert (await eventually(placed_again, timeout=60))["grid_chosen"] is True
