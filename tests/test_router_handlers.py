"""The router's handlers driven directly, on the real Redis, with no broker: what a batch writes and
what it publishes."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from services.router.app import RouterHandlers
from services.router.sla import add_working_days
from shared.city import City
from shared.events import Event, MeetingConvened, TicketAssigned, TicketUpdated
from shared.store import TicketStore
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
