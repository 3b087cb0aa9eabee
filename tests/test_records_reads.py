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
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import httpx
import pytest
from psycopg.conninfo import make_conninfo

from services.classifier.grid import grid_match
from services.records import db
from services.records.retention import Retention
from services.records.service import Records
from services.records.views import archived_ticket
from services.router.meetings import Meeting
from services.router.service import MeetingStore, tickets_key
from services.router.workflow import dept_ref
from shared.auth import issue_token
from shared.city import City
from shared.events import (
    Answer,
    AppealClassified,
    AppealReceived,
    Caller,
    CategoryScore,
    DeadlineNotice,
    DepartmentRef,
    Event,
    MeetingConvened,
    MeetingSpec,
    MeetingUpdated,
    Merge,
    SurveyAnswered,
    TicketAssigned,
    TicketUpdated,
)
from shared.store import Change, Outcome, TicketStore
from shared.tickets import Status, Ticket
from tests.conftest import System, eventually
from tests.numbering import made_up_numbers
from tests.test_records import made_up_no

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")  # the city's (the settings' default)
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
    assert f'href="/console/meetings/{mid}"' in page.text
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


async def test_a_ticket_held_by_a_meeting_is_listed_with_the_meetings_deadline(api, redis, pool, system_city):
    """Its clock is the meeting's (会议时限): from the hold while the record has no facts of the
    meeting (they come when its tickets leave Redis), as the ticket's own page has it."""
    no = made_up_no()
    marker = f"会议时限列表{no}"
    held = meeting_ticket(system_city, no, f"M-list-{no}", marker, facts=False)[:3]  # appeal, hold
    await record(pool, system_city, held)
    r = await api.get("/api/v1/tickets", params={"q": marker}, headers=await bearer(redis))
    assert r.status_code == 200, r.text
    (item,) = r.json()["items"]
    assert item["status"] == "meeting"
    assert datetime.fromisoformat(item["meeting_by"]) == DAY + timedelta(days=3)


async def test_an_archived_ticket_s_deadlines_come_back_as_written_whatever_the_server_s_time_zone(
    settings, system_city
):
    """PostgreSQL keeps no offset: a timestamptz comes back in the session's time zone, which is the
    server's `timezone` unless the session sets one. Against a server set to another zone (New York
    here, given as the connection's startup option, as the server's own setting would give it), a
    ticket read from the record had its deadlines on New York's clock (-05:00): the same instants,
    but another clock for whoever reads the values, and one that changed with the server. The
    records' pool sets UTC on each of its connections: the deadlines come back as they were written."""
    await db.migrate(settings.database_url)
    elsewhere = make_conninfo(settings.database_url, options="-c TimeZone=America/New_York")
    pool = db.pool(elsewhere)
    await pool.open(wait=True)
    try:
        no = made_up_no()
        events = meeting_ticket(system_city, no, f"M-tz-{no}", f"时区读取{no}：暖气不热", facts=True)
        await record(pool, system_city, events)
        written = next(e for e in events if isinstance(e, TicketAssigned))
        # As GET /api/v1/tickets/{no} reads a ticket that has left Redis (the API's state: its pool
        # and its city).
        state = SimpleNamespace(records_pool=pool, city=system_city)

        async def anyone(ticket: Ticket, summoned: Sequence[str]) -> bool:
            return True

        read = await archived_ticket(SimpleNamespace(app=SimpleNamespace(state=state)), no, anyone)
        assert isinstance(read, tuple), read
        ticket, _ = read
        as_json = ticket.model_dump(mode="json")
        for field in ("respond_by", "resolve_by"):
            assert as_json[field] == written.model_dump(mode="json")[field], field
            assert as_json[field].endswith("Z"), as_json[field]  # not -05:00
        # The list and the export read the same rows through the same pool.
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT respond_by, resolve_by FROM tickets WHERE ticket_no = %s", (no,))
            row = await cur.fetchone()
        assert row is not None
        assert (row["respond_by"], row["resolve_by"]) == (written.respond_by, written.resolve_by)
        assert {row["respond_by"].utcoffset(), row["resolve_by"].utcoffset()} == {timedelta(0)}
    finally:
        await pool.close()


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


# --- the list the dashboard's figures open -------------------------------------------------------


def handled(city: City, no: str, text: str, *steps: tuple[str, dict]) -> list[Event]:
    """An appeal LEAD was assigned (respond within the hour, resolve within three), then each step:
    ("accepted", {...}) and the like as LEAD's updates (the status each leaves it in given), or
    ("answer", {...}) a survey's end, or ("assigned", {...}) a second assignment (改派)."""
    events: list[Event] = [*appeal_events(city, no, text, "utility.heating")]
    lead = ref(city, LEAD)

    def assigned(minutes: int, **kw) -> TicketAssigned:
        return TicketAssigned(
            ticket_no=no,
            department=lead,
            via="rule",
            explanation="测试",
            category="utility.heating",
            grid=GRID,
            respond_by=DAY + timedelta(hours=1),
            resolve_by=DAY + timedelta(hours=3),
            occurred_at=DAY + timedelta(minutes=minutes),
            **kw,
        )

    events.append(assigned(2))
    for i, (step, kw) in enumerate(steps, start=3):
        at = DAY + timedelta(minutes=10 * i)
        if step == "assigned":
            events.append(assigned(10 * i, **kw))
        elif step == "answer":
            events.append(
                SurveyAnswered(ticket_no=no, survey_id=f"s-{no}-{i}", text="", occurred_at=at, **kw)
            )
        else:
            kw = {"status": "accepted", "actor": LEAD, "department": lead, **kw}
            events.append(TicketUpdated(ticket_no=no, action=step, occurred_at=at, **kw))
    return events


async def record_handled(pool, city: City, marker: str, kinds: dict[str, tuple]) -> dict[str, str]:
    """A ticket `handled` by each kind's steps, recorded; their numbers by kind."""
    nos = {kind: made_up_no() for kind in kinds}
    events: list[Event] = []
    for kind, steps in kinds.items():
        events += handled(city, nos[kind], f"{marker}：{kind}", *steps)
    await record(pool, city, events)
    return nos


def notice(stage: str, minutes: int = 60) -> dict:
    """A deadline's overdue notice (督办) as a step's payload."""
    names = {"respond": "签收", "resolve": "办结", "meeting": "会议"}
    return {
        "supervision": DeadlineNotice(
            stage=stage, stage_name=names[stage], deadline=DAY + timedelta(minutes=minutes)
        )
    }


async def test_the_list_selects_the_responses_and_answers_the_rates_count(api, redis, pool, system_city):
    """The dashboard's 响应率 opens the tickets whose response came due late (签收超时, or the
    deadline passed unaccepted), 回访答复 those with an answer counted: on the record, each ticket
    with any such response (a re-dispatched ticket responds again) or answer, once; one still
    within its deadline in neither, an answer voided by the check not counted."""
    marker = f"签收回访筛选{made_up_no()}"
    kinds: dict[str, tuple] = {
        "on_time": (("accepted", {"on_time": True}), ("answer", {"rating": 1, "solved": True})),
        "late": (("accepted", {"on_time": False}), ("answer", {"rating": None, "outcome": "no_answer"})),
        # Late after the notice: due once, by the notice; its only answer voided by the check.
        "noticed": (
            ("overdue", {"status": "assigned", **notice("respond")}),
            ("accepted", {"on_time": False, "marked_overdue": True}),
            ("answer", {"rating": 1, "solved": True, "void": True}),
        ),
        "never": (("overdue", {"status": "assigned", **notice("respond")}),),
        "pending": (),  # within its response deadline: not due yet
        # 并案 within the deadline answers for the response.
        "merged": (
            (
                "merged",
                {"status": "closed", "merge": Merge(into="20001201-1", duplicate="x", response_on_time=True)},
            ),
        ),
        # Late, re-dispatched (改派), then on time: both; answered twice (a reopen between).
        "both": (
            ("accepted", {"on_time": False}),
            ("assigned", {}),
            ("accepted", {"on_time": True}),
            ("answer", {"rating": 3, "solved": False}),
            ("answer", {"rating": 1, "solved": True}),
        ),
        # On time; the resolution's deadline passing is no response.
        "slow": (("accepted", {"on_time": True}), ("overdue", notice("resolve", 180))),
    }
    nos = await record_handled(pool, system_city, marker, kinds)
    desk = await bearer(redis)

    def of(*which: str) -> list[str]:
        return sorted(nos[k] for k in which)

    assert await listed(api, desk, q=marker, response="on_time") == of("on_time", "merged", "both", "slow")
    assert await listed(api, desk, q=marker, response="late") == of("late", "noticed", "never", "both")
    assert await listed(api, desk, q=marker, answered="true") == of("on_time", "both")
    assert await listed(api, desk, q=marker, answered="false") == of(
        "late", "noticed", "never", "pending", "merged", "slow"
    )
    # The export takes them as the list does.
    r = await api.get("/api/v1/tickets/export", params={"q": marker, "response": "late"}, headers=desk)
    assert r.status_code == 200, r.text
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert sorted(row[0] for row in rows[1:]) == of("late", "noticed", "never", "both")
    r = await api.get("/api/v1/tickets", params={"q": marker, "response": "yes"}, headers=desk)
    assert (r.status_code, r.json()["field"]) == (422, "response")

    # The rates count the same responses, event by event: 应响应 is one more than the tickets listed
    # (both responded twice), and the list's on-time and late tickets are those they were counted for.
    from services.records.rates import COUNTERS

    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT e.ticket_no, count(*) FILTER (WHERE {COUNTERS['due']}) AS due, "
            f"count(*) FILTER (WHERE {COUNTERS['due_on_time']}) AS on_time, "
            f"count(*) FILTER (WHERE {COUNTERS['answered']}) AS answered "
            "FROM ticket_events e WHERE e.ticket_no = ANY(%s) GROUP BY e.ticket_no",
            (list(nos.values()),),
        )
        counted = {r["ticket_no"]: r for r in await cur.fetchall()}
    kind_of = {no: kind for kind, no in nos.items()}
    assert sum(r["due"] for r in counted.values()) == 8
    assert sorted(kind_of[n] for n, r in counted.items() if r["on_time"]) == sorted(
        ["on_time", "merged", "both", "slow"]
    )
    assert sorted(kind_of[n] for n, r in counted.items() if r["due"] > r["on_time"]) == sorted(
        ["late", "noticed", "never", "both"]
    )
    assert sorted(kind_of[n] for n, r in counted.items() if r["answered"]) == ["both", "on_time"]


async def test_the_overdue_tickets_are_counted_and_listed_longest_overdue_first(
    api, redis, pool, system_city
):
    """The dashboard's 超期工单 from the record: the open tickets marked overdue, by the deadline that
    runs now (to accept, to resolve, the meeting's), those with none running last; a page of them
    with the count of all."""
    marker = f"超期排序{made_up_no()}"
    spec = MeetingSpec(
        meeting_id=f"M-due-{made_up_no()}",
        reason="hotspot",
        lead_street=STREET,
        summoned=(STREET, LEAD),
        category="utility.heating",
        grid=GRID,
        deadline=DAY + timedelta(minutes=100),
    )
    kinds: dict[str, tuple] = {
        # Assigned, the response an hour after assignment passed: due DAY + 1 h.
        "unaccepted": (("overdue", {"status": "assigned", **notice("respond")}),),
        # Accepted, the resolution three hours after passed: due DAY + 3 h.
        "unresolved": (("accepted", {"on_time": True}), ("overdue", notice("resolve", 180))),
        # Late to accept, then held by a meeting whose own deadline passed: due DAY + 100 min.
        "held": (
            ("overdue", {"status": "assigned", **notice("respond")}),
            ("escalated", {"status": "meeting", "actor": "system", "meeting": spec}),
            ("overdue", {"status": "meeting", "actor": "system", **notice("meeting", 100)}),
        ),
        # Resolved late: no deadline runs now, listed last.
        "resolved": (
            ("accepted", {"on_time": True}),
            ("overdue", notice("resolve", 180)),
            ("resolved", {"status": "resolved", "on_time": False}),
        ),
        "closed": (  # closed: not among them
            ("accepted", {"on_time": True}),
            ("overdue", notice("resolve", 180)),
            ("closed", {"status": "closed", "answer": Answer(outcome="skipped_anonymous")}),
        ),
        "in_time": (("accepted", {"on_time": True}),),  # not overdue
    }
    nos = await record_handled(pool, system_city, marker, kinds)
    open_ = ",".join(s.value for s in Status if s != Status.CLOSED)
    params = {"q": marker, "overdue": "true", "status": open_, "sort": "due", "size": "2"}
    r = await api.get("/api/v1/tickets", params=params, headers=await bearer(redis))
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 4
    assert [t["ticket_no"] for t in r.json()["items"]] == [nos["unaccepted"], nos["held"]]
    r = await api.get("/api/v1/tickets", params={**params, "page": "2"}, headers=await bearer(redis))
    assert [t["ticket_no"] for t in r.json()["items"]] == [nos["unresolved"], nos["resolved"]]


# --- joint meetings that leave Redis ---------------------------------------------------------------

# These tickets go through Redis: numbered on another day long past than `made_up_no`'s.
long_past_no = made_up_numbers("20001203")


async def a_ticket_in_redis(redis, pool, city: City, text: str, *, closed: bool, held: TicketUpdated) -> None:
    """A ticket in Redis (ticket and history, as the router leaves it) and in the record: `held` for
    a joint meeting, then LEAD's, closed long ago (`closed`) or still being handled."""
    no, mid = held.ticket_no, held.meeting.meeting_id if held.meeting else ""
    events = [*appeal_events(city, no, text, "utility.heating"), held]
    appeal = events[0]
    assert isinstance(appeal, AppealReceived)
    assigned = TicketAssigned(
        ticket_no=no,
        department=ref(city, LEAD),
        via="meeting",
        explanation=f"联席会议{mid}决定由{city.department_by_id[LEAD].name}主办",
        category="utility.heating",
        grid=GRID,
        respond_by=DAY + timedelta(hours=4),
        resolve_by=DAY + timedelta(days=3),
        occurred_at=DAY + timedelta(hours=2),
    )
    events.append(assigned)
    update: dict = {"status": Status.ASSIGNED, "department": assigned.department, "meeting_id": mid}
    if closed:
        closed_at = DAY + timedelta(hours=30)
        events.append(
            TicketUpdated(
                ticket_no=no,
                action="closed",
                status="closed",
                actor=LEAD,
                department=assigned.department,
                answer=Answer(outcome="skipped_anonymous"),
                occurred_at=closed_at,
            )
        )
        update.update(status=Status.CLOSED, closed_at=closed_at)
    store = TicketStore(redis)
    assert await store.create_many([appeal]) == 1
    ticket = Ticket.from_appeal(appeal).model_copy(update=update)
    await store.apply_many([Change(no, lambda _t: Outcome(ticket, record=events[1:]))])
    await record(pool, city, events)


def escalated(no: str, mid: str, summoned: Sequence[str]) -> TicketUpdated:
    """The ticket held for a meeting (contested responsibility): the router's handler opens the
    meeting from it."""
    spec = MeetingSpec(
        meeting_id=mid,
        reason="ambiguous",
        lead_street=STREET,
        summoned=tuple(summoned),
        category="utility.heating",
        grid=GRID,
        deadline=(datetime.now(UTC) + timedelta(days=3)).astimezone(TZ),  # local, as the router's
    )
    return TicketUpdated(
        ticket_no=no,
        action="escalated",
        status="meeting",
        actor="system",
        meeting=spec,
        occurred_at=DAY + timedelta(hours=1),
    )


async def a_meeting_in_redis(
    api, redis, pool, city: City, *, decided: bool, open_ticket: bool = False
) -> tuple[str, list[str]]:
    """A joint meeting as the router keeps it, of two tickets (the second still being handled if
    `open_ticket`, else both closed long ago): convened for the first, joined by the second, which
    summons CALLED too; CALLED checks in, and if `decided` the desk names LEAD, through the API.
    Its facts are in the tickets' histories, where the router writes them."""
    mid = f"M-leaves-{uuid.uuid4().hex[:12]}"
    nos = [long_past_no(), long_past_no()]
    holds = [escalated(nos[0], mid, (STREET, LEAD)), escalated(nos[1], mid, (STREET, LEAD, CALLED))]
    for held in holds:
        closed = not (open_ticket and held is holds[1])
        text = f"离开Redis的联席{held.ticket_no}：暖气不热"
        await a_ticket_in_redis(redis, pool, city, text, closed=closed, held=held)
    store = MeetingStore(redis, TicketStore(redis))
    for held in holds:
        await store.open_from([held], partial(dept_ref, city))
    r = await api.post(f"/api/v1/meetings/{mid}/checkin", headers=await bearer(redis, CALLED))
    assert r.status_code == 200, r.text
    if decided:
        r = await api.post(
            f"/api/v1/meetings/{mid}/decide",
            json={"lead": LEAD, "note": "由热力公司主办"},
            headers=await bearer(redis),
        )
        assert r.status_code == 200, r.text
    return mid, nos


async def forget(redis, mid: str, nos: Sequence[str]) -> None:
    """Take what a test left in the shared Redis out of it: the meeting, off every list, and its
    tickets (the departments' lists and counts are other tests' too)."""
    await redis.delete(
        f"meeting:{mid}", tickets_key(mid), *[k for no in nos for k in (f"t:{no}", f"t:{no}:h")]
    )
    for key in [k.decode() async for k in redis.scan_iter(match="meetings:*", count=1000)]:
        await redis.zrem(key, mid)


async def evict_closed_tickets(redis, pool, settings, nos: Sequence[str]) -> Retention:
    """Every closed ticket of the shared Redis goes (its history copied into the record first): these
    tickets among them."""
    retention = Retention(pool, TicketStore(redis), settings)
    await retention.evict_closed(datetime.now(UTC) + timedelta(minutes=1))
    assert not await redis.exists(*[f"t:{no}" for no in nos])
    return retention


async def test_a_decided_meeting_whose_tickets_left_redis_leaves_it_and_is_read_from_the_record(
    api, redis, pool, settings, system_city, console
):
    mid, nos = await a_meeting_in_redis(api, redis, pool, system_city, decided=True)
    try:
        desk = await bearer(redis)
        r = await api.get(f"/api/v1/meetings/{mid}", headers=desk)
        assert r.status_code == 200, r.text
        live = r.json()
        assert (live["status"], live["lead"], live["tickets"]) == ("decided", LEAD, nos)
        assert [d["id"] for d in live["summoned"]] == [STREET, LEAD, CALLED]
        assert "archived" not in live

        retention = await evict_closed_tickets(redis, pool, settings, nos)
        assert await retention.evict_decided_meetings(datetime.now(UTC) + timedelta(minutes=1)) >= 1
        assert not await redis.exists(f"meeting:{mid}", tickets_key(mid))
        for dept in (None, STREET, LEAD, CALLED):  # off every list it was on
            base = "meetings:all" if dept is None else f"meetings:of:{dept}"
            for key in (base, f"{base}:decided", f"{base}:check_in"):
                assert await redis.zscore(key, mid) is None, key
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT left_redis_at FROM meetings WHERE meeting_id = %s", (mid,))
            assert (await cur.fetchone())["left_redis_at"] is not None

        # From the record, in the shape Redis gave, under the same rule.
        r = await api.get(f"/api/v1/meetings/{mid}", headers=desk)
        assert r.status_code == 200, r.text
        archived = r.json()
        assert archived["archived"] is True
        # Each of its times the same string, at the same offset (the record keeps none): a reader
        # sees one clock before and after it left Redis, the deadline in the city's time.
        assert list(live["checkins"]) == [CALLED]  # a check-in, so its time is compared too
        assert archived == {**live, "archived": True}
        deadline = datetime.fromisoformat(archived["deadline"])
        assert deadline.utcoffset() == deadline.astimezone(TZ).utcoffset()
        for dept, status in ((CALLED, 200), (STREET, 200), (LEAD, 200), (NOT_CALLED, 404)):
            r = await api.get(f"/api/v1/meetings/{mid}", headers=await bearer(redis, dept))
            assert r.status_code == status, (dept, r.text)
        r = await api.get(f"/api/v1/meetings/M-never-{uuid.uuid4().hex[:8]}", headers=desk)
        assert r.status_code == 404, r.text  # neither in Redis nor in the record
        # Checking in to it now is told it was decided, not that it does not exist; to one the
        # department may not read, or that never was, it is still a 404.
        r = await api.post(f"/api/v1/meetings/{mid}/checkin", headers=await bearer(redis, CALLED))
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "meeting_decided"
        assert "已于" in r.json()["message"]
        assert "作出决定并归档" in r.json()["message"]
        r = await api.post(f"/api/v1/meetings/{mid}/checkin", headers=await bearer(redis, NOT_CALLED))
        assert r.status_code == 404, r.text

        # The console's page of the meeting, which its tickets' pages link.
        await sign_in(console, redis, CALLED)
        page = await console.get(f"/console/meetings/{mid}")
        assert page.status_code == 200, page.text
        assert 'id="meeting-archived"' in page.text
        assert f'id="meeting-{mid}"' in page.text
        assert f"主办单位：{system_city.department_by_id[LEAD].name}（由热力公司主办）" in page.text
        assert all(f'href="/console/tickets/{no}"' in page.text for no in nos)
        assert f'action="/console/meetings/{mid}/' not in page.text
        ticket = await console.get(f"/console/tickets/{nos[0]}")
        assert ticket.status_code == 200, ticket.text
        assert f'href="/console/meetings/{mid}"' in ticket.text
        await sign_in(console, redis, NOT_CALLED)
        assert (await console.get(f"/console/meetings/{mid}")).status_code == 404
    finally:
        await forget(redis, mid, nos)


async def test_an_open_meeting_or_one_with_a_ticket_in_redis_stays_there(
    api, redis, pool, settings, system_city
):
    opened, opened_nos = await a_meeting_in_redis(api, redis, pool, system_city, decided=False)
    held, held_nos = await a_meeting_in_redis(api, redis, pool, system_city, decided=True, open_ticket=True)
    # Back in Redis after it left, as far as the record knows: its meeting waits for it too.
    back, back_nos = await a_meeting_in_redis(api, redis, pool, system_city, decided=True)
    try:
        retention = await evict_closed_tickets(redis, pool, settings, [*opened_nos, *back_nos, held_nos[0]])
        assert await redis.exists(f"t:{held_nos[1]}")  # still being handled
        await redis.set(f"t:{back_nos[1]}", "{}")
        await retention.evict_decided_meetings(datetime.now(UTC) + timedelta(minutes=1))
        desk = await bearer(redis)
        for mid in (opened, held, back):
            assert await redis.exists(f"meeting:{mid}"), mid
            r = await api.get(f"/api/v1/meetings/{mid}", headers=desk)
            assert r.status_code == 200, r.text
            assert "archived" not in r.json()
        assert await redis.zscore(f"meetings:of:{CALLED}:decided", back) is not None  # still listed
        # Gone from Redis, the ticket no longer keeps it.
        await redis.delete(f"t:{back_nos[1]}")
        await retention.evict_decided_meetings(datetime.now(UTC) + timedelta(minutes=1))
        assert not await redis.exists(f"meeting:{back}")
    finally:
        for mid, nos in ((opened, opened_nos), (held, held_nos), (back, back_nos)):
            await forget(redis, mid, nos)


async def test_a_co_handling_department_reads_its_ticket_and_is_told_who_handles_it(
    api, redis, pool, system_city, console
):
    """协办: a department the responsibility list names to co-handle a category (噪音扰民: the police
    and 城管执法 beside 生态环境) finds the ticket in its list and its export, marked 协办 and naming
    who co-handles it, and reads its page without the lead's forms: the workflow refuses it 签收,
    办结, 退单 and 延期 (before, it was offered them, and 签收 answered 工单…不存在 on the ticket's
    own page). The lead still has them; the desk's list names the co-handlers under the lead."""
    marker = f"协办噪音{uuid.uuid4().hex[:8]}"
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0231')}"}
    text = f"{marker}：光明小区旁边的工地晚上十一点还在施工打桩，噪音太大了，老人孩子都睡不着"
    r = await api.post(
        "/api/v1/appeals",
        json={"channel": "hotline", "caller_phone": "13800006677", "text": text},
        headers=operator,
    )
    assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]
    desk = await bearer(redis)

    async def routed():
        t = await api.get(f"/api/v1/tickets/{no}", headers=desk)
        return t.json() if t.status_code == 200 and t.json()["status"] == "assigned" else None

    ticket = await eventually(routed)
    lead = ticket["department"]["id"]
    co = [d["id"] for d in ticket["co_departments"]]
    assert lead == "environment", ticket  # env.noise, as the demo city's list has it
    assert co, ticket
    co_names = [system_city.department_by_id[d].name for d in co]

    async def recorded():
        return await listed(api, await bearer(redis, co[0]), q=marker) == [no]

    await eventually(recorded)

    await sign_in(console, redis, co[0])
    page = await console.get(f"/console/tickets/{no}")
    assert page.status_code == 200, page.text
    assert f'id="co-departments">{"、".join(co_names)}<' in page.text
    assert 'id="co-handled"' in page.text
    assert f"由主办单位{system_city.department_by_id[lead].name}办理" in page.text
    assert 'id="summoned-only"' not in page.text
    assert [a for a in ACTIONS if f'id="{a}"' in page.text] == []
    assert f'action="/console/tickets/{no}/' not in page.text
    # Its list says the ticket is one it co-handles; its export names who co-handles it.
    page = await console.get("/console/tickets", params={"q": marker})
    assert page.status_code == 200, page.text
    row = page.text[page.text.index(f">{no}</a>") :]
    assert '<span class="tag">协办</span>' in row[: row.index("</td>")]
    # A call typed with neither title nor address: its row shows how its words begin.
    assert f'data-label="标题/地址">{text[:40]}</td>' in row
    export = await console.get("/console/tickets/export", params={"q": marker, "format": "csv"})
    assert export.status_code == 200, export.text
    table = list(csv.reader(io.StringIO(export.content.decode("utf-8-sig"))))
    assert table[1][table[0].index("协办单位")] == "、".join(co_names)

    # The lead has the forms, and no 协办 line; the desk's list names the co-handlers.
    await sign_in(console, redis, lead)
    page = await console.get(f"/console/tickets/{no}")
    assert 'id="accept"' in page.text
    assert 'id="co-handled"' not in page.text
    page = await console.get("/console/tickets", params={"q": marker})
    row = page.text[page.text.index(f">{no}</a>") :]
    assert '<span class="tag">协办</span>' not in row[: row.index("</td>")]
    await sign_in(console, redis)
    page = await console.get("/console/tickets", params={"q": marker})
    assert f"协办：{'、'.join(co_names)}" in page.text
