"""The router's handlers driven directly, on the real Redis, with no broker: what a batch writes and
what it publishes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from services.router import meetings
from services.router.app import RouterHandlers
from services.router.rules import Precedent
from services.router.service import _RECORD, Hotspots, list_key, open_key, precedent_key, tickets_key
from services.router.sla import add_working_days
from shared.city import City
from shared.events import Event, GridMatch, MeetingConvened, TicketAssigned, TicketUpdated
from shared.store import TicketStore
from shared.tickets import Status, Ticket
from tests.cities import demo_city
from tests.router_factory import classified

pytestmark = pytest.mark.integration
CITY = demo_city()
# A grid no other test files appeals in: the hotspot counters in Redis are shared by the session,
# and tickets of another test in the same cluster would turn this one's assignment into a hotspot.
GRID = "s03c01g03"


class Sent:
    """Stands for the broker: keeps what the handlers publish."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, events: Sequence[Event]) -> None:
        self.events.extend(events)


async def nothing_to_relay() -> int:
    return 0


def handlers(redis, sent: Sent, city: City = CITY) -> RouterHandlers:
    return RouterHandlers(
        city,
        TicketStore(redis),
        sent,
        nothing_to_relay,
        tz=ZoneInfo("Asia/Shanghai"),
        review_threshold=0.5,
    )


async def a_clean_cluster(redis, category: str) -> tuple[tuple[str, str], Sent, RouterHandlers]:
    """The cluster of `category` in GRID with no count and no open meeting in the shared Redis (its
    two keys, for the test to delete again), and handlers to drive it with what they publish."""
    keys = (f"hot:{category}:{GRID}", open_key(category, GRID))
    await redis.delete(*keys)
    sent = Sent()
    return keys, sent, handlers(redis, sent)


Decided = tuple[meetings.Meeting, list[Event]] | None


def number() -> str:
    return f"20261130-{random.randint(800000, 899999)}"


async def test_an_assignment_writes_its_timers_and_queue_entry_with_the_ticket(redis):
    sent = Sent()
    h = handlers(redis, sent)
    no = number()
    # Now, not a fixed day: a timer already due could be fired by another test's router.
    await h.classified([classified(CITY, "city.facility.streetlight", GRID, no=no, at=datetime.now(UTC))])
    ticket = await h.store.get(no)
    assert ticket is not None
    assert ticket.department is not None
    [assigned] = sent.events
    assert isinstance(assigned, TicketAssigned)
    assert assigned.caller_id == "c1"  # the notifier needs no ticket read for the phone
    members = [m.decode() for m in await redis.zrange("timers", 0, -1)]
    assert len([m for m in members if m.startswith(f"{no}|")]) == 5
    assert await redis.hget("queue:owner", no) == ticket.department.id.encode()


async def test_a_vague_appeal_between_two_departments_waits_at_the_desk_not_for_a_meeting(redis):
    sent = Sent()
    h = handlers(redis, sent)
    no = number()
    vague = classified(
        CITY,
        "city.facility.streetlight",
        GRID,
        no=no,
        confidence=0.14,
        second=("utility.power", 0.12),
        at=datetime.now(UTC),
    )
    # The model's own review threshold is lower still: by confidence alone it would be routed.
    await h.classified([vague.model_copy(update={"review_threshold": 0.08})])
    [assigned] = sent.events
    assert isinstance(assigned, TicketAssigned)
    assert (assigned.via, assigned.department.id) == ("dispatch_desk", CITY.responsibilities.dispatch_desk)
    assert assigned.explanation.startswith("分类难以确定")
    ticket = await h.store.get(no)
    assert ticket is not None
    assert ticket.meeting_id is None


async def test_an_escalation_opens_its_meeting_and_records_it_without_publishing(redis):
    sent = Sent()
    h = handlers(redis, sent)
    no = number()
    contested = classified(
        CITY,
        "city.facility.streetlight",
        GRID,
        no=no,
        confidence=0.55,
        second=("utility.power", 0.5),
        at=datetime.now(UTC),
    )
    await h.classified([contested])
    [escalated] = [e for e in sent.events if isinstance(e, TicketUpdated)]
    assert escalated.meeting is not None
    before = len(sent.events)
    await h.updates([escalated])
    await h.updates([escalated])  # redelivered: the meeting is opened once
    assert len(sent.events) == before  # a meeting's facts are not published
    raw = await redis.get(f"meeting:{escalated.meeting.meeting_id}")
    assert raw is not None
    history = await h.store.history(no)
    assert [r["topic"] for r in history].count(MeetingConvened.topic) == 1


async def test_a_meeting_takes_more_tickets_without_its_json_being_written_again(redis):
    """A hotspot's meeting keeps its tickets in a sorted set beside its JSON: the ticket that joins
    an open meeting is added there, in the order it came, and the JSON (who is summoned, the
    deadline) is not written again; the meeting reads with all its tickets, and a hold delivered
    twice attaches its ticket once."""
    category = "city.appearance.illegal_construction"
    keys, sent, h = await a_clean_cluster(redis, category)
    now = datetime.now(UTC)
    # Received at the same moment, a hot cluster's tickets come oldest first, then by number.
    nos = sorted(number() for _ in range(CITY.sla.supervision.hotspot_count))
    later = number()
    mid = ""
    try:
        await h.classified([classified(CITY, category, GRID, no=no, at=now) for no in nos])
        holds = [e for e in sent.events if isinstance(e, TicketUpdated) and e.meeting is not None]
        await h.updates(holds)
        mid = holds[0].meeting.meeting_id if holds[0].meeting else ""
        raw = await redis.get(f"meeting:{mid}")
        assert raw is not None
        assert meetings.Meeting.model_validate_json(raw).tickets == []
        assert [t.decode() for t in await redis.zrange(tickets_key(mid), 0, -1)] == nos

        sent.events.clear()
        await h.classified([classified(CITY, category, GRID, no=later, at=now)])
        [hold] = [e for e in sent.events if isinstance(e, TicketUpdated)]
        await h.updates([hold])
        await h.updates([hold])  # redelivered
        assert await redis.get(f"meeting:{mid}") == raw
        meeting = await h.meetings.get(mid)
        assert meeting is not None
        assert meeting.tickets == [*nos, later]
        history = await h.store.history(later)
        attached = [r for r in history if r["topic"] == "meeting.updated" and r["action"] == "attached"]
        assert [r["tickets"] for r in attached] == [[later]]
    finally:
        opened = await h.meetings.get(mid) if mid else None
        await redis.delete(*keys, f"meeting:{mid}", tickets_key(mid))
        for dept in (None, *(opened.summoned if opened else ())):
            for listed in ("open", "decided"):
                await redis.zrem(list_key(dept, listed), mid)
            if dept:
                await redis.zrem(f"meetings:of:{dept}:check_in", mid)


async def test_a_meeting_written_with_its_tickets_in_its_json_reads_whole_and_moves_them_at_its_next_write(
    redis,
):
    """A meeting stored before its tickets had a set of their own (its JSON holds them) reads with
    them, and the next ticket it takes moves them all to the set, in their order, before the new
    one; thousands asked about at once are each found, or added, once."""
    tz = ZoneInfo("Asia/Shanghai")
    h = handlers(redis, Sent())
    now = datetime.now(UTC)
    first, second, third = number(), number(), number()
    mid = meetings.meeting_id(first, "returned_twice", "older")
    spec = meetings.spec(
        CITY,
        mid=mid,
        reason="returned_twice",
        grid=GRID,
        category="env.noise",
        summoned=["environment"],
        now=now,
        tz=tz,
    )
    older, _ = meetings.merge(None, spec, [first, second], now)
    try:
        await redis.set(f"meeting:{mid}", older.model_dump_json())
        found = await h.meetings.get(mid)
        assert found is not None
        assert found.tickets == [first, second]

        def attach_all(nos: list[str]) -> Callable[[meetings.Meeting | None], Decided]:
            def attach(m: meetings.Meeting | None) -> Decided:
                merged, added = meetings.merge(m, spec, nos, now)
                return (merged, []) if added else None

            return attach

        await h.meetings.change_many({mid: attach_all([second, third])}, probe={mid: [second, third]})
        raw = await redis.get(f"meeting:{mid}")
        assert raw is not None
        assert meetings.Meeting.model_validate_json(raw).tickets == []
        assert [t.decode() for t in await redis.zrange(tickets_key(mid), 0, -1)] == [first, second, third]
        found = await h.meetings.get(mid)
        assert found is not None
        assert found.tickets == [first, second, third]

        # Thousands asked about at once (a script's arguments are unpacked a thousand at a time):
        # those it holds and those it does not, on both sides of a thousand.
        many = [f"20261130-{n:06d}" for n in range(900000, 902500)]
        await h.meetings.change_many({mid: attach_all(many[:2000])}, probe={mid: many[:2000]})
        await h.meetings.change_many({mid: attach_all([*many, third])}, probe={mid: [*many, third]})
        found = await h.meetings.get(mid)
        assert found is not None
        assert found.tickets == [first, second, third, *many]
    finally:
        await redis.delete(f"meeting:{mid}", tickets_key(mid))
        for dept in (None, "environment"):
            for listed in ("open", "decided"):
                await redis.zrem(list_key(dept, listed), mid)
            if dept:
                await redis.zrem(f"meetings:of:{dept}:check_in", mid)


async def test_a_first_assignment_to_a_committee_gets_the_time_its_kind_is_given(redis):
    """The router's own path (not only the workflow's steps) passes the lead to the deadlines: in a
    city whose category table does not name 邻里纠纷, a dispute assigned to the street's committee
    still gets people's mediation's 20 working days, by the committee's kind."""
    sla = CITY.sla.model_copy(
        update={"categories": {k: v for k, v in CITY.sla.categories.items() if k != "safety.disputes"}}
    )
    city = CITY.model_copy(update={"sla": sla})
    sent = Sent()
    h = handlers(redis, sent, city)
    no, at = number(), datetime.now(UTC).replace(microsecond=0)
    await h.classified([classified(city, "safety.disputes", GRID, no=no, at=at)])
    ticket = await h.store.get(no)
    assert ticket is not None
    assert ticket.department is not None
    assert ticket.department.id == "mediation_s03"
    assert ticket.resolve_by == add_working_days(at, 20, city.sla, ZoneInfo("Asia/Shanghai"))


async def test_a_hotspot_s_holds_name_the_assignments_written_with_them(redis):
    """A cluster that turns hot in a batch: its tickets are assigned and held in one write, and
    each hold names its assignment (`caused_by`), so that the record, should it read the hold
    first, waits for the assignment rather than write the row twice."""
    category = "city.appearance.garbage"
    keys, sent, h = await a_clean_cluster(redis, category)
    now = datetime.now(UTC)
    nos = [number() for _ in range(CITY.sla.supervision.hotspot_count)]
    try:
        await h.classified([classified(CITY, category, GRID, no=no, at=now) for no in nos])
        assignments = {e.ticket_no: e for e in sent.events if isinstance(e, TicketAssigned)}
        holds = {e.ticket_no: e for e in sent.events if isinstance(e, TicketUpdated)}
        assert set(assignments) == set(holds) == set(nos)
        for no, hold in holds.items():
            assert (hold.action, hold.meeting is not None) == ("escalated", True)
            assert hold.caused_by == assignments[no].event_id
    finally:
        await redis.delete(*keys)


async def test_a_joint_meeting_s_decision_routes_the_next_appeals_of_its_cluster_to_its_lead(redis):
    """先例: the desk's decision (`MeetingStore.change`, as `POST /meetings/{id}/decide` writes it)
    sets the cluster's precedent in its own transaction, expiring with the city's window; the next
    batch reads the batch's precedents in one MGET and sends a confident appeal of that category in
    that grid to the lead, another category or a low confidence as before."""
    smoke, tz = "env.air", ZoneInfo("Asia/Shanghai")
    key, hot = precedent_key(smoke, GRID), f"hot:{smoke}:{GRID}"
    sent = Sent()
    h = handlers(redis, sent)
    now = datetime.now(UTC)
    first = number()
    mid = meetings.meeting_id(first, "returned_twice", "2", "0")
    try:
        await h.classified([classified(CITY, smoke, GRID, no=first, at=now)])
        ticket = await h.store.get(first)
        assert ticket is not None
        assert ticket.department is not None
        assert ticket.department.id == "environment"  # by the responsibility list
        # Convened (as a second return does) and decided by the desk.
        spec = meetings.spec(
            CITY,
            mid=mid,
            reason="returned_twice",
            grid=GRID,
            category=smoke,
            summoned=["environment", "police", "urban_enforcement"],
            now=now,
            tz=tz,
        )
        opened, _ = meetings.merge(None, spec, [first], now)
        await h.meetings.change(mid, lambda m: (opened, []))
        assert await redis.get(key) is None  # open: no precedent yet

        def decide(m: meetings.Meeting | None) -> tuple[meetings.Meeting, list[Event]]:
            assert m is not None
            return meetings.decide(m, "urban_enforcement", "dispatch_desk", "城管牵头", CITY, now), []

        await h.meetings.change(mid, decide)
        raw = await redis.get(key)
        assert raw is not None
        stored = Precedent.model_validate_json(raw)
        assert (stored.lead, stored.meeting_id, stored.category, stored.grid) == (
            "urban_enforcement",
            mid,
            smoke,
            GRID,
        )
        days = CITY.sla.supervision.meeting_precedent_days
        assert days * 86400 - 60 < await redis.ttl(key) <= days * 86400

        sent.events.clear()
        later, noise, unsure = number(), number(), number()
        await h.classified(
            [
                classified(CITY, smoke, GRID, no=later, at=now),
                classified(CITY, "env.noise", GRID, no=noise, at=now),
                classified(CITY, smoke, GRID, no=unsure, at=now, confidence=0.2),
            ]
        )
        by_no = {e.ticket_no: e for e in sent.events if isinstance(e, TicketAssigned)}
        assigned = by_no[later]
        assert (assigned.department.id, assigned.via) == ("urban_enforcement", "rule")
        assert assigned.rule == f"联席会议{mid}决定"
        assert assigned.explanation.startswith(f"按联席会议（会议编号{mid}）确定的主办单位派单：")
        assert by_no[noise].department.id == "environment"  # another category
        assert by_no[unsure].via == "dispatch_desk"  # a person still reads a low confidence
        t = await h.store.get(later)
        assert t is not None
        assert t.department is not None
        assert t.department.id == "urban_enforcement"
        # Written again as it is (the lists' upgrade): the precedent is not set again.
        await redis.delete(key)
        await h.meetings.change_many({mid: lambda m: (m, []) if m else None}, relist=True)
        assert await redis.get(key) is None
    finally:
        # The session's Redis is shared: leave no precedent, cluster count or listed meeting behind.
        await redis.delete(key, hot, f"meeting:{mid}", tickets_key(mid))
        for dept in (None, "street_s03", "environment", "police", "urban_enforcement"):
            for listed in ("open", "decided"):
                await redis.zrem(list_key(dept, listed), mid)


async def test_a_cluster_turns_hot_at_the_count_inside_the_window_and_not_before(redis):
    """`Hotspots.record` counts in Redis and sends a cluster's members only once they are enough:
    one short of the count is not hot, however many older tickets the window has let go or newer
    ones (a replica's clock ahead) it holds; the ticket that makes the count brings all of them,
    oldest first."""
    category, count = "city.appearance.graffiti", CITY.sla.supervision.hotspot_count
    keys = (f"hot:{category}:{GRID}", open_key(category, GRID))
    await redis.delete(*keys)
    spots = Hotspots(redis, CITY.sla.supervision)
    now = time.time()
    window = CITY.sla.supervision.hotspot_window_days * 86400

    def ticket(age_seconds: float) -> Ticket:
        return Ticket(
            ticket_no=number(),
            status=Status.ASSIGNED,
            channel="hotline",
            text="墙上乱涂乱画",
            received_at=datetime.fromtimestamp(now - age_seconds, UTC),
            category=category,
            grid=GridMatch(grid=GRID),
        )

    try:
        # Outside the window, and ahead of this clock: in the cluster's set, not in the count.
        assert await spots.record([ticket(window + 3600), ticket(-600)], now) == {}
        inside = [ticket(3600 * (count - i)) for i in range(count)]  # oldest first
        assert await spots.record(inside[:-1], now) == {}
        # Below the count the script answers with the count, not the members: a cluster that never
        # gets there would otherwise send its whole window at every batch that touches it.
        since, ttl = now - window, int(window) + 86400
        assert await redis.eval(_RECORD, 2, *keys, since, now, ttl, count, 0) == [[b"", count - 1]]
        got = await spots.record(inside[-1:], now)
        assert got == {(category, GRID): (None, [t.ticket_no for t in inside])}
    finally:
        await redis.delete(*keys)
