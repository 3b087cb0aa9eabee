"""Hostile input, privacy and abuse at intake: what the public may read, how much work one request
may cause, idempotency that cannot drop an appeal, one error shape, text that says something."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import sys
import time
import zipfile
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import Workbook
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.api import create_app
from services.intake import batch, open311
from services.intake.batch import BadFile
from services.intake.domain import InvalidAppeal, validate, visible_length
from services.intake.errors import BadRequest, TooLarge
from services.intake.jsonbody import parse_json
from services.intake.service import IntakeService
from shared.auth import issue_token
from shared.bus import EventPublisher
from shared.embedded import free_port
from shared.events import AppealReceived, DepartmentRef, GeoPoint, GridMatch
from shared.privacy import UnsafeSettings, check_salt
from shared.settings import DEMO_CALLER_ID_SALT, Settings
from shared.store import TicketStore
from shared.tickets import Ticket
from tests.cities import demo_city
from tests.conftest import ROOT, eventually, settings_env

KEY = "test-open311-key"  # the settings fixture's OPEN311_API_KEYS
WECHAT_TOKEN = "test-wechat-token"  # and its WECHAT_TOKEN
FORM = {"content-type": "application/x-www-form-urlencoded"}
CITY = demo_city()


def phone() -> str:
    return f"136{random.randint(10**7, 10**8 - 1)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def cli(env: dict[str, str], *args: str) -> str:
    """`appeals ...` as an operator types it, against the session's Redis."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode()
    return out.decode()


# --- public means public ------------------------------------------------------------------------------


def test_the_public_record_carries_no_residents_words_address_or_point():
    street = CITY.district.streets[0]
    grid = street.communities[0].grids[0]
    appeal = AppealReceived(
        ticket_no="20261130-000007",
        channel="open311",
        text="我是张三，电话13812345678，住和平路12号3单元501，楼下噪音",
        address="和平路12号3单元501",
        location=GeoPoint(lat=39.912345, lng=116.401234),
    )
    ticket = Ticket.from_appeal(appeal).model_copy(
        update={
            "grid": GridMatch(grid=grid.id, street=street.id, method="gazetteer"),
            "department": DepartmentRef(id="d1", name="城管执法队"),
            "resolution_note": "已联系居民（138 1234 5678），噪音已制止",
        }
    )
    record = open311.request_record(ticket, CITY, ZoneInfo("Asia/Shanghai"))
    assert record["description"] is None
    assert record["address"] == f"{CITY.district.name}{street.name}"
    assert record["lat"] == 39.91
    assert record["long"] == 116.4
    assert record["agency_responsible"] == "城管执法队"
    assert record["status_notes"] == "已联系居民（****），噪音已制止"
    shown = repr(record)
    for private in ("张三", "12号", "501", "5678", "39.912345"):
        assert private not in shown


def test_only_the_public_channels_are_published():
    appeal = AppealReceived(ticket_no="20261130-000008", channel="hotline", text="楼下噪音很大影响休息")
    assert not open311.is_public(Ticket.from_appeal(appeal), frozenset({"open311"}))
    assert open311.is_public(
        Ticket.from_appeal(appeal.model_copy(update={"channel": "open311"})), frozenset({"open311"})
    )


@pytest.mark.integration
@pytest.mark.usefixtures("as_dispatch_desk")
async def test_open311_get_shows_no_hotline_ticket_and_no_residents_text(api):
    me = phone()
    text = f"李四，手机{me}，住幸福里5号楼2单元，楼道灯坏了一个月"
    r = await api.post("/api/v1/appeals", json={"caller_phone": me, "text": text, "address": "幸福里5号楼"})
    assert r.status_code == 201, r.text
    hotline = r.json()["ticket_no"]
    body = urlencode(
        {
            "api_key": KEY,
            "service_code": "city.facility.streetlight",
            "address_string": "阳光花园3号楼2单元",
            "description": f"阳光花园3号楼门口的路灯全部不亮，王五，电话{phone()}",
        }
    )
    r = await api.post("/open311/v2/requests.json", content=body, headers=FORM)
    assert r.status_code == 201, r.text
    public = r.json()[0]["service_request_id"]

    now = datetime.now(UTC)
    window = {
        "start_date": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_date": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    none = {"Authorization": ""}  # the public reads without a token
    listed = await api.get("/open311/v2/requests.json", params=window, headers=none)
    ids = [x["service_request_id"] for x in listed.json()]
    assert public in ids
    assert hotline not in ids
    for shown in (listed.text, (await api.get(f"/open311/v2/requests/{public}.json", headers=none)).text):
        for private in ("李四", "王五", "幸福里", "2单元", me):
            assert private not in shown
    r = await api.get(f"/open311/v2/requests/{hotline}.json", headers=none)
    assert r.status_code == 404
    r = await api.get("/open311/v2/requests.json", params={"service_request_id": hotline}, headers=none)
    assert r.json() == []

    async def placed():
        [record] = (await api.get(f"/open311/v2/requests/{public}.json", headers=none)).json()
        return record if record["address"] else None

    record = await eventually(placed)
    assert record["address"].startswith(CITY.district.name)
    assert record["description"] is None


@pytest.mark.integration
async def test_malformed_ticket_numbers_never_reach_the_store(api):
    for bad in ("20261130-1", "*", "t:1", "20261130-000001 "):
        r = await api.get(f"/open311/v2/requests/{bad}.json")
        assert r.status_code == 404
        assert r.json()[0]["error"] == "not_found"


# --- the caller-id salt -------------------------------------------------------------------------------


def test_production_refuses_the_public_salt():
    with pytest.raises(UnsafeSettings, match="CALLER_ID_SALT"):
        check_salt(Settings(appeals_env="production"))
    with pytest.raises(UnsafeSettings):
        check_salt(Settings(appeals_env="production", caller_id_salt="short"))
    # A store on another machine is a deployment, declared or not.
    with pytest.raises(UnsafeSettings):
        check_salt(Settings(redis_url="redis://redis.internal:6379/0"))
    check_salt(Settings(appeals_env="production", caller_id_salt="k" * 64))
    check_salt(Settings())  # this machine, the embedded servers: the demo salt is fine
    assert Settings().caller_id_salt == DEMO_CALLER_ID_SALT


# --- bounded work per request -------------------------------------------------------------------------


def xlsx(rows: list[list[object]]) -> bytes:
    wb = Workbook(write_only=True)
    ws = wb.create_sheet()
    for row in rows:
        ws.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def test_json_bodies_are_bounded_in_depth_and_numbers():
    for raw, words in [
        (b"[" * 100_000, "嵌套"),
        (b'{"text": ' + b"9" * 5000 + b"}", "数字"),
        (b'{"text": 1e999}', "范围"),
        (b'{"text": NaN}', "NaN"),
        (b'{"text": "\xff"}', "UTF-8"),
        (b'{"text": ', "JSON"),
    ]:
        with pytest.raises(BadRequest, match=words):
            parse_json(raw)
    assert parse_json(b'{"text": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "n": -1.5}') == {
        "text": "[" * 28,
        "n": -1.5,
    }


def test_uploads_are_read_within_rows_columns_time_and_unpacked_size():
    today = date(2026, 11, 30)
    header = ["box_id", "date", "text", "phone", "address"]
    rows = [[f"B{i}", "2026-11-20", "和平路的路灯坏了很多天", "", ""] for i in range(30)]
    small = batch.UploadLimits(rows=20)
    with pytest.raises(TooLarge, match="20行"):
        batch.read("slips.xlsx", "", io.BytesIO(xlsx([header, *rows])), today, small)
    # Blank rows count: a sheet whose last row is a million lines down is refused, not walked.
    far = io.BytesIO(xlsx([header, *[[None]] * 25, rows[0]]))
    with pytest.raises(TooLarge):
        batch.read("slips.xlsx", "", far, today, small)
    with pytest.raises(TooLarge, match="超时"):
        batch.read(
            "slips.xlsx", "", io.BytesIO(xlsx([header, *rows])), today, batch.UploadLimits(seconds=1e-9)
        )
    # Columns past the bound are not read: a row of 10,000 cells costs what a row of 50 does.
    wide = [[*header, *(f"x{i}" for i in range(10_000))], [*rows[0], *("y" for _ in range(10_000))]]
    [(line, slip)] = batch.read("w.xlsx", "", io.BytesIO(xlsx(wide)), today, batch.UploadLimits(columns=5))
    assert line == 2
    assert not isinstance(slip, InvalidAppeal)


def test_an_xlsx_whose_shared_strings_unpack_to_hundreds_of_megabytes_is_refused_unread():
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/sharedStrings.xml", b"<sst>" + b"A" * (64 * 1024 * 1024) + b"</sst>")
    assert bomb.tell() < 1024 * 1024  # a small upload...
    bomb.seek(0)
    with pytest.raises(TooLarge, match="文字内容过多"):  # ...refused from the zip's directory alone
        batch.read("bomb.xlsx", "", bomb, date(2026, 11, 30), batch.UploadLimits())


def test_an_oversized_csv_cell_is_a_reason_not_a_crash():
    big = b"box_id,date,text\nB1,2026-11-20," + b"x" * 200_000 + b"\n"
    with pytest.raises(BadFile, match="第2行"):
        batch.read("slips.csv", "text/csv", io.BytesIO(big), date(2026, 11, 30), batch.UploadLimits())


@pytest.mark.integration
async def test_bodies_over_their_endpoints_limit_are_refused_before_reading(api, redis, system):
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0999')}"}
    big = json.dumps({"text": "路灯坏了" * 100_000}).encode()
    as_json = {**operator, "content-type": "application/json"}
    r = await api.post("/api/v1/appeals", content=big, headers=as_json)
    assert r.status_code == 413
    assert r.json()["error"] == "too_large"
    assert "过大" in r.json()["message"]

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b" " * 10_000

    r = await api.post("/api/v1/appeals", content=chunks(), headers=as_json)
    assert r.status_code == 413
    assert r.json()["field"] == "body"
    # A 28 MB Open311 form, unauthenticated: refused from its Content-Length.
    r = await api.post("/open311/v2/requests.json", content=b"a=" + b"x" * 28_000_000, headers=FORM)
    assert r.status_code == 413


@pytest.mark.integration
async def test_an_upload_without_a_token_is_refused_before_its_body_is_sent(system):
    """Only the headers and a first kilobyte of a declared 5 MB upload are sent: the 401 must come
    back anyway, because the token is checked before the body is read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", system.api_port)
    try:
        writer.write(
            b"POST /api/v1/appeals/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000\r\n\r\n"
            + b"--b\r\n"
            + b"x" * 1000
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=20)
    finally:
        writer.close()
    assert status.split()[1] == b"401"


@pytest.mark.integration
async def test_a_client_that_hangs_up_mid_request_is_no_server_error(redis, system):
    """A browser closed while its appeal was still being sent: nothing taken, nobody to answer, and
    no traceback logged as a server error (there was one for every such request)."""
    log = system.log_dir / "api.log"
    seen = log.stat().st_size
    token = await issue_token(redis, "operator", operator="0997")
    _, writer = await asyncio.open_connection("127.0.0.1", system.api_port)
    writer.write(
        b"POST /api/v1/appeals HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"text": "\xe8\xb7\xaf'
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    def after() -> str:
        return log.read_bytes()[seen:].decode(errors="replace")

    async def told() -> bool:
        return "went away before its request was read" in after()

    await eventually(told, timeout=20)
    assert "Exception in ASGI application" not in after()


@pytest.mark.integration
async def test_health_keeps_answering_while_a_hostile_upload_is_read(api, redis):
    """20,000 rows, every one refused (so the old code never awaited between them): the read runs
    in a worker thread, and health answers again and again before the upload's answer comes."""
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0998')}"}
    rows = [["box_id", "date", "text"], *([f"B{i}", "2026-11-20", "短"] for i in range(19_999))]
    files = {"file": ("slips.xlsx", xlsx(rows), "application/octet-stream")}
    # The read may take long on a busy machine: the point is that health answers meanwhile.
    upload = asyncio.create_task(
        api.post("/api/v1/appeals/batch", files=files, headers=operator, timeout=180)
    )
    answered_meanwhile = 0
    while not upload.done():
        r = await api.get("/healthz")
        assert r.status_code == 200
        if not upload.done():
            answered_meanwhile += 1
        await asyncio.sleep(0.02)
    result = (await upload).json()
    assert result["rejected"] == 19_999
    assert answered_meanwhile >= 5


# --- idempotency that means it ------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_key_is_bound_to_its_body_and_scoped_to_its_caller(api, redis):
    def operator(op: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[op]}"}

    tokens = {op: await issue_token(redis, "operator", operator=op) for op in ("0301", "0302")}
    key = f"call-{random.random()}"
    first = {"caller_phone": phone(), "text": "建设路菜市场门口占道经营严重，车辆过不去"}
    r = await api.post("/api/v1/appeals", json=first, headers={**operator("0301"), "Idempotency-Key": key})
    assert r.status_code == 201
    no = r.json()["ticket_no"]
    # The same key with another appeal: refused with the reason, not answered with the old ticket.
    other = {"caller_phone": phone(), "text": "幸福里小区北门的垃圾站三天没清运了"}
    r = await api.post("/api/v1/appeals", json=other, headers={**operator("0301"), "Idempotency-Key": key})
    assert r.status_code == 422
    assert r.json()["error"] == "idempotency_key_reused"
    assert r.json()["field"] == "Idempotency-Key"
    assert no in r.json()["message"]
    # Another operator's key of the same name is their own.
    r = await api.post("/api/v1/appeals", json=first, headers={**operator("0302"), "Idempotency-Key": key})
    assert r.status_code == 201
    assert r.json()["ticket_no"] != no
    # And the first operator's retry of the first body still gets the first ticket.
    r = await api.post("/api/v1/appeals", json=first, headers={**operator("0301"), "Idempotency-Key": key})
    assert r.status_code == 200
    assert r.json()["ticket_no"] == no


class FlakyRedis:
    """The session's Redis, until `broken`: then every use raises what redis-py raises when the
    server is gone."""

    def __init__(self, real: Redis) -> None:
        self.real = real
        self.broken = False

    def __getattr__(self, name: str) -> object:
        if self.broken:
            raise RedisConnectionError("Redis went away (test)")
        return getattr(self.real, name)


class BreaksRedisOnAck:
    """A publisher that, once the broker has acknowledged, takes Redis away: the moment between
    the publish and the answer."""

    def __init__(self, real: EventPublisher, redis: FlakyRedis) -> None:
        self.real = real
        self.redis = redis

    async def send_many(self, records: Sequence[tuple[str, bytes, bytes]]) -> list[asyncio.Future]:
        acked = await self.real.send_many(records)
        for a in acked:
            a.add_done_callback(lambda _: setattr(self.redis, "broken", True))
        return acked


@pytest.mark.integration
@pytest.mark.usefixtures("as_dispatch_desk")
async def test_a_retry_after_redis_failed_between_publish_and_answer_gets_the_same_ticket(
    settings, redis, api
):
    publisher = EventPublisher(settings, client_id="test-flaky")
    await publisher.start()
    try:
        flaky = FlakyRedis(redis)
        store = TicketStore(flaky)  # type: ignore[arg-type]
        failing = IntakeService(
            BreaksRedisOnAck(publisher, flaky),  # type: ignore[arg-type]
            store,
            timezone=settings.timezone,
        )
        me = phone()
        sub = validate(channel="hotline", text=f"阳光花园3号楼门口的路灯坏了，晚上很黑{me[-4:]}", phone=me)
        key = f"api:operator:0303:retry-{random.random()}"
        with pytest.raises(RedisConnectionError):
            await failing.submit(sub, key)  # published, then Redis failed: the client saw an error
        flaky.broken = False
        retry = IntakeService(publisher, TicketStore(redis), timezone=settings.timezone)
        no, created = await retry.submit(sub, key)
        again, _ = await retry.submit(sub, key)
        assert again == no
        assert created is False  # the number was the first attempt's

        async def routed():
            t = (await api.get(f"/api/v1/tickets/{no}")).json()
            return t if t.get("status") not in (None, "received") else None

        history = (await eventually(routed))["history"]
        assert [h["topic"] for h in history].count("appeal.received") == 1
        assert me not in json.dumps(history)
    finally:
        await publisher.stop()


# --- one error shape ----------------------------------------------------------------------------------


def assert_error_shape(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "field", "message"}
    assert any("\u4e00" <= ch <= "\u9fff" for ch in body["message"])  # said in Chinese
    return body


@pytest.mark.integration
async def test_every_refusal_has_the_one_error_shape(api, redis):
    assert_error_shape(await api.get("/api/v1/tickets/20261130-000001"), 401)
    admin = {"Authorization": f"Bearer {await issue_token(redis, 'admin')}"}
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0304')}"}
    assert assert_error_shape(await api.get("/api/v1/tickets/1", headers=admin), 404)["field"] == "ticket_no"
    assert_error_shape(await api.get("/api/v1/tickets/*:x", headers=admin), 404)
    assert_error_shape(await api.get("/api/v1/review", headers=operator), 403)
    assert_error_shape(await api.get("/no/such/path"), 404)
    assert_error_shape(await api.delete("/api/v1/appeals", headers=operator), 405)
    body = assert_error_shape(await api.post("/api/v1/appeals", json={"text": 5}, headers=operator), 422)
    assert body["field"] == "text"
    assert_error_shape(await api.post("/api/v1/appeals", json={"text": "短"}, headers=operator), 422)


@pytest.mark.integration
async def test_redis_away_is_a_503_with_retry_after(settings):
    """The API started against a Redis port nobody listens on: every request that needs Redis is
    a 503 that says to retry, not a 500."""
    app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for r in (
                await client.get("/healthz"),
                await client.get("/api/v1/tickets/20261130-000001", headers={"Authorization": "Bearer x"}),
                await client.post(
                    "/api/v1/appeals", json={"text": "路灯坏了很多天"}, headers={"Authorization": "Bearer x"}
                ),
            ):
                assert_error_shape(r, 503)
                assert int(r.headers["Retry-After"]) > 0


# --- text that says something -------------------------------------------------------------------------

_UNSEEN = st.characters(categories=["Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"]) | st.sampled_from(
    ["\u3164", "\u115f", "\u1160", "\uffa0", "\u034f", "\u180e", "\U000e0041", "\ufe0f"]
)


@given(st.text(alphabet=_UNSEEN, min_size=1, max_size=200), st.text(alphabet="路灯坏了", max_size=4))
@settings(max_examples=200, deadline=None)
def test_text_of_invisible_characters_is_refused_whatever_they_are(unseen: str, seen: str) -> None:
    """Fillers, format characters, marks and spaces of every kind, with at most four visible
    characters among them: refused as too short or empty, never made into a blank ticket."""
    mixed = "".join(a + b for a, b in zip(unseen, seen.ljust(len(unseen), "\u3164"), strict=False))
    for text in (unseen, mixed):
        with pytest.raises(InvalidAppeal) as e:
            validate(channel="hotline", text=text)
        assert e.value.field == "text"


def test_visible_characters_are_what_counts():
    assert visible_length("\u3164" * 10) == 0  # HANGUL FILLER: a letter by category, invisible
    assert visible_length("路灯\u200b\u2060坏了") == 4
    with pytest.raises(InvalidAppeal, match="空"):
        validate(channel="hotline", text="\u3164\u3164\u3164\u3164\u3164\u3164")
    assert validate(channel="hotline", text="路灯坏了好几天").text == "路灯坏了好几天"
    assert validate(channel="hotline", text="👨‍👩‍👧路灯坏了").text  # emoji count as what they show


# --- tokens, roles, channels --------------------------------------------------------------------------


@pytest.mark.integration
async def test_tokens_expire_and_can_be_listed_and_revoked(api, redis, settings):
    # Long enough for the first preview on a loaded machine (one second was not, once), then past it.
    issued = time.monotonic()
    short = await issue_token(redis, "operator", operator="0305", ttl_seconds=5)
    body = {"caller_phone": phone(), "text": "建设路菜市场门口占道经营严重，车辆过不去"}
    assert (await api.post("/api/v1/appeals/preview", json=body, headers=bearer(short))).status_code == 200
    await asyncio.sleep(max(0.0, issued + 5.5 - time.monotonic()))
    assert_error_shape(await api.post("/api/v1/appeals/preview", json=body, headers=bearer(short)), 401)

    kept = await issue_token(redis, "department", department="housing")
    env = settings_env(settings)
    listed = await cli(env, "token", "--list")
    [row] = [line for line in listed.splitlines() if "housing" in line and "department" in line][-1:]
    token_id = row.split()[0]
    assert kept not in listed  # the list names tokens, it never shows them
    assert "expires" in row
    assert "never" not in row  # minted with the default lifetime
    assert (await api.get("/api/v1/departments/housing/tickets", headers=bearer(kept))).status_code == 200
    await cli(env, "token", "--revoke", token_id)
    assert_error_shape(await api.get("/api/v1/departments/housing/tickets", headers=bearer(kept)), 401)
    assert token_id not in await cli(env, "token", "--list")
    # A grid worker's token names its grid; the grid is checked against the city's when minted.
    worker = (await cli(env, "token", "--grid-worker", "W088", "--grid", "s01c01g02")).strip()
    assert (await api.post("/api/v1/appeals/preview", json=body, headers=bearer(worker))).status_code == 200
    [row] = [line for line in (await cli(env, "token", "--list")).splitlines() if "W088" in line]
    assert "grid_worker" in row
    assert "s01c01g02" in row
    # Refused as the API refuses it, in its words (tests/test_access_units.py has every refusal).
    with pytest.raises(AssertionError, match="--grid: 没有编号为“nowhere”的网格"):
        await cli(env, "token", "--grid-worker", "W089", "--grid", "nowhere")
    with pytest.raises(AssertionError, match="--grid: 请选择网格员负责的网格"):
        await cli(env, "token", "--grid-worker", "W089")


@pytest.mark.integration
async def test_only_the_gateway_speaks_for_a_resident_and_the_channel_is_the_tokens(api, redis):
    admin = bearer(await issue_token(redis, "admin"))
    sms = {"phone": phone(), "text": "1"}
    r = await api.post("/api/v1/sms/inbound", json=sms, headers=admin)
    assert_error_shape(r, 403)
    assert "网关" in r.json()["message"]
    operator = bearer(await issue_token(redis, "operator", operator="0306"))
    body = {"channel": "wechat", "caller_phone": phone(), "text": "建设路菜市场门口占道经营严重，车辆过不去"}
    for token in (operator, admin):
        r = await api.post("/api/v1/appeals", json=body, headers=token)
        assert assert_error_shape(r, 422)["field"] == "channel"
    r = await api.post("/api/v1/appeals", json={**body, "channel": "hotline"}, headers=operator)
    assert r.status_code == 201


@pytest.mark.integration
async def test_a_plaintext_wechat_push_cannot_be_replayed_with_another_body(api):
    ts, nonce = str(int(time.time())), str(random.randint(10**8, 10**9))
    sig = hashlib.sha1("".join(sorted([WECHAT_TOKEN, ts, nonce])).encode()).hexdigest()
    params = {"signature": sig, "timestamp": ts, "nonce": nonce}

    def push(content: str, msg_id: int) -> bytes:
        return (
            "<xml><ToUserName><![CDATA[gh_12345hotline]]></ToUserName>"
            f"<FromUserName><![CDATA[oWx{msg_id}]]></FromUserName><CreateTime>{ts}</CreateTime>"
            f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>"
            f"<MsgId>{msg_id}</MsgId></xml>"
        ).encode()

    first = push("幸福里小区5号楼电梯坏了三天了，老人上下楼很困难", random.randint(10**15, 10**16))
    r = await api.post("/api/v1/channels/wechat", params=params, content=first)
    assert r.status_code == 200
    assert "工单号" in r.text
    assert (await api.post("/api/v1/channels/wechat", params=params, content=first)).status_code == 200
    forged = push("和平路的路灯全坏了，快来修", random.randint(10**15, 10**16))
    r = await api.post("/api/v1/channels/wechat", params=params, content=forged)
    assert r.status_code == 403
    assert "重放" in r.text


def test_a_neutralised_formula_keeps_its_leading_tab():
    sub, _ = batch.to_submission(
        {"box_id": "B1", "date": "2026-11-20", "text": '\t=HYPERLINK("http://x","路灯坏了很多天")'},
        date(2026, 11, 30),
    )
    assert sub.text.startswith("\t=")
    plain, _ = batch.to_submission(
        {"box_id": "B1", "date": "2026-11-20", "text": "\t 路灯坏了很多天 "}, date(2026, 11, 30)
    )
    assert plain.text == "路灯坏了很多天"


@pytest.mark.integration
async def test_a_slip_uploaded_again_with_another_address_says_which_ticket_it_matches(api, redis):
    operator = bearer(await issue_token(redis, "operator", operator="0307"))
    text = f"和平路菜市场门口的下水道堵了，污水漫到人行道上{random.randint(10**6, 10**7)}"

    def slips(address: str) -> dict[str, tuple[str, bytes, str]]:
        csv = f"box_id,date,text,phone,address\nB-09,2026-11-20,{text},,{address}\n".encode()
        return {"file": ("slips.csv", csv, "text/csv")}

    first = (await api.post("/api/v1/appeals/batch", files=slips("和平路"), headers=operator)).json()
    [row] = first["rows"]
    again = (await api.post("/api/v1/appeals/batch", files=slips("和平路"), headers=operator)).json()
    assert again["rows"] == [{"line": 2, "ticket_no": row["ticket_no"], "duplicate": True}]
    moved = (await api.post("/api/v1/appeals/batch", files=slips("建设路"), headers=operator)).json()
    [refused] = moved["rows"]
    assert refused["field"] == "address"
    assert row["ticket_no"] in refused["error"]
