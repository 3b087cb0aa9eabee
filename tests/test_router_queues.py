"""A department's queue on the real Redis: open tickets by deadline, closed ones on their own list."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from functools import partial
from types import SimpleNamespace

import orjson

from services.router.service import FollowedByDesk, QueueFilter, Queues
from shared import tickets as st
from shared.events import DepartmentRef
from shared.store import TicketStore
from shared.tickets import Ticket
from tests.cities import demo_city
from tests.router_factory import T0, assigned_ticket


def own_department(kind: str = "queue", name: str = "测试单位") -> tuple[str, DepartmentRef]:
    """A department of its own: the city's departments hold the session's other tickets (closed ones
    newer than these, a page of which might not reach these), and their queues are not a test's to
    delete."""
    dept = f"test-{kind}-{uuid.uuid4().hex[:8]}"
    return dept, DepartmentRef(id=dept, name=name)


@asynccontextmanager
async def queued(redis, queues: Queues, dept: str, tickets: Sequence[Ticket]) -> AsyncIterator[list[str]]:
    """The tickets stored and indexed in `dept`'s queue, their numbers given; gone again after."""
    nos = [t.ticket_no for t in tickets]
    async with redis.pipeline(transaction=False) as p:
        for t in tickets:
            p.set(f"t:{t.ticket_no}", t.model_dump_json())
        await p.execute()
    await queues.index(tickets)
    try:
        yield nos
    finally:
        await redis.delete(f"queue:{dept}", f"queue:{dept}:closed", *(f"t:{n}" for n in nos))
        await redis.hdel("queue:owner", *nos)


async def listed(
    queues: Queues, dept: str, where: QueueFilter, page: int = 1, size: int = 50
) -> tuple[int, list[str]]:
    """A page of the queue: how many the filter admits, and the page's numbers."""
    total, found = await queues.page(dept, where, page=page, size=size)
    return total, [t.ticket_no for t in found]


async def test_closed_tickets_move_to_the_departments_closed_list(redis):
    city = demo_city()
    queues = Queues(redis, TicketStore(redis))
    dept, own = own_department()
    a, b = (
        assigned_ticket(city, no=f"20261123-7710{i}").model_copy(update={"department": own}) for i in range(2)
    )
    closed = b.model_copy(update={"status": st.CLOSED, "closed_at": T0 + timedelta(days=3)})
    for t in (a, closed):
        await redis.set(f"t:{t.ticket_no}", t.model_dump_json())
    await queues.index([a, b])
    await queues.index([closed])

    _total, open_page = await queues.page(dept, QueueFilter(), page=1, size=50)
    assert [t.ticket_no for t in open_page] == [a.ticket_no]
    _total, closed_page = await queues.page(dept, QueueFilter(status=st.CLOSED), page=1, size=50)
    assert [t.ticket_no for t in closed_page] == [b.ticket_no]
    await redis.delete(f"queue:{dept}", f"queue:{dept}:closed")
    await redis.hdel("queue:owner", a.ticket_no, b.ticket_no)


async def test_a_departments_queue_is_paged_and_narrowed_where_it_is_kept(redis):
    """Unfiltered, a page reads only its own tickets, in deadline order, and the total is the
    queue's; each filter narrows the queue before it is paged; a ticket that moved to another
    department since it was indexed is not listed."""
    city = demo_city()
    queues = Queues(redis, TicketStore(redis))
    dept, own = own_department()
    base = [
        assigned_ticket(city, category=cat, grid_id=grid, no=f"20261123-7720{i}")
        for i, (cat, grid) in enumerate(
            [
                ("city.facility.streetlight", "s01c01g01"),
                ("city.facility.road_damage", "s01c01g02"),
                ("env.noise", "s01c01g01"),
                ("env.noise", "s01c01g02"),
            ]
        )
    ]
    tickets = [
        t.model_copy(update={"department": own, "resolve_by": t.resolve_by + timedelta(hours=i)})
        for i, t in enumerate(base)
    ]
    tickets[1] = tickets[1].model_copy(update={"status": st.ACCEPTED, "overdue": True})
    tickets[2] = tickets[2].model_copy(update={"returns": 1})
    tickets[3] = tickets[3].model_copy(update={"extension_request": {"days": 3, "reason": "等材料"}})
    shown = partial(listed, queues, dept)
    async with queued(redis, queues, dept, tickets) as nos:
        everything = await shown(QueueFilter())
        assert everything[0] == 4
        assert sorted(everything[1]) == sorted(nos)
        first, second = await shown(QueueFilter(), 1, 2), await shown(QueueFilter(), 2, 2)
        assert first[0] == second[0] == 4
        assert first[1] + second[1] == everything[1]
        assert await shown(QueueFilter(status=st.ACCEPTED)) == (1, [nos[1]])
        assert await shown(QueueFilter(overdue=True)) == (1, [nos[1]])
        assert await shown(QueueFilter(categories=city.branch("env"))) == (2, [nos[2], nos[3]])
        total, found = await shown(QueueFilter(grid="s01c01g02"))
        assert (total, sorted(found)) == (2, [nos[1], nos[3]])
        desk = await shown(QueueFilter(desk=True))
        assert desk == (2, [nos[2], nos[3]])
        assert [(await shown(QueueFilter(desk=True), p, 1))[1][0] for p in (1, 2)] == desk[1]
        # Moved on (a write the index has not followed yet): left out, filtered or not.
        moved = tickets[0].model_copy(update={"department": DepartmentRef(id="elsewhere", name="别处")})
        await redis.set(f"t:{moved.ticket_no}", moved.model_dump_json())
        assert nos[0] not in (await shown(QueueFilter()))[1]
        assert nos[0] not in (await shown(QueueFilter(grid="s01c01g01")))[1]


async def test_the_desks_waiting_tickets_are_read_without_those_answered_on_the_call(redis):
    """The desk's queue holds its waiting tickets (待人工派单) and, until their surveys close them,
    those answered on the call: `status=review` reads only the first, whose score is theirs alone,
    yet still checks each ticket it reads (one indexed before, with the score of the waiting, is
    left out)."""
    city = demo_city()
    queues = Queues(redis, TicketStore(redis))
    dept, own = own_department("desk", "测试派单中心")
    waiting = [
        assigned_ticket(city, confidence=0.3, no=f"20261123-7730{i}").model_copy(update={"department": own})
        for i in range(2)
    ]
    assert {t.status for t in waiting} == {st.REVIEW}
    answered = [
        t.model_copy(update={"ticket_no": f"20261123-7731{i}", "status": st.RESOLVED})
        for i, t in enumerate(waiting)
    ]
    read: list[str] = []
    mget = redis.mget

    async def counted_mget(keys, *args):
        read.extend(keys)
        return await mget(keys, *args)

    async with queued(redis, queues, dept, waiting + answered) as nos:
        redis.mget = counted_mget
        try:
            total, found = await queues.page(dept, QueueFilter(status=st.REVIEW), page=1, size=50)
            assert (total, [t.ticket_no for t in found]) == (2, nos[:2])
            assert sorted(read) == [f"t:{n}" for n in nos[:2]]
            # Answered on the call before the waiting had a score of their own: read, and left out.
            await redis.zadd(f"queue:{dept}", {nos[2]: float(await redis.zscore(f"queue:{dept}", nos[0]))})
            total, found = await queues.page(dept, QueueFilter(status=st.REVIEW), page=1, size=50)
            assert (total, [t.ticket_no for t in found]) == (2, nos[:2])
            # Unfiltered, the desk's queue lists them all, the waiting first.
            _total, everything = await queues.page(dept, QueueFilter(), page=1, size=50)
            assert [t.ticket_no for t in everything][:2] == nos[:2]
            assert sorted(t.ticket_no for t in everything) == sorted(nos)
        finally:
            del redis.mget


async def test_the_desks_waiting_tickets_are_split_by_confidence_and_a_ticket_finds_its_page(redis):
    """The desk's two lists (低置信度待复核 below the threshold, 未能自动派单 the others, no
    confidence among them) are split where they are kept, each paged; a ticket asks for the page of
    its list that holds it, and one not in the list leaves the page asked for."""
    city = demo_city()
    queues = Queues(redis, TicketStore(redis))
    dept, own = own_department("desk", "测试派单中心")
    template = assigned_ticket(city, confidence=0.3, no="20261123-774000")
    confidences = [0.3, None, 0.9, 0.2, 0.6, None, 0.59]
    waiting = [
        template.model_copy(
            update={
                "ticket_no": f"20261123-7740{i:02d}",
                "confidence": c,
                "department": own,
                "status": st.REVIEW,
            }
        )
        for i, c in enumerate(confidences)
    ]

    def desk(low: bool) -> QueueFilter:
        return QueueFilter(status=st.REVIEW, low_confidence=low, threshold=0.6)

    shown = partial(listed, queues, dept)
    async with queued(redis, queues, dept, waiting) as nos:
        low, others = [nos[0], nos[3], nos[6]], [nos[1], nos[2], nos[4], nos[5]]
        assert await shown(desk(True)) == (3, low)  # 0.6 is not below the threshold; 0.59 is
        assert await shown(desk(False)) == (4, others)
        assert await shown(desk(False), 2, 3) == (4, others[3:])
        # The page holding a ticket, whatever page was asked for; elsewhere, the page asked for.
        assert await queues.page_holding(dept, desk(False), nos[5], page=1, size=3) == (4, 2, [waiting[5]])
        total, page, found = await queues.page_holding(dept, desk(False), nos[0], page=1, size=3)
        assert (total, page, [t.ticket_no for t in found]) == (4, 1, others[:3])


async def test_reading_a_whole_queue_page_by_page_reads_each_ticket_once(redis):
    """The console reads a department's queue (its live page, the desk's view of the city) page by
    page: every page must read only its own tickets. When each page read the whole queue again, a
    department of 11,600 open tickets took the console 70 s to list."""
    city = demo_city()
    dept, own = own_department()
    template = assigned_ticket(city, no="20261123-780000").model_copy(update={"department": own})
    tickets = [
        template.model_copy(
            update={"ticket_no": f"20261123-78{i:04d}", "respond_by": T0 + timedelta(minutes=i)}
        )
        for i in range(1, 451)
    ]

    class Counting(TicketStore):
        read = 0

        async def get_many(self, nos):
            Counting.read += len(nos)
            return await super().get_many(nos)

    queues = Queues(redis, Counting(redis))
    async with queued(redis, queues, dept, tickets):
        seen: list[str] = []
        page = 1
        while True:
            total, found = await queues.page(dept, QueueFilter(), page=page, size=200)
            seen += [t.ticket_no for t in found]
            if page * 200 >= total:
                break
            page += 1
        assert seen == [t.ticket_no for t in tickets]  # in deadline order, each once
        assert Counting.read == len(tickets)


async def test_what_the_desk_follows_is_read_in_one_pass_over_the_queues(redis):
    """The extension requests waiting for the desk, every one; the tickets returned at least once,
    those the departments hold (department by department, each queue in its order) before those
    waiting at the desk to be dispatched again; a ticket in both lists is in both. Nothing else:
    not a department's other tickets, not the desk's fresh ones."""
    city = demo_city()
    queues = Queues(redis, TicketStore(redis))
    (first, one), (second, two) = own_department("followed"), own_department("followed", "测试单位二")
    desk, own_desk = own_department("desk", "测试派单中心")
    asking = {"days": 3, "reason": "等材料"}

    def ticket(i: int, dept: DepartmentRef, **changes) -> Ticket:
        t = assigned_ticket(city, no=f"20261123-7740{i}")
        return t.model_copy(
            update={"department": dept, "resolve_by": t.resolve_by + timedelta(hours=i), **changes}
        )

    held_one = [ticket(0, one, returns=1), ticket(1, one, extension_request=asking), ticket(2, one)]
    held_two = [ticket(3, two, returns=2, extension_request=asking)]
    waiting = [ticket(4, own_desk, status=st.REVIEW, returns=1), ticket(5, own_desk, status=st.REVIEW)]
    async with AsyncExitStack() as stack:
        for dept, tickets in ((first, held_one), (second, held_two), (desk, waiting)):
            await stack.enter_async_context(queued(redis, queues, dept, tickets))
        followed = await queues.followed(desk, [first, second])

    def numbers(kept: list[bytes | str]) -> list[str]:
        return [orjson.loads(raw)["ticket_no"] for raw in kept]

    assert numbers(followed.extensions) == ["20261123-77401", "20261123-77403"]
    assert numbers(followed.returned) == ["20261123-77400", "20261123-77403", "20261123-77404"]


async def test_a_call_answered_on_the_spot_and_reopened_is_followed_by_the_desk(redis):
    """直接答复: the operator answered the call, the desk accepted and resolved it at once; its
    resident answered the survey 不满意, and the ticket is reopened where it was, at the desk, as
    已派单 with fresh deadlines. Not waiting to be dispatched (待人工派单), it is in neither of the
    desk's lists, and no department has it: the desk follows it (`reopened`), the most urgent first,
    and nothing else of its queue: not its waiting tickets, not the calls answered on the spot whose
    surveys are still open."""
    from services.router import workflow
    from shared.events import SurveyAnswered, SurveySent
    from tests.router_factory import TZ

    city = demo_city()
    queues = Queues(redis, TicketStore(redis))
    desk, own_desk = own_department("desk", "测试派单中心")

    hotline = city.responsibilities.dispatch_desk  # the workflow's; the queue is the test's own

    def answered(i: int) -> Ticket:
        t = assigned_ticket(city, no=f"20261123-7750{i}").model_copy(update={"department": dept_ref(hotline)})
        t = workflow.accept(t, hotline, city, T0).ticket
        return workflow.resolve(t, hotline, "社保卡挂失电话010-68020901", city, T0).ticket

    def dept_ref(dept: str) -> DepartmentRef:
        return DepartmentRef(id=dept, name=city.department_by_id[dept].name)

    def reopened(i: int, hours: int) -> Ticket:
        t = answered(i)
        sent = SurveySent(
            ticket_no=t.ticket_no,
            survey_id=f"s{i}",
            masked_phone="138****0000",
            message_id="m",
            text="请回复",
        )
        t = workflow.survey_sent(t, sent).ticket
        answer = SurveyAnswered(
            ticket_no=t.ticket_no,
            survey_id=f"s{i}",
            rating=3,
            solved=False,
            text="电话打不通",
            occurred_at=T0 + timedelta(hours=hours),
        )
        out = workflow.record_rating(t, answer, city, TZ)
        assert out is not None
        return out.ticket.model_copy(update={"department": own_desk})

    late, early = reopened(1, 5), reopened(2, 1)
    assert (late.status, late.reopens) == (st.ASSIGNED, 1)
    assert early.respond_by is not None
    assert late.respond_by is not None
    assert early.respond_by < late.respond_by
    waiting = assigned_ticket(city, confidence=0.3, no="20261123-77503").model_copy(
        update={"department": own_desk}
    )
    assert waiting.status == st.REVIEW
    surveying = answered(4).model_copy(update={"department": own_desk})
    async with queued(redis, queues, desk, [late, early, waiting, surveying]):
        followed = await queues.followed(desk, [])

    assert [orjson.loads(raw)["ticket_no"] for raw in followed.reopened] == [
        "20261123-77502",
        "20261123-77501",
    ]
    assert followed.returned == followed.extensions == followed.place_requests == []


async def test_a_returned_ticket_a_joint_meeting_took_is_still_counted_and_listed_by_the_desk(redis):
    """退单工单 lists every open returned ticket, wherever it went, and counts what it lists: one a
    hotspot's meeting took from the desk's waiting room (it held the cluster's every ticket) is
    listed as one it took from a department's queue is, after the desk's waiting ones; the desk's
    answered calls waiting for their survey are not read for it."""
    from services.router import meetings, workflow
    from tests.router_factory import TZ

    city = demo_city()
    queues = Queues(redis, TicketStore(redis))
    (first, one), (desk, own_desk) = own_department("followed"), own_department("desk", "测试派单中心")

    def returned_to_desk(no: str) -> Ticket:
        """Returned by its department (no other candidate): waiting at the desk (待人工派单)."""
        t = assigned_ticket(city, no=no)
        out = workflow.return_ticket(
            t, t.department.id, "not_ours", "", "规则X", city, TZ, T0 + timedelta(minutes=5)
        )
        assert (out.ticket.status, out.ticket.returns) == (st.REVIEW, 1)
        return out.ticket

    hot = meetings.spec(
        city, mid="M-hot-test", reason="hotspot", grid="s01c01g01", category="city.facility.streetlight",
        summoned=(), now=T0, tz=TZ,
    )  # fmt: skip
    pulled = workflow.hold_for_meeting(returned_to_desk("20261123-77500"), hot, T0 + timedelta(minutes=10))
    assert pulled is not None
    at_desk_held = pulled.ticket.model_copy(update={"department": own_desk})
    assert at_desk_held.status == st.MEETING
    waiting = returned_to_desk("20261123-77501").model_copy(update={"department": own_desk})
    fresh = returned_to_desk("20261123-77502").model_copy(update={"department": own_desk, "returns": 0})
    # An answered call waiting for its survey (the desk's, thousands a day): never read here.
    answered = assigned_ticket(city, no="20261123-77503").model_copy(
        update={"department": own_desk, "status": st.RESOLVED, "returns": 1}
    )
    held = assigned_ticket(city, no="20261123-77504").model_copy(
        update={"department": one, "status": st.MEETING, "returns": 2, "meeting_id": "M-twice"}
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(queued(redis, queues, first, [held]))
        await stack.enter_async_context(queued(redis, queues, desk, [at_desk_held, waiting, fresh, answered]))
        reads: list[tuple[str, float, float]] = []
        plain = redis.zrangebyscore

        async def counted(key, low, high, *args, **kw):
            reads.append((key, float(low), float(high)))
            return await plain(key, low, high, *args, **kw)

        redis.zrangebyscore = counted
        try:
            followed = await queues.followed(desk, [first])
        finally:
            redis.zrangebyscore = plain
        held_score = await redis.zscore(f"queue:{desk}", "20261123-77500")
        answered_score = await redis.zscore(f"queue:{desk}", "20261123-77503")

    numbers = [orjson.loads(raw)["ticket_no"] for raw in followed.returned]
    # The department's, then the desk's waiting one, then the one the meeting took from the desk.
    assert numbers == ["20261123-77504", "20261123-77501", "20261123-77500"]
    # The desk's queue read from the waiting ones' score to the held ones', not the answered calls'.
    ((key, low, high),) = reads
    assert key == f"queue:{desk}"
    assert low <= held_score <= high < answered_score


async def test_the_desks_returned_tickets_come_a_page_at_a_time_with_how_many(monkeypatch):
    """GET /api/v1/dispatch/followed: every extension request, and of the returned tickets the page
    asked for (the last, when the list shrank below it) with how many there are; only the tickets
    sent are made models. The city's departments are asked, the desk's waiting room after them."""
    from services.router import views

    city = demo_city()
    returned = [
        assigned_ticket(city, no=f"20261123-775{i:02d}").model_copy(update={"returns": 1}).model_dump_json()
        for i in range(45)
    ]
    asked = []

    class Followed:
        def __init__(self, returned: list[str]) -> None:
            self.returned = returned

        async def followed(self, desk: str, departments: list[str]) -> FollowedByDesk:
            asked.append((desk, departments))
            return FollowedByDesk(extensions=self.returned[:1], returned=self.returned, place_requests=[])

    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(city=city)))

    async def page(n: int, of: list[str] = returned) -> dict:
        monkeypatch.setattr(views, "queues", lambda request: Followed(of))
        reply = await views.dispatch_followed(request, principal=None, page=n, size=20)
        return json.loads(reply.body)

    body = await page(2)
    assert (body["returned"]["total"], body["returned"]["page"], body["returned"]["size"]) == (45, 2, 20)
    assert [t["ticket_no"] for t in body["returned"]["tickets"]] == [
        f"20261123-775{i:02d}" for i in range(20, 40)
    ]
    assert [t["ticket_no"] for t in body["extensions"]] == ["20261123-77500"]
    assert body["returned"]["tickets"][0]["status_name"] == "已派单"  # as the queues' other lists send them
    past = await page(9)  # the list shrank since the link was made: its last page
    assert (past["returned"]["page"], len(past["returned"]["tickets"])) == (3, 5)
    none = await page(4, [])
    assert (none["returned"]["total"], none["returned"]["page"], none["returned"]["tickets"]) == (0, 1, [])
    desk = city.responsibilities.dispatch_desk
    assert asked[0] == (desk, [d.id for d in city.departments if d.kind != "dispatch_desk"])


async def test_tickets_held_before_their_band_existed_move_to_it_when_a_router_starts(redis):
    """An upgrade: a ticket a joint meeting holds, indexed when held tickets shared the answered
    calls' score, is moved to the held band (the desk lists it among its returned tickets before the
    meeting decides); an answered call at that score, and a ticket no longer held, stay. A second
    run moves nothing."""
    from datetime import UTC, datetime

    from services.router import meetings
    from services.router.app import RouterHandlers
    from services.router.service import _DONE, _HELD
    from tests.router_factory import TZ

    city = demo_city()
    queues = Queues(redis, TicketStore(redis))
    desk, own_desk = own_department("band", "测试派单中心")
    at_desk = {"department": own_desk, "returns": 1}
    held = assigned_ticket(city, no="20261123-77600").model_copy(
        update={**at_desk, "status": st.MEETING, "meeting_id": "M-band"}
    )
    answered = assigned_ticket(city, no="20261123-77601").model_copy(
        update={**at_desk, "status": st.RESOLVED}
    )
    decided = assigned_ticket(city, no="20261123-77602").model_copy(update={**at_desk, "status": st.ASSIGNED})
    now = datetime.now(UTC)
    meeting = meetings.Meeting(
        meeting_id=meetings.meeting_id("band", uuid.uuid4().hex),
        reason="hotspot",
        lead_street="street_s01",
        summoned=[],
        tickets=[held.ticket_no, answered.ticket_no, decided.ticket_no],
        deadline=now + timedelta(days=3),
        convened_at=now,
    )
    # Sends nothing: moving tickets between score bands publishes no event.
    handlers = RouterHandlers(city, TicketStore(redis), send=None, relay=None, tz=TZ, review_threshold=0.5)
    async with queued(redis, queues, desk, [held, answered, decided]) as nos:
        # As the code before the band indexed them.
        await redis.zadd(f"queue:{desk}", dict.fromkeys(nos, _DONE))
        await redis.set(f"meeting:{meeting.meeting_id}", meeting.model_dump_json())
        await redis.zadd("meetings:all", {meeting.meeting_id: now.timestamp()})
        try:
            assert await handlers.band_held_tickets() >= 1  # the session's other meetings may add
            scores = {no: await redis.zscore(f"queue:{desk}", no) for no in nos}
            assert await queues.band_held(nos) == 0  # a second run
        finally:
            await redis.delete(f"meeting:{meeting.meeting_id}")
            await redis.zrem("meetings:all", meeting.meeting_id)
    assert scores == {held.ticket_no: _HELD, answered.ticket_no: _DONE, decided.ticket_no: _DONE}
