"""The notifier's stored records read back as typed objects, including those written before the
survey and the jobs had types (a notifier upgraded mid-survey must still find them). Pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter
from redis.asyncio import Redis

from services.notifier.gateway import Message, OutboxGateway
from services.notifier.jobs import SendJob, SurveyJob, decode, encode
from services.notifier.survey import OptedOut, SmsReply, Survey, SurveyAnswer, SurveyComment
from services.notifier.texts import month_day_time, until_date

SH = ZoneInfo("Asia/Shanghai")
OPENID = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"


def test_a_survey_record_reads_back_and_older_ones_with_a_timestamp_too():
    started = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    survey = Survey(survey_id="s1", ticket_no="20261123-000001", to="13812345678", started_at=started)
    assert Survey.model_validate_json(survey.model_dump_json()) == survey
    legacy = {"survey_id": "s1", "ticket_no": "20261123-000001", "phone": "13812345678"}
    older = Survey.model_validate_json(json.dumps(legacy | {"started_at": started.timestamp()}))
    assert older.started_at == started
    assert older.to == "13812345678"


def test_a_survey_is_written_with_its_address_as_to_and_read_back_from_phone_too():
    """Surveys stored before the address was named `to` (`phone`, an openid for WeChat) are still
    found and answered after an upgrade; new ones are written with `to`."""
    started = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    survey = Survey(survey_id="s1", ticket_no="t1", to=OPENID, channel="wechat", started_at=started)
    written = json.loads(survey.model_dump_json())
    assert written["to"] == OPENID
    assert "phone" not in written
    old = written.copy()
    old["phone"] = old.pop("to")
    assert Survey.model_validate_json(json.dumps(old)) == survey


def test_jobs_keep_the_json_their_members_had():
    """A job is a sorted-set member: a survey's job must encode to the same bytes as before, or a
    survey rescheduled or answered after an upgrade would keep its old reminder. A held message is
    only ever claimed as read: the same one encodes to the same bytes, in orjson's compact form."""
    assert (
        encode(SurveyJob("remind", "abc"))
        == json.dumps({"job": "remind", "survey_id": "abc"}, sort_keys=True).encode()
    )
    message = Message("13812345678", "【12345】您好", "ack", "20261123-000001", message_id="m1")
    raw = encode(SendJob(message))
    assert raw == encode(SendJob(message))
    assert json.loads(raw) == {"job": "send", "message": message.to_json()}
    assert decode(raw) == SendJob(message)
    assert decode(encode(SurveyJob("close", "abc"))) == SurveyJob("close", "abc")


def test_a_message_is_written_with_to_and_one_stored_as_phone_reads_back():
    """Held and retried messages (jobs), claims in flight and kept WeChat notices outlive an
    upgrade: a message stored before its address was named `to` reads back the same."""
    sms = Message("13812345678", "【12345】您好", "ack", "20261123-000001", message_id="m1")
    written = sms.to_json()
    assert written["to"] == "13812345678"
    assert "phone" not in written
    old = {
        "phone": "13812345678",
        "text": "【12345】您好",
        "kind": "ack",
        "ticket_no": "20261123-000001",
        "message_id": "m1",
        "created_at": sms.created_at.isoformat(),
        "urgent": False,
    }
    assert Message.from_json(old) == sms
    wechat = Message(OPENID, "x", "survey", "20261123-000001", message_id="m2", channel="wechat")
    old_wechat = {k: v for k, v in wechat.to_json().items() if k != "to"} | {"phone": OPENID}
    assert Message.from_json(old_wechat) == wechat
    # A job scheduled before the upgrade (a held message) is the message it was.
    raw = json.dumps({"job": "send", "message": old}, ensure_ascii=False, sort_keys=True)
    assert decode(raw) == SendJob(sms)


def test_the_sms_outbox_lists_its_recipient_as_phone():
    """`GET /api/v1/sms/outbox` is read outside the notifier: its records keep `phone` (the SMS
    outbox holds phones only), as do those listed before the rename."""
    outbox = OutboxGateway(Redis.from_url("redis://127.0.0.1:1/0"))  # never connected
    message = Message("13812345678", "【12345】您好", "ack", "20261123-000001", message_id="m1")
    record = outbox.record(message)
    assert record["phone"] == "13812345678"
    assert "to" not in record
    assert record == {"phone": "13812345678"} | {k: v for k, v in message.to_json().items() if k != "to"}


def test_an_unknown_job_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown notifier job 'dance'"):
        decode(json.dumps({"job": "dance"}))


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (
            SurveyAnswer(ticket_no="t1", rating=3, solved=False),
            {"kind": "survey_answer", "ticket_no": "t1", "rating": 3, "solved": False},
        ),
        (
            SurveyComment(ticket_no="t1", clarification=True),
            {"kind": "comment", "ticket_no": "t1", "clarification": True},
        ),
        (OptedOut(closed_surveys=["t1"]), {"kind": "opt_out", "closed_surveys": ["t1"]}),
    ],
)
def test_reply_results_keep_the_json_the_sms_endpoint_answers(reply, body):
    adapter: TypeAdapter = TypeAdapter(SmsReply)
    assert adapter.dump_python(reply) == body
    assert adapter.validate_python(body) == reply


def test_dates_in_messages_are_local():
    assert month_day_time("2026-11-23T10:00:00+00:00", SH) == "11月23日18:00"
    assert until_date("2026-11-30T18:00:00+08:00", SH) == "至11月30日"
    assert month_day_time(None, SH) == ""
    assert until_date("not a date", SH) == ""
