"""Reading the record (PostgreSQL) where a ticket has left Redis, against the running system: a
department summoned to a joint meeting reads the meeting's tickets there as the router lets it in
Redis (read only, not on its own list), the console's ticket page shows such a ticket, and the
list's category filter takes a category's branch from the city's tree.

The tickets are made up (numbered on a day long past, `made_up_no`) and written to the record only,
as a ticket that has left Redis is; each test finds its own by a marker in their text."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.classifier.grid import grid_match
from services.records.service import Records
from services.router.meetings import Meeting
from shared.auth import issue_token
from shared.city import City
from shared.events import (
    Answer,
    AppealClassified,
    AppealReceived,
    Caller,
    CategoryScore,
    DepartmentRef,
    Event,
    MeetingConvened,
    MeetingSpec,
    MeetingUpdated,
    TicketAssigned,
    TicketUpdated,
)
from tests.conftest import System
from tests.test_records import made_up_no

pytestmark = pytest.mark.integration

DAY = datetime(2000, 12, 1, 2, 0, tzinfo=UTC)  # the made-up tickets' day (20001201-), 10:00 local
GRID = "s03c01g02"  # 光明街道: its street office leads the meetings below
STREET = "street_s03"
# The meeting's departments, chosen for these tests: the lead it decides on, one more called to it
# that handles nothing, and one never called.
LEAD, CALLED, NOT_CALLED = "heating", "gas", "water"
ACTIONS = ("accept", "resolve", "return", "extend", "mediate")


def ref(city: City, dept: str) -> DepartmentRef:
    return DepartmentRef(id=dept, name=city.department_by_id[dept].name)


def appeal_events(city: City, no: str, text: str, category: str, names: Sequence[str] = ()) -> list[Event]:
    appeal = AppealReceived(
        ticket_no=no,
        channel="hotline",
        text=text,
        address="光明小区2号楼",
        caller=Caller(caller_id=None, masked_phone=None),
        received_at=DAY,
        occurred_at=DAY,
    )
    classified = AppealClassified(
        ticket_no=no,
        appeal=appeal,
        category=category,
        category_names=tuple(names) or city.category_names(category),
        confidence=0.55,
        top=(CategoryScore(category=category, probability=0.55),),
        grid=grid_match(city, GRID, "gazetteer", 0.9, "光明小区"),
        model_version="test",
        occurred_at=DAY + timedelta(seconds=1),
    )
    return [appeal, classified]


def meeting_ticket(city: City, no: str, mid: str, text: str, *, facts: bool) -> list[Event]:
    """A ticket whose responsibility was contested: held for a joint meeting (`mid`) that named
    LEAD, which handled it to its close. `facts`: with the meeting's own facts (convened, decided),
    which fill the record's `meetings` table."""
    city_ref = {d: ref(city, d) for d in (STREET, LEAD, CALLED)}
    at = DAY + timedelta(seconds=1)
    spec = MeetingSpec(
        meeting_id=mid,
        reason="ambiguous",
        lead_street=STREET,
        summoned=(STREET, LEAD, CALLED),
        category="utility.heating",
        grid=GRID,
        deadline=DAY + timedelta(days=3),
    )
    escalated = TicketUpdated(
        ticket_no=no, action="escalated", status="meeting", actor="system", meeting=spec, occurred_at=at
    )
    convened = MeetingConvened(
        ticket_no=no,
        meeting_id=mid,
        reason="ambiguous",
        lead_street=city_ref[STREET],
        summoned=tuple(city_ref.values()),
        tickets=(no,),
        category="utility.heating",
        grid=GRID,
        deadline=spec.deadline,
        explanation="权责不清，需明确主办单位",
        occurred_at=at + timedelta(minutes=1),
    )
    decided_at = DAY + timedelta(hours=2)
    decided = MeetingUpdated(
        ticket_no=no,
        meeting_id=mid,
        action="decided",
        actor="dispatch_desk",
        department=city_ref[LEAD],
        tickets=(no,),
        note="小区供暖由热力公司主办",
        occurred_at=decided_at,
    )
    assigned = TicketAssigned(
        ticket_no=no,
        department=city_ref[LEAD],
        via="meeting",
        explanation=f"联席会议{mid}决定由{city_ref[LEAD].name}主办",
        category="utility.heating",
        grid=GRID,
        respond_by=decided_at + timedelta(hours=2),
        resolve_by=decided_at + timedelta(days=3),
        occurred_at=decided_at,
    )

    def update(action: str, status: str, hours: int, **kw) -> TicketUpdated:
        return TicketUpdated(
            ticket_no=no,
            action=action,
            status=status,
            actor=LEAD,
            department=city_ref[LEAD],
            occurred_at=decided_at + timedelta(hours=hours),
            **kw,
        )

    handled = [
        assigned,
        update("accepted", "accepted", 1, on_time=True),
        update("resolved", "resolved", 5, on_time=True, note="已检修换热站阀门"),
        update("closed", "closed", 30, answer=Answer(outcome="skipped_anonymous")),
    ]
    return [
        *appeal_events(city, no, text, "utility.heating"),
        escalated,
        *([convened, decided] if facts else []),
        *handled,
    ]


async def record(pool, city: City, events: Sequence[Event]) -> None:
    """Into the record as the records worker writes them; Redis never holds these tickets, as it
    no longer holds one that has left it."""
    await Records(pool, city).project_many([(e.topic, e) for e in events])


async def bearer(redis, dept: str | None = None) -> dict[str, str]:
    token = await issue_token(redis, "department", dept) if dept else await issue_token(redis, "admin")
    return {"Authorization": f"Bearer {token}"}


async def listed(api: httpx.AsyncClient, headers: dict[str, str], **params: str) -> list[str]:
    r = await api.get("/api/v1/tickets", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return sorted(t["ticket_no"] for t in r.json()["items"])


@pytest.fixture
async def console(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        yield client


async def sign_in(client: httpx.AsyncClient, redis, dept: str | None = None) -> None:
    """Signed in to the console as the department (None: the dispatch desk), as a browser is."""
    client.cookies.clear()
    form = await client.get("/console/signin")
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found is not None, form.text
    token = (await bearer(redis, dept))["Authorization"].removeprefix("Bearer ")
    r = await client.post("/console/signin", data={"csrf": found.group(1), "token": token})
    assert r.status_code == 303, r.text


async def test_a_department_summoned_to_a_decided_meeting_reads_its_ticket_from_the_record_read_only(
    api, redis, pool, system_city, console
):
    no = made_up_no()
    mid = f"M-records-{no}"
    marker = f"档案读取联席{no}"
    await record(pool, system_city, meeting_ticket(system_city, no, mid, f"{marker}：暖气不热", facts=True))
    assert not await redis.exists(f"t:{no}")  # read from the record, as once it has left Redis

    r = await api.get(f"/api/v1/tickets/{no}", headers=await bearer(redis, CALLED))
    assert r.status_code == 200, r.text
    ticket = r.json()
    assert ticket["archived"] is True
    # The live ticket's shape, wherever the ticket is.
    assert (ticket["status"], ticket["status_name"], ticket["meeting_id"]) == ("closed", "已关闭", mid)
    assert ticket["department"] == {"id": LEAD, "name": system_city.department_by_id[LEAD].name}
    assert ticket["grid"]["grid"] == GRID
    assert "ticket.assigned" in [h["topic"] for h in ticket["history"]]
    for dept, status in ((STREET, 200), (LEAD, 200), (NOT_CALLED, 404)):
        r = await api.get(f"/api/v1/tickets/{no}", headers=await bearer(redis, dept))
        assert r.status_code == status, (dept, r.text)

    # Its list is what it handles, as its queue in Redis is: the meeting's page links the others.
    assert await listed(api, await bearer(redis, CALLED), q=marker) == []
    assert await listed(api, await bearer(redis, STREET), q=marker) == []
    assert await listed(api, await bearer(redis, LEAD), q=marker) == [no]
    assert await listed(api, await bearer(redis), q=marker) == [no]

    # The console's page: the case to read, who handles it, nothing to do.
    await sign_in(console, redis, CALLED)
    page = await console.get(f"/console/tickets/{no}")
    assert page.status_code == 200, page.text
    assert f'id="ticket-no">{no}<' in page.text
    assert "暖气不热" in page.text
    assert 'id="summoned-only"' in page.text
    assert f'href="/console/meetings#meeting-{mid}"' in page.text
    assert [a for a in ACTIONS if f'id="{a}"' in page.text] == []
    assert f'action="/console/tickets/{no}/' not in page.text
    # The lead reads it as its own, closed; the desk reads it too.
    await sign_in(console, redis, LEAD)
    page = await console.get(f"/console/tickets/{no}")
    assert page.status_code == 200, page.text
    assert 'id="summoned-only"' not in page.text
    assert "无需办理" in page.text
    assert [a for a in ACTIONS if f'id="{a}"' in page.text] == []
    await sign_in(console, redis)
    page = await console.get(f"/console/tickets/{no}")
    assert page.status_code == 200, page.text
    assert system_city.department_by_id[LEAD].name in page.text
    await sign_in(console, redis, NOT_CALLED)
    assert (await console.get(f"/console/tickets/{no}")).status_code == 404


async def test_a_meeting_the_record_has_no_facts_of_is_read_from_redis(api, redis, pool, system_city):
    """A meeting's facts are not published (shared/topics.py): the record has the ticket's place in
    it (`escalated`) before it has the meeting, which Redis holds. Whom it summoned comes from there."""
    no = made_up_no()
    mid = f"M-records-{no}"
    await record(pool, system_city, meeting_ticket(system_city, no, mid, f"档案读取联席{no}", facts=False))
    called = await bearer(redis, CALLED)
    assert (await api.get(f"/api/v1/tickets/{no}", headers=called)).status_code == 404  # no meeting known

    meeting = Meeting(
        meeting_id=mid,
        reason="ambiguous",
        status="decided",
        lead_street=STREET,
        summoned=[STREET, LEAD, CALLED],
        tickets=[no],
        category="utility.heating",
        grid=GRID,
        deadline=DAY + timedelta(days=3),
        convened_at=DAY,
        lead=LEAD,
        decided_by="dispatch_desk",
        decided_at=DAY + timedelta(hours=2),
    )
    await redis.set(f"meeting:{mid}", meeting.model_dump_json())
    try:
        r = await api.get(f"/api/v1/tickets/{no}", headers=called)
        assert r.status_code == 200, r.text
        assert r.json()["archived"] is True
        r = await api.get(f"/api/v1/tickets/{no}", headers=await bearer(redis, NOT_CALLED))
        assert r.status_code == 404
    finally:
        await redis.delete(f"meeting:{mid}")


async def test_the_lists_category_filter_takes_a_branch_from_the_citys_tree(api, redis, pool, system_city):
    marker = f"档案分类筛选{made_up_no()}"
    kinds = {
        "fee": ("housing.property.fee", ()),
        "branch": ("housing.property", ()),
        # Recorded under an id the city no longer has, spelled as if under 物业管理: not in its branch.
        "retired": ("housing.property.retired", ("住房保障", "物业管理", "已撤销分类")),
        "sibling": ("housing.elevator", ()),
    }
    nos = {kind: made_up_no() for kind in kinds}
    await record(
        pool,
        system_city,
        [
            e
            for kind, (category, names) in kinds.items()
            for e in appeal_events(system_city, nos[kind], f"{marker}：{kind}", category, names)
        ],
    )
    desk = await bearer(redis)

    def of(*which: str) -> list[str]:
        return sorted(nos[k] for k in which)

    assert await listed(api, desk, q=marker) == of("fee", "branch", "retired", "sibling")
    assert await listed(api, desk, q=marker, category="housing.property") == of("fee", "branch")
    assert await listed(api, desk, q=marker, category="housing") == of("fee", "branch", "sibling")
    assert await listed(api, desk, q=marker, category="housing.property.fee") == of("fee")
    r = await api.get(
        "/api/v1/tickets/export", params={"q": marker, "category": "housing.property"}, headers=desk
    )
    assert r.status_code == 200, r.text
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert sorted(row[0] for row in rows[1:]) == of("fee", "branch")

    for given, said in (
        ("housing.property.retired", "分类“housing.property.retired”不存在"),
        ("物业费", "编号是 housing.property.fee"),
    ):
        r = await api.get("/api/v1/tickets", params={"q": marker, "category": given}, headers=desk)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "category"
        assert said in r.json()["message"]
