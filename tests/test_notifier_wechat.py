"""WeChat as the notifier's channel: where a resident is reached (pure), what a message from them is
(pure, SMS and WeChat alike), and the WeChat API gateway against a loopback server that plays
WeChat's API (the token, a send, an expired token, a 5xx, a refusal, the 48-hour window), with the
notifier over it."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from services.intake.progress import Query
from services.notifier.gateway import (
    Message,
    OutboxGateway,
    PermanentSmsError,
    TransientSmsError,
    Undeliverable,
)
from services.notifier.policy import Policy, QuietHours
from services.notifier.routing import Recipient, masked, route
from services.notifier.service import Notifier
from services.notifier.survey import answers_survey_in_chat, read_inbound
from services.notifier.texts import load_texts
from services.notifier.wechat_gateway import WeChatApiGateway, make_wechat_gateway
from services.notifier.wechat_template import (
    DEFAULT_FIELDS,
    WeChatTemplate,
    parse_fields,
    template_body,
    template_fields,
)
from shared.events import DepartmentRef, TicketUpdated
from shared.lookup_link import LinkState, check, day_number, link_key, params, sign
from shared.privacy import mask_openid
from shared.settings import Settings
from shared.store import TicketStore
from tests.loopback import QuietHandler, serving

OPENID = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"  # the shape of a real openid (28 characters)


# --- where a resident is reached ----------------------------------------------------------------


def test_a_phone_is_reached_by_sms_an_openid_alone_by_wechat_and_nobody_else():
    assert route({"phone": "13812345678"}) == Recipient("sms", "13812345678")
    # A phone wins: a resident who gave one is reached where the hotline reaches everyone.
    assert route({"phone": "13812345678", "wechat_openid": OPENID}) == Recipient("sms", "13812345678")
    assert route({"wechat_openid": OPENID}) == Recipient("wechat", OPENID)
    assert route({"phone": "", "wechat_openid": OPENID}) == Recipient("wechat", OPENID)
    assert route({}) is None
    assert route({"name": "张三"}) is None


def test_addresses_are_masked_for_logs_and_records():
    assert mask_openid(OPENID) == "o6_b****fL2M"
    assert mask_openid("short") == "****"
    assert masked("wechat", OPENID) == "o6_b****fL2M"
    assert masked("sms", "13812345678") == "138****5678"
    assert Recipient("wechat", OPENID).masked == "o6_b****fL2M"
    message = Message(OPENID, "x", "survey", "20261123-000001", channel="wechat")
    assert message.masked_to == "o6_b****fL2M"
    assert Message.from_json(message.to_json()) == message
    # An SMS's record is what it was before WeChat (no channel field): stored claims still read.
    sms = Message("13812345678", "x", "ack")
    assert "channel" not in sms.to_json()
    assert Message.from_json(sms.to_json()).channel == "sms"


# --- what a message is -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("查询", "query"),
        ("20261123-000001", "query"),
        ("TD", "opt_out"),
        ("退订", "opt_out"),
        ("1", "rating"),
        ("１", "rating"),
        ("3 还是不亮", "rating"),
        ("满意", "rating"),
        ("没解决", "rating"),
        ("谢谢", "words"),
        ("4", "words"),
        ("幸福里小区5号楼电梯坏了三天了", "words"),
    ],
)
def test_what_a_message_is(text, kind):
    inbound = read_inbound(text)
    assert inbound.kind == kind
    assert inbound.text == text
    assert (inbound.query is not None) == (kind == "query")
    if kind in ("rating", "words"):
        assert inbound.reply is not None
        assert inbound.reply.has_rating == (kind == "rating")


def test_a_reading_keeps_what_it_read():
    assert read_inbound("查询20261123-000001").query == Query(ticket_no="20261123-000001")
    reply = read_inbound("1 但是没解决").reply
    assert reply is not None
    assert (reply.rating, reply.solved) == (1, False)


@pytest.mark.parametrize(
    ("text", "answers"),
    [
        ("1", True),
        ("3 还是不亮", True),
        ("不满意，灯晚上还是不亮，出门很不方便，希望再来看看", True),  # begins with its rating
        ("没解决，路灯还是坏的，晚上黑漆漆的老人容易摔倒", True),
        ("基本满意", True),
        ("对维修结果不满意", True),  # short: nothing but a reply
        # A new complaint that says 不满意 in passing is an appeal, not an answer to the open survey.
        ("楼下烧烤店每天夜里油烟很大，邻居们都很不满意，希望管一管", False),
        ("幸福里小区5号楼电梯坏了三天了", False),  # no rating at all
        ("查询", False),
    ],
)
def test_in_the_chat_only_a_message_that_reads_as_a_reply_answers_the_survey(text, answers):
    assert answers_survey_in_chat(read_inbound(text)) is answers


# --- WeChat's API on loopback ------------------------------------------------------------------


class FakeWeChat:
    """WeChat's API as the gateway uses it. `GET /cgi-bin/token` issues tok-1, tok-2…; `POST
    /cgi-bin/message/custom/send` takes the next step of `script`: "ok", an errcode (int > 0,
    or -1), or an HTTP status ("http500"). A send with a token that is not the newest answers
    40001, as WeChat does once a token was replaced."""

    def __init__(self) -> None:
        self.script: list = []
        self.tokens: list[dict] = []
        self.sends: list[dict] = []
        wechat = self

        class Handler(QuietHandler):
            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                wechat.tokens.append(query)
                if url.path != "/cgi-bin/token" or query.get("secret") != "app-secret":
                    self._answer(200, {"errcode": 40125, "errmsg": "invalid appsecret"})
                    return
                self._answer(200, {"access_token": f"tok-{len(wechat.tokens)}", "expires_in": 7200})

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                token = parse_qs(url.query).get("access_token", [""])[0]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                wechat.sends.append({"path": url.path, "token": token, "body": body})
                step = wechat.script.pop(0) if wechat.script else "ok"
                if isinstance(step, str) and step.startswith("http"):
                    self._answer(int(step[4:]), {})
                elif token != f"tok-{len(wechat.tokens)}":
                    self._answer(200, {"errcode": 40001, "errmsg": "invalid credential"})
                elif step == "ok":
                    self._answer(200, {"errcode": 0, "errmsg": "ok"})
                else:
                    self._answer(200, {"errcode": step, "errmsg": f"error {step}"})

        self.handler = Handler


@pytest.fixture
def wechat() -> Iterator[FakeWeChat]:
    w = FakeWeChat()
    with serving(w.handler) as server:
        w.base = f"http://127.0.0.1:{server.server_port}"
        yield w


def api_gateway(redis, wechat: FakeWeChat, delays: list[float] | None = None, **kw) -> WeChatApiGateway:
    async def sleep(seconds: float) -> None:
        (delays if delays is not None else []).append(seconds)

    kw.setdefault("attempts", 4)
    # An AppID of its own per test: the token it caches in Redis is this test's.
    app_id = kw.pop("app_id", f"wx{uuid.uuid4().hex[:16]}")
    return WeChatApiGateway(
        redis, app_id, "app-secret", base=wechat.base, base_delay=0.2, timeout=0.5, sleep=sleep, **kw
    )


MESSAGE = Message(
    OPENID, "您反映的问题（工单号20261123-000001）已办理", "result", "20261123-000001", channel="wechat"
)


def test_the_api_gateway_needs_its_settings():
    from redis.asyncio import Redis

    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never connected
    with pytest.raises(ValueError, match="WECHAT_APP_SECRET"):
        WeChatApiGateway(redis, "wx1", "")
    with pytest.raises(ValueError, match="WECHAT_API_BASE"):
        WeChatApiGateway(redis, "wx1", "s", base="api.weixin.qq.com")


@pytest.mark.integration
async def test_the_token_is_fetched_once_and_a_text_is_sent(redis, wechat):
    gw = api_gateway(redis, wechat)
    assert await gw.send(MESSAGE) == MESSAGE.message_id
    assert await gw.send(MESSAGE) == MESSAGE.message_id
    assert len(wechat.tokens) == 1  # kept in Redis for the next send
    assert wechat.tokens[0] == {"grant_type": "client_credential", "appid": gw.app_id, "secret": "app-secret"}
    assert wechat.sends[0] == {
        "path": "/cgi-bin/message/custom/send",
        "token": "tok-1",
        "body": {"touser": OPENID, "msgtype": "text", "text": {"content": MESSAGE.text}},
    }
    # Kept until shortly before WeChat expires it (7,200 s, less the margin).
    assert 6800 <= await redis.ttl(gw.token_key) <= 6900
    # Another gateway (another notifier replica) uses the same token.
    other = api_gateway(redis, wechat, app_id=gw.app_id)
    await other.send(MESSAGE)
    assert len(wechat.tokens) == 1
    await gw.aclose()
    await other.aclose()


@pytest.mark.integration
async def test_an_expired_token_is_fetched_again_and_the_message_sent(redis, wechat):
    delays: list[float] = []
    gw = api_gateway(redis, wechat, delays)
    await gw.send(MESSAGE)
    wechat.script = [42001]  # access_token expired
    assert await gw.send(MESSAGE) == MESSAGE.message_id
    assert [s["token"] for s in wechat.sends] == ["tok-1", "tok-1", "tok-2"]
    assert len(wechat.tokens) == 2
    assert delays == []  # a new token is tried at once
    assert await redis.get(gw.token_key) == b"tok-2"
    # Replaced elsewhere (another fetch of it): WeChat says 40001; the same.
    wechat.tokens.append({})  # the newest is now tok-3, which nobody here has
    assert await gw.send(MESSAGE) == MESSAGE.message_id
    assert [s["token"] for s in wechat.sends][-2:] == ["tok-2", "tok-4"]
    await gw.aclose()


@pytest.mark.integration
async def test_server_errors_and_busy_are_retried_with_backoff(redis, wechat):
    delays: list[float] = []
    gw = api_gateway(redis, wechat, delays)
    wechat.script = ["http500", -1, "ok"]
    assert await gw.send(MESSAGE) == MESSAGE.message_id
    assert len(wechat.sends) == 3
    assert len(delays) == 2
    assert 0.16 <= delays[0] <= 0.2
    assert 0.32 <= delays[1] <= 0.4
    wechat.script = ["http503"] * 10
    with pytest.raises(TransientSmsError, match="after 4 attempts"):
        await gw.send(MESSAGE)
    await gw.aclose()


@pytest.mark.integration
async def test_refusals_are_permanent_and_the_48_hour_window_is_undeliverable(redis, wechat):
    gw = api_gateway(redis, wechat)
    wechat.script = [40003]  # invalid openid
    with pytest.raises(PermanentSmsError, match="errcode 40003"):
        await gw.send(MESSAGE)
    assert len(wechat.sends) == 1
    wechat.script = [45015]
    with pytest.raises(Undeliverable, match="48 hours"):
        await gw.send(MESSAGE)
    assert len(wechat.sends) == 2  # not retried
    bad = WeChatApiGateway(redis, f"wx{uuid.uuid4().hex[:16]}", "wrong-secret", base=wechat.base)
    with pytest.raises(PermanentSmsError, match="errcode 40125"):
        await bad.send(MESSAGE)
    assert len(wechat.sends) == 2  # nothing sent without a token
    await gw.aclose()
    await bad.aclose()


@pytest.mark.integration
async def test_the_notifier_sends_a_wechat_residents_survey_and_records_the_48_hours(redis, wechat, caplog):
    """The survey of a WeChat appeal goes through WeChat's API without the SMS signature, opens a
    survey by the openid and asks nobody to phone; past WeChat's 48 hours it is recorded as not
    delivered, logged with the openid masked, and not retried."""
    sh = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 11, 23, 12, 0, tzinfo=sh)
    published: list = []

    async def publish(events) -> None:
        published.extend(events)

    gw = api_gateway(redis, wechat, attempts=2)
    notifier = Notifier(
        TicketStore(redis),
        OutboxGateway(redis, key=f"test:outbox:{uuid.uuid4().hex}"),  # no SMS here
        publish,
        texts=load_texts(),
        policy=Policy(QuietHours.parse("none"), 5, sh),
        clock=lambda: now,
        jobs_key=f"test:due:{uuid.uuid4().hex}",
        wechat=gw,
    )
    openid = f"o{uuid.uuid4().hex[:27]}"
    caller = uuid.uuid4().hex[:20]
    await redis.hset(f"contact:{caller}", mapping={"wechat_openid": openid})
    resolved = TicketUpdated(
        ticket_no="20261123-000501",
        action="resolved",
        status="resolved",
        actor="d1",
        caller_id=caller,
        department=DepartmentRef(id="d1", name="区城管委"),
        note="已更换路灯灯泡，恢复照明",
        on_time=True,
    )
    events = await notifier.start_surveys([resolved])
    assert [e.topic for e in events] == ["survey.sent"]
    assert events[0].masked_phone == mask_openid(openid)
    [sent] = wechat.sends
    assert sent["body"]["touser"] == openid
    assert sent["body"]["text"]["content"].startswith("您反映的问题（工单号20261123-000501）已办理")
    assert "【12345】" not in sent["body"]["text"]["content"]
    assert await redis.zscore(f"survey:open:{openid}", resolved.event_id) is not None
    assert await redis.zscore("survey:callback", resolved.event_id) is None  # no number to call

    wechat.script = [45015]
    caplog.set_level(logging.WARNING, logger="services.notifier.dispatch")
    again = resolved.model_copy(update={"event_id": uuid.uuid4().hex, "ticket_no": "20261123-000502"})
    await notifier.start_surveys([again])
    assert len(wechat.sends) == 2  # once: never retried
    records = await redis.smembers("sms:ticket:20261123-000502")
    states = [json.loads(await redis.get(k)) for k in records if k.startswith(b"sms:msg:")]
    assert [(s["state"], s["channel"], s["openid"]) for s in states] == [
        ("undelivered", "wechat", mask_openid(openid))
    ]
    assert "45015" in states[0]["error"]
    assert assert_masked(caplog.text, openid)
    assert await notifier.scan(now.replace(hour=13)) == 0  # nothing held to try again
    await gw.aclose()


def assert_masked(log_text: str, openid: str) -> bool:
    assert mask_openid(openid) in log_text
    assert openid not in log_text
    return True


@pytest.mark.integration
async def test_erasing_a_wechat_resident_forgets_their_openid_as_a_phone_is_forgotten(redis):
    """The erasure's notice (`Notifier.forget`) finds a WeChat survey and its messages by the
    ticket, as an SMS one's: the survey (which holds the openid), its place in the openid's open
    surveys, its reminder and timeout, and the messages' states all go; the open survey ends as
    opted out, so the ticket still closes."""
    sh = ZoneInfo("Asia/Shanghai")
    published: list = []

    async def publish(events) -> None:
        published.extend(events)

    notifier = Notifier(
        TicketStore(redis),
        OutboxGateway(redis, key=f"test:outbox:{uuid.uuid4().hex}"),
        publish,
        texts=load_texts(),
        policy=Policy(QuietHours.parse("none"), 5, sh),
        jobs_key=f"test:due:{uuid.uuid4().hex}",
    )
    openid, caller, no = f"o{uuid.uuid4().hex[:27]}", uuid.uuid4().hex[:20], "20261123-000601"
    await redis.hset(f"contact:{caller}", mapping={"wechat_openid": openid})
    resolved = TicketUpdated(
        ticket_no=no,
        action="resolved",
        status="resolved",
        actor="d1",
        caller_id=caller,
        note="已修复",
        on_time=True,
    )
    await notifier.start_surveys([resolved])
    [sent] = await notifier.wechat.sent(openid)  # type: ignore[attr-defined]
    assert sent["kind"] == "survey"
    assert sent["text"].startswith(f"您反映的问题（工单号{no}）")
    kept = await redis.smembers(f"sms:ticket:{no}")
    assert {k.split(b":")[0] for k in kept} == {b"sms", b"survey"}

    assert await notifier.forget([no]) == 2
    assert await redis.exists(*kept, f"sms:ticket:{no}", f"survey:open:{openid}") == 0
    assert [e.outcome for e in published] == ["erased"]  # not 退订: the resident asked for no such thing
    assert openid not in json.dumps([e.model_dump(mode="json") for e in published])
    assert await redis.zcard(notifier.jobs.key) == 0  # no reminder, no timeout


# --- past the 48 hours: a template message ------------------------------------------------------

SH = ZoneInfo("Asia/Shanghai")
LOOKUP = "https://12345.example.cn/console/lookup"
TEMPLATE = WeChatTemplate("tmpl-progress", template_fields(), SH, LOOKUP)
SURVEY = Message(
    OPENID,
    "您反映的问题（工单号20261123-000001）已办理：已更换路灯灯泡。请评价：回复1满意，2基本满意，3不满意。",
    "survey",
    "20261123-000001",
    created_at=datetime(2026, 11, 27, 1, 30, tzinfo=UTC),
    channel="wechat",
)


def test_a_survey_as_the_template_message_of_a_ticket_s_progress():
    assert template_body(SURVEY, TEMPLATE) == {
        "touser": OPENID,
        "template_id": "tmpl-progress",
        "url": "https://12345.example.cn/console/lookup",
        "data": {
            "first": {"value": "您反映的问题已办结，请评价"},
            "keyword1": {"value": "20261123-000001"},
            "keyword2": {"value": "满意度回访：回复1/2/3"},
            "keyword3": {"value": "2026-11-27 09:30"},  # local time
            "remark": {"value": SURVEY.text},  # says how to answer in the chat
        },
    }


@pytest.mark.parametrize(
    ("kind", "first", "words"),
    [
        ("progress", "您反映的问题有新进展", "进度"),
        ("result", "您反映的问题已办结", "办结"),
        ("reminder", "您反映的问题办理结果还在等待您的评价", "满意度回访：回复1/2/3"),
        ("ack", "您的诉求已受理", "受理"),
    ],
)
def test_each_notice_kind_has_its_headline_and_words(kind, first, words):
    body = template_body(replace(SURVEY, kind=kind), TEMPLATE)
    assert body is not None
    assert (body["data"]["first"]["value"], body["data"]["keyword2"]["value"]) == (first, words)


KEY = link_key("a-long-random-secret-for-these-tests-0123456789")
SIGNED = replace(TEMPLATE, link_query=partial(params, days=30, key=KEY))
WRITTEN = day_number(SURVEY.created_at.timestamp())  # the unix day the survey was written
LAST = WRITTEN + 29  # the last day its link opens


def test_the_template_opens_its_own_ticket_by_a_signed_link_for_its_days():
    body = template_body(SURVEY, SIGNED)
    assert body is not None
    sig = sign("20261123-000001", LAST, KEY)
    assert body["url"] == f"{LOOKUP}?t=20261123-000001&e={LAST}&s={sig}"
    assert check("20261123-000001", str(LAST), sig, LAST, KEY) is LinkState.VALID
    assert check("20261123-000001", str(LAST), sig, LAST + 1, KEY) is LinkState.EXPIRED
    other = template_body(replace(SURVEY, ticket_no="20261123-000002"), SIGNED)
    assert other is not None
    assert other["url"] != body["url"]


@pytest.mark.parametrize(
    ("configured", "opened"),
    [
        # A query of its own (a campaign tag) stays, the link's follows it; a fragment stays last.
        (
            "https://12345.example.cn/console/lookup?from=wx",
            "https://12345.example.cn/console/lookup?from=wx&t={no}&e={e}&s={sig}",
        ),
        (
            "https://12345.example.cn/console/lookup?",
            "https://12345.example.cn/console/lookup?t={no}&e={e}&s={sig}",
        ),
        (
            "https://12345.example.cn/console/lookup#found",
            "https://12345.example.cn/console/lookup?t={no}&e={e}&s={sig}#found",
        ),
        (
            "https://12345.example.cn/m/?a=1&b=2#x",
            "https://12345.example.cn/m/?a=1&b=2&t={no}&e={e}&s={sig}#x",
        ),
    ],
)
def test_the_signed_link_keeps_the_configured_query(configured, opened):
    body = template_body(SURVEY, replace(SIGNED, url=configured))
    assert body is not None
    assert body["url"] == opened.format(no="20261123-000001", e=LAST, sig=sign("20261123-000001", LAST, KEY))


def test_no_url_set_no_link_and_no_ticket_no_link_unsigned():
    assert "url" not in (template_body(SURVEY, replace(SIGNED, url="")) or {})
    body = template_body(replace(SURVEY, ticket_no=None), SIGNED)
    assert body is not None
    assert body["url"] == LOOKUP  # nothing to sign: the page's form


def test_a_message_with_no_template_kind_stays_as_it_is():
    assert template_body(replace(SURVEY, kind="query"), TEMPLATE) is None
    assert template_body(replace(SURVEY, kind="clarification"), TEMPLATE) is None


def test_the_account_names_its_template_fields():
    fields = template_fields(
        {"ticket_no": "character_string2", "kind": "thing3", "time": "time4", "first": ""}
    )
    assert fields == {"ticket_no": "character_string2", "kind": "thing3", "time": "time4", "remark": "remark"}
    body = template_body(SURVEY, replace(TEMPLATE, fields=fields, url=""))
    assert body is not None
    assert "url" not in body
    assert list(body["data"]) == ["character_string2", "thing3", "time4", "remark"]
    # The setting says the same as `role=field` pairs.
    assert parse_fields(" ticket_no=character_string2, kind=thing3,time=time4,first= ") == fields
    assert parse_fields(Settings().wechat_template_fields) == template_fields() == DEFAULT_FIELDS
    for raw, error in (("ticket_no", "not role=field"), ("kind=a,kind=b", "given twice")):
        with pytest.raises(ValueError, match=error):
            parse_fields(raw)
    # A middle field shows 20 characters at most: a longer value is cut where it can be seen.
    long = template_body(replace(SURVEY, ticket_no="T" * 30), TEMPLATE)
    assert long is not None
    assert long["data"]["keyword1"]["value"] == "T" * 19 + "…"
    # So is the text, mapped onto a middle field (WeChat shows no `remark` on newer templates).
    shown = template_body(SURVEY, replace(TEMPLATE, fields=template_fields({"remark": "thing5"})))
    assert shown is not None
    assert shown["data"]["thing5"]["value"] == SURVEY.text[:19] + "…"


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"title": "first"}, "unknown role 'title'"),
        ({"ticket_no": "keyword 1"}, "not a template field name"),
        ({"ticket_no": "keyword2"}, "field keyword2 given to two roles"),
        (dict.fromkeys(("first", "ticket_no", "kind", "time", "remark"), ""), "no field"),
    ],
)
def test_template_fields_that_cannot_be_right_are_refused_on_start(given, error):
    raw = ",".join(f"{role}={name}" for role, name in given.items())
    with pytest.raises(ValueError, match="WECHAT_TEMPLATE_FIELDS") as e:
        parse_fields(raw)
    assert error in str(e.value)
    with pytest.raises(ValueError, match="WECHAT_TEMPLATE_FIELDS") as e:
        template_fields(given)
    assert error in str(e.value)


def test_the_gateway_is_built_with_its_template_only_when_one_is_set():
    from redis.asyncio import Redis

    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never connected
    api = {"wechat_gateway": "api", "wechat_app_id": "wx1", "wechat_app_secret": "s"}
    plain = make_wechat_gateway(Settings(**api), redis)
    assert isinstance(plain, WeChatApiGateway)
    assert plain.template is None
    gw = make_wechat_gateway(
        Settings(**api, wechat_template_id="t1", wechat_template_fields="ticket_no=character_string1"),
        redis,
    )
    assert isinstance(gw, WeChatApiGateway)
    assert gw.template is not None
    assert replace(gw.template, link_query=None) == WeChatTemplate(
        "t1", {**template_fields(), "ticket_no": "character_string1"}, SH, ""
    )
    # The link is signed with the key the console checks: the one derived from this salt.
    salted = Settings(
        **api,
        wechat_template_id="t1",
        wechat_template_url=LOOKUP,
        caller_id_salt="x" * 40,
        lookup_link_days=7,
    )
    linked = make_wechat_gateway(salted, redis)
    assert isinstance(linked, WeChatApiGateway)
    assert linked.template is not None
    body = template_body(SURVEY, linked.template)
    assert body is not None
    query = parse_qs(urlsplit(body["url"]).query)
    assert query["t"] == ["20261123-000001"]
    # It opens for the settings' days from the day the message was written, and not one more.
    assert query["e"] == [str(WRITTEN + 6)]
    e, sig = query["e"][0], query["s"][0]
    assert check("20261123-000001", e, sig, WRITTEN + 6, link_key("x" * 40)) is LinkState.VALID
    assert check("20261123-000001", e, sig, WRITTEN + 7, link_key("x" * 40)) is LinkState.EXPIRED
    assert check("20261123-000001", e, sig, WRITTEN, link_key(Settings().caller_id_salt)) is LinkState.INVALID
    with pytest.raises(ValueError, match="WECHAT_TEMPLATE_FIELDS"):
        make_wechat_gateway(Settings(**api, wechat_template_id="t1", wechat_template_fields="x=y"), redis)
    with pytest.raises(ValueError, match="WECHAT_TEMPLATE_URL"):
        make_wechat_gateway(Settings(**api, wechat_template_id="t1", wechat_template_url="example.cn"), redis)


@pytest.mark.integration
async def test_past_the_48_hours_the_notice_goes_as_a_template_message(redis, wechat, caplog):
    gw = api_gateway(redis, wechat, template=TEMPLATE)
    wechat.script = [45015, "ok"]
    caplog.set_level(logging.INFO, logger="services.notifier.wechat_gateway")
    assert await gw.send(SURVEY) == SURVEY.message_id
    assert [(s["path"], s["token"]) for s in wechat.sends] == [
        ("/cgi-bin/message/custom/send", "tok-1"),
        ("/cgi-bin/message/template/send", "tok-1"),  # the same token
    ]
    assert wechat.sends[1]["body"] == template_body(SURVEY, TEMPLATE)
    assert assert_masked(caplog.text, OPENID)
    await gw.aclose()
    # The template call has the customer message's token renewal and retries.
    delays: list[float] = []
    gw = api_gateway(redis, wechat, delays, template=TEMPLATE)
    wechat.sends.clear()
    wechat.script = [45015, 42001, "http502", "ok"]
    assert await gw.send(SURVEY) == SURVEY.message_id
    assert [s["path"].rsplit("/", 2)[1] for s in wechat.sends] == [
        "custom",
        "template",
        "template",
        "template",
    ]
    assert len(delays) == 1
    await gw.aclose()


@pytest.mark.integration
async def test_a_refused_template_message_is_undelivered_with_its_reason_and_not_retried(redis, wechat):
    gw = api_gateway(redis, wechat, template=TEMPLATE)
    wechat.script = [45015, 43004]  # the user no longer follows the account
    with pytest.raises(Undeliverable, match="43004"):
        await gw.send(SURVEY)
    wechat.script = [45015, 40037]  # a template id WeChat does not know
    with pytest.raises(Undeliverable, match="40037"):
        await gw.send(SURVEY)
    assert len(wechat.sends) == 4  # none retried
    # Only 45015 falls back: another refusal of the customer message is what it was.
    wechat.script = [40003]
    with pytest.raises(PermanentSmsError, match="errcode 40003") as e:
        await gw.send(SURVEY)
    assert not isinstance(e.value, Undeliverable)
    assert len(wechat.sends) == 5
    await gw.aclose()


@pytest.mark.integration
async def test_without_a_template_the_48_hours_stay_undelivered(redis, wechat):
    gw = api_gateway(redis, wechat)
    wechat.script = [45015]
    with pytest.raises(Undeliverable, match="48 hours"):
        await gw.send(SURVEY)
    assert [s["path"] for s in wechat.sends] == ["/cgi-bin/message/custom/send"]
    await gw.aclose()
