"""A WeChat resident hears back in WeChat (the running system: real processes, broker, Redis and
PostgreSQL): their appeal resolved, the result and the survey reach the WeChat outbox; a rating sent
in the chat answers the survey, which reopens the ticket (3) or closes it and counts it in the three
rates, the notifier's and the record's alike (1)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.intake.wechat import SURVEY_REOPENED, SURVEY_THANKS
from services.notifier.scorecard import Scorecard
from services.notifier.survey import short_ref
from services.records.rates import rates
from shared.auth import issue_token
from shared.privacy import mask_openid
from tests.conftest import eventually
from tests.test_intake_wechat import URL, openid, reply_of, signed, text
from tests.test_pipeline_e2e import LIGHT, resolve_when_assigned, ticket_when

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]
XML = {"content-type": "text/xml"}


async def say(api, user: str, content: str) -> str:
    """What the account answers the user in the chat (the passive reply)."""
    r = await api.post(URL, params=signed(), content=text(user, content), headers=XML)
    assert r.status_code == 200, r.text
    return reply_of(r)["Content"]


async def wechat_outbox(api, redis, user: str, kind: str) -> list[dict]:
    admin = {"Authorization": f"Bearer {await issue_token(redis, 'admin')}"}
    r = await api.get("/api/v1/wechat/outbox", params={"openid": user}, headers=admin)
    assert r.status_code == 200, r.text
    return [m for m in r.json()["messages"] if m["kind"] == kind]


async def surveyed_in_wechat(api, redis, user: str) -> str:
    """A WeChat appeal, resolved by its department: the survey waits in the WeChat outbox."""
    reply = await say(api, user, LIGHT)
    no = re.search(r"工单号：(\d{8}-\d{6})", reply)
    assert no, reply
    ticket_no = no.group(1)
    await resolve_when_assigned(api, redis, ticket_no)
    await ticket_when(api, ticket_no, lambda t: t["status"] == "surveyed")
    [survey] = await eventually(lambda: wechat_outbox(api, redis, user, "survey"))
    assert survey["ticket_no"] == ticket_no
    return ticket_no


async def survey_id(api, no: str) -> str:
    ticket = await ticket_when(api, no, lambda t: any(h["topic"] == "survey.sent" for h in t["history"]))
    return next(h["survey_id"] for h in ticket["history"] if h["topic"] == "survey.sent")


async def test_the_result_and_the_survey_reach_a_wechat_resident_and_3_reopens(api, redis, system):
    user = openid()
    no = await surveyed_in_wechat(api, redis, user)
    [survey] = await wechat_outbox(api, redis, user, "survey")
    assert survey["text"].startswith(f"您反映的问题（工单号{no}）已办理：已更换路灯灯泡，恢复照明。请评价：")
    assert "【12345】" not in survey["text"]  # the SMS signature is not a chat's
    assert await wechat_outbox(api, redis, user, "ack") == []  # the passive reply acknowledged it
    # Open by the openid, and nobody is asked to phone a resident who left no number.
    sid = await survey_id(api, no)
    assert await redis.zscore(f"survey:open:{user}", sid) is not None
    assert await redis.zscore("survey:callback", sid) is None
    # Its state names the resident masked; no process logged the openid.
    records = await redis.smembers(f"sms:ticket:{no}")
    states = [json.loads(await redis.get(k)) for k in records if k.startswith(b"sms:msg:")]
    assert {(s["kind"], s["channel"], s["openid"]) for s in states} == {
        ("survey", "wechat", mask_openid(user))
    }
    assert all(user not in p.read_text(errors="replace") for p in system.log_dir.glob("*.log"))

    # A query is still a query while the survey is open, and 3 answers it: the ticket reopens.
    assert no in await say(api, user, "查询")
    assert await say(api, user, "3 还是不亮") == SURVEY_REOPENED.format(ticket_no=no)
    reopened = await ticket_when(api, no, lambda t: t["reopens"] == 1)
    assert reopened["status"] == "assigned"
    assert reopened["solved"] is False
    assert "还是不亮" in reopened["history"][-1]["note"]
    # Nothing open any more: the next words are an appeal, as before.
    assert "工单号" in await say(api, user, "小区东门的垃圾桶满了好几天没人清运，味道很大")


async def test_with_two_surveys_open_the_chat_asks_which_and_the_reference_alone_answers(api, redis):
    """Two of a WeChat resident's tickets wait for their rating: a rating that names neither is not
    guessed but asked about, and the answer to the question, the ticket's reference alone, rates
    that ticket with what was said (and is not taken for a new appeal)."""
    user = openid()
    first = await surveyed_in_wechat(api, redis, user)
    said = await say(api, user, "幸福里小区5号楼下的垃圾桶满了三天没人清运，臭味很大，希望尽快清理")
    found = re.search(r"工单号：(\d{8}-\d{6})", said)
    assert found, said
    second = found.group(1)
    await resolve_when_assigned(api, redis, second)
    await ticket_when(api, second, lambda t: t["status"] == "surveyed")
    await eventually(lambda: _two(wechat_outbox(api, redis, user, "survey")))
    ref = short_ref(first, [first, second])

    question = await say(api, user, "3 还是不亮")
    assert f"尾号{ref}" in question
    assert (await api.get(f"/api/v1/tickets/{first}")).json()["status"] == "surveyed"  # not guessed
    assert await say(api, user, ref) == SURVEY_REOPENED.format(ticket_no=first)
    await ticket_when(api, first, lambda t: t["reopens"] == 1)
    assert (await api.get(f"/api/v1/tickets/{second}")).json()["status"] == "surveyed"
    # Nothing kept any more: a bare number again is no answer, and no appeal either (too short).
    assert "工单号" not in await say(api, user, ref)


async def _two(listed) -> bool:
    return len(await listed) == 2


async def test_1_in_wechat_closes_the_ticket_and_counts_in_both_rates(
    api, redis, settings, pool, system_city
):
    user = openid()
    no = await surveyed_in_wechat(api, redis, user)
    department = (await api.get(f"/api/v1/tickets/{no}")).json()["department"]["id"]
    tz = ZoneInfo(settings.timezone)
    # Today and tomorrow: the answer counts on the local day it is given, the next one if local
    # midnight passes meanwhile.
    today = datetime.now(tz).date()
    days = (today, today + timedelta(days=1))
    book = Scorecard.from_settings(redis, system_city, settings)

    async def answered() -> tuple[int, int]:
        """The department's answered surveys these days, by the notifier's counters and by the record."""
        live = [r for r in await book.query("department", *days) if r["group"] == department]
        by_record = await rates(
            pool, "department", *days, tz, book.weights, system_city.sla.ranking.min_answers
        )
        sql = [r for r in by_record if r["group"] == department]
        return (live[0]["answered"] if live else 0), (sql[0]["answered"] if sql else 0)

    # The suite's other tests answer surveys of the same department meanwhile, so both counts are
    # read before and must each grow (the two implementations' exact agreement is tested on a day
    # of its own in test_records).
    live_before, sql_before = await answered()
    assert await say(api, user, "1") == SURVEY_THANKS.format(ticket_no=no)
    closed = await ticket_when(api, no, lambda t: t["status"] == "closed")
    assert closed["rating"] == 1
    answers = [h for h in closed["history"] if h["topic"] == "survey.answered"]
    assert [(a["outcome"], a["rating"]) for a in answers] == [("answered", 1)]

    async def counted_by_both() -> bool:
        live, sql = await answered()
        return live > live_before and sql > sql_before

    assert await eventually(counted_by_both, timeout=60, interval=0.5)


async def test_a_retried_answer_gets_the_same_reply(api, redis):
    user = openid()
    no = await surveyed_in_wechat(api, redis, user)
    body = text(user, "2", msg_id=7009000000000000 + int(no[-6:]))
    first = await api.post(URL, params=signed(), content=body, headers=XML)
    again = await api.post(URL, params=signed(), content=body, headers=XML)
    assert reply_of(first)["Content"] == reply_of(again)["Content"] == SURVEY_THANKS.format(ticket_no=no)
    closed = await ticket_when(api, no, lambda t: t["status"] == "closed")
    assert [h["rating"] for h in closed["history"] if h["topic"] == "survey.answered"] == [2]
