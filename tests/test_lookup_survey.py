"""The lookup page's survey answer (查询页评价) posted to the API app built in-process, on the real
Redis and broker: the same answer posted twice at the same instant (a double tap, two tabs) is
recorded once, and both posts get the page that says it was recorded; a post that finds the answer
still being recorded waits for its outcome a bounded time."""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI

from services.api import create_app
from services.notifier import surveys as survey_book
from services.notifier.service import Notifier
from services.notifier.surveys import AnswerRefused
from shared.events import Caller, DepartmentRef, Event, SurveyAnswered, TicketUpdated, json_of
from shared.privacy import caller_id, mask_phone
from shared.settings import Settings
from shared.store import ticket_key
from shared.tickets import Status, Ticket

pytestmark = pytest.mark.integration

THANKS = "感谢您的评价"


def new_phone() -> str:
    return "139" + "".join(random.choices("0123456789", k=8))


def made_up_no() -> str:
    # A day of this file's own, so no other test's ticket (an erased one, say) shares the number.
    return f"20001125-{random.randrange(100_000, 1_000_000)}"


class Published:
    """The events the app's notifier publishes, kept as they go to the broker; `before`, when set,
    is awaited first (a broker slow to answer, or away)."""

    def __init__(self, publish) -> None:
        self.events: list[Event] = []
        self._publish = publish
        self.before: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, events: Sequence[Event]) -> None:
        if self.before is not None:
            await self.before()
        await self._publish(events)
        self.events.extend(events)

    def answers(self, no: str) -> list[SurveyAnswered]:
        return [e for e in self.events if isinstance(e, SurveyAnswered) and e.ticket_no == no]


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state = app.state
        published = Published(state.notifier.surveys.publish)
        # The app's notifier on a job queue of its own: the survey's reminder and timeout are this
        # test's, not for a notifier worker of the running system to find.
        state.notifier = Notifier.from_settings(
            settings, state.store, published, city=state.city, jobs_key=f"test:sms:due:{uuid.uuid4().hex}"
        )
        state.published = published
        yield app


async def surveyed(app: FastAPI, phone: str) -> str:
    """A ticket of `phone` its department resolved, stored as waiting for its rating (回访中), its
    survey sent: its number."""
    state = app.state
    no, cid = made_up_no(), caller_id(phone)
    await state.store.save_contact(cid, phone, None)
    dept = DepartmentRef(id=state.city.departments[0].id, name=state.city.departments[0].name)
    note = "已更换路灯灯泡，恢复照明"
    ticket = Ticket(
        ticket_no=no,
        channel="hotline",
        text="和平街12号楼下的路灯坏了",
        caller=Caller(caller_id=cid, masked_phone=mask_phone(phone)),
        received_at=datetime.now(UTC),
        status=Status.SURVEYED,
        department=dept,
        resolution_note=note,
    )
    await state.redis.set(ticket_key(no), json_of(ticket))
    resolved = TicketUpdated(
        ticket_no=no,
        action="resolved",
        status="resolved",
        actor=dept.id,
        department=dept,
        note=note,
        caller_id=cid,
        category="city.facility.streetlight",
        on_time=True,
    )
    await state.notifier.start_surveys([resolved])
    return no


@contextmanager
def both_find_it_open(app: FastAPI) -> Iterator[None]:
    """Two posts at the same instant: each finds the ticket's survey open, and neither records its
    answer before the other has found it so (the survey book's read of the survey waits for the
    other post's, while this lasts)."""
    surveys = app.state.notifier.surveys
    read = surveys.ticket_survey
    together = asyncio.Barrier(2)

    async def ticket_survey(no: str, now: datetime):
        found = await read(no, now)
        await asyncio.wait_for(together.wait(), timeout=10)
        return found

    surveys.ticket_survey = ticket_survey
    try:
        yield
    finally:
        del surveys.ticket_survey  # the book's own again


async def test_the_same_answer_posted_twice_at_once_is_recorded_once_and_both_get_the_result(
    app, monkeypatch
):
    """A double tap on 提交评价 (or the page's form sent from two tabs): both posts find the survey
    open, and the second comes while the first is recording the answer. Both get the page that
    says it was recorded, not an error, and the survey has one answer, published once."""
    # The second waits for the first's publish, LOOKUP_WAIT at most: on a machine loaded by the
    # whole suite that publish once took longer than the 3 s a resident's page waits (the bound
    # itself is the next test's); here the wait is long enough that only the outcome is tested.
    monkeypatch.setattr(survey_book, "LOOKUP_WAIT", 30.0)
    phone = new_phone()
    no = await surveyed(app, phone)
    # An address of its own: the lookup's hourly tries per address are not shared with other tests.
    client_ip = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://console", timeout=30) as client:
        page = await client.get("/console/lookup")
        csrf = re.findall(r'name="csrf" value="([^"]+)"', page.text)[0]
        found = {"ticket_no": no, "last4": phone[-4:], "csrf": csrf}
        looked = await client.post("/console/lookup", data=found)
        assert looked.status_code == 200, looked.text
        assert 'action="/console/lookup/survey"' in looked.text, "the survey is offered"
        answer = {**found, "rating": "1", "solved": "yes", "comment": "修得很快"}
        with both_find_it_open(app):
            first, second = await asyncio.gather(
                client.post("/console/lookup/survey", data=answer),
                client.post("/console/lookup/survey", data=answer),
            )

    for done in (first, second):
        assert done.status_code == 200, done.text
        assert "您的评价已记录：满意" in done.text
        assert THANKS in done.text
    [recorded] = app.state.published.answers(no)
    assert (recorded.rating, recorded.solved, recorded.via, recorded.text) == (1, True, "lookup", "修得很快")
    _, still_open = await app.state.notifier.surveys.ticket_survey(no, app.state.notifier.clock())
    assert not still_open


async def test_a_post_that_finds_the_answer_being_recorded_waits_for_its_outcome_a_bounded_time(
    app, monkeypatch
):
    """The first post's answer waits on a broker slow to take it: a second post waits for it
    LOOKUP_WAIT at most, then says in words that the answer is still being recorded; one whose wait
    sees the first fail (the broker away: the survey open again) records the answer itself, once."""
    phone = new_phone()
    no = await surveyed(app, phone)
    notifier, published = app.state.notifier, app.state.published
    surveys = notifier.surveys
    stalled, broker_back = asyncio.Event(), asyncio.Event()

    async def away() -> None:
        published.before = None  # the next publish goes through
        stalled.set()
        await broker_back.wait()
        raise ConnectionError("broker away")

    published.before = away
    first = asyncio.create_task(surveys.answer_on_lookup(no, 1, True, "", notifier.clock()))
    await asyncio.wait_for(stalled.wait(), timeout=10)

    monkeypatch.setattr(survey_book, "LOOKUP_WAIT", 0.3)
    started = time.monotonic()
    with pytest.raises(AnswerRefused, match="您的评价正在记录中"):
        await surveys.answer_on_lookup(no, 1, True, "", notifier.clock())
    assert time.monotonic() - started < 2  # bounded: the page is not held for the broker

    monkeypatch.setattr(survey_book, "LOOKUP_WAIT", 10.0)
    second = asyncio.create_task(surveys.answer_on_lookup(no, 1, True, "", notifier.clock()))
    await asyncio.sleep(0.3)
    assert not second.done()  # waiting on the first's outcome
    broker_back.set()
    with pytest.raises(ConnectionError):
        await first
    answered = await asyncio.wait_for(second, timeout=10)
    assert (answered.rating, answered.solved, answered.via) == (1, True, "lookup")
    assert [a.event_id for a in published.answers(no)] == [answered.event_id]
    _, still_open = await surveys.ticket_survey(no, notifier.clock())
    assert not still_open
