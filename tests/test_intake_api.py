"""The hotline API (submit, preview with duplicates), SMS as a channel, limits and durability,
on the running system (real broker and Redis)."""

from __future__ import annotations

import asyncio
import io
import os
import random
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from PIL import Image

from services.intake import keys
from services.intake.domain import validate
from services.intake.limits import RateLimited, RateLimiter
from services.intake.photo_views import upload_limit
from services.intake.service import BrokerUnavailable, Claim, IntakeService
from services.router.rules import Precedent
from services.router.service import precedent_key
from shared.auth import issue_token
from shared.bus import EventPublisher
from shared.embedded import EmbeddedServers
from shared.events import json_of
from shared.photos import MAX_PER_ITEM, MAX_SIDE
from shared.privacy import caller_id
from shared.store import TicketStore
from tests.conftest import as_department, as_sms_gateway, eventually
from tests.test_photos import jpeg, with_gps_and_rotation
from tests.test_pipeline_e2e import outbox_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]


def phone() -> str:
    return f"137{random.randint(10**7, 10**8 - 1)}"


async def test_idempotency_key_returns_the_same_ticket(api):
    body = {
        "caller_phone": phone(),
        "text": "建设路菜市场门口占道经营严重，车辆过不去",
        "operator_id": "op-7",
    }
    key = f"call-{random.random()}"
    first = await api.post("/api/v1/appeals", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201
    retries = await asyncio.gather(
        *[api.post("/api/v1/appeals", json=body, headers={"Idempotency-Key": key}) for _ in range(3)]
    )
    assert {r.json()["ticket_no"] for r in retries} == {first.json()["ticket_no"]}
    assert {r.status_code for r in retries} == {200}


async def test_validation_errors_name_the_field(api):
    r = await api.post("/api/v1/appeals", json={"caller_phone": "12345", "text": "路灯坏了一个星期了很黑"})
    assert r.status_code == 422
    assert r.json()["field"] == "caller_phone"
    r = await api.post("/api/v1/appeals", json={"text": "  \u200b路灯\x00  "})
    assert r.status_code == 422
    assert r.json()["field"] == "text"
    assert "太短" in r.json()["message"]
    r = await api.post("/api/v1/appeals", json={"text": "很" * 5001})
    assert r.status_code == 422
    assert "太长" in r.json()["message"]
    r = await api.post(
        "/api/v1/appeals",
        content=b'{"text": "\xff\xfe\xfd\xfc\xfb\xfa"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert "UTF-8" in r.json()["message"]
    r = await api.post("/api/v1/appeals", content=b'{"text": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "JSON" in r.json()["message"]
    r = await api.post(
        "/api/v1/appeals", json={"caller_phone": "+86 010-6234 5678", "text": "𠀀生僻字也要能受理，谢谢😀"}
    )
    assert r.status_code == 201


async def test_preview_suggests_and_finds_duplicates(api, redis):
    text = "阳光花园3号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的，老人孩子都容易摔倒"
    me = phone()
    r = await api.post("/api/v1/appeals", json={"caller_phone": me, "text": text, "address": "阳光花园3号楼"})
    no = r.json()["ticket_no"]

    async def classified():
        t = (await api.get(f"/api/v1/tickets/{no}")).json()
        return t if t.get("grid") and t["grid"]["grid"] else None

    first = await eventually(classified)
    grid = first["grid"]["grid"]
    await eventually(lambda: redis.zscore(keys.grid_index(grid), no))

    # The same caller calls again about something else: their open ticket is shown.
    r = await api.post(
        "/api/v1/appeals/preview", json={"caller_phone": me, "text": "我之前反映的事情怎么样了，还没人来处理"}
    )
    assert r.status_code == 200, r.text
    assert {"ticket_no": no, "reason": "same_caller"}.items() <= r.json()["duplicates"][0].items()
    assert no in r.json()["hint"]
    # With two open, which one they ask after is for the operator to ask, not to guess.
    r = await api.post(
        "/api/v1/appeals", json={"caller_phone": me, "text": "小区门口的垃圾桶满了好几天没人清运"}
    )
    other = r.json()["ticket_no"]
    r = await api.post(
        "/api/v1/appeals/preview", json={"caller_phone": me, "text": "我之前反映的事情怎么样了"}
    )
    assert "来电人有2件工单正在办理（" in r.json()["hint"]
    assert {no, other} <= {d["ticket_no"] for d in r.json()["duplicates"] if d["reason"] == "same_caller"}

    # A neighbour reports the same light: near-identical text in the same grid.
    r = await api.post(
        "/api/v1/appeals/preview",
        json={
            "caller_phone": phone(),
            "address": "阳光花园3号楼",
            "text": "阳光花园3号楼门口路灯坏了一个多星期了，晚上出门黑漆漆的，老人和孩子容易摔倒",
        },
    )
    p = r.json()
    assert p["category"]["id"]
    assert p["grid"]["grid"] == grid
    assert p["department"]["name"]
    dup = next(d for d in p["duplicates"] if d["ticket_no"] == no)
    assert dup["reason"] == "similar_text"
    assert dup["similarity"] >= 0.6
    assert no in p["hint"]
    assert me not in r.text

    # A different problem in the same grid is not a duplicate.
    r = await api.post(
        "/api/v1/appeals/preview",
        json={
            "caller_phone": phone(),
            "address": "阳光花园3号楼",
            "text": "阳光花园3号楼楼下有人摆摊卖菜，占用消防通道",
        },
    )
    assert no not in [d["ticket_no"] for d in r.json()["duplicates"]]

    # The same light in other words: not near-identical, but an open ticket of its kind in the grid
    # (the latest few), for the operator to check; the caller is not told it is being handled.
    r = await api.post(
        "/api/v1/appeals/preview",
        json={
            "caller_phone": phone(),
            "address": "阳光花园3号楼",
            "text": "阳光花园这边路灯不亮，天黑走路看不见",
        },
    )
    p = r.json()
    assert (p["category"]["id"], p["grid"]["grid"]) == (first["category"], grid)
    kin = [d for d in p["duplicates"] if d["reason"] == "same_category"]
    assert 1 <= len(kin) <= 3
    if p["duplicates"][0]["reason"] == "same_category":
        assert "hint" not in p


async def test_sms_without_a_pending_survey_becomes_an_appeal(api, redis):
    me = phone()
    gateway = await as_sms_gateway(redis)
    r = await api.post(
        "/api/v1/sms/inbound",
        json={"phone": me, "text": "幸福路公交站的站牌被撞坏了，请派人修一下"},
        headers=gateway,
    )
    assert r.status_code == 201, r.text
    t = (await api.get(f"/api/v1/tickets/{r.json()['ticket_no']}")).json()
    assert t["channel"] == "sms"
    assert t["caller"]["masked_phone"] == f"{me[:3]}****{me[-4:]}"
    r = await api.post("/api/v1/sms/inbound", json={"phone": me, "text": "好"}, headers=gateway)
    assert r.status_code == 422
    assert r.json()["field"] == "text"


async def test_the_providers_repeat_of_an_sms_gets_the_first_answer_and_nothing_twice(api, redis):
    """A provider posts a message again when our answer did not reach it: with the message's id the
    repeat registers no second appeal and texts no second progress answer; a refused message is
    handled anew (nothing was answered), and another sender's message with the same id is theirs."""
    me, gateway = phone(), await as_sms_gateway(redis)
    appeal = {"phone": me, "text": "幸福路公交站的站牌被撞坏了，请派人修一下", "message_id": "mo-1"}
    first = await api.post("/api/v1/sms/inbound", json=appeal, headers=gateway)
    again = await api.post("/api/v1/sms/inbound", json=appeal, headers=gateway)
    assert (first.status_code, again.status_code) == (201, 201), again.text
    assert again.json() == first.json()
    no = first.json()["ticket_no"]
    query = {"phone": me, "text": "查询", "message_id": "mo-2"}
    answers = [await api.post("/api/v1/sms/inbound", json=query, headers=gateway) for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["tickets"] == [no]  # the repeat made no second ticket to list
    assert len(await outbox_for(redis, me, "query")) == 1
    # Refused (too short to be an appeal): nothing answered, so the repeat is read again.
    short = {"phone": me, "text": "好", "message_id": "mo-3"}
    for _ in range(2):
        r = await api.post("/api/v1/sms/inbound", json=short, headers=gateway)
        assert r.status_code == 422
        assert r.json()["field"] == "text"
    # Another sender, the same id: their own message.
    other = await api.post("/api/v1/sms/inbound", json={**appeal, "phone": phone()}, headers=gateway)
    assert other.status_code == 201
    assert other.json()["ticket_no"] != no


async def test_too_many_appeals_from_one_caller_are_refused(api, redis):
    me = phone()
    codes = []
    for i in range(31):  # the default limit is 30 per caller per hour
        r = await api.post(
            "/api/v1/appeals", json={"caller_phone": me, "text": f"第{i}次反映：楼下噪音很大影响休息"}
        )
        codes.append(r.status_code)
    assert codes[:30] == [201] * 30
    assert codes[30] == 429
    assert int(r.headers["Retry-After"]) > 0
    assert "过多" in r.json()["message"]
    # The same caller through another channel is limited too.
    r = await api.post(
        "/api/v1/sms/inbound",
        json={"phone": me, "text": "再反映一次楼下噪音很大影响休息"},
        headers=await as_sms_gateway(redis),
    )
    assert r.status_code == 429


async def test_ip_limit(settings, redis):
    limiter = RateLimiter(redis, per_caller_per_hour=2, per_ip_per_minute=3)
    ip = f"10.9.{random.randint(0, 255)}.{random.randint(0, 255)}"
    for _ in range(3):
        await limiter.check_ip(ip)
    with pytest.raises(RateLimited) as e:
        await limiter.check_ip(ip)
    assert e.value.retry_after <= 61
    assert "频繁" in e.value.message
    who = f"caller-{random.random()}"
    assert await limiter.callers_over([who, who]) == {}
    assert who in await limiter.callers_over([who])


async def test_broker_unreachable_means_503_and_nothing_half_written(settings, redis, tmp_path):
    """A broker of its own, connected and then stopped: the real client fails to publish."""
    with EmbeddedServers(log_dir=tmp_path) as own:
        broker = EventPublisher(
            settings.model_copy(update={"kafka_bootstrap_servers": own.kafka_bootstrap}),
            client_id="test-dead",
        )
        await broker.start()
        try:
            next(p for p in own.processes if p.name == "kafka").stop()
            intake = IntakeService(broker, TicketStore(redis), timezone=settings.timezone, publish_timeout=3)
            me = phone()
            sub = validate(channel="open311", text=f"路灯坏了一个星期了，晚上很黑{me}", phone=me)
            key = f"api:dead-{random.random()}"
            before = await redis.zcard(keys.PUBLIC_BY_TIME)
            with pytest.raises(BrokerUnavailable):
                await intake.submit(sub, key)
            # The claim keeps the number, unanswered: a retry with the key publishes that number again.
            claim = Claim.loads(await redis.get(keys.idempotency(key)))
            assert claim is not None
            assert claim.done is False
            assert claim.digest == sub.digest()
            assert await redis.exists(f"contact:{caller_id(me)}") == 0
            assert await redis.zcard(keys.PUBLIC_BY_TIME) == before
        finally:
            await broker.stop()


async def test_registering_appeals_needs_an_operators_token_and_it_opens_nothing_else(api, redis):
    """The preview lists a caller's open appeals: without a staff token anyone could read them by
    typing a phone number. The operator's id comes from the token, not from what the client says."""
    from shared.auth import issue_token

    me = phone()
    body = {
        "caller_phone": me,
        "text": "阳光花园3号楼门口的路灯坏了一个星期，晚上很黑",
        "operator_id": "someone-else",
    }
    none = {"Authorization": ""}
    for path in ("/api/v1/appeals", "/api/v1/appeals/preview"):
        assert (await api.post(path, json=body, headers=none)).status_code == 401
    files = {"file": ("slips.csv", b"box_id,date,text,phone,address\n", "text/csv")}
    assert (await api.post("/api/v1/appeals/batch", files=files, headers=none)).status_code == 401
    gateway = {"Authorization": f"Bearer {await issue_token(redis, 'sms_gateway')}"}
    r = await api.post("/api/v1/appeals/preview", json=body, headers=gateway)
    assert r.status_code == 403
    assert "话务员" in r.json()["message"]

    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0231')}"}
    r = await api.post("/api/v1/appeals", json=body, headers=operator)
    assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]
    assert (await api.post("/api/v1/appeals/preview", json=body, headers=operator)).json()["duplicates"][0][
        "ticket_no"
    ] == no
    assert (await api.get(f"/api/v1/tickets/{no}", headers=operator)).status_code == 404  # reads nothing
    assert (await api.get("/api/v1/review", headers=operator)).status_code == 403
    assert (await api.get(f"/api/v1/tickets/{no}")).json()["operator_id"] == "0231"


# --- photos ----------------------------------------------------------------------------------------


def upload(*files: tuple[str, bytes, str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", f) for f in files]


def a_phone_photo() -> bytes:
    """What a phone sends: 6 megapixels that do not compress (noise), a few megabytes, with GPS."""
    exif = Image.Exif()
    exif.get_ifd(0x8825)[2] = (39.0, 54.0, 26.0)
    out = io.BytesIO()
    Image.frombytes("RGB", (3000, 2000), os.urandom(3000 * 2000 * 3)).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


async def test_photos_are_kept_clean_and_go_with_the_appeal_and_its_resolution(api, redis):
    # A phone's photo, far over the API's usual body limit, goes through, kept smaller and clean.
    raw = a_phone_photo()
    assert len(raw) > 1024 * 1024
    r = await api.post("/api/v1/photos", files=upload(("现场.jpg", raw, "image/jpeg")))
    assert r.status_code == 200, r.text
    [big] = r.json()["photos"]
    assert (big["width"], big["height"]) == (MAX_SIDE, MAX_SIDE * 2 // 3)

    # Two at once, by an operator: the ids in the order sent.
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0232')}"}
    r = await api.post(
        "/api/v1/photos",
        files=upload(
            ("门口.jpg", with_gps_and_rotation(), "image/jpeg"),
            ("b.jpg", jpeg(color=(9, 9, 9)), "image/jpeg"),
        ),
        headers=operator,
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["photos"]
    assert (first["width"], first["height"]) == (300, 400)
    got = await api.get(f"/api/v1/photos/{first['photo_id']}", headers=operator)
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/jpeg"
    assert got.headers["cache-control"] == "private, max-age=86400, immutable"
    kept = Image.open(io.BytesIO(got.content))
    assert kept.format == "JPEG"
    assert dict(kept.getexif()) == {}  # the position the phone wrote is gone
    thumb = await api.get(f"/api/v1/photos/{first['photo_id']}", params={"size": "thumb"}, headers=operator)
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 320
    assert len(thumb.content) < len(got.content)

    # Refusals, in the API's one shape and in Chinese.
    r = await api.post("/api/v1/photos", files=upload(("清单.txt", "这不是照片".encode(), "text/plain")))
    assert r.status_code == 422
    assert r.json()["field"] == "photos"
    assert "清单.txt" in r.json()["message"]
    assert "无法识别为图片" in r.json()["message"]
    r = await api.post(
        "/api/v1/photos", files=upload(*[(f"{i}.jpg", jpeg(), "image/jpeg") for i in range(10)])
    )
    assert r.status_code == 400
    assert f"最多{MAX_PER_ITEM}张" in r.json()["message"]
    none = {"Authorization": ""}
    assert (
        await api.post("/api/v1/photos", files=upload(("a.jpg", jpeg(), "image/jpeg")), headers=none)
    ).status_code == 401
    assert (await api.get(f"/api/v1/photos/{first['photo_id']}", headers=none)).status_code == 401
    r = await api.get("/api/v1/photos/not-an-id")
    assert r.status_code == 422
    assert r.json()["field"] == "photo_id"
    r = await api.get(f"/api/v1/photos/{'0' * 32}")
    assert r.status_code == 404
    assert "照片不存在" in r.json()["message"]

    # An appeal names its photos; an id that names no kept photo is refused before any number.
    text = "阳光花园3号楼门口的路灯杆被车撞歪了，随时可能倒下"
    r = await api.post(
        "/api/v1/appeals",
        json={"caller_phone": phone(), "text": text, "photos": [first["photo_id"], "f" * 32]},
    )
    assert r.status_code == 422
    assert r.json()["field"] == "photos"
    assert "重新上传" in r.json()["message"]
    r = await api.post(
        "/api/v1/appeals",
        json={
            "caller_phone": phone(),
            "text": text,
            "address": "阳光花园3号楼",
            "photos": [first["photo_id"], second["photo_id"]],
        },
        headers=operator,
    )
    assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]

    async def assigned():
        t = (await api.get(f"/api/v1/tickets/{no}")).json()
        return t if t.get("status") == "assigned" else None

    ticket = await eventually(assigned, timeout=60)
    assert ticket["photos"] == [first["photo_id"], second["photo_id"]]
    assert ticket["resolution_photos"] == []

    # The department resolves with a photo of the result: an unknown one is refused, nothing changes.
    department = await as_department(redis, ticket)
    r = await api.post(
        f"/api/v1/tickets/{no}/resolve", json={"note": "已扶正灯杆", "photos": ["e" * 32]}, headers=department
    )
    assert r.status_code == 422
    assert "重新上传" in r.json()["message"]
    assert (await api.get(f"/api/v1/tickets/{no}")).json()["status"] == "assigned"
    r = await api.post("/api/v1/photos", files=upload(("after.png", png(), "image/png")), headers=department)
    assert r.status_code == 200, r.text
    [after] = r.json()["photos"]
    r = await api.post(
        f"/api/v1/tickets/{no}/resolve",
        json={"note": "已扶正灯杆并加固", "photos": [after["photo_id"]]},
        headers=department,
    )
    assert r.status_code == 200, r.text
    assert r.json()["resolution_photos"] == [after["photo_id"]]
    resolved = next(h for h in r.json()["history"] if h.get("action") == "resolved")
    assert resolved["photos"] == [after["photo_id"]]
    assert (await api.get(f"/api/v1/photos/{after['photo_id']}", headers=department)).status_code == 200
    gateway = await as_sms_gateway(redis)
    assert (await api.get(f"/api/v1/photos/{after['photo_id']}", headers=gateway)).status_code == 403


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (64, 48), (0, 128, 0, 128)).save(out, "PNG")
    return out.getvalue()


async def declared_length(base_url: str, path: str, length: int, token: str) -> bytes:
    """The status line the API answers to a body declared `length` bytes long, before any is sent."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()


async def test_photo_uploads_have_a_body_limit_of_their_own(api, settings, redis):
    token = await issue_token(redis, "admin")
    limit = upload_limit(settings)
    status = await declared_length(str(api.base_url), "/api/v1/photos", limit + 1, token)
    assert b" 413 " in status
    r = await api.post(
        "/api/v1/photos",
        content=b"x" * (settings.max_body_bytes + 1),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 400  # past the usual limit: read, and refused for what it is (no photo)
    r = await api.post(
        "/api/v1/photos", files=upload(("大.jpg", b"\xff" * (settings.photo_max_bytes + 1), "image/jpeg"))
    )
    assert r.status_code == 413
    assert r.json()["field"] == "photos"
    assert "“大.jpg”太大" in r.json()["message"]
    # The console's forms that carry photos take as much; its other forms keep the usual limit.
    for path, refused in (
        ("/console/operator/appeals", False),
        ("/console/tickets/20261130-000001/resolve", False),
        ("/console/tickets/20261130-000001/accept", True),
    ):
        line = await declared_length(str(api.base_url), path, settings.max_body_bytes * 2, token)
        assert (b" 413 " in line) is refused, (path, line)


async def test_the_preview_proposes_the_lead_a_joint_meeting_named_for_the_cluster(api, redis):
    """先例 in the operator's preview: a joint meeting named the lead of this category in this grid,
    so the preview proposes that lead, as the router will assign it, and says a meeting decided it."""
    body = {
        "caller_phone": phone(),
        "address": "阳光花园3号楼",
        "text": "阳光花园3号楼门口路灯坏了好几天，晚上一片漆黑",
    }
    before = (await api.post("/api/v1/appeals/preview", json=body)).json()
    category, grid = before["category"]["id"], before["grid"]["grid"]
    assert grid
    assert before["department"]["via"] == "rule"
    assert before["department"]["precedent"] is None
    lead = "power" if before["department"]["id"] != "power" else "urban_mgmt"
    key = precedent_key(category, grid)
    decided = Precedent(
        category=category, grid=grid, lead=lead, meeting_id="M00000000000042", decided_at=datetime.now(UTC)
    )
    await redis.set(key, json_of(decided), ex=600)
    try:
        p = (await api.post("/api/v1/appeals/preview", json=body)).json()["department"]
        assert p["id"] == lead
        assert p["explanation"].startswith("按联席会议（会议编号M00000000000042）确定的主办单位派单：")
        assert p["precedent"]["meeting_id"] == "M00000000000042"
        assert p["precedent"]["until"] > p["precedent"]["decided_at"]
        assert p["contested_by"] == []
    finally:
        await redis.delete(key)
    assert (await api.post("/api/v1/appeals/preview", json=body)).json()["department"]["precedent"] is None
