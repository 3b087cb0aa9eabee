"""The router on the real broker and Redis, through the running processes: routing by rule, the
dispatch desk, return and re-route, the desk's re-dispatch (改派), extensions, joint meetings,
hotspots, deadline timers fired once across router replicas, and department isolation.

Classified appeals are published straight to `appeal.classified` (the classifier has its own tests),
so each test knows the category and grid it routes."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import random
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from aiokafka import AIOKafkaProducer

from services.notifier.scorecard import Scorecard
from services.notifier.scoring import Weights
from services.records.retention import Retention
from services.router import meetings
from services.router.service import MeetingStore
from services.router.workflow import REQUIRED
from shared import bus, topics
from shared.auth import issue_token
from shared.events import TicketAssigned, TicketUpdated
from shared.store import TicketStore
from tests.cities import HOTSPOT_COUNT, TINY_CATEGORY
from tests.conftest import ROOT, days_since, eventually, local_today, settings_env
from tests.router_factory import classified

pytestmark = pytest.mark.integration
# The version the router writes now: a history read back says which one wrote each line.
TICKET_UPDATED_VERSION = TicketUpdated.model_fields["version"].default
_numbers = itertools.count(random.randint(100000, 800000))


def new_no() -> str:
    return f"20261124-{next(_numbers):06d}"


@pytest.fixture(scope="module")
def city(system_city):
    return system_city  # the city the started system runs (test deadlines), not the demo city


@pytest.fixture
async def producer(settings):
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def tokens(redis):
    cache: dict[str, dict] = {}

    async def headers(dept: str | None = None) -> dict:
        key = dept or "<admin>"
        if key not in cache:
            token = await issue_token(redis, "department" if dept else "admin", dept)
            cache[key] = {"Authorization": f"Bearer {token}"}
        return cache[key]

    return headers


async def inject(producer, city, category: str, grid: str | None, **kw) -> str:
    no = new_no()
    event = classified(city, category, grid, no=no, at=datetime.now(UTC), **kw)
    await producer.send_and_wait(topics.APPEAL_CLASSIFIED, event.to_bytes(), key=no.encode())
    return no


async def ticket_when(api, tokens, no: str, predicate, timeout: float = 30) -> dict:
    admin = await tokens()

    async def probe():
        r = await api.get(f"/api/v1/tickets/{no}", headers=admin)
        return r.json() if r.status_code == 200 and predicate(r.json()) else None

    return await eventually(probe, timeout=timeout)


async def test_routing_by_rule_and_the_department_queue(api, producer, city, tokens):
    no = await inject(producer, city, "city.appearance.garbage", "s03c02g03")
    t = await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    assert t["department"]["id"] == "street_s03"
    assert t["assigned_via"] == "rule"
    assigned = t["history"][-1]
    assert assigned["topic"] == "ticket.assigned"
    assert city.grids["s03c02g03"].grid.name in assigned["rule"]  # the rule's grid, by name
    assert "权责清单" in assigned["explanation"]
    assert "0.90" in assigned["explanation"]

    mine = await tokens("street_s03")

    async def listed():
        r = await api.get("/api/v1/departments/street_s03/tickets", headers=mine, params={"size": 200})
        return r.json() if no in [x["ticket_no"] for x in r.json()["tickets"]] else None

    queue = await eventually(listed)
    deadlines = [
        x["respond_by"] if x["status"] == "assigned" else x["resolve_by"]
        for x in queue["tickets"]
        if x["status"] in ("assigned", "accepted")
    ]
    assert deadlines == sorted(deadlines)  # most urgent first
    assert all(x["department"]["id"] == "street_s03" for x in queue["tickets"])
    # Its numbers only (what a live page needs: no ticket is read for them).
    r = await api.get("/api/v1/departments/street_s03/tickets/numbers", headers=mine)
    numbers = r.json()
    assert numbers["department"] == "street_s03"
    assert numbers["total"] == len(numbers["ticket_nos"])
    assert no in numbers["ticket_nos"]


async def test_department_isolation(api, producer, city, tokens):
    no = await inject(producer, city, "city.appearance.garbage", "s03c02g03")
    await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    other = await tokens("water")
    missing = await api.get("/api/v1/tickets/20991231-000001", headers=other)
    theirs = await api.get(f"/api/v1/tickets/{no}", headers=other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["message"].replace(no, "X") == missing.json()["message"].replace(
        "20991231-000001", "X"
    )
    for action, body in (
        ("accept", None),
        ("resolve", {"note": "x"}),
        ("return", {"reason": "duplicate"}),
        ("extend", {"days": 1, "reason": "x"}),
    ):
        r = await api.post(f"/api/v1/tickets/{no}/{action}", headers=other, json=body)
        assert r.status_code == 404, action
        assert "street_s03" not in r.text, action
    for path in ("/api/v1/departments/street_s03/tickets", "/api/v1/departments/street_s03/tickets/numbers"):
        queue = await api.get(path, headers=other)
        assert queue.status_code == 403
        assert "total" not in queue.json()
        assert no not in queue.text
    assert (await api.get(f"/api/v1/tickets/{no}")).status_code == 401
    assert (
        await api.get(f"/api/v1/tickets/{no}", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    assert (await api.post(f"/api/v1/tickets/{no}/accept")).status_code == 401
    r = await api.post(f"/api/v1/tickets/{no}/accept", headers=await tokens())
    assert r.status_code == 403  # the dispatch desk does not act for a department
    r = await api.post(f"/api/v1/tickets/{no}/accept", headers=await tokens("street_s03"))
    assert r.status_code == 200
    assert r.json()["status"] == "accepted"


async def test_dispatch_desk_fallback_and_feedback(api, producer, city, tokens, redis):
    no = await inject(producer, city, "city.appearance.garbage", "s01c01g01", confidence=0.2)
    t = await ticket_when(api, tokens, no, lambda t: t["status"] == "review")
    assert t["department"]["id"] == "dispatch_desk"
    assert "0.20" in t["history"][-1]["explanation"]
    admin = await tokens()

    async def queued():
        r = await api.get("/api/v1/dispatch/queue", headers=admin, params={"size": 200})
        return no in [x["ticket_no"] for x in r.json()["tickets"]]

    await eventually(queued)
    # Below the review threshold: on the desk's 低置信度待复核 list, on the page that holds it.
    low = (
        await api.get("/api/v1/dispatch/queue", headers=admin, params={"low": "true", "ticket": no})
    ).json()
    assert no in [x["ticket_no"] for x in low["tickets"]]
    others = await api.get("/api/v1/dispatch/queue", headers=admin, params={"low": "false", "size": 200})
    assert no not in [x["ticket_no"] for x in others.json()["tickets"]]
    assert (await api.get("/api/v1/dispatch/queue", headers=await tokens("urban_mgmt"))).status_code == 403
    r = await api.post(
        f"/api/v1/dispatch/{no}/assign", headers=admin, json={"department": "nobody", "note": "x"}
    )
    assert r.status_code == 422
    assert "departments.yaml" in r.json()["message"]
    r = await api.post(
        f"/api/v1/dispatch/{no}/assign",
        headers=admin,
        json={
            "department": "urban_enforcement",
            "category": "city.appearance.street_vending",
            "note": "实为占道经营",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["department"]["id"], body["assigned_via"]) == (
        "assigned",
        "urban_enforcement",
        "operator",
    )
    assert body["category"] == "city.appearance.street_vending"
    example = await redis.get(f"feedback:ticket:{no}")
    assert b'"source": "dispatch"' in example
    assert b"city.appearance.street_vending" in example
    again = await api.post(f"/api/v1/dispatch/{no}/assign", headers=admin, json={"department": "water"})
    assert again.status_code == 409


def placed_by_desk(ticket: dict) -> tuple[str, str, str, str]:
    """Where a ticket is, as the desk placed it: its grid, community, street and how it was placed."""
    grid = ticket["grid"]
    return grid["grid"], grid["community"], grid["street"], grid["method"]


async def test_the_desk_places_a_ticket_without_a_grid_and_its_grid_worker_finds_it(
    api, producer, city, tokens, redis, pool
):
    """人工派单 with the grid: a ticket the classifier could not place (a vague address) is placed by
    the desk as it dispatches it. The ticket (Redis), its assignment, the record's row (grid,
    community, street) and the grid worker's list all have that grid; the worker reads the ticket,
    another grid's worker does not. A grid the city does not have is refused, saying what to do."""
    no = await inject(producer, city, "city.appearance.garbage", None, confidence=0.2)
    waiting = await ticket_when(api, tokens, no, lambda t: t["status"] == "review")
    assert (waiting["grid"] or {}).get("grid") is None
    admin = await tokens()
    url = f"/api/v1/dispatch/{no}/assign"
    r = await api.post(url, headers=admin, json={"department": "urban_mgmt", "grid": "s09c09g09"})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (422, "unknown_grid", "grid")
    assert r.json()["message"] == "没有编号为“s09c09g09”的网格，请在“事发网格”中按街道、社区选择一个网格"
    r = await api.post(url, headers=admin, json={"department": "urban_mgmt", "grid": "s02c01g02"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "assigned"
    assert placed_by_desk(body) == ("s02c01g02", "s02c01", "s02", "desk")
    assigned = body["history"][-1]
    got = tuple(assigned[k] for k in ("topic", "grid", "grid_chosen", "version", "first"))
    # The desk's dispatch of a ticket that waited at the desk: its first (受理).
    assert got == ("ticket.assigned", "s02c01g02", True, 5, True)
    assert "事发网格人工选定为建设街道/建设社区第二网格" in assigned["explanation"]

    # The record places it: the row's grid, community and street.
    async def placed():
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT grid, community, street FROM tickets WHERE ticket_no = %s AND status = 'assigned'",
                (no,),
            )
            return await cur.fetchone()

    row = await eventually(placed, timeout=30)
    assert (row["grid"], row["community"], row["street"]) == ("s02c01g02", "s02c01", "s02")

    # The grid's worker lists it (the record's list of the grid) and reads it; another grid's, not.
    async def grid_worker(operator: str, grid: str) -> dict:
        token = await issue_token(redis, "grid_worker", operator=operator, grid=grid)
        return {"Authorization": f"Bearer {token}"}

    worker, other = await grid_worker("W031", "s02c01g02"), await grid_worker("W032", "s01c01g01")

    async def listed(headers: dict) -> list[str]:
        r = await api.get("/api/v1/tickets", headers=headers, params={"size": 200})
        assert r.status_code == 200, r.text
        return [t["ticket_no"] for t in r.json()["items"]]

    assert no in await listed(worker)
    assert no not in await listed(other)
    r = await api.get(f"/api/v1/tickets/{no}", headers=worker)
    assert (r.status_code, r.json()["grid"]["grid"]) == (200, "s02c01g02")
    assert (await api.get(f"/api/v1/tickets/{no}", headers=other)).status_code == 404
    # The desk's list by street finds it there too (the rankings' and the dashboard's grouping).
    r = await api.get(
        "/api/v1/tickets", headers=admin, params={"street": "s02", "grid": "s02c01g02", "size": 200}
    )
    assert no in [t["ticket_no"] for t in r.json()["items"]]


async def test_the_desk_places_an_assigned_ticket_and_the_record_and_the_duplicate_index_follow(
    api, producer, city, tokens, redis, pool, settings
):
    """事发网格 after the assignment: a street-light appeal routed by its rule in the grid its address
    was matched to is found to be in another. The desk places it there (the department may not):
    its department and status stay, its history says where it was; the record's row moves to that
    grid, community and street (lists, search, the grid worker's list); intake's duplicate index
    offers it to a ticket of the new grid waiting at the desk (并案's candidates) and no longer to
    one of the old. An unknown grid, the grid it has and a closed ticket are refused, in words."""
    cat = "city.facility.streetlight"
    no = await inject(producer, city, cat, "s01c01g01")
    old_kin = await inject(producer, city, cat, "s01c01g01", confidence=0.2)  # at the desk, old grid
    new_kin = await inject(producer, city, cat, "s02c01g02", confidence=0.2)  # at the desk, new grid
    routed = await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    for kin in (old_kin, new_kin):
        await ticket_when(api, tokens, kin, lambda t: t["status"] == "review")
    admin = await tokens()

    async def candidates(of: str) -> list[str]:
        r = await api.get(f"/api/v1/tickets/{of}/merge/candidates", headers=admin)
        assert r.status_code == 200, r.text
        return [c["ticket_no"] for c in r.json()["candidates"]]

    assert no in await eventually(lambda: _listing(candidates(old_kin), no), timeout=30)
    assert no not in await candidates(new_kin)

    url = f"/api/v1/tickets/{no}/place"
    r = await api.post(url, headers=await tokens(routed["department"]["id"]), json={"grid": "s02c01g02"})
    assert r.status_code == 403
    assert "只有派单中心可以更改事发网格" in r.json()["message"]
    r = await api.post(url, headers=admin, json={"grid": "s09c09g09"})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (422, "unknown_grid", "grid")
    assert r.json()["message"] == "没有编号为“s09c09g09”的网格，请在“事发网格”中按街道、社区选择一个网格"
    r = await api.post(url, headers=admin, json={"grid": "s01c01g01"})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (409, "same_grid", "grid")
    r = await api.post(url, headers=admin, json={"grid": "s02c01g02"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["department"]["id"]) == ("assigned", routed["department"]["id"])
    assert placed_by_desk(body) == ("s02c01g02", "s02c01", "s02", "desk")
    placed = body["history"][-1]
    assert (placed["topic"], placed["action"], placed["version"], placed["grid"]) == (
        "ticket.updated",
        "placed",
        TICKET_UPDATED_VERSION,
        "s02c01g02",
    )
    assert (
        placed["note"]
        == "事发网格人工选定为建设街道/建设社区第二网格，原为和平街道/和平里社区第一网格（12345派单中心）"
    )

    # The record: the row's grid, community and street, with its status and department as they were.
    async def row():
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT status, department, grid, community, street FROM tickets "
                "WHERE ticket_no = %s AND grid = 's02c01g02'",
                (no,),
            )
            return await cur.fetchone()

    recorded = await eventually(row, timeout=30)
    assert (recorded["status"], recorded["department"]) == ("assigned", routed["department"]["id"])
    assert (recorded["community"], recorded["street"]) == ("s02c01", "s02")

    # The grid's worker lists it (the record's list of the grid); the old grid's worker no longer.
    async def worker(operator: str, grid: str) -> dict:
        token = await issue_token(redis, "grid_worker", operator=operator, grid=grid)
        return {"Authorization": f"Bearer {token}"}

    for headers, expected in (
        (await worker("W051", "s02c01g02"), True),
        (await worker("W052", "s01c01g01"), False),
    ):
        r = await api.get("/api/v1/tickets", headers=headers, params={"size": 200})
        assert (no in [t["ticket_no"] for t in r.json()["items"]]) is expected

    # Intake's duplicate index: offered in its new grid, no more in the old.
    assert no in await eventually(lambda: _listing(candidates(new_kin), no), timeout=30)
    assert no not in await candidates(old_kin)

    # A closed ticket (a duplicate merged into it, 并案) is refused, saying why.
    r = await api.post(
        f"/api/v1/tickets/{old_kin}/merge", headers=admin, json={"into": no, "reason": "同一盏路灯重复反映"}
    )
    assert r.status_code == 200, r.text
    refusal = "当前状态为“已关闭”，不能更改事发网格"
    r = await api.post(f"/api/v1/tickets/{old_kin}/place", headers=admin, json={"grid": "s02c01g02"})
    assert (r.status_code, r.json()["error"]) == (409, "illegal_transition")
    assert refusal in r.json()["message"]

    # Left Redis for the record (retention): the same refusal, not "no such ticket".
    async def closed_in_the_record():  # what the record lacks of its history, retention copies in
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT status FROM tickets WHERE ticket_no = %s", (old_kin,))
            return ((await cur.fetchone()) or {}).get("status") == "closed"

    await eventually(closed_in_the_record, timeout=30)
    retention = Retention(pool, TicketStore(redis), settings)
    assert await retention.evict_closed(datetime.now(UTC) + timedelta(minutes=1)) >= 1
    assert not await redis.exists(f"t:{old_kin}")
    r = await api.post(f"/api/v1/tickets/{old_kin}/place", headers=admin, json={"grid": "s02c01g02"})
    assert (r.status_code, r.json()["error"]) == (409, "illegal_transition")
    assert refusal in r.json()["message"]


async def _listing(found, no: str) -> list[str] | None:
    """The numbers found, once they hold `no` (for `eventually`)."""
    nos = await found
    return nos if no in nos else None


async def test_return_reroute_and_a_joint_meeting_after_two_returns(api, producer, city, tokens):
    no = await inject(producer, city, "city.appearance.garbage", "s03c02g03")
    await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    street = await tokens("street_s03")
    r = await api.post(f"/api/v1/tickets/{no}/return", headers=street, json={"reason": "not_ours"})
    assert r.status_code == 422
    assert r.json()["field"] == "disputed_rule"  # which parameter to fill in; the message says why
    assert "如有异议" in r.json()["message"]
    r = await api.post(f"/api/v1/tickets/{no}/return", headers=street, json={"reason": "太忙"})
    assert r.status_code == 422
    assert "not_ours" in r.json()["message"]
    r = await api.post(
        f"/api/v1/tickets/{no}/return",
        headers=street,
        json={
            "reason": "not_ours",
            "note": "市场内垃圾由市场方清运",
            "disputed_rule": "南苑批发市场网格规则",
        },
    )
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["department"]["id"], t["assigned_via"], t["returns"]) == ("urban_mgmt", "reroute", 1)
    assert [h.get("action") for h in t["history"][-2:]] == ["returned", None]
    assert (await api.get(f"/api/v1/tickets/{no}", headers=street)).status_code == 404  # no longer theirs

    mgmt = await tokens("urban_mgmt")
    r = await api.post(
        f"/api/v1/tickets/{no}/return",
        headers=mgmt,
        json={"reason": "needs_other", "disputed_rule": "属于街道保洁范围"},
    )
    assert r.status_code == 200
    assert r.json()["status"] == "meeting"
    mid = r.json()["meeting_id"]
    admin = await tokens()

    async def opened():
        m = await api.get(f"/api/v1/meetings/{mid}", headers=admin)
        return m.json() if m.status_code == 200 else None

    meeting = await eventually(opened)
    assert meeting["reason"] == "returned_twice"
    assert meeting["tickets"] == [no]
    assert meeting["lead_street"] == "street_s03"
    assert {"street_s03", "urban_mgmt"} <= {d["id"] for d in meeting["summoned"]}
    assert (await api.get(f"/api/v1/meetings/{mid}", headers=await tokens("water"))).status_code == 404
    r = await api.post(f"/api/v1/meetings/{mid}/checkin", headers=mgmt)
    assert r.status_code == 200
    assert {d["id"]: d["checked_in"] for d in r.json()["summoned"]}["urban_mgmt"]
    assert (
        await api.post(f"/api/v1/meetings/{mid}/decide", headers=mgmt, json={"lead": "urban_mgmt"})
    ).status_code == 403
    r = await api.post(
        f"/api/v1/meetings/{mid}/decide", headers=admin, json={"lead": "street_s03", "note": "街道牵头"}
    )
    assert r.status_code == 200
    assert r.json()["status"] == "decided"
    t = await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    assert (t["department"]["id"], t["assigned_via"]) == ("street_s03", "meeting")
    # The meeting's facts are in the ticket's history too, each once.
    seen = [h.get("action", h["topic"]) for h in t["history"] if h["topic"].startswith("meeting.")]
    assert seen == ["meeting.convened", "checked_in", "decided"]
    r = await api.post(f"/api/v1/tickets/{no}/return", headers=street, json={"reason": "duplicate"})
    assert r.status_code == 409
    assert "联席会议" in r.json()["message"]


async def contested_meetings(api, producer, city, tokens, grid: str, n: int) -> list[dict]:
    """`n` tickets whose ownership is contested (路灯 or 供电) in `grid`, each held for a joint
    meeting of its own; returns the tickets once each meeting is open."""
    nos = [
        await inject(
            producer, city, "city.facility.streetlight", grid, confidence=0.55, second=("utility.power", 0.5)
        )
        for _ in range(n)
    ]
    held = [await ticket_when(api, tokens, no, lambda t: t["status"] == "meeting") for no in nos]
    admin = await tokens()
    for t in held:  # the router opens each from the escalation, a moment after the ticket's write
        mid = t["meeting_id"]
        await eventually(lambda mid=mid: _status_of(api, admin, f"/api/v1/meetings/{mid}", 200))
    return held


async def test_a_joint_meeting_s_lead_takes_the_next_appeal_of_its_cluster(
    api, producer, city, tokens, redis
):
    """先例: a meeting settled who leads on streetlights in one grid (the power company, not the
    urban management the list names); the next streetlight of that grid goes straight to it, by the
    router, with the meeting named in the explanation and no meeting of its own; one in another
    grid goes by the list as before."""
    grid = "s01c02g03"  # a grid of its own: no other test routes a streetlight there
    [held] = await contested_meetings(api, producer, city, tokens, grid, 1)
    mid, admin = held["meeting_id"], await tokens()
    decision = {"lead": "power", "note": "线路归供电"}
    r = await api.post(f"/api/v1/meetings/{mid}/decide", headers=admin, json=decision)
    assert r.status_code == 200, r.text
    assert await redis.ttl(f"precedent:city.facility.streetlight:{grid}") > 29 * 86400
    later = await inject(producer, city, "city.facility.streetlight", grid)
    t = await ticket_when(api, tokens, later, lambda t: t["status"] == "assigned")
    assert (t["department"]["id"], t["assigned_via"], t["meeting_id"]) == ("power", "rule", None)
    assigned = t["history"][-1]
    assert assigned["rule"] == f"联席会议{mid}决定"
    assert assigned["explanation"].startswith(f"按联席会议（会议编号{mid}）确定的主办单位派单：")
    elsewhere = await inject(producer, city, "city.facility.streetlight", "s01c02g02")
    t = await ticket_when(api, tokens, elsewhere, lambda t: t["status"] == "assigned")
    assert t["department"]["id"] == "urban_mgmt"


async def _status_of(api, headers: dict, path: str, status: int) -> bool:
    return (await api.get(path, headers=headers)).status_code == status


async def meetings_listed(api, headers: dict, **params) -> dict:
    r = await api.get("/api/v1/meetings", headers=headers, params={"size": 200, **params})
    assert r.status_code == 200, r.text
    return r.json()


def ids_of(listed: dict) -> list[str]:
    return [m["meeting_id"] for m in listed["meetings"]]


async def test_a_summoned_department_that_holds_none_of_the_tickets_lists_the_meeting_and_checks_in(
    api, producer, city, tokens, redis
):
    """吹哨报到: the street office leads a meeting about tickets another department holds; it lists
    the meeting (a department not summoned does not), checks in, and a decided one stays listed,
    as decided, after the open ones."""
    grid = "s02c02g02"  # a grid of its own: street_s02 leads, urban_mgmt holds the tickets
    held = await contested_meetings(api, producer, city, tokens, grid, 2)
    to_decide, to_attend = (t["meeting_id"] for t in held)
    assert all(t["department"]["id"] == "urban_mgmt" for t in held)  # the street office holds none
    street, water, admin = await tokens("street_s02"), await tokens("water"), await tokens()
    mine = await meetings_listed(api, street)
    assert {to_decide, to_attend} <= set(ids_of(mine))
    listed = {m["meeting_id"]: m for m in mine["meetings"]}
    assert listed[to_attend] == (await api.get(f"/api/v1/meetings/{to_attend}", headers=street)).json()
    assert listed[to_attend]["lead_street"] == "street_s02"
    count = (await api.get("/api/v1/meetings/count", headers=street)).json()
    assert min(count["to_check_in"], count["open"]) >= 2

    r = await api.post(f"/api/v1/meetings/{to_attend}/checkin", headers=street)
    assert r.status_code == 200, r.text
    assert {d["id"]: d["checked_in"] for d in r.json()["summoned"]}["street_s02"]
    after = (await api.get("/api/v1/meetings/count", headers=street)).json()
    assert (after["open"], after["to_check_in"]) == (count["open"], count["to_check_in"] - 1)
    r = await api.post(
        f"/api/v1/meetings/{to_decide}/decide", headers=admin, json={"lead": "street_s02", "note": "街道牵头"}
    )
    assert r.status_code == 200, r.text

    mine = await meetings_listed(api, street)
    listed = {m["meeting_id"]: m for m in mine["meetings"]}
    assert (listed[to_decide]["status"], listed[to_decide]["lead"]) == ("decided", "street_s02")
    assert listed[to_attend]["status"] == "open"
    assert {d["id"]: d["checked_in"] for d in listed[to_attend]["summoned"]}["street_s02"]
    # The open ones first, the nearest deadline first; then the decided ones, the latest first.
    statuses = [m["status"] for m in mine["meetings"]]
    assert statuses == sorted(statuses, key=lambda s: s == "decided")
    opened = [m for m in mine["meetings"] if m["status"] == "open"]
    assert [m["deadline"] for m in opened] == sorted(m["deadline"] for m in opened)
    decided = [m["decided_at"] for m in mine["meetings"] if m["status"] == "decided"]
    assert decided == sorted(decided, reverse=True)
    assert (mine["total"], mine["open"]) == (len(mine["meetings"]), len(opened))
    assert to_decide in ids_of(await meetings_listed(api, street, status="decided"))
    assert to_decide not in ids_of(await meetings_listed(api, street, status="open"))
    assert to_attend in ids_of(await meetings_listed(api, street, status="open"))
    # Paged: one at a time, the same list.
    pages = [await meetings_listed(api, street, page=i, size=1) for i in range(1, mine["total"] + 1)]
    assert [m for p in pages for m in ids_of(p)] == ids_of(mine)

    # It reads the meeting's tickets, to come knowing the case, and acts on none it does not lead;
    # a department not summoned reads none of them.
    no = next(t["ticket_no"] for t in held if t["meeting_id"] == to_attend)
    assert (await api.get(f"/api/v1/tickets/{no}", headers=street)).json()["meeting_id"] == to_attend
    assert (await api.get(f"/api/v1/tickets/{no}", headers=water)).status_code == 404
    assert (await api.post(f"/api/v1/tickets/{no}/accept", headers=street)).status_code == 404
    # A department not summoned does not see it, nor may it ask for another department's list.
    assert not {to_decide, to_attend} & set(ids_of(await meetings_listed(api, water)))
    r = await api.get("/api/v1/meetings", headers=water, params={"department": "street_s02"})
    assert (r.status_code, r.json()["field"]) == (403, "department")
    assert "本单位" in r.json()["message"]
    # The desk: every meeting, or one department's.
    assert {to_decide, to_attend} <= set(ids_of(await meetings_listed(api, admin)))
    assert {to_decide, to_attend} <= set(ids_of(await meetings_listed(api, admin, department="power")))
    assert not {to_decide, to_attend} & set(ids_of(await meetings_listed(api, admin, department="water")))
    r = await api.get("/api/v1/meetings", headers=admin, params={"department": "nowhere"})
    assert (r.status_code, r.json()["error"]) == (404, "unknown_department")
    r = await api.get("/api/v1/meetings", headers=admin, params={"status": "closed"})
    assert r.status_code == 422
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0231')}"}
    assert (await api.get("/api/v1/meetings", headers=operator)).status_code == 403


async def test_meetings_written_before_the_lists_existed_are_listed_when_a_router_starts(
    api, tokens, settings, tmp_path, redis
):
    """An upgrade: meetings stored before the departments' lists existed (the meeting's key alone,
    as the code before wrote them) are put on the lists when a router starts: the open one and the
    one decided lately, not one decided long ago; the cluster key sharing their prefix is left as
    it is. A second run lists nothing again."""
    now = datetime.now(UTC)

    def stored_before(**changes) -> meetings.Meeting:
        base = meetings.Meeting(
            meeting_id=meetings.meeting_id("before-the-lists", uuid.uuid4().hex),
            reason="returned_twice",
            lead_street="street_s01",
            summoned=["street_s01", "water"],
            tickets=[new_no()],
            category="city.appearance.garbage",
            grid="s01c03g01",
            deadline=now + timedelta(days=3),
            convened_at=now,
        )
        return base.model_copy(update=changes)

    def decided(days_ago: float) -> meetings.Meeting:
        at = now - timedelta(days=days_ago)
        return stored_before(
            status="decided", lead="water", decided_by="dispatch_desk", decided_at=at, convened_at=at
        )

    opened, lately, long_ago = stored_before(), decided(2), decided(45)
    for m in (opened, lately, long_ago):
        await redis.set(f"meeting:{m.meeting_id}", m.model_dump_json())
    cluster = f"meeting:open:test.before-the-lists:{uuid.uuid4().hex[:8]}"
    await redis.set(cluster, opened.meeting_id)
    ours = {opened.meeting_id, lately.meeting_id, long_ago.meeting_id}
    water, admin = await tokens("water"), await tokens()
    assert not ours & set(ids_of(await meetings_listed(api, water)))  # the system's router started before

    # Two routers start (they only scan timers beside the system's own): both list, neither twice.
    env = settings_env(settings, router_consume=False, metrics_port_router=0)
    logs, replicas = _start_replicas(env, tmp_path)
    try:

        async def listed() -> dict | None:
            mine = await meetings_listed(api, water)
            return mine if {opened.meeting_id, lately.meeting_id} <= set(ids_of(mine)) else None

        mine = await eventually(listed, timeout=60)
    finally:
        _stop_replicas(logs, replicas)
    statuses = {m["meeting_id"]: m["status"] for m in mine["meetings"]}
    assert (statuses[opened.meeting_id], statuses[lately.meeting_id]) == ("open", "decided")
    assert long_ago.meeting_id not in statuses  # decided too long ago to be listed
    assert len(ids_of(mine)) == len(statuses)  # each once, though two routers listed them
    street = await tokens("street_s01")
    for listing in (await meetings_listed(api, street), await meetings_listed(api, admin)):
        assert {opened.meeting_id, lately.meeting_id} <= set(ids_of(listing))
    assert (await api.get("/api/v1/meetings/count", headers=water)).json()["to_check_in"] >= 1
    assert await redis.get(cluster) == opened.meeting_id.encode()
    assert await MeetingStore(redis, TicketStore(redis)).list_existing() == 0  # a second run


async def test_the_desk_redispatches_a_department_s_ticket_and_the_new_one_takes_it_over(
    api, producer, city, tokens
):
    """改派: only the desk, only a ticket a department holds, only to another department, with a
    reason; the old department loses it (404 on reading and acting, gone from its queue), the new
    one reads why and works it from fresh deadlines."""
    no = await inject(producer, city, "city.facility.road_damage", "s01c01g01")
    before = await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    assert before["department"]["id"] == "urban_mgmt"
    mgmt, water, admin = await tokens("urban_mgmt"), await tokens("water"), await tokens()
    assert (await api.post(f"/api/v1/tickets/{no}/accept", headers=mgmt)).status_code == 200
    move = {"department": "water", "reason": "居民来电说明是自来水管爆裂冲坏路面"}
    url = f"/api/v1/tickets/{no}/redispatch"

    r = await api.post(url, headers=mgmt, json=move)
    assert r.status_code == 403
    assert "派单中心" in r.json()["message"]
    assert (
        await api.post("/api/v1/tickets/20991231-000001/redispatch", headers=admin, json=move)
    ).status_code == 404
    for body, field in (
        ({**move, "department": "nobody"}, "department"),
        ({"department": "water"}, "reason"),
    ):
        r = await api.post(url, headers=admin, json=body)
        assert (r.status_code, r.json()["field"]) == (422, field), r.text
    r = await api.post(url, headers=admin, json={**move, "department": "urban_mgmt"})
    assert r.status_code == 409
    assert "无需改派" in r.json()["message"]

    r = await api.post(url, headers=admin, json=move)
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["status"], t["department"]["id"], t["assigned_via"]) == ("assigned", "water", "redispatch")
    assert t["respond_by"] > before["respond_by"]
    assigned = t["history"][-1]
    assert (assigned["topic"], assigned["via"]) == ("ticket.assigned", "redispatch")
    assert assigned["explanation"].startswith(f"派单中心改派：{move['reason']}")

    # The old department: not its ticket any more, as if there were none; gone from its queue.
    assert (await api.get(f"/api/v1/tickets/{no}", headers=mgmt)).status_code == 404
    r = await api.post(f"/api/v1/tickets/{no}/resolve", headers=mgmt, json={"note": "已修复"})
    assert r.status_code == 404
    queue = await api.get("/api/v1/departments/urban_mgmt/tickets", headers=mgmt, params={"size": 200})
    assert no not in [x["ticket_no"] for x in queue.json()["tickets"]]
    # The new one reads why, takes it over, and once it is resolved the desk cannot move it.
    r = await api.get(f"/api/v1/tickets/{no}", headers=water)
    assert r.json()["history"][-1]["explanation"] == assigned["explanation"]
    assert (await api.post(f"/api/v1/tickets/{no}/accept", headers=water)).status_code == 200
    # Staff text reaches the resident (办理结果 on the lookup page and in the survey SMS): a phone
    # or a name typed into it is masked as it is received, as a resident's words are at intake.
    note = "已抢修水管并修复路面。联系人：张三 13900001111"
    r = await api.post(f"/api/v1/tickets/{no}/resolve", headers=water, json={"note": note})
    assert r.status_code == 200
    assert r.json()["resolution_note"] == "已抢修水管并修复路面。联系人：张* 139****1111"
    assert r.json()["history"][-1]["note"] == r.json()["resolution_note"]
    r = await api.post(url, headers=admin, json={**move, "department": "urban_mgmt"})
    assert r.status_code == 409
    assert "当前状态为“已办结”，不能改派" in r.json()["message"]


async def test_a_dispute_referred_to_the_street_s_mediation_committee_is_resolved_with_its_agreement(
    api, producer, city, tokens, pool, settings
):
    """转人民调解: the department holding a neighbours' dispute refers it, with a reason, to the
    mediation committee of the ticket's street, which then holds it (the department and its
    co-handlers lose it) and resolves it with the outcome and the agreement's terms; the ticket, the
    record, its export and the counters show them. Refusals: a short reason, someone else's ticket,
    the desk, the committee referring it again, a department sending a mediation outcome, a
    category the city does not mark for mediation (a street light)."""
    first_day = local_today(settings.timezone)  # the counters' local day may turn meanwhile
    no = await inject(producer, city, "env.noise", "s02c02g01")  # 建设街道: environment leads
    await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    env, police, admin = await tokens("environment"), await tokens("police"), await tokens()
    committee = await tokens("mediation_s02")
    url = f"/api/v1/tickets/{no}/mediate"
    reason = {"reason": "楼上住户夜间噪音扰民，双方多次争吵，属邻里纠纷"}

    r = await api.post(url, headers=env, json={"reason": "纠纷"})
    assert (r.status_code, r.json()["field"]) == (422, "reason")
    assert "转人民调解的原因" in r.json()["message"]
    assert (await api.post(url, headers=police, json=reason)).status_code == 404  # co-handler, not holder
    r = await api.post(url, headers=admin, json=reason)
    assert r.status_code == 403  # the desk re-dispatches instead
    assert (await api.post(f"/api/v1/tickets/{no}/accept", headers=env)).status_code == 200

    r = await api.post(url, headers=env, json=reason)
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["status"], t["department"]["id"], t["assigned_via"]) == (
        "assigned",
        "mediation_s02",
        "mediation",
    )
    assert t["department"]["name"] == "建设街道人民调解委员会"
    assert t["co_departments"] == []
    assert (
        t["history"][-1]["explanation"]
        == f"市生态环境局示范区分局转建设街道人民调解委员会调解：{reason['reason']}"
    )
    for gone in (env, police):
        assert (await api.get(f"/api/v1/tickets/{no}", headers=gone)).status_code == 404
    queue = await api.get(
        "/api/v1/departments/mediation_s02/tickets", headers=committee, params={"size": 200}
    )
    assert no in [x["ticket_no"] for x in queue.json()["tickets"]]
    r = await api.post(url, headers=committee, json=reason)
    assert r.status_code == 409
    assert "已由建设街道人民调解委员会调解" in r.json()["message"]

    # The mediator resolves: the outcome is required, and the terms when the parties agreed.
    resolve = f"/api/v1/tickets/{no}/resolve"
    note = "调解员分别听取双方意见后组织面对面调解，双方当场签订调解协议"
    for body, field in (
        ({"note": note}, "mediation"),
        ({"note": note, "mediation": {"outcome": "agreed"}}, "mediation.agreement"),
        ({"note": note, "mediation": {"outcome": "maybe"}}, "mediation.outcome"),
    ):
        r = await api.post(resolve, headers=committee, json=body)
        assert (r.status_code, r.json()["field"]) == (422, field), r.text
    terms = "楼上住户22时后不再使用音响、家具加装防噪垫；双方互不追究此前争执"
    r = await api.post(
        resolve,
        headers=committee,
        json={"note": note, "mediation": {"outcome": "agreed", "agreement": terms}},
    )
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["status"], t["mediation_outcome"], t["mediation_agreement"]) == ("resolved", "agreed", terms)
    resolved = t["history"][-1]
    assert (resolved["action"], resolved["mediation"]) == (
        "resolved",
        {"outcome": "agreed", "agreement": terms},
    )

    # Any other department resolving sends no mediation.
    other = await inject(producer, city, "env.noise", "s02c02g01")
    await ticket_when(api, tokens, other, lambda t: t["status"] == "assigned")
    r = await api.post(
        f"/api/v1/tickets/{other}/resolve",
        headers=env,
        json={"note": "已查处", "mediation": {"outcome": "not_agreed"}},
    )
    assert (r.status_code, r.json()["field"]) == (422, "mediation")
    assert "只有人民调解委员会" in r.json()["message"]

    # A broken street light is no one's dispute: not a category the city marks for mediation.
    lamp = await inject(producer, city, "city.facility.streetlight", "s02c02g01")
    held = await ticket_when(api, tokens, lamp, lambda t: t["status"] == "assigned")
    r = await api.post(
        f"/api/v1/tickets/{lamp}/mediate", headers=await tokens(held["department"]["id"]), json=reason
    )
    assert (r.status_code, r.json()["error"]) == (409, "not_a_dispute"), r.text
    assert "诉求分类为“路灯故障”，不能转人民调解" in r.json()["message"]

    # The record: the row, its export in words, and the committee's counters.
    async def recorded():
        async with pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT department, mediation_outcome, mediation_agreement FROM tickets "
                    "WHERE ticket_no = %s",
                    (no,),
                )
            ).fetchone()
        # The record reads each topic on its own: wait for the row the whole history folds to (the
        # referral's assignment may come after the resolution; it is folded in order then).
        return row if row and row["mediation_outcome"] and row["department"] == "mediation_s02" else None

    assert await eventually(recorded) == {
        "department": "mediation_s02",
        "mediation_outcome": "agreed",
        "mediation_agreement": terms,
    }
    r = await api.get("/api/v1/tickets/export", headers=admin, params={"department": "mediation_s02"})
    assert r.status_code == 200, r.text
    header, *rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    [exported] = [dict(zip(header, x, strict=True)) for x in rows if x[0] == no]
    assert (exported["调解结果"], exported["调解协议"]) == ("调解成功，达成协议", terms)

    async def counted():
        period = days_since(first_day, settings.timezone)
        r = await api.get("/api/v1/stats", headers=admin, params={"group_by": "department", **period})
        group = next((g for g in r.json()["groups"] if g["group"] == "mediation_s02"), None)
        return group if group and group["mediation_agreed"] >= 1 else None

    group = await eventually(counted)
    assert group["mediated"] >= group["mediation_agreed"] >= 1


async def test_a_dispute_goes_by_the_list_to_its_street_s_committee_which_mediates_it(
    api, producer, city, tokens
):
    """邻里纠纷: the responsibility list assigns it straight to the mediation committee of the grid's
    street (no bureau in between to refer it); the committee finds it in its queue, accepts it and
    resolves it with the mediation's outcome, which no one may refer again."""
    no = await inject(producer, city, "safety.disputes", "s02c02g01")  # 建设街道
    t = await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    assert (t["department"]["id"], t["assigned_via"], t["co_departments"]) == ("mediation_s02", "rule", [])
    assert "建设街道人民调解委员会" in t["history"][-1]["explanation"]
    committee = await tokens("mediation_s02")
    queue = await api.get(
        "/api/v1/departments/mediation_s02/tickets", headers=committee, params={"size": 200}
    )
    assert no in [x["ticket_no"] for x in queue.json()["tickets"]]
    assert (await api.post(f"/api/v1/tickets/{no}/accept", headers=committee)).status_code == 200
    r = await api.post(
        f"/api/v1/tickets/{no}/mediate", headers=committee, json={"reason": "楼上漏水赔偿协商不成"}
    )
    assert r.status_code == 409
    assert "已由建设街道人民调解委员会调解" in r.json()["message"]
    r = await api.post(
        f"/api/v1/tickets/{no}/resolve",
        headers=committee,
        json={"note": "调解员组织双方调解", "mediation": {"outcome": "not_agreed"}},
    )
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["status"], t["mediation_outcome"], t["history"][-1]["mediation"]) == (
        "resolved",
        "not_agreed",
        {"outcome": "not_agreed", "agreement": ""},
    )


async def test_an_operator_urges_an_open_ticket_once_per_key_and_not_a_finished_one(
    api, producer, city, tokens, redis, settings, pool
):
    """催办: the repeat call reaches the ticket in Redis, the bus, the record and the scorecard; a
    double click (the same key) urges once; a finished ticket is refused in words to act on."""
    first_day = local_today(settings.timezone)  # the counters' local day may turn meanwhile
    no = await inject(producer, city, "city.appearance.garbage", "s03c02g03")
    await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0231')}"}
    call = {"note": "上周反映的垃圾还没清走，味道很大"}
    key = {"Idempotency-Key": f"urge-{no}"}
    first = await api.post(f"/api/v1/tickets/{no}/urge", headers={**operator, **key}, json=call)
    again = await api.post(f"/api/v1/tickets/{no}/urge", headers={**operator, **key}, json=call)
    assert (first.status_code, again.status_code) == (200, 200), first.text
    assert first.json() == again.json()
    body = first.json()
    assert (body["ticket_no"], body["status"], body["urges"]) == (no, "assigned", 1)
    assert body["message"] == f"已催办工单{no}，承办单位：{body['department']['name']}，不新建工单"
    assert set(body) == {"ticket_no", "status", "status_name", "department", "urges", "message"}
    street = await tokens("street_s03")
    assert (await api.post(f"/api/v1/tickets/{no}/urge", headers=street, json=call)).status_code == 403

    t = await ticket_when(api, tokens, no, lambda t: True)  # the ticket in Redis, read by the desk
    assert (t["urges"], t["status"], t["flags"]) == (1, "assigned", ["催办1次"])
    urged = [h for h in t["history"] if h.get("action") == "urged"]
    assert [(h["actor"], h["note"], h["urge"]) for h in urged] == [("0231", call["note"], {"urges": 1})]

    async def published():
        records = (await bus.read_topics(settings.kafka_bootstrap_servers, [topics.TICKET_UPDATED]))[
            topics.TICKET_UPDATED
        ]
        mine = [TicketUpdated.from_json(r.value) for r in records if r.key == no.encode()]
        return [u for u in mine if u.action == "urged"] or None

    (event,) = await eventually(published)
    assert (event.event_id, event.department.id, event.urge.urges) == (urged[0]["event_id"], "street_s03", 1)

    async def recorded():
        async with pool.connection() as conn:
            row = await (
                await conn.execute("SELECT urges FROM tickets WHERE ticket_no = %s", (no,))
            ).fetchone()
        return row if row and row["urges"] == 1 else None

    await eventually(recorded)

    async def counted():
        r = await api.get(
            "/api/v1/stats",
            headers=await tokens(),
            params={"group_by": "department", **days_since(first_day, settings.timezone)},
        )
        return next((g for g in r.json()["groups"] if g["group"] == "street_s03" and g["urged"] >= 1), None)

    await eventually(counted)

    # Resolved: the urge is refused and the operator is told what to do instead.
    r = await api.post(f"/api/v1/tickets/{no}/resolve", headers=street, json={"note": "已清运"})
    assert r.status_code == 200, r.text
    r = await api.post(
        f"/api/v1/tickets/{no}/urge", headers={**operator, "Idempotency-Key": "later"}, json=call
    )
    assert r.status_code == 409
    assert "当前状态为“已办结”，不能催办" in r.json()["message"]
    assert "登记新的诉求" in r.json()["message"]
    r = await api.post(f"/api/v1/tickets/{no}/urge", headers={**operator, **key}, json=call)
    assert (r.status_code, r.json()["urges"]) == (200, 1)  # the key's urge was made: answered again
    missing = await api.post("/api/v1/tickets/20991231-000001/urge", headers=operator, json=call)
    assert missing.status_code == 404


async def test_a_department_accepts_a_batch_and_each_ticket_is_answered_for_once(
    api, producer, city, tokens, redis, settings, pool
):
    """批量签收: two of the department's new tickets accepted in one request beside one it accepted
    already and another department's, each answered for in words; the acceptances published once
    and counted once by the record's response counters; the same key sent again accepts nothing;
    the limits and other callers refused."""
    from services.records.rates import COUNTERS

    first, second, already = [
        await inject(producer, city, "city.appearance.garbage", "s03c02g03") for _ in "abc"
    ]
    others = await inject(producer, city, "city.facility.road_damage", "s01c01g01")
    for no in (first, second, already, others):
        await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    street = await tokens("street_s03")
    assert (await api.post(f"/api/v1/tickets/{already}/accept", headers=street)).status_code == 200

    batch = {"ticket_nos": [first, already, others, second]}
    key = {"Idempotency-Key": f"batch-{first}"}
    path = "/api/v1/departments/street_s03/tickets/accept"
    r = await api.post(path, headers={**street, **key}, json=batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["department"], body["accepted"], body["refused"]) == ("street_s03", 2, 2)
    assert [t["ticket_no"] for t in body["tickets"]] == batch["ticket_nos"]  # in the order given
    lines = {t["ticket_no"]: t for t in body["tickets"]}
    assert lines[first] == {"ticket_no": first, "outcome": "accepted", "on_time": True}
    assert lines[second] == {"ticket_no": second, "outcome": "accepted", "on_time": True}
    assert (lines[already]["outcome"], lines[already]["code"]) == ("refused", "illegal_transition")
    assert lines[already]["message"] == f"工单{already}已签收（本单位已有人先签收），无需再签收"
    # Another department's ticket reads as no ticket, as it does everywhere else.
    assert (lines[others]["outcome"], lines[others]["message"]) == ("refused", f"工单{others}不存在")

    # A retry (a double click, a lost answer) with the same key: the same answer, nothing twice.
    again = await api.post(path, headers={**street, **key}, json=batch)
    assert (again.status_code, again.json()) == (200, body)
    for no in (first, second):
        t = await ticket_when(api, tokens, no, lambda t: True)
        assert [h["action"] for h in t["history"] if h.get("action") == "accepted"] == ["accepted"]
        assert (t["status"], t["department"]["id"]) == ("accepted", "street_s03")
    assert (await ticket_when(api, tokens, others, lambda t: True))["status"] == "assigned"
    # Another key is another request: what is accepted now is refused in words.
    r = await api.post(path, headers={**street, "Idempotency-Key": "other"}, json={"ticket_nos": [first]})
    assert r.json()["tickets"][0]["message"] == f"工单{first}已签收（本单位已有人先签收），无需再签收"

    async def published():
        records = (await bus.read_topics(settings.kafka_bootstrap_servers, [topics.TICKET_UPDATED]))[
            topics.TICKET_UPDATED
        ]
        mine = [
            TicketUpdated.from_json(r.value) for r in records if r.key in {first.encode(), second.encode()}
        ]
        accepted = Counter(u.ticket_no for u in mine if u.action == "accepted")
        return accepted if set(accepted) == {first, second} else None

    assert await eventually(published) == {first: 1, second: 1}

    # The record counts each response once, by the counters the rates are computed with.
    responded = f"count(*) FILTER (WHERE {COUNTERS['responded']})"
    on_time = f"count(*) FILTER (WHERE {COUNTERS['responded_on_time']})"

    async def count() -> dict:
        async with pool.connection() as conn:
            sql = f"SELECT {responded} AS responded, {on_time} AS on_time FROM ticket_events e "
            row = await (
                await conn.execute(sql + "WHERE e.ticket_no = ANY(%s)", ([first, second],))
            ).fetchone()
        return dict(row or {})

    await eventually(lambda: _at_least(count, 2))
    await asyncio.sleep(1)  # a second copy, had there been one, would have landed by now
    assert await count() == {"responded": 2, "on_time": 2}

    # The limits, refused in words; another department's path and the desk, as the single accept.
    for nos, words in (
        ([], "请至少选择一件要签收的工单"),
        ([f"20261124-{n:06d}" for n in range(51)], "一次最多批量签收50件工单（本次51件）"),
        ([first, second, first], f"工单{first}在签收清单中重复出现"),
    ):
        r = await api.post(path, headers=street, json={"ticket_nos": nos})
        assert (r.status_code, r.json()["field"]) == (422, "ticket_nos")
        assert words in r.json()["message"]
    r = await api.post("/api/v1/departments/urban_mgmt/tickets/accept", headers=street, json=batch)
    assert (r.status_code, r.json()["message"]) == (403, "只能签收本单位的工单")
    assert (await api.post(path, headers=await tokens(), json=batch)).status_code == 403


async def _at_least(count, n: int) -> dict | None:
    got = await count()
    return got if got.get("responded", 0) >= n else None


async def test_a_grid_worker_asks_the_desk_to_correct_the_grid_and_the_desk_approves_or_refuses(
    api, producer, city, tokens, redis, pool
):
    """申请更正事发网格: the worker of a ticket's grid found the problem in another grid on the spot and
    asks the desk. Nothing moves until the desk decides; the request waits on the ticket and in what
    the desk follows. Approved, the ticket is placed in the grid asked for (the record's row follows);
    refused, the grid stays and the desk's reason is in the history (the record's too). Others are
    refused as for a check on the spot, in words a person can act on."""
    cat = "city.facility.streetlight"
    no, kept = await inject(producer, city, cat, "s01c01g01"), await inject(producer, city, cat, "s01c01g01")
    routed = await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    await ticket_when(api, tokens, kept, lambda t: t["status"] == "assigned")
    admin, dept = await tokens(), await tokens(routed["department"]["id"])

    async def worker(operator: str, grid: str) -> dict:
        token = await issue_token(redis, "grid_worker", operator=operator, grid=grid)
        return {"Authorization": f"Bearer {token}"}

    mine, other = await worker("W061", "s01c01g01"), await worker("W062", "s02c01g02")
    url = f"/api/v1/tickets/{no}/place-request"
    seen = "路灯在建设社区小区门口，不在和平里"
    r = await api.post(url, headers=dept, json={"grid": "s02c01g02", "reason": seen})
    assert r.status_code == 403
    assert "只有本网格的网格员可以申请更正事发网格" in r.json()["message"]
    r = await api.post(url, headers=other, json={"grid": "s01c01g02", "reason": seen})
    assert r.status_code == 404  # another grid's ticket: as no ticket
    r = await api.post(url, headers=mine, json={"grid": "s09c09g09", "reason": seen})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (422, "unknown_grid", "grid")
    r = await api.post(url, headers=mine, json={"grid": "s01c01g01", "reason": seen})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (409, "same_grid", "grid")
    assert "无需申请更正" in r.json()["message"]
    r = await api.post(url, headers=mine, json={"grid": "s02c01g02", "reason": "有误"})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (422, "reason_required", "reason")
    r = await api.post(url, headers=mine, json={"grid": "s02c01g02", "reason": seen})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["grid"]["grid"]) == ("assigned", "s01c01g01")  # nothing moved yet
    assert (body["place_request"]["grid"], body["place_request"]["by"]) == ("s02c01g02", "W061")
    assert "网格更正待审" in body["flags"]
    asked = body["history"][-1]
    assert (asked["action"], asked["actor"], asked["version"]) == (
        "place_requested",
        "W061",
        TICKET_UPDATED_VERSION,
    )
    r = await api.post(url, headers=mine, json={"grid": "s02c01g03", "reason": seen})
    assert (r.status_code, r.json()["error"]) == (409, "place_request_pending")

    async def followed() -> list[str]:
        r = await api.get("/api/v1/dispatch/followed", headers=admin)
        assert r.status_code == 200, r.text
        return [t["ticket_no"] for t in r.json()["place_requests"]]

    assert no in await followed()
    r = await api.post(f"/api/v1/tickets/{no}/place-request/approve", headers=dept)
    assert r.status_code == 403  # the desk decides
    r = await api.post(f"/api/v1/tickets/{no}/place-request/approve", headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["grid"]["grid"], body["place_request"]) == ("assigned", "s02c01g02", None)
    placed = body["history"][-1]
    assert (placed["action"], placed["grid"]) == ("placed", "s02c01g02")
    assert "同意网格员W061的更正申请" in placed["note"]
    assert no not in await followed()
    r = await api.post(f"/api/v1/tickets/{no}/place-request/approve", headers=admin)
    assert (r.status_code, r.json()["error"]) == (409, "no_place_request")

    async def row(ticket_no: str, grid: str):
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT grid, street FROM tickets WHERE ticket_no = %s AND grid = %s", (ticket_no, grid)
            )
            return await cur.fetchone()

    assert (await eventually(lambda: row(no, "s02c01g02"), timeout=30))["street"] == "s02"

    # Refused: the desk's reason, required, said in the history; the grid stays.
    r = await api.post(
        f"/api/v1/tickets/{kept}/place-request", headers=mine, json={"grid": "s02c01g02", "reason": seen}
    )
    assert r.status_code == 200, r.text
    refuse = f"/api/v1/tickets/{kept}/place-request/refuse"
    r = await api.post(refuse, headers=admin, json={"note": ""})
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (422, "reason_required", "reason")
    r = await api.post(refuse, headers=admin, json={"note": "门牌号属和平里社区，定位无误"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["grid"]["grid"], body["place_request"]) == ("s01c01g01", None)
    refused = body["history"][-1]
    assert refused["action"] == "place_refused"
    assert refused["note"].endswith(
        "不同意将事发网格更正为建设街道/建设社区第二网格（网格员W061申请）：门牌号属和平里社区，定位无误"
    )
    assert kept not in await followed()

    async def recorded():
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT payload->>'note' AS note FROM ticket_events WHERE ticket_no = %s "
                "AND topic = 'ticket.updated' AND payload->>'action' = 'place_refused'",
                (kept,),
            )
            return await cur.fetchone()

    assert "门牌号属和平里社区" in (await eventually(recorded, timeout=30))["note"]
    assert await row(kept, "s01c01g01") is not None


async def test_extension_moves_the_deadline_only_when_the_desk_approves(api, producer, city, tokens):
    no = await inject(producer, city, "city.facility.road_damage", "s01c01g01")
    await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    mgmt, admin = await tokens("urban_mgmt"), await tokens()
    r = await api.post(
        f"/api/v1/tickets/{no}/extend", headers=mgmt, json={"days": 3, "reason": "需要封路施工"}
    )
    assert r.status_code == 409
    assert "签收" in r.json()["message"]
    assert (await api.post(f"/api/v1/tickets/{no}/accept", headers=mgmt)).status_code == 200
    r = await api.post(f"/api/v1/tickets/{no}/extend", headers=mgmt, json={"days": 0, "reason": "x"})
    assert r.status_code == 422
    assert r.json()["field"] == "days"
    # What the schema asks, in words a client shows its user (the console: 延长工作日数不能大于30).
    r = await api.post(f"/api/v1/tickets/{no}/extend", headers=mgmt, json={"days": 45, "reason": "x"})
    assert (r.json()["expected"], r.json()["message"]) == (
        "不能大于30",
        "请求参数days不符合要求（不能大于30），请按接口文档填写",
    )
    r = await api.post(
        f"/api/v1/tickets/{no}/extend", headers=mgmt, json={"days": 3, "reason": "需要封路施工"}
    )
    assert r.status_code == 200
    assert "延期待审" in r.json()["flags"]
    before = r.json()["resolve_by"]
    assert (await api.post(f"/api/v1/tickets/{no}/extension/approve", headers=mgmt)).status_code == 403
    r = await api.post(f"/api/v1/tickets/{no}/extension/approve", headers=admin, json={"note": "同意"})
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["resolve_by"] > before
    assert t["history"][-1]["action"] == "extension_approved"
    assert t["history"][-1]["extension"]["days"] == 3
    assert t["extension_request"] is None
    assert (await api.post(f"/api/v1/tickets/{no}/extension/refuse", headers=admin)).status_code == 409
    # Asked again, the desk refuses: only with a reason the department can act on (驳回理由).
    r = await api.post(
        f"/api/v1/tickets/{no}/extend", headers=mgmt, json={"days": 5, "reason": "还需等待灯杆到货"}
    )
    assert r.status_code == 200, r.text
    extended = r.json()["resolve_by"]
    for body in (None, {}, {"note": "  "}, {"note": "不行"}):
        r = await api.post(f"/api/v1/tickets/{no}/extension/refuse", headers=admin, json=body)
        assert r.status_code == 422, (body, r.text)
        said = r.json()
        assert (said["error"], said["field"]) == ("reason_required", "reason")
        assert said["message"] == REQUIRED["decide_extension.reason"]
    r = await api.post(
        f"/api/v1/tickets/{no}/extension/refuse", headers=admin, json={"note": "灯杆已有库存，请按期办结"}
    )
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["resolve_by"], t["extension_request"]) == (extended, None)
    last = t["history"][-1]
    assert (last["action"], last["note"], last["extension"]["days"]) == (
        "extension_refused",
        "灯杆已有库存，请按期办结",
        5,
    )


async def test_hotspot_becomes_one_joint_meeting(api, producer, city, tokens):
    nos = list(
        await asyncio.gather(
            *(inject(producer, city, "market.consumer", "s02c03g03") for _ in range(HOTSPOT_COUNT))
        )
    )
    mid = (await ticket_when(api, tokens, nos[0], lambda t: t["status"] == "meeting"))["meeting_id"]
    admin = await tokens()

    async def with_all(n):
        m = await api.get(f"/api/v1/meetings/{mid}", headers=admin)
        return m.json() if m.status_code == 200 and len(m.json()["tickets"]) == n else None

    async def all_held() -> bool:
        held = [(await api.get(f"/api/v1/tickets/{no}", headers=admin)).json() for no in nos]
        return {(t["status"], t["meeting_id"]) for t in held} == {("meeting", mid)}

    meeting = await eventually(lambda: with_all(HOTSPOT_COUNT))
    await eventually(all_held, timeout=60)  # every one held for that one meeting
    assert meeting["reason"] == "hotspot"
    assert sorted(meeting["tickets"]) == sorted(nos)
    assert meeting["lead_street"] == "street_s02"
    assert meeting["grid"] == "s02c03g03"
    later = await inject(producer, city, "market.consumer", "s02c03g03")  # joins the open meeting
    assert (await ticket_when(api, tokens, later, lambda t: t["status"] == "meeting"))["meeting_id"] == mid
    await eventually(lambda: with_all(HOTSPOT_COUNT + 1))
    r = await api.post(f"/api/v1/meetings/{mid}/checkin", headers=await tokens("market"))
    assert r.status_code == 200
    r = await api.post(
        f"/api/v1/meetings/{mid}/decide", headers=admin, json={"lead": "market", "note": "集中整治"}
    )
    assert r.status_code == 200
    for no in [*nos, later]:
        t = await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
        assert (t["department"]["id"], t["assigned_via"]) == ("market", "meeting")


async def test_overdue_escalation_fires_once_across_router_replicas(
    api,
    producer,
    city,
    tokens,
    settings,
    tmp_path,
    redis,
):
    # Two more router processes that only scan timers, beside the system's own router: three replicas.
    env = settings_env(settings, router_consume=False, metrics_port_router=0)
    logs, replicas = _start_replicas(env, tmp_path)
    try:
        await eventually(lambda: _started(tmp_path), timeout=60)
        nos = [await inject(producer, city, TINY_CATEGORY, "s01c02g01") for _ in range(4)]
        expected_actions = {"warning": 2, "overdue": 2, "escalated": 1}

        def actions_of(t: dict) -> Counter:
            return Counter(h.get("action") for h in t["history"] if h["topic"] == "ticket.updated")

        # Escalated, and every other timer fired too: replicas claim timers apart, so a replica
        # stalled on the machine may write its overdue mark after another wrote the escalation.
        for no in nos:
            await ticket_when(
                api, tokens, no, lambda t: t["escalated"] and actions_of(t).total() >= 5, timeout=40
            )
        await asyncio.sleep(2)  # several more scans by every replica: a timer fired twice would show
        for no in nos:
            t = await ticket_when(api, tokens, no, lambda t: True)
            actions = actions_of(t)
            assert actions == expected_actions, (no, actions)
            assert t["overdue"]
            assert {"督办", "升级督办"} <= set(t["flags"])
            overdue = [h for h in t["history"] if h.get("action") == "overdue"]
            assert all(h["supervision"]["supervisor"] == t["department"]["id"] for h in overdue)
            # The notifier texted the supervisors once per notice: both overdue marks and the
            # escalation to the department's, the escalation to the district office's too.
            assert city.department_by_id[t["department"]["id"]].supervisor_mobile
            assert city.department_by_id[city.responsibilities.fallback_owner].supervisor_mobile
            expected = 4

            async def texted(no=no):
                return [
                    m
                    for m in map(json.loads, await redis.lrange("sms:outbox", 0, -1))
                    if m["kind"] == "supervision" and m["ticket_no"] == no
                ]

            await eventually(lambda expected=expected: _count(texted, expected))
            await asyncio.sleep(1)
            assert len(await texted()) == expected
        assert all(p.poll() is None for p in replicas)
    finally:
        _stop_replicas(logs, replicas)


def _stop_replicas(logs: list, replicas: list[subprocess.Popen]) -> None:
    for p in replicas:
        p.send_signal(2)
    for p in replicas:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    for log in logs:
        log.close()


async def _count(read, n: int) -> bool:
    return len(await read()) >= n


def _start_replicas(env: dict, folder) -> tuple[list, list[subprocess.Popen]]:
    logs = [open(folder / f"replica{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    return logs, [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "router"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]


async def _started(folder) -> bool:
    return all(
        "started successfully" in (folder / f"replica{i}.log").read_text(errors="replace") for i in range(2)
    )


async def test_concurrent_claims_on_real_redis_never_overlap_and_a_lease_brings_back_a_lost_timer(
    redis, city
):
    """The claim script on the real Redis: claimers racing over 300 due timers split them with no
    overlap; a timer whose claimer died comes back once its lease ends."""
    from services.router.service import TimerStore
    from tests.router_factory import assigned_ticket

    key = f"test:timers:{new_no()}"
    stores = [TimerStore(redis, city.sla.supervision, key=key) for _ in range(4)]
    tickets = [assigned_ticket(city, no=f"T{i:05d}") for i in range(60)]
    assert await stores[0].schedule(tickets) == 300  # 5 timers each
    assert await stores[1].schedule(tickets) == 0  # scheduling again changes nothing
    far = 4e9  # every timer is due
    claims = await asyncio.gather(*[s.claim_due(far, lease=30, limit=50) for s in stores for _ in range(3)])
    members = [t.member for c in claims for t in c]
    assert len(members) == len(set(members)) == 300
    assert await stores[0].claim_due(far) == []  # all claimed, none due again within the lease
    assert len(await stores[0].claim_due(far + 31, limit=500)) == 300  # claimers died: back after the lease
    await redis.delete(key)


async def test_a_ticket_the_desk_dispatches_again_in_another_grid_counts_there_only(
    api, producer, city, tokens, redis, settings
):
    """退单 (属地有误) then 人工派单 in another grid: the ticket's assignment and urge, counted in
    its first grid A, move with it to the grid B the desk chose, so the rankings (/stats by grid, as
    the console reads them) count it in B only: A is as before it, B has its two assignments and
    the urge. Grids no other test uses, so what changed is this ticket's."""
    old, new = "s01c03g03", "s02c03g02"
    first_day = local_today(settings.timezone)
    admin = await tokens()

    async def by_grid() -> dict[str, dict]:
        r = await api.get(
            "/api/v1/stats", headers=admin, params={"group_by": "grid", **days_since(first_day)}
        )
        assert r.status_code == 200, r.text
        return {g["group"]: g for g in r.json()["groups"] if g["group"] in (old, new)}

    counted = ("assigned", "urged")

    def figures(groups: dict[str, dict]) -> dict[str, tuple[int, ...]]:
        return {g: tuple(groups.get(g, {}).get(f, 0) for f in counted) for g in (old, new)}

    before = figures(await by_grid())
    no = await inject(producer, city, "city.appearance.garbage", old)
    held = await ticket_when(api, tokens, no, lambda t: t["status"] == "assigned")
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0231')}"}
    r = await api.post(f"/api/v1/tickets/{no}/urge", headers=operator, json={"note": "垃圾还没清走"})
    assert r.status_code == 200, r.text

    async def counted_in_old():  # both counted in A before the ticket moves
        now = figures(await by_grid())
        return now if now[old] == (before[old][0] + 1, before[old][1] + 1) else None

    await eventually(counted_in_old, timeout=30)
    dept = await tokens(held["department"]["id"])
    r = await api.post(
        f"/api/v1/tickets/{no}/return", headers=dept, json={"reason": "wrong_grid", "note": "不在本街道"}
    )
    assert r.status_code == 200, r.text
    await ticket_when(api, tokens, no, lambda t: t["status"] == "review")
    r = await api.post(
        f"/api/v1/dispatch/{no}/assign", headers=admin, json={"department": "urban_mgmt", "grid": new}
    )
    assert r.status_code == 200, r.text
    assert r.json()["grid"]["grid"] == new

    expected = {old: before[old], new: (before[new][0] + 2, before[new][1] + 1)}

    async def moved():
        now = figures(await by_grid())
        return now if now == expected else None

    assert await eventually(moved, timeout=30) == expected
    # Once: the desk's assignment read again (a redelivery) moves nothing more.
    record = {k: v for k, v in r.json()["history"][-1].items() if k != "topic"}
    again = TicketAssigned.model_validate(record)
    assert (again.via, again.grid, again.grid_chosen) == ("operator", new, True)
    card = Scorecard(redis, city, ZoneInfo(settings.timezone), Weights())
    assert await card.record([again]) == 0
    assert figures(await by_grid()) == expected
