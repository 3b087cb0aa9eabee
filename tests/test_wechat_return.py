"""A WeChat notice past WeChat's 48 hours waits for its resident to write again: what is kept and
what of it still goes out then (pure); the notifier in-process over a loopback WeChat that answers
45015 (a result delivered on the resident's return, an expired survey's question not asked again,
an erased resident's notices gone); and the running system, where a message in the chat brings the
kept notice into the embedded outbox `wx:outbox`."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY

from services.intake.wechat import Message as WeChatInbound
from services.intake.wechat import opens_window
from services.notifier.gateway import Message, OutboxGateway
from services.notifier.jobs import ReturnJob, decode, encode
from services.notifier.pending import pending_key
from services.notifier.policy import Policy, QuietHours
from services.notifier.service import Notifier
from services.notifier.states import state_key, ticket_records_key
from services.notifier.survey import read_inbound
from services.notifier.surveys import derived_id, message_ids
from services.notifier.texts import load_texts
from services.notifier.window import KEEP_AT_MOST, KEEP_DAYS, SurveyFacts, on_return, worth_keeping
from shared.events import AppealReceived, Caller, DepartmentRef, TicketUpdated
from shared.privacy import mask_openid
from shared.store import TicketStore, ticket_key
from shared.tickets import Status, Ticket
from tests.conftest import eventually
from tests.loopback import serving
from tests.test_notifier_wechat import FakeWeChat, api_gateway

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)  # noon in Shanghai
OPENID = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"


def notice(kind: str, no: str = "20261123-000001", at: int = 0, **kw) -> Message:
    """A WeChat notice written `at` hours after T0."""
    kw.setdefault("channel", "wechat")
    return Message(OPENID, f"{kind} {no}", kind, no, created_at=T0 + timedelta(hours=at), **kw)


# --- what is kept --------------------------------------------------------------------------------


def test_a_wechat_notice_about_a_ticket_is_kept_and_an_answer_or_an_sms_is_not():
    for kind in ("progress", "result", "survey", "reminder"):
        assert worth_keeping(notice(kind))
    # The answer to something the resident wrote answers nothing by the time they write again.
    for kind in ("query", "clarification", "opt_out", "ack", "supervision"):
        assert not worth_keeping(notice(kind))
    assert not worth_keeping(notice("result", channel="sms"))
    assert not worth_keeping(Message(OPENID, "x", "result", None, channel="wechat"))


def test_messages_and_the_events_a_user_acts_by_open_the_window_and_wechats_reports_do_not():
    def push(msg_type: str, event: str = "") -> WeChatInbound:
        return WeChatInbound("gh_1", OPENID, 0, msg_type, "" if msg_type == "event" else "1", event=event)

    for msg_type in ("text", "voice", "image", "location", "video", "shortvideo", "link"):
        assert opens_window(push(msg_type))
    for event in ("subscribe", "scan", "click", "scancode_push", "scancode_waitmsg"):
        assert opens_window(push("event", event))
    for event in ("unsubscribe", "view", "location", "templatesendjobfinish", ""):
        assert not opens_window(push("event", event))


def test_the_return_job_reads_back_as_written():
    raw = encode(ReturnJob(OPENID))
    assert decode(raw) == ReturnJob(OPENID)
    assert raw == encode(ReturnJob(OPENID))  # deterministic: scheduled twice, one member


# --- what goes out when the resident writes again --------------------------------------------------


def actions(kept, surveys=None, now=T0 + timedelta(days=3)) -> list[tuple[str, str]]:
    return [(r.message.kind, r.action) for r in on_return(kept, surveys or {}, now)]


def test_oldest_first_each_once_and_a_result_always():
    result, progress = notice("result", "20261123-000002", at=5), notice("progress", at=1)
    decided = on_return([result, progress, result], {}, T0 + timedelta(days=3))
    assert [(r.message, r.action) for r in decided] == [(progress, "send"), (result, "send")]


def test_a_progress_notice_gives_way_to_a_later_one_about_its_ticket():
    first, second = notice("progress", at=1), notice("progress", at=30)
    other = notice("progress", "20261123-000009", at=40)  # another ticket's does not count
    assert actions([first, second, other]) == [
        ("progress", "drop"),
        ("progress", "send"),
        ("progress", "send"),
    ]
    survey_id = uuid.uuid4().hex
    survey = notice("survey", at=50, message_id=derived_id(survey_id, "sms"))
    facts = {survey.ticket_no: SurveyFacts(message_ids(survey_id), open=True, void=False, outcome=None)}
    assert actions([first, survey], facts) == [("progress", "drop"), ("survey", "send")]
    # A reminder says nothing new about where the ticket stands.
    reminder = notice("reminder", at=60, message_id=derived_id(survey_id, "reminder"))
    assert actions([first, reminder], facts)[0] == ("progress", "send")


def survey_pair(survey_id: str) -> tuple[Message, Message]:
    return (
        notice("survey", at=1, message_id=derived_id(survey_id, "sms")),
        notice("reminder", at=25, message_id=derived_id(survey_id, "reminder")),
    )


def test_an_open_survey_goes_again_and_its_reminder_only_without_it():
    sid = uuid.uuid4().hex
    survey, reminder = survey_pair(sid)
    facts = {survey.ticket_no: SurveyFacts(message_ids(sid), open=True, void=False, outcome=None)}
    assert actions([reminder, survey], facts) == [("survey", "send"), ("reminder", "drop")]
    assert actions([reminder], facts) == [("reminder", "send")]


@pytest.mark.parametrize(
    ("open_", "void", "outcome", "survey_becomes"),
    [
        (False, False, "no_answer", "result"),  # ran out unanswered: the result still goes
        (False, False, "answered", "drop"),
        (False, False, "opted_out", "drop"),
        (False, False, None, "drop"),  # closed, how no longer known
        (True, True, None, "drop"),  # the grid worker sent the ticket back: nothing to rate
        (False, True, "no_answer", "drop"),  # the resolution was found not solved
    ],
)
def test_a_closed_surveys_question_is_never_asked_again(open_, void, outcome, survey_becomes):
    sid = uuid.uuid4().hex
    survey, reminder = survey_pair(sid)
    facts = {survey.ticket_no: SurveyFacts(message_ids(sid), open=open_, void=void, outcome=outcome)}
    assert actions([survey, reminder], facts) == [("survey", survey_becomes), ("reminder", "drop")]


def test_a_survey_of_an_earlier_resolution_or_of_a_ticket_gone_is_dropped():
    old, new = uuid.uuid4().hex, uuid.uuid4().hex
    survey, reminder = survey_pair(old)
    facts = {survey.ticket_no: SurveyFacts(message_ids(new), open=True, void=False, outcome=None)}
    assert actions([survey, reminder], facts) == [("survey", "drop"), ("reminder", "drop")]
    assert actions([survey, reminder], {}) == [("survey", "drop"), ("reminder", "drop")]


def test_nothing_older_than_the_days_kept_goes():
    result = notice("result", at=0)
    assert actions([result], now=T0 + timedelta(days=KEEP_DAYS, minutes=-1)) == [("result", "send")]
    assert actions([result], now=T0 + timedelta(days=KEEP_DAYS, minutes=1)) == [("result", "drop")]


# --- the notifier over a WeChat that answers 45015 ------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def wechat() -> Iterator[FakeWeChat]:
    w = FakeWeChat()
    with serving(w.handler) as server:
        w.base = f"http://127.0.0.1:{server.server_port}"
        yield w


@pytest.fixture
async def kit(redis, wechat):
    """A notifier in-process on the real Redis, WeChat's API played by `wechat` (no template set:
    45015 is undeliverable), no quiet hours, with its own job queue and clock."""
    gw = api_gateway(redis, wechat, attempts=2)
    clock = Clock(T0)
    published: list = []

    async def publish(events) -> None:
        published.extend(events)

    notifier = Notifier(
        TicketStore(redis),
        OutboxGateway(redis, key=f"test:outbox:{uuid.uuid4().hex}"),  # no SMS here
        publish,
        texts=load_texts(),
        policy=Policy(QuietHours.parse("none"), 5, SH),
        clock=clock,
        jobs_key=f"test:due:{uuid.uuid4().hex}",
        wechat=gw,
    )
    notifier.published = published  # type: ignore[attr-defined]
    notifier.test_clock = clock  # type: ignore[attr-defined]
    yield notifier
    await gw.aclose()


def new_openid() -> str:
    return f"o{uuid.uuid4().hex[:27]}"


def new_ticket_no() -> str:
    return f"20261101-{random.randint(100000, 999999)}"


async def state_of(redis, message_id: str) -> dict:
    raw = await redis.get(state_key(message_id))
    return json.loads(raw) if raw else {}


def on_return_count(kind: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("wechat_on_return_total", {"kind": kind, "outcome": outcome}) or 0.0


async def test_a_result_refused_past_the_48_hours_is_delivered_when_the_resident_writes(kit, redis, wechat):
    openid, no = new_openid(), new_ticket_no()
    result = Message(openid, f"您反映的问题（工单号{no}）已办理：已修复。", "result", no, channel="wechat")
    wechat.script = [45015]
    assert await kit.sms.send(uuid.uuid4().hex, result) == "undelivered"
    state = await state_of(redis, result.message_id)
    assert (state["state"], state["openid"]) == ("undelivered", mask_openid(openid))
    assert "kept" in state
    assert await redis.zcard(pending_key(openid)) == 1
    # Kept under the ticket, for an erasure; the openid only in the key, never a masked one added.
    assert pending_key(openid).encode() in await redis.smembers(ticket_records_key(no))
    assert await kit.scan(T0 + timedelta(hours=1)) == 0  # nothing goes until they write
    assert len(wechat.sends) == 1

    before = on_return_count("result", "sent")
    kit.test_clock.now = T0 + timedelta(days=3)
    assert await kit.wrote(openid)  # what the WeChat view asks: one command, nothing sent yet
    assert len(wechat.sends) == 1
    assert await kit.scan(kit.test_clock.now) == 1  # the return job
    [again] = wechat.sends[1:]
    assert again["body"] == {"touser": openid, "msgtype": "text", "text": {"content": result.text}}
    state = await state_of(redis, result.message_id)
    assert state["state"] == "sent"  # from undelivered to what the resend yielded
    assert on_return_count("result", "sent") == before + 1
    assert await redis.exists(pending_key(openid), pending_key(openid) + ":m") == 0
    # Nothing waits any more: their next message schedules nothing.
    assert not await kit.wrote(openid)
    assert await kit.scan(kit.test_clock.now + timedelta(minutes=1)) == 0


async def test_a_notice_refused_just_before_the_resident_wrote_goes_on_that_message(kit, redis, wechat):
    # WeChat refused the send (the 48 hours were over), the resident wrote, and only then was the
    # refusal kept: their message found nothing waiting, yet it is what opened the window.
    openid, no = new_openid(), new_ticket_no()
    assert not await kit.wrote(openid)
    result = Message(openid, f"您反映的问题（工单号{no}）已办理：已修复。", "result", no, channel="wechat")
    wechat.script = [45015, 45015, 45015]
    assert await kit.sms.send(uuid.uuid4().hex, result) == "undelivered"
    assert await kit.scan(T0 + timedelta(seconds=1)) == 1  # the return job its message could not ask for
    assert len(wechat.sends) == 2
    # Refused again (WeChat knows best): kept, and it waits for their next message, not round and
    # round on the one they wrote.
    assert await redis.zcard(pending_key(openid)) == 1
    assert await kit.scan(T0 + timedelta(minutes=1)) == 0
    assert len(wechat.sends) == 2
    assert await kit.wrote(openid)
    assert await kit.scan(T0 + timedelta(minutes=2)) == 1
    assert len(wechat.sends) == 3


async def test_what_is_kept_per_resident_is_capped_and_each_message_kept_once(kit, redis, wechat):
    openid, no = new_openid(), new_ticket_no()
    messages = [
        Message(openid, f"进度{i}", "result", no, created_at=T0 + timedelta(minutes=i), channel="wechat")
        for i in range(KEEP_AT_MOST + 2)
    ]
    wechat.script = [45015] * len(messages)
    for m in messages:
        assert await kit.sms.dispatch([m], T0) == ["undelivered"]
    wechat.script = [45015]
    assert await kit.sms.dispatch([messages[-1]], T0) == ["undelivered"]  # the same message again
    kept = [i.decode() for i in await redis.zrange(pending_key(openid), 0, -1)]
    assert kept == [m.message_id for m in messages[2:]]  # the newest, each once
    assert 0 < await redis.ttl(pending_key(openid)) <= KEEP_DAYS * 86400


async def test_a_return_cut_short_keeps_what_was_not_sent_for_the_jobs_retry(kit, redis, wechat, monkeypatch):
    openid, no = new_openid(), new_ticket_no()
    first, second = (
        Message(openid, f"结果{i}", "result", no, created_at=T0 + timedelta(minutes=i), channel="wechat")
        for i in range(2)
    )
    wechat.script = [45015, 45015]
    for m in (first, second):
        assert await kit.sms.send(uuid.uuid4().hex, m) == "undelivered"
    dispatch, calls = kit.sms.dispatch, []

    async def fails_second(messages, now, **kw):
        calls.append(messages[0].message_id)
        if len(calls) == 2:
            raise ConnectionError("Redis went away")
        return await dispatch(messages, now, **kw)

    monkeypatch.setattr(kit.sms, "dispatch", fails_second)
    kit.test_clock.now = T0 + timedelta(days=1)
    assert await kit.wrote(openid)
    assert await kit.scan(kit.test_clock.now) == 0  # the job failed: it is due again later
    assert [i.decode() for i in await redis.zrange(pending_key(openid), 0, -1)] == [second.message_id]
    assert await kit.scan(kit.test_clock.now + timedelta(minutes=5)) == 1
    assert calls == [first.message_id, second.message_id, second.message_id]
    assert [s["body"]["text"]["content"] for s in wechat.sends[2:]] == ["结果0", "结果1"]
    assert await redis.exists(pending_key(openid)) == 0


async def stored_ticket(redis, no: str, **update) -> Ticket:
    appeal = AppealReceived(ticket_no=no, channel="wechat", text="小区路灯不亮了很久", caller=Caller())
    ticket = Ticket.from_appeal(appeal).model_copy(update=update)
    await redis.set(ticket_key(no), ticket.model_dump_json())
    return ticket


async def surveyed_past_the_window(kit, redis, wechat, openid: str) -> tuple[str, TicketUpdated]:
    """A WeChat resident's ticket resolved, its survey refused with 45015 and kept."""
    no, caller = new_ticket_no(), uuid.uuid4().hex[:20]
    await redis.hset(f"contact:{caller}", mapping={"wechat_openid": openid})
    resolved = TicketUpdated(
        ticket_no=no,
        action="resolved",
        status="resolved",
        actor="d1",
        caller_id=caller,
        department=DepartmentRef(id="d1", name="区城管委"),
        note="已更换路灯灯泡，恢复照明",
        on_time=True,
    )
    await stored_ticket(
        redis,
        no,
        status=Status.SURVEYED,
        resolution_id=resolved.event_id,
        resolution_note=resolved.note,
    )
    wechat.script = [45015]
    await kit.start_surveys([resolved])
    assert await redis.zcard(pending_key(openid)) == 1
    return no, resolved


async def test_an_expired_surveys_question_is_not_sent_again_but_its_result_is(kit, redis, wechat):
    openid = new_openid()
    no, resolved = await surveyed_past_the_window(kit, redis, wechat, openid)
    kit.test_clock.now = T0 + timedelta(hours=24)
    wechat.script = [45015]
    assert await kit.scan(kit.test_clock.now) == 1  # the reminder: refused too, kept
    assert await redis.zcard(pending_key(openid)) == 2
    kit.test_clock.now = T0 + timedelta(hours=48)
    assert await kit.scan(kit.test_clock.now) == 1  # the survey's window ends
    assert [e.outcome for e in kit.published] == ["no_answer"]

    sends = len(wechat.sends)
    dropped = on_return_count("reminder", "dropped")
    kit.test_clock.now = T0 + timedelta(days=4)
    assert await kit.wrote(openid)
    assert await kit.scan(kit.test_clock.now) == 1
    [delivered] = [s["body"]["text"]["content"] for s in wechat.sends[sends:]]
    # The resolution, without a question nobody can answer any more; no reminder.
    assert delivered == f"您反映的问题（工单号{no}）已办理：已更换路灯灯泡，恢复照明。"
    assert "评价" not in delivered
    assert on_return_count("reminder", "dropped") == dropped + 1
    reminder = await state_of(redis, derived_id(resolved.event_id, "reminder"))
    assert (reminder["state"], reminder["dropped"]) == ("undelivered", "its survey is no longer open")
    assert "kept" not in reminder
    survey_message = derived_id(resolved.event_id, "sms")
    assert (await state_of(redis, survey_message))["state"] == "undelivered"  # never reached them
    assert (await state_of(redis, derived_id(survey_message, "result")))["state"] == "sent"
    assert await redis.exists(pending_key(openid)) == 0


async def test_an_open_survey_is_asked_again_once_and_an_answered_one_not_at_all(kit, redis, wechat):
    openid = new_openid()
    no, resolved = await surveyed_past_the_window(kit, redis, wechat, openid)
    kit.test_clock.now = T0 + timedelta(hours=24)
    wechat.script = [45015]
    assert await kit.scan(kit.test_clock.now) == 1  # the reminder, kept
    sends = len(wechat.sends)
    kit.test_clock.now = T0 + timedelta(hours=30)  # within the survey's window
    assert await kit.wrote(openid)
    assert await kit.scan(kit.test_clock.now) == 1
    [asked] = [s["body"]["text"]["content"] for s in wechat.sends[sends:]]
    assert asked.startswith(f"您反映的问题（工单号{no}）已办理：")  # the survey, not its reminder too
    assert "请评价" in asked
    assert (await state_of(redis, derived_id(resolved.event_id, "sms")))["state"] == "sent"

    # Another resident's survey, kept; they answer it in the chat (the rating is that message).
    other = new_openid()
    await surveyed_past_the_window(kit, redis, wechat, other)
    assert await kit.surveys.answer_in_wechat(other, read_inbound("1"))
    sends = len(wechat.sends)
    assert await kit.wrote(other)
    assert await kit.scan(kit.test_clock.now) == 1
    assert wechat.sends[sends:] == []


async def test_an_erased_residents_kept_notices_are_gone(kit, redis, wechat):
    openid = new_openid()
    erased_no, other_no = new_ticket_no(), new_ticket_no()
    wechat.script = [45015, 45015, 45015]
    for no, kind in ((erased_no, "result"), (erased_no, "progress"), (other_no, "result")):
        m = Message(openid, f"{kind} {no}", kind, no, channel="wechat")
        assert await kit.sms.send(uuid.uuid4().hex, m) == "undelivered"
    assert await redis.zcard(pending_key(openid)) == 3

    # The erasure's notice (by retention: one old ticket): its notices go, the other ticket's stay.
    await kit.forget([erased_no])
    bodies = await redis.hgetall(pending_key(openid) + ":m")
    assert {json.loads(b)["ticket_no"] for b in bodies.values()} == {other_no}
    assert await redis.exists(ticket_records_key(erased_no)) == 0
    await kit.forget([other_no])
    assert await redis.exists(pending_key(openid), pending_key(openid) + ":m") == 0
    assert not await kit.wrote(openid)


async def test_a_ticket_erased_without_its_notice_sends_nothing_on_return(kit, redis, wechat):
    """The erasure's notice never reached the notifier (a broker lost): the ticket's mark is read
    when the resident writes, and what the notice would have removed goes then."""
    openid, no = new_openid(), new_ticket_no()
    store = TicketStore(redis)
    await store.create_many([AppealReceived(ticket_no=no, channel="wechat", text="小区路灯不亮了很久")])
    m = Message(openid, f"您反映的问题（工单号{no}）已办理：已修复。", "result", no, channel="wechat")
    wechat.script = [45015]
    assert await kit.sms.send(uuid.uuid4().hex, m) == "undelivered"
    assert await store.remove_personal_data(no)
    sends = len(wechat.sends)
    assert await kit.wrote(openid)
    assert await kit.scan(kit.test_clock.now) == 1
    assert wechat.sends[sends:] == []
    assert await redis.exists(state_key(m.message_id), ticket_records_key(no), pending_key(openid)) == 0


# --- the running system: a message in the chat brings the kept notice ----------------------------


async def test_a_kept_result_reaches_the_outbox_once_the_resident_writes_in_the_chat(api, redis, wechat):
    from tests.test_intake_wechat import openid as chat_user
    from tests.test_pipeline_e2e import LIGHT
    from tests.test_wechat_survey import say, wechat_outbox

    user = chat_user()
    reply = await say(api, user, LIGHT)
    no = reply.split("工单号：")[1][:15]
    # The result, refused by WeChat with 45015 (a notifier over WeChat's API without a template),
    # is kept in the system's Redis.
    gw = api_gateway(redis, wechat, attempts=2)
    notifier = Notifier(
        TicketStore(redis),
        OutboxGateway(redis, key=f"test:outbox:{uuid.uuid4().hex}"),
        publish_nothing,
        texts=load_texts(),
        policy=Policy(QuietHours.parse("none"), 5, SH),
        jobs_key=f"test:due:{uuid.uuid4().hex}",
        wechat=gw,
    )
    result = Message(user, f"您反映的问题（工单号{no}）已办理：已修复。", "result", no, channel="wechat")
    wechat.script = [45015]
    assert await notifier.sms.send(uuid.uuid4().hex, result) == "undelivered"
    await gw.aclose()
    assert await wechat_outbox(api, redis, user, "result") == []

    assert no in await say(api, user, "查询")  # any message opens the 48 hours again
    [sent] = await eventually(lambda: wechat_outbox(api, redis, user, "result"), timeout=30)
    assert (sent["message_id"], sent["text"], sent["ticket_no"]) == (result.message_id, result.text, no)
    assert (await state_of(redis, result.message_id))["state"] == "sent"
    assert await redis.exists(pending_key(user)) == 0


async def publish_nothing(events) -> None:
    """Nothing in this test publishes: its notifier only sends a message."""
