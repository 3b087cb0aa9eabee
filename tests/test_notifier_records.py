"""The notifier's stored records read back as typed objects, including those written before the
survey and the jobs had types (a notifier upgraded mid-survey must still find them). Pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter

from services.notifier.gateway import SmsMessage
from services.notifier.jobs import SendJob, SurveyJob, decode, encode
from services.notifier.survey import OptedOut, SmsReply, Survey, SurveyAnswer, SurveyComment
from services.notifier.texts import month_day_time, until_date

SH = ZoneInfo("Asia/Shanghai")


def test_a_survey_record_reads_back_and_older_ones_with_a_timestamp_too():
    started = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    survey = Survey(survey_id="s1", ticket_no="20261123-000001", phone="13812345678", started_at=started)
    assert Survey.model_validate_json(survey.model_dump_json()) == survey
    legacy = {"survey_id": "s1", "ticket_no": "20261123-000001", "phone": "13812345678"}
    older = Survey.model_validate_json(json.dumps(legacy | {"started_at": started.timestamp()}))
    assert older.started_at == started


def test_jobs_keep_the_json_their_members_had():
    """A job is a sorted-set member: the same job must encode to the same bytes as before, or a
    rescheduled survey would get a second reminder."""
    assert encode(SurveyJob("remind", "abc")) == json.dumps(
        {"job": "remind", "survey_id": "abc"}, sort_keys=True
    )
    message = SmsMessage("13812345678", "【12345】您好", "ack", "20261123-000001", message_id="m1")
    raw = encode(SendJob(message))
    assert raw == json.dumps(
        {"job": "send", "message": message.to_json()}, ensure_ascii=False, sort_keys=True
    )
    assert decode(raw) == SendJob(message)
    assert decode(encode(SurveyJob("close", "abc"))) == SurveyJob("close", "abc")


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
