"""Residents asking for their appeals' progress where they raised them, through the running system:
查询 on WeChat (the passive reply) and by SMS (an SMS back through the outbox), another's number
answered as a missing one, no ticket registered for a query, and a survey's "1" still its answer."""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from services.intake import keys
from services.intake.domain import wechat_caller_id
from services.intake.errors import RateLimited
from services.intake.limits import RateLimiter
from services.intake.progress import RESIDENT_STATUS_NAMES, Query
from services.intake.queries import ProgressQueries
from shared.events import Caller
from shared.lookup_link import day_number
from shared.privacy import caller_id
from shared.store import TicketStore, ticket_key
from shared.tickets import Status, Ticket
from tests.conftest import as_sms_gateway
from tests.test_intake_wechat import URL, openid, reply_of, seq, signed, text
from tests.test_pipeline_e2e import LIGHT, outbox_for, resolve_when_assigned, submit, ticket_when

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]
INBOUND = "/api/v1/sms/inbound"


def new_phone() -> str:
    return "135" + "".join(random.choices("0123456789", k=8))


async def wechat(api: httpx.AsyncClient, user: str, content: str) -> str:
    r = await api.post(
        URL, params=signed(), content=text(user, content), headers={"content-type": "text/xml"}
    )
    assert r.status_code == 200, r.text
    return reply_of(r)["Content"]


async def routed(api: httpx.AsyncClient, no: str) -> dict:
    """The ticket once the router has it (assigned, or waiting at the desk): its status stays."""
    return await ticket_when(api, no, lambda t: t["status"] in ("assigned", "review"))


def line_of(ticket: dict) -> str:
    """How the answer names a ticket: number, status and department in words."""
    held = ticket["department"] and ticket["status"] != "review"
    department = ticket["department"]["name"] if held else "正在分派"
    status = RESIDENT_STATUS_NAMES[Status(ticket["status"])]
    return f"工单号{ticket['ticket_no']}，{status}，承办单位：{department}"


async def test_wechat_user_asks_and_gets_their_two_tickets_and_nobody_elses(api, redis):
    me, other = openid(), openid()
    mine = []
    for content in (
        "幸福里小区5号楼电梯坏了三天了，老人上下楼很困难，请尽快维修",
        "和平路十字路口的红绿灯不亮了，车辆很乱，很危险",
    ):
        reply = await wechat(api, me, content)
        mine.append(reply.split("工单号：")[1][:15])
    theirs = (await wechat(api, other, "翠竹苑东门外人行道井盖破损下陷，行人容易绊倒")).split("工单号：")[1][
        :15
    ]
    tickets = [await routed(api, no) for no in mine]

    before = await seq(redis)
    answer = await wechat(api, me, "查询")
    assert answer.startswith("您近期的工单：")
    for t in tickets:
        assert line_of(t) in answer
    assert answer.index(mine[1]) < answer.index(mine[0])  # the most recent first
    assert theirs not in answer
    # One of mine by its number, typed as on a phone: that one alone.
    one = await wechat(api, me, f"查进度 {mine[0].replace('-', '')}")
    assert one.startswith("您的工单：" + line_of(tickets[0]))
    assert mine[1] not in one
    # Another user's number reads exactly as a number nobody has.
    nobodys = theirs[:9] + "999999"
    guessed, missing = await wechat(api, me, theirs), await wechat(api, me, nobodys)
    assert guessed.startswith(f"未找到该用户的工单{theirs}。")
    assert guessed.replace(theirs, "N") == missing.replace(nobodys, "N")
    assert "工单号：" not in answer + one + guessed  # nothing was registered…
    assert await seq(redis) == before  # …nor numbered
    cid = wechat_caller_id(me)
    assert sorted(m.decode() for m in await redis.smembers(keys.caller_index(cid))) == sorted(mine)


async def test_a_wechat_answer_links_each_ticket_to_its_page_signed_afresh(api, settings):
    me = openid()
    mine = []
    for content in (
        "长青路28号门口的下水道堵了，污水漫到人行道上",
        "长青路菜市场旁边的路灯晚上不亮，行人看不清路",
    ):
        mine.append((await wechat(api, me, content)).split("工单号：")[1][:15])
    tickets = [await routed(api, no) for no in mine]
    page = urlsplit(settings.wechat_template_url)
    opened: dict[str, str] = {}
    for asked, expected in (("查询", mine[::-1]), (f"工单号{mine[0]}", mine[:1])):
        asked_on = day_number(time.time())
        answer = await wechat(api, me, asked)
        links = re.findall(r'<a href="([^"]+)">查看详情</a>', answer)
        # One link for each ticket the answer names, after its line, in the same order.
        assert len(links) == len(expected)
        for url, no in zip(links, expected, strict=True):
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc, parts.path) == (page.scheme, page.netloc, page.path)
            query = parse_qs(parts.query)
            assert query["t"] == [no]
            # It opens for LOOKUP_LINK_DAYS from today, today included (today: the day it was
            # asked, which a run across midnight UTC may have left).
            made = int(query["e"][0]) - settings.lookup_link_days + 1
            assert made in (asked_on, day_number(time.time()))
            assert line_of(tickets[mine.index(no)]) in answer.split(url)[0].splitlines()[-1]
            opened[no] = parts.path + "?" + parts.query
    # Opened on the console, each link shows its ticket, without the phone digits a WeChat
    # resident does not have.
    for no, path in opened.items():
        r = await api.get(path)
        assert r.status_code == 200, r.text
        assert f"工单 {no}" in r.text
        assert "链接无效" not in r.text
        assert "链接已过期" not in r.text
        assert "长青路" not in r.text
    # A link once opened cannot be made to open another ticket: the number is signed with its day.
    tampered = opened[mine[0]].replace(f"t={mine[0]}", f"t={mine[1]}")
    r = await api.get(tampered)
    assert r.status_code == 403
    assert f"工单 {mine[1]}" not in r.text


async def test_wechat_user_without_tickets_is_told_so_and_how_to_raise_one(api, redis):
    before = await seq(redis)
    answer = await wechat(api, openid(), "办理进度？")
    assert answer.startswith("未找到您近期的工单。")
    assert "请直接发送文字描述" in answer
    assert await seq(redis) == before


async def test_sms_query_is_answered_by_sms_and_registers_nothing(api, redis):
    phone = new_phone()
    gateway = await as_sms_gateway(redis)
    r = await api.post(
        INBOUND, json={"phone": phone, "text": "幸福路公交站的站牌被撞坏了，请派人修一下"}, headers=gateway
    )
    assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]
    ticket = await routed(api, no)

    before = await seq(redis)
    r = await api.post(INBOUND, json={"phone": phone, "text": "查询。"}, headers=gateway)
    assert r.status_code == 200, r.text
    assert r.json() == {"kind": "query", "tickets": [no], "sms": "sent"}
    (sms,) = await outbox_for(redis, phone, "query")
    assert sms["text"].startswith("【12345】您近期的工单：")
    assert line_of(ticket) in sms["text"]
    assert "href" not in sms["text"]  # the link is WeChat's: an SMS resident has the digits and the form
    assert phone not in sms["text"]
    assert await seq(redis) == before
    # Another phone's ticket by its number: not found, by SMS too.
    stranger = await submit(api, new_phone(), text=LIGHT)
    r = await api.post(INBOUND, json={"phone": phone, "text": stranger}, headers=gateway)
    assert r.json() == {"kind": "query", "tickets": [], "sms": "sent"}
    texts = [m["text"] for m in await outbox_for(redis, phone, "query")]
    assert texts[0].startswith(f"【12345】未找到该用户的工单{stranger}。请核对工单号")
    assert "您近期的工单：" in texts[1]
    assert await seq(redis) == before + 1  # the stranger's appeal, nothing more


async def test_a_pending_survey_still_takes_its_1_and_a_query_beside_it(api, redis):
    phone = new_phone()
    gateway = await as_sms_gateway(redis)
    no = await submit(api, phone, address="阳光花园3号楼")
    await resolve_when_assigned(api, redis, no)
    surveyed = await ticket_when(api, no, lambda t: t["status"] == "surveyed")
    # Asking how it stands while the survey waits: an answer, not an unreadable rating.
    r = await api.post(INBOUND, json={"phone": phone, "text": "进度"}, headers=gateway)
    assert r.json()["kind"] == "query"
    (sms,) = await outbox_for(redis, phone, "query")
    assert line_of(surveyed) in sms["text"]
    assert await outbox_for(redis, phone, "clarification") == []
    r = await api.post(INBOUND, json={"phone": phone, "text": "1"}, headers=gateway)
    assert r.json() == {"kind": "survey_answer", "ticket_no": no, "rating": 1, "solved": True}
    closed = await ticket_when(api, no, lambda t: t["status"] == "closed")
    assert closed["rating"] == 1
    # Closed, it left the caller's index; its number still finds it while Redis keeps it.
    await api.post(INBOUND, json={"phone": phone, "text": f"查询{no}"}, headers=gateway)
    latest = (await outbox_for(redis, phone, "query"))[0]["text"]
    assert latest.startswith(f"【12345】您的工单：工单号{no}，已办结，工单已关闭")


async def test_queries_have_the_callers_hourly_limit_apart_from_appeals(redis):
    limiter = RateLimiter(redis, per_caller_per_hour=2, per_ip_per_minute=0)
    queries = ProgressQueries(TicketStore(redis), limiter, timezone="Asia/Shanghai")
    cid = caller_id(new_phone())
    for _ in range(2):
        await queries.answer(cid, Query())
    with pytest.raises(RateLimited) as e:
        await queries.answer(cid, Query())
    assert "查询过于频繁" in e.value.message
    assert await limiter.callers_over([cid]) == {}  # their next appeal is not refused for it


async def test_a_query_loop_by_sms_stops_at_the_hourly_limit(api, redis):
    phone = new_phone()
    gateway = await as_sms_gateway(redis)
    codes = [
        (await api.post(INBOUND, json={"phone": phone, "text": "查询"}, headers=gateway)).status_code
        for _ in range(31)
    ]
    assert codes == [200] * 30 + [429]  # the default limit: 30 per caller per hour
    assert len(await outbox_for(redis, phone, "query")) == 30


async def test_an_erased_ticket_is_nobodys_and_leaves_the_index(redis):
    """Erasure's notice may never reach intake (a broker lost after the relay sent it): the
    ticket's own mark is read, as the duplicate preview does."""
    store = TicketStore(redis)
    cid = caller_id(new_phone())
    day = f"2000010{random.randint(1, 9)}"
    kept, erased = (f"{day}-{random.randint(100000, 999999)}" for _ in range(2))
    for no, removed in ((kept, None), (erased, datetime.now(UTC))):
        ticket = Ticket(
            ticket_no=no,
            status=Status.ASSIGNED,
            channel="sms",
            text="幸福路公交站的站牌被撞坏了，请派人修一下",
            caller=Caller(caller_id=cid),
            received_at=datetime.now(UTC),
            personal_data_removed_at=removed,
        )
        await redis.set(ticket_key(no), ticket.model_dump_json())
        await redis.sadd(keys.caller_index(cid), no)
    queries = ProgressQueries(store, None, timezone="Asia/Shanghai")
    answer = await queries.answer(cid, Query())
    assert answer.ticket_nos == (kept,)
    assert erased not in answer.text
    assert [m.decode() for m in await redis.smembers(keys.caller_index(cid))] == [kept]
    by_number = await queries.answer(cid, Query(erased))
    assert by_number.ticket_nos == ()
    assert by_number.text.startswith(f"未找到该用户的工单{erased}。")


async def test_a_ticket_closed_minutes_ago_is_still_found_and_its_result_told(redis):
    """查询 right after the survey closed the ticket: the intake worker moved it from the caller's
    open tickets to their recently closed ones, and the answer tells its result."""
    from services.intake.app import DuplicateIndex
    from shared.events import Answer, DepartmentRef, TicketUpdated

    store = TicketStore(redis)
    index = DuplicateIndex(redis, store)
    cid = caller_id(new_phone())
    no = f"2000011{random.randint(1, 9)}-{random.randint(100000, 999999)}"
    dept = DepartmentRef(id="urban_mgmt", name="区城市管理委员会")
    ticket = Ticket(
        ticket_no=no,
        status=Status.CLOSED,
        channel="sms",
        text="阳光花园3号楼门口的路灯坏了",
        caller=Caller(caller_id=cid),
        received_at=datetime.now(UTC),
        department=dept,
        resolution_note="已更换路灯灯泡，恢复照明",
    )
    await redis.set(ticket_key(no), ticket.model_dump_json())
    await redis.sadd(keys.caller_index(cid), no)
    closed = TicketUpdated(
        ticket_no=no,
        action="closed",
        status="closed",
        actor="resident",
        caller_id=cid,
        answer=Answer(rating=1, solved=True),
    )
    await index.updated([closed])
    assert not await redis.sismember(keys.caller_index(cid), no)  # no longer open
    queries = ProgressQueries(store, None, timezone="Asia/Shanghai")
    answer = await queries.answer(cid, Query())
    assert answer.ticket_nos == (no,)
    assert (
        f"工单号{no}，已办结，工单已关闭，承办单位：区城市管理委员会，办理结果：已更换路灯灯泡，恢复照明"
        in answer.text
    )
    assert "阳光花园" not in answer.text
    # Erased since: nobody's, and out of the recently closed too.
    from shared.events import PersonalDataRemoved

    await index.erased([PersonalDataRemoved(ticket_no=no, caller_id=cid)])
    assert await redis.zscore(keys.caller_closed(cid), no) is None
