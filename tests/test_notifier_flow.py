"""The notifier built in-process on the real Redis and the real broker, with an injected clock:
acknowledgement, callback survey, every reply form, clarification, reminder and timeout, quiet hours,
daily cap, restart without duplicate sends, a kill between the claim and the gateway (nothing lost, nothing
sent twice), a redelivery while the send is in flight, opt-out, anonymous appeals."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY

from services.notifier.app import Handlers
from services.notifier.dispatch import SendInFlight
from services.notifier.gateway import Message, OutboxGateway
from services.notifier.policy import Policy, QuietHours
from services.notifier.service import Notifier
from services.notifier.survey import OptedOut, SurveyAnswer, SurveyComment, WhichTicket
from services.notifier.surveys import CALL_ATTEMPTS, AnswerRefused, CallRefused
from services.notifier.texts import load_texts
from shared.bus import EventPublisher, ensure_topics, publish
from shared.errors import DomainError
from shared.events import (
    AppealReceived,
    Caller,
    DeadlineNotice,
    DepartmentRef,
    Extension,
    Place,
    SurveyAnswered,
    SurveySent,
    TicketAssigned,
    TicketUpdated,
    Verification,
)
from shared.privacy import caller_id, mask_phone
from shared.store import TicketStore
from shared.tickets import Ticket
from tests.numbering import made_up_numbers

pytestmark = pytest.mark.integration
SH = ZoneInfo("Asia/Shanghai")
NOON = datetime(2026, 11, 23, 12, 0, tzinfo=SH)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Kit:
    """One notifier 'process' (several share Redis and the broker as replicas or restarts would)."""

    def __init__(
        self,
        redis,
        broker,
        jobs: str,
        clock: Clock,
        *,
        quiet: str = "21:00-08:00",
        cap: int = 5,
        callback_after: timedelta | None = None,
    ):
        self.redis = redis
        self.store = TicketStore(redis)
        self.published: list = []
        self.outbox = OutboxGateway(redis)

        async def pub(events):
            await publish(broker, events)  # really on the broker, acknowledged
            self.published.extend(events)

        self.notifier = Notifier(
            self.store,
            self.outbox,
            pub,
            texts=load_texts(),
            policy=Policy(QuietHours.parse(quiet), cap, SH),
            clock=clock,
            jobs_key=jobs,
            callback_after=callback_after,
        )

    async def sent(self, phone: str, kind: str | None = None) -> list[dict]:
        return [m for m in await self.outbox.sent(phone) if kind is None or m["kind"] == kind]

    def answers(self, ticket_no: str) -> list[SurveyAnswered]:
        return [e for e in self.published if isinstance(e, SurveyAnswered) and e.ticket_no == ticket_no]


def new_phone() -> str:
    return "139" + "".join(random.choices("0123456789", k=8))


# This file's made-up tickets, numbered one after the other on a day of their own: random numbers of
# a shared day could meet another test's ticket (erased ones among them, whose surveys are forgotten).
made_up_no = made_up_numbers("20001123")


@pytest.fixture
async def broker(settings):
    await ensure_topics(settings)
    b = EventPublisher(settings, client_id="test-notifier")
    await b.start()
    yield b
    await b.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture
def make_kit(redis, broker, clock):
    jobs = f"test:sms:due:{uuid.uuid4().hex}"  # this test's own job queue
    return lambda **kw: Kit(redis, broker, jobs, clock, **kw)


async def resolved_ticket(
    kit: Kit, phone: str | None, note: str = "已更换路灯灯泡，恢复照明"
) -> tuple[Ticket, TicketUpdated]:
    no = made_up_no()
    caller = Caller()
    if phone:
        cid = caller_id(phone)
        caller = Caller(caller_id=cid, masked_phone=mask_phone(phone))
        await kit.store.save_contact(cid, phone, None)
    dept = DepartmentRef(id="urban_mgmt", name="区城市管理委员会")
    ticket = Ticket(
        ticket_no=no,
        channel="hotline",
        text="路灯坏了",
        caller=caller,
        received_at=NOON,
        status="resolved",
        department=dept,
        resolution_note=note,
    )
    # The ticket is not stored: the notifier works from the event alone.
    return ticket, TicketUpdated(
        ticket_no=no,
        action="resolved",
        status="resolved",
        actor=dept.id,
        department=dept,
        note=note,
        caller_id=caller.caller_id,
        category="street_light",
        grid="s01c01g01",
        on_time=True,
    )


async def two_surveys(
    kit: Kit, clock, phone: str, note: str | None = None
) -> tuple[Ticket, Ticket, SurveySent]:
    """Two of `phone`'s tickets resolved an hour apart (the second with `note`), each surveyed when
    resolved: the first ticket, the second, and the first's `survey.sent`."""
    first, resolved_first = await resolved_ticket(kit, phone)
    [sent] = await kit.notifier.start_surveys([resolved_first])
    clock.now = NOON + timedelta(hours=1)
    second, resolved_second = await resolved_ticket(kit, phone, *([note] if note else []))
    await kit.notifier.start_surveys([resolved_second])
    return first, second, sent


async def surveyed(kit: Kit) -> tuple[str, Ticket]:
    """A resident whose resolved ticket's survey went out."""
    phone = new_phone()
    ticket, resolved = await resolved_ticket(kit, phone)
    await kit.notifier.start_surveys([resolved])
    return phone, ticket


async def test_acknowledgement_is_sent_once_even_after_a_restart(make_kit):
    phone = new_phone()
    appeal = AppealReceived(
        ticket_no="20261123-000042",
        channel="hotline",
        text="路灯坏了",
        caller=Caller(caller_id=caller_id(phone), masked_phone=mask_phone(phone)),
    )
    first = make_kit(quiet="none")
    assert await first.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "sent"
    restarted = make_kit(quiet="none")  # a new process: nothing in memory, the same Redis
    assert await restarted.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "duplicate"
    acks = await first.sent(phone, "ack")
    assert len(acks) == 1
    assert "您的诉求已受理，工单号20261123-000042" in acks[0]["text"]
    state = await first.notifier.states.get(acks[0]["message_id"])
    assert state["state"] == "sent"
    assert state["phone"] == mask_phone(phone)


async def test_callback_carries_the_note_and_the_survey(make_kit):
    kit = make_kit()
    phone = new_phone()
    ticket, resolved = await resolved_ticket(kit, phone)
    events = await kit.notifier.start_surveys([resolved])
    assert [type(e) for e in events] == [SurveySent]
    assert events[0].masked_phone == mask_phone(phone)
    assert phone not in events[0].model_dump_json()
    (sms,) = await kit.sent(phone, "survey")
    assert ticket.ticket_no in sms["text"]
    assert "已更换路灯灯泡" in sms["text"]
    assert "回复1满意，2基本满意，3不满意" in sms["text"]
    # The same resolution redelivered: the same survey event, no second SMS.
    again = await kit.notifier.start_surveys([resolved])
    assert again[0].event_id == events[0].event_id
    assert len(await kit.sent(phone, "survey")) == 1


@pytest.mark.parametrize(
    ("text", "rating", "solved"),
    [
        ("1", 1, True),
        ("１", 1, True),
        ("1。", 1, True),
        ("满意", 1, True),
        ("非常满意", 1, True),
        ("基本满意", 2, True),
        ("不满意", 3, False),
        ("不太满意", 3, False),
        ("没解决", 3, False),
        ("1 谢谢，已经亮了", 1, True),
        ("3 还是不亮", 3, False),
    ],
)
async def test_every_reply_form_is_read(make_kit, text, rating, solved):
    kit = make_kit()
    phone, ticket = await surveyed(kit)
    result = await kit.notifier.surveys.reply(phone, text)
    assert result == SurveyAnswer(ticket_no=ticket.ticket_no, rating=rating, solved=solved)
    (answer,) = kit.answers(ticket.ticket_no)
    assert (answer.outcome, answer.rating, answer.solved, answer.text) == ("answered", rating, solved, text)
    # The survey is closed: a second reply is the resident's comment, not a rating.
    late = await kit.notifier.surveys.reply(phone, "2")
    assert late == SurveyComment(ticket_no=ticket.ticket_no, clarification=False)
    assert [a.outcome for a in kit.answers(ticket.ticket_no)] == ["answered", "comment"]


async def test_free_text_is_kept_and_one_clarification_is_sent(make_kit):
    kit = make_kit()
    phone, ticket = await surveyed(kit)
    first = await kit.notifier.surveys.reply(phone, "你们辛苦了")
    assert first == SurveyComment(ticket_no=ticket.ticket_no, clarification=True)
    second = await kit.notifier.surveys.reply(phone, "好的好的")
    assert second == SurveyComment(ticket_no=ticket.ticket_no, clarification=False)  # at most once
    (clarification,) = await kit.sent(phone, "clarification")
    assert ticket.ticket_no in clarification["text"]
    assert "1满意" in clarification["text"]
    answered = await kit.notifier.surveys.reply(phone, "2")
    assert answered == SurveyAnswer(ticket_no=ticket.ticket_no, rating=2, solved=True)
    assert [(a.outcome, a.text) for a in kit.answers(ticket.ticket_no)] == [
        ("comment", "你们辛苦了"),
        ("comment", "好的好的"),
        ("answered", "2"),
    ]


async def test_a_reply_rates_the_ticket_it_names_and_one_naming_none_is_asked_about(make_kit, clock):
    """One phone, two tickets resolved (a streetlight, then rubbish): the second survey says how to
    name its ticket; "3 路灯还是不亮" names none, so it is kept and the resident asked which; the
    streetlight's reference alone then rates the streetlight, and the rubbish is untouched."""
    kit = make_kit()
    phone = new_phone()
    light, resolved_light = await resolved_ticket(kit, phone)
    await kit.notifier.start_surveys([resolved_light])
    (first,) = await kit.sent(phone, "survey")
    assert "尾号" not in first["text"]  # one survey open: as it always was
    clock.now = NOON + timedelta(hours=1)
    rubbish, resolved_rubbish = await resolved_ticket(kit, phone, note="已清运垃圾")
    await kit.notifier.start_surveys([resolved_rubbish])
    second = (await kit.sent(phone, "survey"))[0]
    light_ref, rubbish_ref = light.ticket_no[-4:], rubbish.ticket_no[-4:]
    assert f"尾号{rubbish_ref}" in second["text"]
    assert f"“{rubbish_ref} 1”" in second["text"]

    asked = await kit.notifier.surveys.reply(phone, "3 路灯还是不亮")
    assert isinstance(asked, WhichTicket)
    assert asked.ticket_nos == [rubbish.ticket_no, light.ticket_no]
    assert asked.asked
    assert kit.answers(light.ticket_no) == []
    assert kit.answers(rubbish.ticket_no) == []  # not guessed
    (which,) = await kit.sent(phone, "which_ticket")
    assert f"尾号{light_ref}" in which["text"]
    assert f"尾号{rubbish_ref}" in which["text"]
    assert "路灯还是不亮" not in which["text"]
    assert phone not in which["text"]
    # Another unnamed reply is kept in its place; the question is not sent twice.
    again = await kit.notifier.surveys.reply(phone, "3 路灯还是不亮，晚上很黑")
    assert isinstance(again, WhichTicket)
    assert not again.asked
    assert len(await kit.sent(phone, "which_ticket")) == 1

    named = await kit.notifier.surveys.reply(phone, light_ref)
    assert named == SurveyAnswer(ticket_no=light.ticket_no, rating=3, solved=False)
    (answer,) = kit.answers(light.ticket_no)
    assert (answer.rating, answer.text) == (3, "3 路灯还是不亮，晚上很黑")
    assert kit.answers(rubbish.ticket_no) == []
    (confirmation,) = await kit.sent(phone, "confirmation")
    assert light.ticket_no in confirmation["text"]
    assert "不满意" in confirmation["text"]
    assert "重新办理" in confirmation["text"]
    # One survey left: a bare rating goes to it, as it always did, and is confirmed.
    assert await kit.notifier.surveys.reply(phone, "1") == SurveyAnswer(
        ticket_no=rubbish.ticket_no, rating=1, solved=True
    )
    thanks = (await kit.sent(phone, "confirmation"))[0]
    assert rubbish.ticket_no in thanks["text"]
    assert "（满意）" in thanks["text"]
    assert "重新办理" not in thanks["text"]
    assert isinstance(await kit.notifier.surveys.reply(phone, "1"), SurveyComment)


async def test_a_kept_reply_waits_while_the_resident_rates_the_other_ticket_first(make_kit, clock):
    """Asked which ticket "1" rates, the resident first rates the other one with its reference and
    words of its own; the first ticket's reference alone then applies the kept "1", as the question
    promised."""
    kit = make_kit()
    phone = new_phone()
    light, rubbish, _ = await two_surveys(kit, clock, phone, note="已清运垃圾")
    assert isinstance(await kit.notifier.surveys.reply(phone, "1"), WhichTicket)
    rated = await kit.notifier.surveys.reply(phone, f"{rubbish.ticket_no[-4:]} 3 垃圾还是没人收")
    assert rated == SurveyAnswer(ticket_no=rubbish.ticket_no, rating=3, solved=False)
    kept = await kit.notifier.surveys.reply(phone, light.ticket_no[-4:])
    assert kept == SurveyAnswer(ticket_no=light.ticket_no, rating=1, solved=True)
    assert [a.text for a in kit.answers(light.ticket_no)] == ["1"]


async def test_a_reply_that_names_its_ticket_rates_it_at_once(make_kit, clock):
    kit = make_kit()
    phone = new_phone()
    older, newer, _ = await two_surveys(kit, clock, phone)
    assert await kit.notifier.surveys.reply(phone, f"{older.ticket_no[-4:]} 3 还是不亮") == SurveyAnswer(
        ticket_no=older.ticket_no, rating=3, solved=False
    )
    assert [a.text for a in kit.answers(older.ticket_no)] == ["3 还是不亮"]
    assert kit.answers(newer.ticket_no) == []
    assert await kit.sent(phone, "which_ticket") == []
    for m in await kit.sent(phone):  # the phone is in no state record
        assert phone not in json.dumps(await kit.notifier.states.get(m["message_id"]), ensure_ascii=False)


async def test_reminder_then_the_survey_closes_without_an_answer(make_kit, clock):
    kit = make_kit(quiet="none")
    phone, ticket = await surveyed(kit)
    assert await kit.notifier.scan(NOON + timedelta(hours=23)) == 0
    assert await kit.notifier.scan(NOON + timedelta(hours=24)) == 1
    (reminder,) = await kit.sent(phone, "reminder")
    assert ticket.ticket_no in reminder["text"]
    assert await kit.notifier.scan(NOON + timedelta(hours=47)) == 0
    assert await kit.notifier.scan(NOON + timedelta(hours=48)) == 1
    (closed,) = kit.answers(ticket.ticket_no)
    assert (closed.outcome, closed.rating) == ("no_answer", None)
    assert len(await kit.sent(phone, "reminder")) == 1
    clock.now = NOON + timedelta(hours=50)
    late = await kit.notifier.surveys.reply(phone, "1")  # after the close: a comment, not a rating
    assert late == SurveyComment(ticket_no=ticket.ticket_no, clarification=False)
    assert [a.outcome for a in kit.answers(ticket.ticket_no)] == ["no_answer", "comment"]


async def test_a_reminder_while_another_survey_is_open_names_its_ticket(make_kit, clock):
    """Two of a phone's tickets wait for their rating: the first's reminder gives its reference, as
    the second's survey did, so the reply it asks for can say which ticket it rates."""
    kit = make_kit(quiet="none")
    phone = new_phone()
    light, _, _ = await two_surveys(kit, clock, phone, note="已清运垃圾")
    assert await kit.notifier.scan(NOON + timedelta(hours=24)) == 1  # the light's, a day on
    (reminder,) = await kit.sent(phone, "reminder")
    ref = light.ticket_no[-4:]
    assert f"工单{light.ticket_no}（尾号{ref}）" in reminder["text"]
    assert f"“{ref} 1”" in reminder["text"]


async def test_a_resolution_the_grid_worker_found_not_solved_gets_no_reminder(make_kit, clock):
    """现场核查未解决: the ticket is being redone, so nobody asks the resident to rate the work again;
    the survey stays open to its end, and a reply is still its answer (not a new appeal)."""
    kit = make_kit(quiet="none")
    phone, ticket, survey_id = await surveyed_with_id(kit)
    await kit.notifier.sent_back([checked_not_solved(ticket, survey_id)])
    assert await kit.notifier.scan(NOON + timedelta(hours=24)) == 0
    assert await kit.sent(phone, "reminder") == []
    clock.now = NOON + timedelta(hours=30)
    answer = await kit.notifier.surveys.reply(phone, "3 还是没修好")
    assert isinstance(answer, SurveyAnswer)
    assert answer.ticket_no == ticket.ticket_no
    # Its answer says the resolution it rates no longer stood: the rates leave it out.
    [answered] = [a for a in kit.answers(ticket.ticket_no) if a.outcome == "answered"]
    assert answered.void


def checked_not_solved(ticket: Ticket, survey_id: str | None) -> TicketUpdated:
    return TicketUpdated(
        ticket_no=ticket.ticket_no,
        action="verified",
        status="assigned",
        actor="W017",
        note="路灯还是不亮",
        verification=Verification(solved=False, reopens=1, survey_id=survey_id),
    )


async def test_an_answer_after_the_desk_placed_the_ticket_elsewhere_counts_in_its_new_grid(make_kit, clock):
    """事发网格 while the survey is open: the answer still to come carries the new grid, where the
    ticket's earlier counts moved (`scoring.placement_moves`); another ticket's survey keeps its own."""
    kit = make_kit(quiet="none")
    phone, ticket, survey_id = await surveyed_with_id(kit)
    _, _, other_id = await surveyed_with_id(kit)
    kept = (await kit.notifier.surveys.get(other_id)).grid
    assert (await kit.notifier.surveys.get(survey_id)).grid == kept != "s02c01g01"
    place = Place(grid="s02c01g01", community="s02c01", street="s02", was=kept, confirmed=False)
    placed = TicketUpdated(
        ticket_no=ticket.ticket_no, action="placed", status="surveyed", actor="dispatch_desk",
        grid="s02c01g01", place=place,
    )  # fmt: skip
    await kit.notifier.placed([placed])
    assert (await kit.notifier.surveys.get(survey_id)).grid == "s02c01g01"
    assert (await kit.notifier.surveys.get(other_id)).grid == kept
    clock.now = NOON + timedelta(hours=2)
    assert isinstance(await kit.notifier.surveys.reply(phone, "1 满意"), SurveyAnswer)
    [answered] = [a for a in kit.answers(ticket.ticket_no) if a.outcome == "answered"]
    assert answered.grid == "s02c01g01"


async def test_an_answer_after_the_desk_dispatched_the_ticket_again_elsewhere_counts_in_its_new_grid(
    make_kit, clock
):
    """A check sent the resolution back (its survey still open, void), the department returned the
    ticket (属地有误) and the desk dispatched it again in another grid: the assignment sets the
    grid (`scoring.sets_grid`), and the open survey follows it as it follows a placement, through
    the notifier's handler of assignments; another survey stays where it is. Dispatched back into
    the first grid, the survey follows back, and the answer (void, in no rate) counts there."""
    kit = make_kit(quiet="none")
    phone, ticket, survey_id = await surveyed_with_id(kit)
    _, _, other_id = await surveyed_with_id(kit)
    kept = (await kit.notifier.surveys.get(other_id)).grid
    assert kept != "s02c01g01"
    await kit.notifier.sent_back([checked_not_solved(ticket, survey_id)])
    assigned = TicketAssigned(
        ticket_no=ticket.ticket_no, department=DepartmentRef(id="urban_mgmt", name="区城市管理委员会"),
        via="operator", explanation="派单员人工派单", category="city.facility.streetlight",
        grid="s02c01g01", grid_chosen=True, respond_by=NOON, resolve_by=NOON,
    )  # fmt: skip

    class Uncounted:  # the scorecard's part has tests of its own (test_scorecard_query)
        async def record(self, events) -> int:
            return 0

    handlers = Handlers(kit.notifier, Uncounted())  # type: ignore[arg-type]
    await handlers.assignments([assigned])
    assert (await kit.notifier.surveys.get(survey_id)).grid == "s02c01g01"
    assert (await kit.notifier.surveys.get(other_id)).grid == kept
    await handlers.assignments([assigned.model_copy(update={"event_id": uuid.uuid4().hex, "grid": kept})])
    assert (await kit.notifier.surveys.get(survey_id)).grid == kept  # where the ticket is, as said
    clock.now = NOON + timedelta(hours=2)
    assert isinstance(await kit.notifier.surveys.reply(phone, "1 满意"), SurveyAnswer)
    [answered] = [a for a in kit.answers(ticket.ticket_no) if a.outcome == "answered"]
    assert (answered.grid, answered.void) == (kept, True)


async def test_the_answer_to_a_survey_sent_back_says_so_and_other_surveys_do_not(make_kit, clock):
    """现场核查未解决, then the resident answers the old survey 满意: the answer is void (in no rate);
    the same resident's survey of another ticket is not; a check written before it named its
    survey voids the ticket's."""
    kit = make_kit(quiet="none")
    phone, ticket, survey_id = await surveyed_with_id(kit)
    other_phone, other, other_id = await surveyed_with_id(kit)
    older_phone, older, _ = await surveyed_with_id(kit)
    await kit.notifier.sent_back([checked_not_solved(ticket, survey_id), checked_not_solved(older, None)])
    clock.now = NOON + timedelta(hours=2)
    for p in (phone, other_phone, older_phone):
        assert isinstance(await kit.notifier.surveys.reply(p, "1 满意"), SurveyAnswer)
    voids = {
        t.ticket_no: [a.void for a in kit.answers(t.ticket_no) if a.outcome == "answered"]
        for t in (ticket, other, older)
    }
    assert voids == {ticket.ticket_no: [True], other.ticket_no: [False], older.ticket_no: [True]}
    assert (await kit.notifier.surveys.get(other_id)).void is False


async def test_a_survey_sent_back_by_a_check_is_no_choice_and_makes_no_other_several(make_kit, clock):
    """Two of a phone's tickets wait for their rating; a grid worker's check sends the streetlight
    back (现场核查未解决). The rubbish is then the one ticket to rate: its reminder names no
    reference, a bare rating rates it and nobody is asked "which ticket?"; a reply naming the
    streetlight is still recorded, as that survey's void answer."""
    kit = make_kit(quiet="none")
    phone = new_phone()
    light, rubbish, sent = await two_surveys(kit, clock, phone, note="已清运垃圾")
    assert "尾号" in (await kit.sent(phone, "survey"))[0]["text"]  # both open then
    await kit.notifier.sent_back([checked_not_solved(light, sent.survey_id)])
    assert await kit.notifier.scan(NOON + timedelta(hours=25)) == 1  # the rubbish's; the light's withdrawn
    (reminder,) = await kit.sent(phone, "reminder")
    assert rubbish.ticket_no in reminder["text"]
    assert "尾号" not in reminder["text"]
    clock.now = NOON + timedelta(hours=26)
    rated = await kit.notifier.surveys.reply(phone, "1")
    assert rated == SurveyAnswer(ticket_no=rubbish.ticket_no, rating=1, solved=True)
    assert await kit.sent(phone, "which_ticket") == []
    assert await kit.redis.get(f"survey:pending:{phone}") is None
    late = await kit.notifier.surveys.reply(phone, f"{light.ticket_no[-4:]} 3 还是不亮")
    assert late == SurveyAnswer(ticket_no=light.ticket_no, rating=3, solved=False)
    assert [(a.rating, a.void) for a in kit.answers(light.ticket_no)] == [(3, True)]
    assert [(a.rating, a.void) for a in kit.answers(rubbish.ticket_no)] == [(1, False)]


async def test_an_answer_cancels_the_reminder_and_the_timeout(make_kit):
    kit = make_kit(quiet="none")
    phone, ticket = await surveyed(kit)
    await kit.notifier.surveys.reply(phone, "1")
    await kit.notifier.scan(NOON + timedelta(hours=72))
    assert await kit.sent(phone, "reminder") == []
    assert [a.outcome for a in kit.answers(ticket.ticket_no)] == ["answered"]


async def surveyed_with_id(kit: Kit) -> tuple[str, Ticket, str]:
    """`surveyed`, and the survey's id (that of the resolution that started it)."""
    phone = new_phone()
    ticket, resolved = await resolved_ticket(kit, phone)
    [sent] = await kit.notifier.start_surveys([resolved])
    assert isinstance(sent, SurveySent)
    return phone, ticket, sent.survey_id


def answers_counted(**labels: str) -> float:
    """The notifier's `surveys_answered_total` series of these labels, in this process."""
    return REGISTRY.get_sample_value("surveys_answered_total", labels) or 0.0


async def due_for_a_call(kit: Kit, survey_id: str, now: datetime):
    _, calls = await kit.notifier.surveys.due_calls(now, limit=10_000)
    return next((c for c in calls if c.survey.survey_id == survey_id), None)


async def test_a_resident_who_does_not_answer_the_sms_is_called_by_an_operator(make_kit, clock):
    """电话回访: due when the reminder goes out unanswered; one operator at a time; the answer on
    the phone closes the survey like an SMS answer, naming the operator; a later SMS is a comment."""
    kit = make_kit(quiet="none")
    phone, ticket, sid = await surveyed_with_id(kit)
    surveys = kit.notifier.surveys
    assert await due_for_a_call(kit, sid, NOON + timedelta(hours=23)) is None  # the SMS has its time
    later = NOON + timedelta(hours=25)
    due = await due_for_a_call(kit, sid, later)
    assert due is not None
    assert (due.survey.to, due.attempts, due.calling) == (phone, 0, None)
    held = await surveys.call(sid, "op7", later)
    assert held.calling == "op7"
    with pytest.raises(CallRefused, match="话务员op7正在回访"):
        await surveys.call(sid, "op8", later + timedelta(minutes=1))
    assert (await due_for_a_call(kit, sid, later)).calling == "op7"
    # The hold lapses: another operator may take it.
    assert (await surveys.call(sid, "op8", later + timedelta(minutes=11))).calling == "op8"
    counted = answers_counted(rating="3", via="phone")
    answered = await surveys.answer_by_phone(
        sid, "op8", 3, False, "路灯还是不亮", later + timedelta(minutes=12)
    )
    assert answers_counted(rating="3", via="phone") == counted + 1
    assert (answered.outcome, answered.rating, answered.solved, answered.by) == ("answered", 3, False, "op8")
    assert answered.text == "路灯还是不亮"
    assert [a.outcome for a in kit.answers(ticket.ticket_no)] == ["answered"]
    assert await due_for_a_call(kit, sid, later + timedelta(hours=1)) is None
    with pytest.raises(CallRefused, match="已结束"):
        await surveys.answer_by_phone(sid, "op7", 1, True, "", later + timedelta(minutes=13))
    # The resident's SMS after the call: a comment on the closed survey, not a second answer.
    clock.now = later + timedelta(minutes=20)
    assert isinstance(await surveys.reply(phone, "1"), SurveyComment)


async def test_a_resident_without_the_sms_answers_on_the_lookup_page(make_kit, clock):
    """The lookup page's answer closes the open survey as an SMS answer would (one `survey.answered`,
    confirmed by SMS, no call due any more), marked as given there and not as 电话回访; sent twice it
    gives the same answer; a ticket with no survey, or one already answered, is refused."""
    kit = make_kit(quiet="none")
    phone, ticket, sid = await surveyed_with_id(kit)
    surveys = kit.notifier.surveys
    assert await surveys.ticket_survey(ticket.ticket_no, NOON) is not None
    later = NOON + timedelta(hours=25)
    assert await due_for_a_call(kit, sid, later) is not None
    counted = answers_counted(rating="3", via="lookup")
    answered = await surveys.answer_on_lookup(ticket.ticket_no, 3, False, " 路灯还是不亮 ", later)
    assert answers_counted(rating="3", via="lookup") == counted + 1  # its own series, not the SMS's
    assert (answered.outcome, answered.rating, answered.solved) == ("answered", 3, False)
    assert (answered.by, answered.via, answered.text, answered.survey_id) == (
        None,
        "lookup",
        "路灯还是不亮",
        sid,
    )
    assert await due_for_a_call(kit, sid, later) is None
    (confirmation,) = await kit.sent(phone, "confirmation")
    assert "重新办理" in confirmation["text"]
    # The page sent again (a double click, a reload): the first answer, nothing new published.
    again = await surveys.answer_on_lookup(ticket.ticket_no, 1, True, "", later + timedelta(seconds=2))
    assert again == answered
    assert answers_counted(rating="3", via="lookup") == counted + 1
    assert [a.event_id for a in kit.answers(ticket.ticket_no)] == [answered.event_id]
    assert len(await kit.sent(phone, "confirmation")) == 1
    # An SMS reply after it is a comment on the closed survey, not a second answer.
    clock.now = later + timedelta(minutes=5)
    assert isinstance(await surveys.reply(phone, "1"), SurveyComment)
    # Answered by SMS first: the page may not answer it again.
    phone2, other = await surveyed(kit)
    assert isinstance(await surveys.reply(phone2, "1"), SurveyAnswer)
    with pytest.raises(AnswerRefused, match="回访已结束"):
        await surveys.answer_on_lookup(other.ticket_no, 3, False, "", later)
    with pytest.raises(AnswerRefused, match="没有待评价的回访"):
        await surveys.answer_on_lookup(made_up_no(), 1, True, "", later)


async def test_a_callback_falls_due_at_its_own_time_not_the_reminders(make_kit, clock):
    """SURVEY_CALLBACK_HOURS: the call is due that long after the survey (here 6 hours, long before
    the reminder at 24) and not a second before; the menu's count (`due_count`) counts it then."""
    kit = make_kit(quiet="none", callback_after=timedelta(hours=6))
    phone, _, sid = await surveyed_with_id(kit)
    surveys, at = kit.notifier.surveys, NOON + timedelta(hours=6)
    before = at - timedelta(seconds=1)
    assert await due_for_a_call(kit, sid, before) is None
    counted_before = await surveys.due_count(before)
    due = await due_for_a_call(kit, sid, at)
    assert due is not None
    assert (due.due, due.survey.to, due.attempts) == (at, phone, 0)
    # The count is the list's total, without reading a survey (other tests' surveys share the set).
    total, _ = await surveys.due_calls(at, limit=1)
    assert await surveys.due_count(at) == total == counted_before + 1
    # The SMS keeps its own times: no reminder at the call's time, the one reminder at 24 hours.
    assert await kit.notifier.scan(at) == 0
    assert await kit.notifier.scan(NOON + timedelta(hours=24)) == 1
    assert len(await kit.sent(phone, "reminder")) == 1


async def test_a_call_nobody_answers_is_tried_again_and_an_sms_answer_ends_the_calls(make_kit, clock):
    kit = make_kit(quiet="none")
    phone, ticket, sid = await surveyed_with_id(kit)
    surveys, at = kit.notifier.surveys, NOON + timedelta(hours=25)
    await surveys.call(sid, "op7", at)
    assert await surveys.unreachable(sid, "op7", at) == 1
    assert await due_for_a_call(kit, sid, at + timedelta(hours=1)) is None  # not before CALL_AGAIN
    again = await due_for_a_call(kit, sid, at + timedelta(hours=2))
    assert again is not None
    assert (again.attempts, again.calling) == (1, None)
    assert await surveys.unreachable(sid, "op8", at + timedelta(hours=2)) == 2
    assert await surveys.unreachable(sid, "op8", at + timedelta(hours=4)) == CALL_ATTEMPTS
    assert await due_for_a_call(kit, sid, at + timedelta(hours=20)) is None  # given up by phone
    # ... the SMS still answers it, and the survey's end by its window closes nothing twice.
    clock.now = at + timedelta(hours=5)
    assert isinstance(await surveys.reply(phone, "2"), SurveyAnswer)
    assert [a.outcome for a in kit.answers(ticket.ticket_no)] == ["answered"]
    # Another resident answers by SMS before any call: never listed again.
    phone2, _, sid2 = await surveyed_with_id(kit)
    await surveys.reply(phone2, "1")
    assert await due_for_a_call(kit, sid2, at + timedelta(hours=30)) is None
    with pytest.raises(CallRefused):
        await surveys.call(sid2, "op7", at + timedelta(hours=30))


async def test_quiet_hours_hold_messages_but_not_urgent_ones(make_kit, clock):
    clock.now = datetime(2026, 11, 23, 22, 30, tzinfo=SH)
    kit, replica = make_kit(), make_kit()
    phone, urgent_phone = new_phone(), new_phone()
    normal = AppealReceived(ticket_no="20261123-000101", channel="hotline", text="路灯坏了")
    urgent = AppealReceived(ticket_no="20261123-000102", channel="hotline", text="燃气泄漏", urgent_flag=True)
    assert await kit.notifier.acknowledge(normal, normal.ticket_no, phone) == "held"
    assert await kit.notifier.acknowledge(urgent, urgent.ticket_no, urgent_phone, urgent=True) == "sent"
    assert await kit.sent(phone) == []
    # The desk reads why it waits, and until when (the ticket's 短信与微信通知).
    (waiting,) = await kit.notifier.states.of_ticket(normal.ticket_no)
    assert (waiting["state"], waiting["held_for"]) == ("held", "quiet_hours")
    assert datetime.fromisoformat(waiting["until"]) == datetime(2026, 11, 24, 8, 0, tzinfo=SH)
    assert datetime.fromisoformat(waiting["at"]) == clock.now
    assert len(await kit.sent(urgent_phone)) == 1
    assert await kit.notifier.scan(datetime(2026, 11, 24, 7, 59, tzinfo=SH)) == 0
    assert await kit.sent(phone) == []
    # Two replicas scan at 08:00: the held message goes out once.
    morning = datetime(2026, 11, 24, 8, 0, tzinfo=SH)
    done = await asyncio.gather(kit.notifier.scan(morning), replica.notifier.scan(morning))
    assert sorted(done) == [0, 1]
    (ack,) = await kit.sent(phone, "ack")
    assert "20261123-000101" in ack["text"]
    assert (await kit.notifier.states.get(ack["message_id"]))["state"] == "sent"


async def test_the_desk_resends_a_notice_at_once_to_the_residents_contact_once_per_click(make_kit, clock):
    """补发: a resident on the line at night lost the ticket number the held acknowledgement carries:
    the desk sends it now (the resident asked, so quiet hours do not hold it), to their contact."""
    clock.now = datetime(2026, 11, 23, 22, 30, tzinfo=SH)
    kit = make_kit()
    phone = new_phone()
    cid = caller_id(phone)
    await kit.store.save_contact(cid, phone, None)
    appeal = AppealReceived(ticket_no="20261123-000150", channel="hotline", text="路灯坏了")
    assert await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "held"
    (held,) = await kit.notifier.states.of_ticket(appeal.ticket_no)

    message, state = await kit.notifier.resend(appeal.ticket_no, held["message_id"], cid)
    assert state == "sent"
    (sent,) = await kit.sent(phone, "ack")
    assert (sent["message_id"], sent["text"]) == (message.message_id, held["text"])
    # A second click the same minute sends nothing more; the next minute's does.
    assert (await kit.notifier.resend(appeal.ticket_no, held["message_id"], cid))[1] == "duplicate"
    assert len(await kit.sent(phone, "ack")) == 1
    listed = await kit.notifier.states.of_ticket(appeal.ticket_no)
    assert [(m["state"], m.get("resent_from"), m.get("replaced_by")) for m in listed] == [
        ("held", None, message.message_id),
        ("sent", held["message_id"], None),
    ]
    # At 08:00 the held acknowledgement is not sent a second time.
    assert await kit.notifier.scan(datetime(2026, 11, 24, 8, 0, tzinfo=SH)) == 1
    assert len(await kit.sent(phone, "ack")) == 1
    assert (await kit.notifier.states.get(held["message_id"]))["state"] == "cancelled"

    # Not another ticket's message, not a survey (answered by reply), not without a contact.
    with pytest.raises(DomainError) as refused:
        await kit.notifier.resend("20261123-000151", held["message_id"], cid)
    assert refused.value.kind == "not_found"
    with pytest.raises(DomainError) as refused:
        await kit.notifier.resend(appeal.ticket_no, held["message_id"], None)
    assert (refused.value.code, refused.value.message) == (
        "no_contact",
        "市民没有留下联系方式（匿名诉求，或个人信息已删除），无法补发",
    )
    ticket, resolved = await resolved_ticket(kit, new_phone())
    await kit.notifier.start_surveys([resolved])
    (survey,) = await kit.notifier.states.of_ticket(ticket.ticket_no)
    assert survey["kind"] == "survey"
    with pytest.raises(DomainError) as refused:
        await kit.notifier.resend(ticket.ticket_no, survey["message_id"], ticket.caller.caller_id)
    assert refused.value.code == "not_resendable"


async def test_daily_cap_holds_the_rest_until_tomorrow(make_kit):
    kit = make_kit(cap=2)
    phone = new_phone()
    results = []
    for n in range(3):
        appeal = AppealReceived(ticket_no=f"20261123-0002{n:02d}", channel="sms", text="路灯坏了")
        results.append(await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone))
    assert results == ["sent", "sent", "held"]
    assert len(await kit.sent(phone)) == 2
    (waiting,) = await kit.notifier.states.of_ticket("20261123-000202")
    assert (waiting["state"], waiting["held_for"]) == ("held", "daily_cap")
    assert await kit.notifier.scan(datetime(2026, 11, 23, 23, 59, tzinfo=SH)) == 0
    assert await kit.notifier.scan(datetime(2026, 11, 24, 8, 0, tzinfo=SH)) == 1
    assert next(m["ticket_no"] for m in await kit.sent(phone)) == "20261123-000202"


async def test_a_batch_read_again_counts_against_the_cap_only_what_it_sends_now(make_kit):
    """A batch read again after part of it went out (a crash, a rebalance): what went out is a
    duplicate now, counted once (by the day's count), and does not hold back the rest."""
    kit = make_kit(cap=2, quiet="none")
    phone = new_phone()
    appeals = [
        AppealReceived(ticket_no=f"20261123-00022{n}", channel="sms", text="路灯坏了") for n in range(3)
    ]
    assert await kit.notifier.acknowledge(appeals[0], appeals[0].ticket_no, phone) == "sent"
    batch = [(a.event_id, kit.notifier.ack_message(a.ticket_no, phone)) for a in appeals]
    assert await kit.notifier.sms.send_many(batch) == ["duplicate", "sent", "held"]
    assert len(await kit.sent(phone)) == 2


async def test_what_the_cap_exempts_it_does_not_count(make_kit):
    """An urgent appeal's acknowledgement (as an answer to the resident's own message: a rating's
    confirmation, a query's answer) goes past the cap, and does not use up the day's notices."""
    kit = make_kit(cap=2)
    phone = new_phone()
    urgent = AppealReceived(ticket_no="20261123-000210", channel="sms", text="燃气泄漏", urgent_flag=True)
    assert await kit.notifier.acknowledge(urgent, urgent.ticket_no, phone, urgent=True) == "sent"
    results = []
    for n in range(3):
        appeal = AppealReceived(ticket_no=f"20261123-0002{n + 11:02d}", channel="sms", text="路灯坏了")
        results.append(await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone))
    assert results == ["sent", "sent", "held"]


async def test_held_message_survives_a_restart_and_is_sent_once(make_kit, clock):
    clock.now = datetime(2026, 11, 23, 23, 0, tzinfo=SH)
    phone = new_phone()
    appeal = AppealReceived(ticket_no="20261123-000301", channel="hotline", text="路灯坏了")
    assert await make_kit().notifier.acknowledge(appeal, appeal.ticket_no, phone) == "held"
    restarted = make_kit()
    assert await restarted.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "duplicate"
    morning = datetime(2026, 11, 24, 8, 5, tzinfo=SH)
    assert await restarted.notifier.scan(morning) == 1
    assert await restarted.notifier.scan(morning) == 0
    assert len(await restarted.sent(phone)) == 1


class Killed(BaseException):
    """The process dies here (kill -9): no handler of the notifier's runs after it."""


class DyingGateway:
    """Dies before handing the batch to the outbox, or right after the outbox took it."""

    def __init__(self, outbox: OutboxGateway, *, after: bool) -> None:
        self.outbox = outbox
        self.after = after
        self.seen: list[str] = []

    async def send(self, message: Message) -> str:
        return (await self.send_many([message]))[0]

    async def send_many(self, messages: list[Message]) -> list[str]:
        self.seen.extend(m.message_id for m in messages)
        if self.after:
            await self.outbox.send_many(messages)
        raise Killed


class SlowGateway:
    """Holds each batch until released, as a provider that is slow to answer."""

    def __init__(self, outbox: OutboxGateway) -> None:
        self.outbox = outbox
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, message: Message) -> str:
        return (await self.send_many([message]))[0]

    async def send_many(self, messages: list[Message]) -> list[str]:
        self.entered.set()
        await self.release.wait()
        return await self.outbox.send_many(messages)


async def sending_slowly(kit: Kit, appeal: AppealReceived, phone: str) -> tuple[SlowGateway, asyncio.Task]:
    """`kit` acknowledging `appeal`, its message at a slow gateway now (its lease taken): the
    gateway, to release, and the task, which ends when the gateway answers."""
    slow = SlowGateway(kit.outbox)
    kit.notifier.sms.gateway = slow
    sending = asyncio.create_task(kit.notifier.acknowledge(appeal, appeal.ticket_no, phone))
    await asyncio.wait_for(slow.entered.wait(), 10)
    return slow, sending


def short_lease(kit: Kit) -> Kit:
    kit.notifier.sms.lease = timedelta(milliseconds=300)
    kit.notifier.sms.in_flight_wait = 0
    return kit


async def redelivered(kit: Kit, appeal: AppealReceived, phone: str) -> str:
    """The event read again until no other sender's lease stands in the way."""
    for _ in range(200):
        try:
            return await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone)
        except SendInFlight:
            await asyncio.sleep(0.05)
    raise AssertionError("the lease of the killed sender never expired")


@pytest.mark.parametrize("after", [False, True], ids=["before-the-gateway", "after-the-gateway"])
async def test_a_kill_between_claim_and_done_loses_nothing_and_sends_once(make_kit, redis, after):
    phone = new_phone()
    appeal = AppealReceived(ticket_no="20261123-000401", channel="hotline", text="路灯坏了")
    dying = short_lease(make_kit(quiet="none"))
    gateway = DyingGateway(dying.outbox, after=after)
    dying.notifier.sms.gateway = gateway
    with pytest.raises(Killed):
        await dying.notifier.acknowledge(appeal, appeal.ticket_no, phone)
    assert len(await dying.sent(phone)) == (1 if after else 0)

    restarted = short_lease(make_kit(quiet="none"))  # the event was not committed: read again
    with pytest.raises(SendInFlight):  # the dead sender's lease still stands
        await restarted.notifier.acknowledge(appeal, appeal.ticket_no, phone)
    assert await redelivered(restarted, appeal, phone) == "sent"
    assert await restarted.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "duplicate"

    acks = await restarted.sent(phone)
    assert [m["message_id"] for m in acks] == gateway.seen  # once, with the first attempt's id
    assert (await restarted.notifier.states.get(gateway.seen[0]))["state"] == "sent"
    assert await redis.hget(f"sms:count:{NOON:%Y%m%d}", phone) == b"1"  # counted once for the cap


async def test_a_claim_recorded_before_the_address_was_named_to_is_sent_as_recorded(make_kit, redis):
    """A notifier of the previous version died between its claim and the gateway: its record names
    the address `phone`. The upgraded notifier reading the event again sends that very message."""
    phone = new_phone()
    appeal = AppealReceived(ticket_no="20261123-000405", channel="hotline", text="路灯坏了")
    recorded = {
        "phone": phone,
        "text": "【12345】您的诉求已受理（记录于升级前）",
        "kind": "ack",
        "ticket_no": appeal.ticket_no,
        "message_id": uuid.uuid4().hex,
        "created_at": NOON.isoformat(),
        "urgent": False,
    }
    claim = "sending:" + json.dumps(recorded, ensure_ascii=False, sort_keys=True)
    await redis.set(f"sms:done:{appeal.event_id}:ack", claim, ex=3600)
    kit = make_kit(quiet="none")
    assert await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "sent"
    [sent] = await kit.sent(phone)
    assert (sent["message_id"], sent["text"]) == (recorded["message_id"], recorded["text"])
    assert (await kit.notifier.states.get(recorded["message_id"]))["state"] == "sent"
    assert await redis.hget(f"sms:count:{NOON:%Y%m%d}", phone) == b"1"


async def test_a_redelivery_while_the_send_is_in_flight_sends_nothing_twice(make_kit):
    phone, other = new_phone(), new_phone()
    appeal = AppealReceived(ticket_no="20261123-000402", channel="hotline", text="路灯坏了")
    next_one = AppealReceived(ticket_no="20261123-000403", channel="hotline", text="井盖缺失")
    slow, sending = await sending_slowly(make_kit(quiet="none"), appeal, phone)

    # A second notifier given the same event (a rebalance) in a batch with a new one: the new one
    # goes out, the one in flight does not, and the batch fails to be read again.
    second = make_kit(quiet="none")
    second.notifier.sms.in_flight_wait = 0
    batch = [
        (appeal.event_id, second.notifier.ack_message(appeal.ticket_no, phone)),
        (next_one.event_id, second.notifier.ack_message(next_one.ticket_no, other)),
    ]
    with pytest.raises(SendInFlight):
        await second.notifier.sms.send_many(batch)
    assert await second.sent(phone) == []
    assert len(await second.sent(other)) == 1

    slow.release.set()
    assert await sending == "sent"
    assert await second.notifier.sms.send_many(batch) == ["duplicate", "duplicate"]
    assert len(await second.sent(phone)) == 1
    assert len(await second.sent(other)) == 1


async def test_a_message_held_while_another_notifier_sends_it_waits_for_that_send(make_kit, clock):
    """The hold takes no lease (nothing leaves the machine), so it must not step past one: a
    notifier at night given an event whose message another is sending now holds nothing."""
    clock.now = datetime(2026, 11, 23, 22, 30, tzinfo=SH)
    phone = new_phone()
    appeal = AppealReceived(ticket_no="20261123-000406", channel="hotline", text="路灯坏了")
    slow, sending = await sending_slowly(make_kit(quiet="none"), appeal, phone)

    night = make_kit()  # quiet hours: it would hold the message
    night.notifier.sms.in_flight_wait = 0
    with pytest.raises(SendInFlight):
        await night.notifier.acknowledge(appeal, appeal.ticket_no, phone)
    slow.release.set()
    assert await sending == "sent"
    assert await night.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "duplicate"
    assert await night.notifier.scan(datetime(2026, 11, 24, 8, 0, tzinfo=SH)) == 0
    [ack] = await night.sent(phone)
    assert (await night.notifier.states.get(ack["message_id"]))["state"] == "sent"


async def test_a_message_a_dead_sender_recorded_is_held_as_recorded(make_kit, redis, clock):
    """A notifier died after its claim, before the gateway; the event is read again at night. The
    message it recorded is held, with its id, and goes out in the morning as it was recorded."""
    clock.now = datetime(2026, 11, 23, 22, 30, tzinfo=SH)
    phone = new_phone()
    appeal = AppealReceived(ticket_no="20261123-000407", channel="hotline", text="路灯坏了")
    kit = make_kit()
    recorded = kit.notifier.ack_message(appeal.ticket_no, phone)
    claim = b"sending:" + kit.notifier.sms._json(recorded)
    await redis.set(f"sms:done:{appeal.event_id}:ack", claim, ex=3600)
    # Its lease has expired: no `sms:sending:` key.
    assert await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "held"
    (waiting,) = await kit.notifier.states.of_ticket(appeal.ticket_no)
    assert (waiting["message_id"], waiting["state"]) == (recorded.message_id, "held")
    assert await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "duplicate"
    assert await kit.notifier.scan(datetime(2026, 11, 24, 8, 0, tzinfo=SH)) == 1
    [ack] = await kit.sent(phone)
    assert (ack["message_id"], ack["text"]) == (recorded.message_id, recorded.text)


async def test_two_notifiers_holding_one_message_hold_it_once(make_kit, clock):
    clock.now = datetime(2026, 11, 23, 22, 30, tzinfo=SH)
    phone, other = new_phone(), new_phone()
    appeal = AppealReceived(ticket_no="20261123-000408", channel="hotline", text="路灯坏了")
    next_one = AppealReceived(ticket_no="20261123-000409", channel="hotline", text="井盖缺失")
    kit, replica = make_kit(), make_kit()
    kits = (kit, replica)
    batches = [
        [(appeal.event_id, k.notifier.ack_message(appeal.ticket_no, phone))]
        + ([(next_one.event_id, k.notifier.ack_message(next_one.ticket_no, other))] if k is kit else [])
        for k in kits
    ]
    results = await asyncio.gather(*(k.notifier.sms.send_many(b) for k, b in zip(kits, batches, strict=True)))
    assert sorted(r[0] for r in results) == ["duplicate", "held"]
    assert results[0][1] == "held"
    assert [m["state"] for m in await kit.notifier.states.of_ticket(appeal.ticket_no)] == ["held"]
    assert await kit.notifier.scan(datetime(2026, 11, 24, 8, 0, tzinfo=SH)) == 2
    assert len(await kit.sent(phone)) == 1
    assert len(await kit.sent(other)) == 1


async def test_a_redis_failure_after_the_claim_lets_the_redelivery_send_at_once(make_kit):
    phone = new_phone()
    appeal = AppealReceived(ticket_no="20261123-000404", channel="hotline", text="路灯坏了")
    kit = make_kit(quiet="none")
    gateway = DyingGateway(kit.outbox, after=False)

    async def broken(messages: list[Message]) -> list[str]:
        gateway.seen.extend(m.message_id for m in messages)
        raise ConnectionError("Redis went away under the outbox")

    kit.notifier.sms.gateway = gateway
    gateway.send_many = broken  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone)
    kit.notifier.sms.gateway = kit.outbox
    # No lease left to wait for: the same message, at once.
    assert await kit.notifier.acknowledge(appeal, appeal.ticket_no, phone) == "sent"
    assert [m["message_id"] for m in await kit.sent(phone)] == gateway.seen


async def test_opt_out_closes_open_surveys_and_skips_the_next(make_kit):
    kit = make_kit()
    phone, ticket = await surveyed(kit)
    result = await kit.notifier.surveys.reply(phone, "TD")
    assert result == OptedOut(closed_surveys=[ticket.ticket_no])
    assert [a.outcome for a in kit.answers(ticket.ticket_no)] == ["opted_out"]
    assert len(await kit.sent(phone, "opt_out")) == 1
    # The next resolution: the result is told, no survey is asked, and that is recorded.
    _, resolved_next = await resolved_ticket(kit, phone, note="已清理垃圾")
    events = await kit.notifier.start_surveys([resolved_next])
    assert [(type(e), e.outcome) for e in events] == [(SurveyAnswered, "opted_out")]
    (result_sms,) = await kit.sent(phone, "result")
    assert "已清理垃圾" in result_sms["text"]
    assert "回复1满意" not in result_sms["text"]
    assert await kit.sent(phone, "survey") != []
    assert len(await kit.sent(phone, "survey")) == 1


async def test_anonymous_appeals_skip_the_survey_and_say_so(make_kit):
    kit = make_kit()
    ticket, resolved = await resolved_ticket(kit, None)
    events = await kit.notifier.start_surveys([resolved])
    assert [(type(e), e.outcome) for e in events] == [(SurveyAnswered, "skipped_anonymous")]
    assert events[0].ticket_no == ticket.ticket_no


async def test_a_ticket_erased_before_its_resolution_is_not_surveyed_and_not_called_anonymous(make_kit):
    """Erased before it was resolved, the ticket's events carry no caller, as an anonymous appeal's
    do: its survey's end says the resident's personal data was erased, not that it was anonymous."""
    kit = make_kit()
    phone = new_phone()
    ticket, resolved = await resolved_ticket(kit, phone)
    await erased_without_notice(kit, ticket.ticket_no, phone)
    events = await kit.notifier.start_surveys([resolved.model_copy(update={"caller_id": None})])
    assert [(type(e), e.outcome) for e in events] == [(SurveyAnswered, "erased")]
    assert await kit.sent(phone) == []


async def test_answers_are_counted_in_the_groups_their_survey_kept(make_kit, redis):
    """No ticket is stored: the survey keeps the resolved event's department, category and grid,
    the answer's event carries them, and the scorecard counts it there (street from the grid)."""
    from services.notifier.app import Handlers
    from services.notifier.scorecard import Scorecard
    from services.notifier.scoring import Weights
    from tests.cities import demo_city

    kit = make_kit()
    card = Scorecard(redis, demo_city(), SH, Weights())
    handlers = Handlers(kit.notifier, card)
    dept = DepartmentRef(id=f"test-g-{uuid.uuid4().hex[:6]}", name="测试单位")
    phone = new_phone()
    ticket, resolved = await resolved_ticket(kit, phone)
    resolved = resolved.model_copy(update={"department": dept})
    anonymous_ticket, anonymous = await resolved_ticket(kit, None)
    anonymous = anonymous.model_copy(update={"department": dept})
    await handlers.updates([resolved, anonymous])
    assert await kit.redis.get(f"t:{ticket.ticket_no}") is None
    await kit.notifier.surveys.reply(phone, "2")
    (answer,) = kit.answers(ticket.ticket_no)
    assert (answer.department, answer.category, answer.grid) == (dept, "street_light", "s01c01g01")
    (skipped,) = kit.answers(anonymous_ticket.ticket_no)
    assert skipped.outcome == "skipped_anonymous"
    assert skipped.department == dept
    await handlers.answers([answer, skipped])
    day = NOON.date()
    (row,) = [r for r in await card.query("department", day, day) if r["group"] == dept.id]
    assert (row["answered"], row["basically_satisfied"], row["solved"], row["skipped"]) == (1, 1, 1, 1)
    assert card.groups_of(answer)["street"] == "s01"


async def test_the_worker_handlers_send_progress_and_start_surveys(make_kit, redis):
    """The subscribers' batch handlers: progress on a joint meeting and an approved extension, the
    survey on resolution (published as events on the broker), acknowledgements for a batch."""
    from services.notifier.app import Handlers
    from services.notifier.scorecard import Scorecard
    from services.notifier.scoring import Weights
    from shared.events import TicketAssigned
    from tests.cities import demo_city

    kit = make_kit()
    handlers = Handlers(kit.notifier, Scorecard(redis, demo_city(), SH, Weights()))
    phone = new_phone()
    ticket, resolved = await resolved_ticket(kit, phone)
    meeting = TicketAssigned(
        ticket_no=ticket.ticket_no,
        caller_id=ticket.caller.caller_id,
        department=ticket.department,
        via="meeting",
        explanation="联席会议",
        category="c",
        grid=None,
        respond_by=NOON,
        resolve_by=NOON,
    )
    extension = TicketUpdated(
        ticket_no=ticket.ticket_no,
        action="extension_approved",
        status="accepted",
        actor="dispatch_desk",
        caller_id=ticket.caller.caller_id,
        extension=Extension(days=3, resolve_by=datetime(2026, 11, 30, 18, 0, tzinfo=SH)),
    )
    await handlers.assignments([meeting])
    await handlers.updates([extension, resolved])
    await handlers.updates([extension, resolved])  # redelivered batch: nothing twice
    texts = [m["text"] for m in reversed(await kit.sent(phone))]
    assert len(texts) == 3
    assert "已确定由区城市管理委员会负责办理" in texts[0]  # the meeting's decision
    assert ticket.ticket_no in texts[0]
    assert "延期办理至11月30日" in texts[1]
    assert "回复1满意" in texts[2]
    assert [type(e) for e in kit.published] == [SurveySent, SurveySent]  # same id: deduped downstream
    assert kit.published[0].event_id == kit.published[1].event_id

    phones = [new_phone() for _ in range(40)]
    for p in phones:
        await kit.store.save_contact(caller_id(p), p, None)
    appeals = [
        AppealReceived(
            ticket_no=f"20261123-5{n:05d}",
            channel="hotline",
            text="路灯坏了",
            caller=Caller(caller_id=caller_id(p), masked_phone=mask_phone(p)),
        )
        for n, p in enumerate(phones)
    ]
    wechat = AppealReceived(
        ticket_no="20261123-599999",
        channel="wechat",
        text="路灯坏了",
        caller=Caller(caller_id=caller_id(phones[0]), masked_phone=mask_phone(phones[0])),
    )
    await handlers.appeals([*appeals, wechat])
    for p in phones:
        assert len(await kit.sent(p, "ack")) == 1  # WeChat answered itself: no second ack


async def test_the_resident_hears_of_the_meeting_mediation_and_a_check_that_sent_it_back(
    make_kit, redis, clock
):
    """Progress a resident waits for, once per change, by the rules of other progress messages: the
    joint meeting's hold, a referral to mediation, a grid worker's check that found it not solved.
    An escalation by a deadline (督办) is the supervisors' and tells the resident nothing."""
    from services.notifier.app import Handlers
    from services.notifier.scorecard import Scorecard
    from services.notifier.scoring import Weights
    from shared.events import MeetingSpec, TicketAssigned, Verification
    from tests.cities import demo_city

    kit = make_kit()
    handlers = Handlers(kit.notifier, Scorecard(redis, demo_city(), SH, Weights()))
    phone = new_phone()
    ticket, _ = await resolved_ticket(kit, phone)
    cid = ticket.caller.caller_id

    def updated(action: str, status: str, **payload) -> TicketUpdated:
        return TicketUpdated(
            ticket_no=ticket.ticket_no, action=action, status=status, actor="system", caller_id=cid, **payload
        )

    held = updated(
        "escalated",
        "meeting",
        meeting=MeetingSpec(
            meeting_id="m1", reason="returned_twice", lead_street="s01", summoned=("a", "b"), deadline=NOON
        ),
    )
    by_deadline = updated(
        "escalated",
        "accepted",
        supervision=DeadlineNotice(
            stage="resolve", stage_name="办结", deadline=NOON, supervisor="urban_mgmt"
        ),
    )
    mediation = TicketAssigned(
        ticket_no=ticket.ticket_no,
        caller_id=cid,
        department=DepartmentRef(id="mediation_s01", name="和平街道人民调解委员会"),
        via="mediation",
        explanation="邻里纠纷",
        category="c",
        grid=None,
        respond_by=NOON,
        resolve_by=NOON,
    )
    back = updated(
        "verified", "assigned", verification=Verification(solved=False, reopens=1), note="灯还是不亮"
    )
    confirmed = updated("verified", "resolved", verification=Verification(solved=True))
    await handlers.updates([held, by_deadline])
    await handlers.assignments([mediation])
    await handlers.updates([back, confirmed])
    await handlers.updates([held, by_deadline, back, confirmed])  # redelivered: nothing twice
    texts = [m["text"] for m in reversed(await kit.sent(phone, "progress"))]
    assert len(texts) == 3
    assert "已提交联席会议协调办理" in texts[0]
    assert "已转由和平街道人民调解委员会组织调解" in texts[1]
    assert "尚未解决，已退回承办单位重新办理" in texts[2]
    assert all(ticket.ticket_no in t for t in texts)
    for t in texts:  # plain words, no staff jargon
        assert not any(w in t for w in ("督办", "现场核查未解决", "退单", "主办"))

    # Quiet hours hold them as they hold other progress messages.
    clock.now = datetime(2026, 11, 23, 22, 0, tzinfo=SH)
    late = updated("verified", "assigned", verification=Verification(solved=False, reopens=2))
    await handlers.updates([late])
    assert len(await kit.sent(phone, "progress")) == 3  # held until 08:00, not sent
    await kit.notifier.scan(datetime(2026, 11, 24, 8, 1, tzinfo=SH))
    assert len(await kit.sent(phone, "progress")) == 4


async def test_a_hotspots_resident_hears_that_many_residents_raised_the_same_problem(make_kit, redis):
    """Held with the other appeals of one problem in one grid, the resident is not told that their
    appeal "involves several departments" (a hotspot's may involve one): they are told why."""
    from services.notifier.app import Handlers
    from services.notifier.scorecard import Scorecard
    from services.notifier.scoring import Weights
    from shared.events import MeetingSpec
    from tests.cities import demo_city

    kit = make_kit()
    handlers = Handlers(kit.notifier, Scorecard(redis, demo_city(), SH, Weights()))
    phone = new_phone()
    ticket, _ = await resolved_ticket(kit, phone)
    spec = MeetingSpec(meeting_id="h1", reason="hotspot", lead_street="s01", summoned=("a",), deadline=NOON)
    await handlers.updates(
        [
            TicketUpdated(
                ticket_no=ticket.ticket_no,
                action="escalated",
                status="meeting",
                actor="system",
                caller_id=ticket.caller.caller_id,
                meeting=spec,
            )
        ]
    )
    [text] = [m["text"] for m in await kit.sent(phone, "progress")]
    assert "多位居民反映了同类问题" in text
    assert ticket.ticket_no in text
    assert "涉及多个部门" not in text


async def test_a_survey_held_overnight_is_not_sent_after_an_opt_out(make_kit, clock):
    clock.now = datetime(2026, 11, 23, 22, 0, tzinfo=SH)
    kit = make_kit()
    phone, ticket = await surveyed(kit)  # held by quiet hours
    assert await kit.sent(phone) == []
    await kit.notifier.surveys.reply(phone, "退订")
    # The confirmation answers the resident's own SMS: it goes at once, quiet hours or not.
    assert [m["kind"] for m in await kit.sent(phone)] == ["opt_out"]
    assert await kit.notifier.scan(datetime(2026, 11, 24, 8, 0, tzinfo=SH)) >= 1
    assert [m["kind"] for m in await kit.sent(phone)] == ["opt_out"]  # the held survey was dropped
    assert [a.outcome for a in kit.answers(ticket.ticket_no)] == ["opted_out"]


async def test_overdue_and_escalation_notices_reach_the_supervisors_once(make_kit):
    from tests.cities import demo_city

    city = demo_city()
    kit = make_kit(quiet="none", cap=1000)
    dept = DepartmentRef(id="urban_mgmt", name="区城市管理委员会")
    no = made_up_no()
    deadline = datetime(2026, 11, 23, 18, 0, tzinfo=SH)
    overdue = TicketUpdated(
        ticket_no=no,
        action="overdue",
        status="assigned",
        actor="system",
        department=dept,
        note="",
        supervision=DeadlineNotice(
            stage="resolve", stage_name="办结", deadline=deadline, supervisor="urban_mgmt"
        ),
    )
    escalated = TicketUpdated(
        ticket_no=no,
        action="escalated",
        status="assigned",
        actor="system",
        department=dept,
        note="",
        supervision=DeadlineNotice(
            stage="resolve",
            stage_name="办结",
            deadline=deadline,
            supervisor="urban_mgmt",
            to="district_office",
        ),
    )
    assert await kit.notifier.supervise([overdue], city) == ["sent"]
    assert await make_kit(quiet="none", cap=1000).notifier.supervise([overdue], city) == [
        "duplicate"
    ]  # a replay
    mobile = city.department_by_id["urban_mgmt"].supervisor_mobile
    [notice] = [m for m in await kit.sent(mobile, "supervision") if m["ticket_no"] == no]
    assert (
        notice["text"]
        == f"【12345】督办提醒：区城市管理委员会承办的工单{no}已超过办结时限（11月23日18:00），"
        "请督促尽快办理。"
    )
    assert await kit.notifier.supervise([escalated], city) == [
        "sent",
        "sent",
    ]  # the department and the district
    office = city.department_by_id["district_office"].supervisor_mobile
    assert [m["text"][:12] for m in await kit.sent(office, "supervision") if m["ticket_no"] == no] == [
        "【12345】升级督办："
    ]
    # A department without a supervisor's mobile gets no SMS (its desk line is not texted).
    silent = overdue.model_copy(
        update={
            "event_id": uuid.uuid4().hex,
            "supervision": DeadlineNotice(
                stage="resolve", stage_name="办结", deadline=deadline, supervisor="nobody"
            ),
        }
    )
    assert await kit.notifier.supervise([silent], city) == []


async def test_a_resolution_read_again_gives_the_surveys_end_again_and_sends_nothing(make_kit):
    """After a broker loss the re-drive publishes the resolution again: a router that had not
    applied the survey's answer gets it again, the same event, and the resident no second SMS."""
    kit = make_kit(quiet="none")
    phone = new_phone()
    ticket, resolved = await resolved_ticket(kit, phone)
    first = await kit.notifier.start_surveys([resolved])
    assert [type(e) for e in first] == [SurveySent]
    await kit.notifier.surveys.reply(phone, "1")
    (answered,) = kit.answers(ticket.ticket_no)

    again = await kit.notifier.start_surveys([resolved])
    assert [e.event_id for e in again] == [first[0].event_id, answered.event_id]
    assert again[1].model_dump() == answered.model_dump()
    assert len(await kit.sent(phone, "survey")) == 1


async def test_an_erased_tickets_messages_and_surveys_are_forgotten(make_kit, redis):
    """The handler of `PersonalDataRemoved`: the erased tickets' message states and surveys go, with
    their places in the phone's keys; an open one ends as opted out (the ticket must still close).
    The same resident's other ticket keeps its records."""
    from services.notifier.app import Handlers
    from services.notifier.scorecard import Scorecard
    from services.notifier.scoring import Weights
    from services.notifier.states import state_key, ticket_records_key
    from shared.events import PersonalDataRemoved
    from tests.cities import demo_city

    kit = make_kit()
    handlers = Handlers(kit.notifier, Scorecard(redis, demo_city(), SH, Weights()))
    phone = new_phone()
    answered, first = await resolved_ticket(kit, phone)  # its survey is answered before the erasure
    other, second = await resolved_ticket(kit, phone)  # not erased
    still_open, third = await resolved_ticket(kit, phone)  # its survey is open at the erasure
    appeal = AppealReceived(ticket_no=answered.ticket_no, channel="hotline", text="路灯坏了")
    assert await kit.notifier.acknowledge(appeal, answered.ticket_no, phone) == "sent"
    await kit.notifier.start_surveys([first])
    assert isinstance(await kit.notifier.surveys.reply(phone, "1"), SurveyAnswer)  # closes the first
    await kit.notifier.start_surveys([second, third])  # both open
    assert await redis.get(f"survey:last:{phone}") == first.event_id.encode()
    sent = {(m["ticket_no"], m["kind"]): m["message_id"] for m in await kit.sent(phone)}
    erased_messages = [sent[answered.ticket_no, "ack"], sent[answered.ticket_no, "survey"]]
    erased_messages.append(sent[still_open.ticket_no, "survey"])

    cid = caller_id(phone)
    notices = [PersonalDataRemoved(ticket_no=t.ticket_no, caller_id=cid) for t in (answered, still_open)]
    await handlers.erased(notices)
    await handlers.erased(notices)  # redelivered: nothing left, nothing fails

    for message_id in erased_messages:
        assert await redis.exists(state_key(message_id)) == 0
    for survey in (first, third):
        sid = survey.event_id
        assert await redis.exists(f"survey:{sid}", f"survey:answer:{sid}") == 0
        assert await redis.zscore(f"survey:open:{phone}", sid) is None
    assert await redis.exists(f"survey:last:{phone}") == 0
    jobs = [m.decode() for m in await redis.zrange(kit.notifier.jobs.key, 0, -1)]
    assert [j for j in jobs if third.event_id in j] == []  # no reminder, no timeout
    assert [j for j in jobs if second.event_id in j] != []
    # No operator is asked to phone them about it either (电话回访); the other ticket still waits.
    assert await redis.zscore("survey:callback", third.event_id) is None
    assert await redis.zscore("survey:callback", second.event_id) is not None
    # Ended by the erasure, not by the resident: the history must not say they opted out.
    assert [a.outcome for a in kit.answers(still_open.ticket_no)] == ["erased"]
    assert await redis.exists(*(ticket_records_key(t.ticket_no) for t in (answered, still_open))) == 0
    # The other ticket of the same resident keeps its survey and its message.
    assert await redis.zscore(f"survey:open:{phone}", second.event_id) is not None
    assert await kit.notifier.surveys.get(second.event_id) is not None
    assert await redis.exists(state_key(sent[other.ticket_no, "survey"])) == 1
    assert await redis.smembers(ticket_records_key(other.ticket_no)) == {
        f"survey:{second.event_id}".encode(),
        state_key(sent[other.ticket_no, "survey"]).encode(),
    }


async def test_a_message_held_for_an_erased_ticket_is_not_sent(make_kit, clock):
    clock.now = datetime(2026, 11, 23, 22, 30, tzinfo=SH)
    kit = make_kit()
    phone = new_phone()
    held = AppealReceived(ticket_no=made_up_no(), channel="hotline", text="路灯坏了")
    kept = AppealReceived(ticket_no=made_up_no(), channel="hotline", text="井盖丢了")
    assert await kit.notifier.acknowledge(held, held.ticket_no, phone) == "held"
    assert await kit.notifier.acknowledge(kept, kept.ticket_no, phone) == "held"
    await kit.notifier.forget([held.ticket_no])
    assert await kit.notifier.scan(datetime(2026, 11, 24, 8, 0, tzinfo=SH)) == 2  # both jobs taken
    assert [m["ticket_no"] for m in await kit.sent(phone)] == [kept.ticket_no]


async def erased_without_notice(kit: Kit, ticket_no: str, phone: str) -> None:
    """The ticket in Redis, erased there, and the erasure's notice never reaching the notifier (a
    broker lost after the relay sent it)."""
    cid = caller_id(phone)
    appeal = AppealReceived(
        ticket_no=ticket_no,
        channel="hotline",
        text="路灯坏了",
        caller=Caller(caller_id=cid, masked_phone=mask_phone(phone)),
    )
    await kit.store.create_many([appeal])
    assert await kit.store.remove_personal_data(ticket_no)


async def test_jobs_about_a_ticket_erased_without_its_notice_send_nothing_and_forget_it(make_kit, clock):
    """A held message, a survey's reminder and its timeout read the ticket's mark before they run:
    for an erased ticket nothing is sent, and what the notice would have removed goes then (the open
    survey ends as erased, so the ticket still closes). Another ticket's held message is sent."""
    from services.notifier.states import ticket_records_key

    kit = make_kit()
    phone = new_phone()
    surveyed_ticket, resolved = await resolved_ticket(kit, phone)
    await kit.notifier.start_surveys([resolved])  # at noon: sent, with its reminder and timeout
    clock.now = datetime(2026, 11, 23, 22, 30, tzinfo=SH)  # quiet hours: acknowledgements are held
    erased_no, kept_no = made_up_no(), made_up_no()
    for no in (erased_no, kept_no):
        appeal = AppealReceived(ticket_no=no, channel="hotline", text="路灯坏了")
        assert await kit.notifier.acknowledge(appeal, no, phone) == "held"
    held = await kit.redis.smembers(ticket_records_key(erased_no))  # the held message's state
    assert len(held) == 1
    for no in (surveyed_ticket.ticket_no, erased_no):
        await erased_without_notice(kit, no, phone)

    assert await kit.notifier.scan(NOON + timedelta(hours=25)) == 3  # two acks, the reminder
    assert {(m["ticket_no"], m["kind"]) for m in await kit.sent(phone)} == {
        (surveyed_ticket.ticket_no, "survey"),
        (kept_no, "ack"),
    }
    sid = resolved.event_id
    assert await kit.notifier.surveys.get(sid) is None
    assert await kit.redis.zscore(f"survey:open:{phone}", sid) is None
    assert [a.outcome for a in kit.answers(surveyed_ticket.ticket_no)] == ["erased"]
    jobs = [m.decode() for m in await kit.redis.zrange(kit.notifier.jobs.key, 0, -1)]
    assert [j for j in jobs if sid in j] == []  # the timeout went with it
    assert (
        await kit.redis.exists(*(ticket_records_key(n) for n in (surveyed_ticket.ticket_no, erased_no))) == 0
    )
    assert await kit.redis.exists(*held) == 0
    kept = await kit.redis.smembers(ticket_records_key(kept_no))
    assert len(kept) == 1
    assert await kit.redis.exists(*kept) == 1


async def test_a_reply_skips_the_survey_of_a_ticket_erased_without_its_notice(make_kit, clock):
    """The resident's newest open survey is about a ticket erased since; its notice never came.
    The reply goes to the survey that is left, and the erased ticket's survey is forgotten (closed
    as erased) rather than answered or sent a clarification."""
    kit = make_kit(quiet="none")
    phone = new_phone()
    older, resolved_older = await resolved_ticket(kit, phone)
    await kit.notifier.start_surveys([resolved_older])
    clock.now = NOON + timedelta(hours=1)
    newer, resolved_newer = await resolved_ticket(kit, phone)
    await kit.notifier.start_surveys([resolved_newer])
    await erased_without_notice(kit, newer.ticket_no, phone)

    assert await kit.notifier.surveys.reply(phone, "1") == SurveyAnswer(
        ticket_no=older.ticket_no, rating=1, solved=True
    )
    assert [a.outcome for a in kit.answers(newer.ticket_no)] == ["erased"]
    assert await kit.notifier.surveys.get(resolved_newer.event_id) is None
    # The last closed survey is the older one's: a later word is a comment on it, and nothing
    # more reaches the resident about the erased ticket.
    assert await kit.notifier.surveys.reply(phone, "谢谢") == SurveyComment(
        ticket_no=older.ticket_no, clarification=False
    )
    assert [m["kind"] for m in await kit.sent(phone) if m["ticket_no"] == newer.ticket_no] == ["survey"]
