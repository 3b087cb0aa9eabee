"""Pure intake logic: WeChat signing and parsing, near-duplicate texts, slip rows, Open311 forms, and
when the preview asks for a caller's history."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import xml.etree.ElementTree as ET
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake import batch, open311, wechat
from services.intake.domain import InvalidAppeal, Submission
from services.intake.duplicates import NEAR_IDENTICAL, near_identical, similarity
from services.intake.preview import Previewer
from shared.privacy import caller_id
from tests.cities import demo_city

CITY = demo_city()


def test_signature_is_sha1_of_the_sorted_parts():
    expected = hashlib.sha1("".join(sorted(["tok", "1700000000", "42"])).encode()).hexdigest()
    assert wechat.signature("tok", "1700000000", "42") == expected
    assert wechat.signature_ok("tok", expected.upper(), "1700000000", "42")
    assert not wechat.signature_ok("tok", expected, "1700000001", "42")
    assert not wechat.signature_ok("", wechat.signature("", "1", "2"), "1", "2")  # no token, no trust
    assert wechat.timestamp_fresh("1000", 1200, 300)
    assert not wechat.timestamp_fresh("1000", 1400, 300)
    assert not wechat.timestamp_fresh("soon", 1000, 300)


def test_parse_location_and_reply_round_trip():
    msg = wechat.parse(
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oU1]]></FromUserName>"
        "<CreateTime>1351776360</CreateTime><MsgType><![CDATA[location]]></MsgType>"
        "<Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale>"
        "<Label><![CDATA[位置信息]]></Label><MsgId>1234567890123456</MsgId></xml>".encode()
    )
    assert (msg.lat, msg.lng, msg.label, msg.msg_id) == (
        23.134521,
        113.358803,
        "位置信息",
        "1234567890123456",
    )
    reply = ET.fromstring(wechat.text_reply(msg, "工单号：20240101-000001 ]]> 结束", 1700000000))
    assert reply.findtext("ToUserName") == "oU1"
    assert reply.findtext("FromUserName") == "gh_1"
    assert reply.findtext("Content") == "工单号：20240101-000001 ]]> 结束"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<xml><ToUserName>a</ToUserName>",
        b"<root/>",
        b"\xff<xml/>",
        b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><MsgType>text</MsgType>"
        b"<CreateTime>x</CreateTime><MsgId>1</MsgId></xml>",
        b'<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml>&e;</xml>',
    ],
)
def test_parse_refuses_what_is_not_a_wechat_message(body):
    with pytest.raises(wechat.BadMessage):
        wechat.parse(body)


def test_near_identical_texts():
    a = "阳光花园3号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的"
    assert near_identical(a, "阳光花园3号楼门口路灯坏了一个多星期了！晚上出门黑漆漆的。")
    assert not near_identical(a, "阳光花园3号楼楼下有人摆摊卖菜，占用消防通道")
    assert similarity("", a) == 0.0


@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_similarity_is_symmetric_and_bounded(a, b):
    assert similarity(a, b) == similarity(b, a)
    assert 0.0 <= similarity(a, b) <= 1.0


@given(st.text(alphabet=st.characters(categories=["Lo", "Nd"]), min_size=4, max_size=80))
def test_a_text_is_a_duplicate_of_itself(a):
    assert similarity(a, a) == 1.0 >= NEAR_IDENTICAL


def test_csv_rows_report_the_first_line_of_multiline_rows():
    data = (
        'text,日期,意见箱编号\n"第一行\n第二行的内容很长",2024-05-01,B1\n,,\n'
        "路灯不亮已经好几天,2024-05-02,B2\n"
    )
    rows = [(line, row) for line, row in batch.csv_rows(io.BytesIO(data.encode())) if row is not batch.BLANK]
    assert [line for line, _ in rows] == [2, 5]
    assert rows[0][1] == {"text": "第一行\n第二行的内容很长", "date": "2024-05-01", "box_id": "B1"}


def test_slip_validation():
    today = date(2024, 5, 10)
    sub, key = batch.to_submission(
        {"box_id": "B1", "date": "2024/5/1", "text": "路灯不亮已经好几天", "phone": 13812345678.0}, today
    )
    assert sub.phone == "13812345678"
    assert sub.channel == "box"
    assert "2024-05-01" in sub.title
    _, same = batch.to_submission(
        {"box_id": "B1", "date": "2024-05-01", "text": " 路灯不亮已经好几天 ", "phone": "138-1234-5678"},
        today,
    )
    assert key == same  # the same slip typed differently is the same row
    with pytest.raises(InvalidAppeal) as e:
        batch.to_submission({"box_id": "B1", "date": "2024-06-01", "text": "路灯不亮已经好几天"}, today)
    assert e.value.field == "date"
    with pytest.raises(batch.BadFile, match="box_id"):
        batch.header_map(["date", "text"])


def test_open311_form_to_submission():
    sub = open311.submission(
        CITY,
        {
            "service_code": "city.facility.manhole",
            "lat": "39.9",
            "long": "116.4",
            "description": "井盖丢了很危险啊",
            "first_name": "三",
            "last_name": "张",
            "phone": "13812345678",
        },
    )
    assert sub.location.lat == 39.9
    assert sub.title == "井盖缺失"
    assert sub.name == "张三"
    for form, field in [
        ({"service_code": "city"}, "service_code"),
        ({"service_code": "city.facility.manhole", "lat": "1"}, "lat"),
        ({"service_code": "city.facility.manhole"}, "lat"),
    ]:
        with pytest.raises(InvalidAppeal) as e:
            open311.submission(CITY, {"description": "井盖丢了很危险啊", **form})
        assert e.value.field == field
    codes = [s["service_code"] for s in open311.services(CITY)]
    assert codes == list(CITY.leaf_categories)
    assert "city.facility.streetlight" in codes


def test_intakes_decisions_import_no_io_client():
    """Validation, the location rule, parsers and keys stay pure: importing them loads no client of
    Redis, Kafka or HTTP (a fresh interpreter, so other tests' imports do not count)."""
    import subprocess
    import sys

    pure = [
        "domain",
        "errors",
        "duplicates",
        "open311",
        "wechat",
        "wechat_crypto",
        "batch",
        "keys",
        "media_rules",
    ]
    clients = ["redis", "aiokafka", "faststream", "httpx", "fastapi", "shared.store"]
    code = (
        "import importlib, sys\n"
        f"for m in {pure!r}: importlib.import_module('services.intake.' + m)\n"
        f"print(','.join(c for c in {clients!r} if c in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_location_goes_on_an_open_ticket_once_and_keeps_the_typed_address():
    from datetime import UTC, datetime

    from services.intake.domain import located
    from shared.events import AppealLocated, AppealReceived, GeoPoint
    from shared.tickets import Ticket

    appeal = AppealReceived(ticket_no="20261130-000001", channel="wechat", text="路灯坏了一个星期了")
    ticket = Ticket.from_appeal(appeal)
    place = AppealLocated(
        ticket_no=ticket.ticket_no,
        channel="wechat",
        location=GeoPoint(lat=39.9, lng=116.4),
        address="和平路",
        occurred_at=datetime(2026, 11, 30, tzinfo=UTC),
    )
    placed = located(ticket, place)
    assert placed is not None
    assert placed.location == place.location
    assert placed.address == "和平路"
    assert located(placed, place) is None  # the same message twice changes nothing
    typed = ticket.model_copy(update={"address": "和平路12号"})
    moved = located(typed, place)
    assert moved is not None
    assert moved.address == "和平路12号"
    closed = ticket.model_copy(update={"status": "closed"})
    assert located(closed, place) is None
    assert located(None, place) is None
    # Erased, its resident's later place is not its (`wx:last` outlives a notice that was lost).
    erased = ticket.model_copy(update={"personal_data_removed_at": datetime(2026, 11, 30, tzinfo=UTC)})
    assert located(erased, place) is None


def test_claims_written_before_they_held_json_still_resolve():
    from services.intake.service import Claim

    assert Claim.loads(b"pending") is None
    legacy = Claim.loads(b"20261130-000001")
    assert legacy == Claim("", "20261130-000001", done=True)
    current = Claim("abc", "20261130-000002", done=False)
    assert Claim.loads(current.dumps().encode()) == current


def test_an_idempotency_key_binds_to_the_photos_and_appeals_without_keep_their_digest():
    import dataclasses

    from services.intake.domain import validate

    plain = validate(channel="hotline", text="路灯坏了一个星期了很黑", phone="13812345678")
    # The hash of an appeal without photos is what it was before photos existed: claims made then
    # (kept 7 days) still match their retries.
    legacy = ["hotline", plain.text, "", "", "13812345678", None, None, False, None, None, None]
    assert plain.digest() == hashlib.sha256(json.dumps(legacy, ensure_ascii=False).encode()).hexdigest()
    one, other = "a" * 32, "b" * 32
    with_photo = dataclasses.replace(plain, photos=(one,))
    assert with_photo.digest() != plain.digest()
    assert with_photo.digest() != dataclasses.replace(plain, photos=(other,)).digest()
    assert with_photo.appeal("20261130-000001").photos == (one,)


def test_demo_slips_are_dated_by_the_city_s_day_not_the_machine_s(tmp_path):
    """The API refuses a slip dated after the city's today; a machine east of the city is a day
    ahead of it for some hours, so the demo file takes the city's day."""
    import csv

    from services.intake.upload import write_demo_csv

    city_today = date(2026, 3, 1)
    path = write_demo_csv(tmp_path / "slips.csv", 10, seed=1, today=city_today)
    with path.open(encoding="utf-8") as f:
        days = {date.fromisoformat(r["date"]) for r in csv.DictReader(f)}
    assert max(days) == city_today
    assert min(days) == date(2026, 2, 23)  # a week of slips, the oldest six days before


async def test_the_preview_asks_for_the_callers_history_only_with_a_phone_and_when_told(monkeypatch):
    """来电历史 comes with the preview for a phone the view says may have it (operators, the desk),
    asked by the caller id, never the phone; it is looked up while the text is classified."""
    asked: list[str] = []
    classifying = asyncio.Event()

    async def history(caller: str) -> dict:
        asked.append(caller)
        await classifying.wait()  # answers only once the suggestion is under way: the two overlap
        return {"last_30_days": 1, "last_365_days": 1, "tickets": []}

    async def suggest(sub: Submission) -> dict:
        classifying.set()
        return {"duplicates": []}

    previewer = Previewer(CITY, store=None, classifiers=None, history=history)  # type: ignore[arg-type]
    monkeypatch.setattr(previewer, "_suggest", suggest)
    phone = "13812345678"
    call = Submission(channel="hotline", text="阳光花园3号楼门口的路灯坏了", phone=phone)
    got = await asyncio.wait_for(previewer.preview(call, history=True), 5)
    assert got["history"] == {"last_30_days": 1, "last_365_days": 1, "tickets": []}
    assert asked == [caller_id(phone)]
    assert "history" not in await previewer.preview(call, history=False)  # a grid worker
    anonymous = Submission(channel="hotline", text="阳光花园3号楼门口的路灯坏了")
    assert "history" not in await previewer.preview(anonymous, history=True)
    assert asked == [caller_id(phone)]


def test_a_preview_goes_on_without_a_phone_it_cannot_read_and_says_so():
    """A mistyped digit in the phone does not cost the operator the suggestions: the preview is made
    without the phone (no caller to look up) and the phone's problem comes with it, in the error
    shape, at the field a submission would be refused at. What the preview cannot do without, the
    text, is still refused; a good phone is the caller's as ever."""
    from services.intake.domain import validate
    from services.intake.views import AppealIn, preview_of
    from shared.auth import Principal

    operator = Principal(role="operator", operator="op01")
    text = "阳光花园3号楼门口的路灯坏了一个星期"
    sub, problems = preview_of(AppealIn(caller_phone="12345", text=text), operator)
    assert (sub.channel, sub.text, sub.phone) == ("hotline", text, None)
    with pytest.raises(InvalidAppeal) as refused:
        validate(channel="hotline", text=text, phone="12345")
    assert problems == [
        {"error": "invalid_appeal", "field": "caller_phone", "message": refused.value.message}
    ]
    sub, problems = preview_of(AppealIn(caller_phone="138 1234 5678", text=text), operator)
    assert (sub.phone, problems) == ("13812345678", [])
    sub, problems = preview_of(AppealIn(caller_phone=" ", text=text), operator)  # none given: fine
    assert (sub.phone, problems) == (None, [])
    with pytest.raises(InvalidAppeal) as short:
        preview_of(AppealIn(caller_phone="12345", text="灯坏"), operator)
    assert short.value.field == "text"
    # A grid worker's report with a resident's phone mistyped: the same.
    worker = Principal(role="grid_worker", operator="w01", grid=next(iter(CITY.grids)))
    sub, problems = preview_of(AppealIn(caller_phone="0000", text=text), worker)
    assert (sub.channel, sub.phone, [p["field"] for p in problems]) == ("patrol", None, ["caller_phone"])
