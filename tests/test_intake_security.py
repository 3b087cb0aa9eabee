"""Hostile input, privacy and abuse at intake: what the public may read, how much work one request
may cause, idempotency that cannot drop an appeal, one error shape, text that says something."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest

from services.intake import open311
from shared.city import load_city
from shared.events import AppealReceived, DepartmentRef, GeoPoint, GridMatch
from shared.privacy import UnsafeSettings, check_salt
from shared.settings import DEMO_CALLER_ID_SALT, Settings
from shared.tickets import Ticket
from tests.conftest import eventually

KEY = "test-open311-key"  # the settings fixture's OPEN311_API_KEYS
FORM = {"content-type": "application/x-www-form-urlencoded"}
CITY = load_city()


def phone() -> str:
    return f"136{random.randint(10**7, 10**8 - 1)}"


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
    text = f"我叫李四，手机{me}，住幸福里5号楼2单元，楼道灯坏了一个月"
    r = await api.post("/api/v1/appeals", json={"caller_phone": me, "text": text, "address": "幸福里5号楼"})
    assert r.status_code == 201, r.text
    hotline = r.json()["ticket_no"]
    body = urlencode(
        {
            "api_key": KEY,
            "service_code": "city.facility.streetlight",
            "address_string": "阳光花园3号楼2单元",
            "description": f"阳光花园3号楼门口的路灯全部不亮，我是王五，电话{phone()}",
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
