"""Rows held back: the records worker stores a waiting ticket's events at once and writes its row
with the assignment's (`Records(hold_seconds=...)`), and what a crashed worker held is folded by
another. In a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.records import db
from services.records.bench import lifecycle
from services.records.service import Records
from shared.events import Event, MeetingSpec, TicketUpdated

pytestmark = pytest.mark.integration

DAY = datetime(2001, 1, 1, tzinfo=UTC)  # a day long past: no real ticket shares these numbers


def lives(city, n: int = 1) -> list[list[Event]]:
    """`n` made-up tickets' events: received, classified, assigned, accepted, resolved, closed."""
    start = random.randrange(0, 80_000 - n)
    rng = random.Random(start)
    return [lifecycle(i, DAY, city, rng) for i in range(start, start + n)]


async def row(pool: db.Pool, no: str) -> dict | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status, events, category FROM tickets WHERE ticket_no = %s", (no,))
        return await cur.fetchone()


async def held_since(pool: db.Pool, instance: str) -> list:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT since FROM records_held WHERE instance = %s", (instance,))
        return [r["since"] for r in await cur.fetchall()]


def worker(pool, city, **kw) -> Records:
    return Records(pool, city, instance=f"test-{uuid.uuid4().hex}", **kw)


async def test_a_waiting_tickets_row_is_written_with_its_assignment(pool, system_city):
    received, classified, assigned, *_ = lives(system_city)[0]
    no = received.ticket_no
    records = worker(pool, system_city, hold_seconds=60)
    await records.project(received.topic, [received])
    await records.project(classified.topic, [classified])
    assert await row(pool, no) is None  # held back: its events are stored
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM ticket_events WHERE ticket_no = %s", (no,))
        assert (await cur.fetchone())["n"] == 2
    [since] = await held_since(pool, records.instance)
    assert since is not None  # the time of its first event: a crash leaves it to be found
    await records.project(assigned.topic, [assigned])
    assert await row(pool, no) == {"status": "assigned", "events": 3, "category": classified.category}
    assert await held_since(pool, records.instance) == [None]  # holds nothing now
    await records.forget_held()
    assert await held_since(pool, records.instance) == []


async def test_a_row_held_past_its_time_is_written_as_it_stands(pool, system_city):
    received, *_ = lives(system_city)[0]
    records = worker(pool, system_city, hold_seconds=0.05)
    await records.project(received.topic, [received])
    assert await row(pool, received.ticket_no) is None
    for _ in range(100):  # held until its time is up
        assert await records.write_held() == 1
        if await row(pool, received.ticket_no) is not None:
            break
        await asyncio.sleep(0.02)
    assert await row(pool, received.ticket_no) == {"status": "received", "events": 1, "category": None}


async def test_what_a_person_is_to_look_at_is_not_held(pool, system_city):
    received, classified, *_ = lives(system_city)[0]
    to_review = classified.model_copy(update={"needs_review": True})
    records = worker(pool, system_city, hold_seconds=60)
    await records.project_many([(received.topic, received), (to_review.topic, to_review)])
    assert (await row(pool, received.ticket_no))["status"] == "review"


async def test_no_more_than_the_most_events_are_held(pool, system_city):
    tickets = lives(system_city, 3)
    records = worker(pool, system_city, hold_seconds=60, hold_most=2)
    for received, *_ in tickets:
        await records.project(received.topic, [received])
    # The third ticket's event is one more than the most: the oldest ticket's row is written.
    assert [await row(pool, t[0].ticket_no) is not None for t in tickets] == [True, False, False]


async def test_what_a_crashed_worker_held_back_is_folded_by_another(pool, system_city):
    tickets = lives(system_city, 3)
    crashed = worker(pool, system_city, hold_seconds=60)
    for received, classified, *_ in tickets:
        await crashed.project_many([(received.topic, received), (classified.topic, classified)])
    assert [await row(pool, t[0].ticket_no) for t in tickets] == [None] * 3
    del crashed  # gone without writing them: only its mark in `records_held` says so

    other = worker(pool, system_city)
    assert await other.recover_held(stale_after=0) >= 3
    for received, classified, *_ in tickets:
        assert await row(pool, received.ticket_no) == {
            "status": "received",
            "events": 2,
            "category": classified.category,
        }


async def test_a_ticket_shared_by_two_workers_is_folded_from_all_its_events(pool, system_city):
    """Replicas may read a ticket's topics apart: one holds its appeal while the other folds its
    classification and assignment (from every stored event, the held one too); the first's write
    of what it held then folds again from all of them, not onto the row, so nothing counts twice."""
    received, classified, assigned, *_ = lives(system_city)[0]
    first = worker(pool, system_city, hold_seconds=60)
    second = worker(pool, system_city)
    await first.project(received.topic, [received])
    await second.project_many([(classified.topic, classified), (assigned.topic, assigned)])
    expected = {"status": "assigned", "events": 3, "category": classified.category}
    assert await row(pool, received.ticket_no) == expected
    await first.write_held(everything=True)
    assert await row(pool, received.ticket_no) == expected


async def test_an_assignment_read_before_its_classification_waits_for_it(pool, system_city):
    """In a flood the worker reads the large classifications behind the small assignments: the
    row waits for the classification the assignment answers, and is written once, with all
    three, not folded again from its events read back when the classification comes."""
    received, classified, assigned, *_ = lives(system_city)[0]
    assert assigned.caused_by == classified.event_id
    no = received.ticket_no
    records = worker(pool, system_city, hold_seconds=60)
    await records.project(received.topic, [received])
    await records.project(assigned.topic, [assigned])
    assert await row(pool, no) is None  # still held: its classification is on its way
    await records.project(classified.topic, [classified])
    assert await row(pool, no) == {"status": "assigned", "events": 3, "category": classified.category}
    assert await held_since(pool, records.instance) == [None]


async def test_an_assignment_whose_classification_never_comes_is_written_in_time(pool, system_city):
    received, _, assigned, *_ = lives(system_city)[0]
    records = worker(pool, system_city, hold_seconds=0.05)
    await records.project_many([(received.topic, received), (assigned.topic, assigned)])
    assert await row(pool, received.ticket_no) is None
    for _ in range(100):
        await records.write_held()
        if (found := await row(pool, received.ticket_no)) is not None:
            break
        await asyncio.sleep(0.02)
    assert found is not None
    assert found["events"] == 2


async def test_an_appeal_read_after_its_assignment_is_written_at_once(pool, system_city):
    """The worker's topics advance apart: the assignment and its classification may be read in a
    batch before the appeal's. They were folded then (into no row, without the appeal), so the
    appeal's row does not wait for an assignment that has come already: it is written at once."""
    received, classified, assigned, *_ = lives(system_city)[0]
    no = received.ticket_no
    records = worker(pool, system_city, hold_seconds=60)
    await records.project_many([(classified.topic, classified), (assigned.topic, assigned)])
    await records.project(received.topic, [received])
    assert await row(pool, no) == {"status": "assigned", "events": 3, "category": classified.category}
    assert await held_since(pool, records.instance) == []  # it held nothing at any time


async def test_a_classification_read_after_its_assignment_and_alone_is_written_at_once(pool, system_city):
    """The same with the classification last: it alone would wait for the router."""
    received, classified, assigned, *_ = lives(system_city)[0]
    no = received.ticket_no
    records = worker(pool, system_city, hold_seconds=60)
    await records.project_many([(received.topic, received), (assigned.topic, assigned)])
    await records.write_held(everything=True)  # its time was up before the classification came
    assert (await row(pool, no))["events"] == 2
    await records.project(classified.topic, [classified])
    assert await row(pool, no) == {"status": "assigned", "events": 3, "category": classified.category}


async def test_a_hold_read_before_its_assignment_waits_for_it(pool, system_city):
    """The router writes a hotspot's hold with the assignment, and the hold names it (`caused_by`).
    The worker reads each topic's partitions in turn, so the hold may come first: the row waits
    for the assignment and is written once, with all four events, not folded without it and then
    again from its events read back."""
    received, classified, assigned, *_ = lives(system_city)[0]
    no = received.ticket_no
    hold = TicketUpdated.caused(
        assigned,
        action="escalated",
        status="meeting",
        actor="system",
        department=assigned.department,
        occurred_at=assigned.occurred_at + timedelta(seconds=1),
        meeting=MeetingSpec(
            meeting_id="M-test",
            reason="hotspot",
            lead_street="street_s01",
            summoned=(assigned.department.id,),
            deadline=assigned.resolve_by,
        ),
    )
    records = worker(pool, system_city, hold_seconds=60)
    await records.project_many([(received.topic, received), (classified.topic, classified)])
    await records.project(hold.topic, [hold])
    assert await row(pool, no) is None  # still held: the assignment is on its way
    await records.project(assigned.topic, [assigned])
    assert await row(pool, no) == {"status": "meeting", "events": 4, "category": classified.category}
    assert await held_since(pool, records.instance) == [None]


# Lowered by 5, as the launcher lowers the records worker, with a pool whose backends follow it or
# not; prints each backend's nice value and its scheduling group's.
BACKEND_PRIORITY = """
import asyncio, os, sys
from pathlib import Path
from services.records import db

async def main(url: str, follow: bool) -> None:
    pool = db.pool(url, backends_follow=follow)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        pid = conn.info.backend_pid
        group = Path(f"/proc/{pid}/autogroup").read_text().split()[-1]
        print(os.getpriority(os.PRIO_PROCESS, pid), group)
    await pool.close()

os.nice(5)
asyncio.run(main(sys.argv[1], sys.argv[2] == "follow"))
"""


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="a kernel without autogroup scheduling")
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="PostgreSQL elsewhere: not our processes")
async def test_the_records_workers_backends_run_as_low_as_it_does(settings):
    # The records worker is lowered in a flood; its statements run in PostgreSQL's backends, which
    # must wait as it does (the API's, which do not follow, keep the usual priority).
    async def priority(mode: str) -> list[int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            BACKEND_PRIORITY,
            settings.database_url,
            mode,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return [int(v) for v in out.split()]

    ours = os.nice(0)  # PostgreSQL was started from this process: its backends' nice value too
    assert await priority("follow") == [min(19, ours + 5), min(19, ours + 5)]
    assert await priority("stay") == [ours, 0]
