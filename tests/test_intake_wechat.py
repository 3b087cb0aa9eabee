"""WeChat official account channel, through the running API with real signed XML pushes."""

from __future__ import annotations

import hashlib
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from services.intake.wechat_media import allowed
from shared.settings import Settings
from tests.conftest import eventually
from tests.loopback import QuietHandler, serving
from tests.test_photos import jpeg, unique_color

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]
TOKEN = "test-wechat-token"  # the settings fixture's WECHAT_TOKEN
URL = "/api/v1/channels/wechat"


def signed(timestamp: int | None = None, token: str = TOKEN) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = str(random.randint(10**8, 10**9))
    sig = hashlib.sha1("".join(sorted([token, ts, nonce])).encode()).hexdigest()
    return {"signature": sig, "timestamp": ts, "nonce": nonce, "openid": "ignored"}


def push(openid: str, msg_type: str, body: str, msg_id: int | None = None) -> bytes:
    msg_id = msg_id or random.randint(10**15, 10**16)
    return (
        f"<xml><ToUserName><![CDATA[gh_12345hotline]]></ToUserName>"
        f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{int(time.time())}</CreateTime>"
        f"<MsgType><![CDATA[{msg_type}]]></MsgType>{body}<MsgId>{msg_id}</MsgId></xml>"
    ).encode()


def text(openid: str, content: str, msg_id: int | None = None) -> bytes:
    return push(openid, "text", f"<Content><![CDATA[{content}]]></Content>", msg_id)


def reply_of(r) -> dict[str, str]:
    root = ET.fromstring(r.content)
    return {child.tag: child.text or "" for child in root}


def openid() -> str:
    return f"oWx{random.randint(10**12, 10**13)}"


async def seq(redis) -> int:
    """How many ticket numbers were handed out, every day's counter together: a test that reads it
    before and after may cross local midnight, where numbering moves on to the next day's counter."""
    keys = [k async for k in redis.scan_iter(match="seq:*")]
    return sum(int(v) for v in await redis.mget(keys) if v is not None) if keys else 0


async def test_url_verification_echoes_only_with_a_valid_signature(api):
    params = signed()
    r = await api.get(URL, params={**params, "echostr": "6214387651"})
    assert r.status_code == 200
    assert r.text == "6214387651"
    r = await api.get(URL, params={**signed(token="wrong"), "echostr": "6214387651"})
    assert r.status_code == 403
    assert "6214387651" not in r.text


async def test_text_message_becomes_an_appeal_and_a_replay_does_not(api):
    user = openid()
    body = text(user, "幸福里小区5号楼电梯坏了三天了，老人上下楼很困难，请尽快维修", msg_id=7001234567890123)
    r = await api.post(URL, params=signed(), content=body, headers={"content-type": "text/xml"})
    assert r.status_code == 200, r.text
    reply = reply_of(r)
    assert reply["ToUserName"] == user
    assert reply["FromUserName"] == "gh_12345hotline"
    assert reply["MsgType"] == "text"
    assert "工单号" in reply["Content"]
    ticket_no = reply["Content"].split("工单号：")[1][:15]
    # WeChat retries a push it got no answer to: same MsgId, same ticket.
    again = await api.post(URL, params=signed(), content=body, headers={"content-type": "text/xml"})
    assert ticket_no in reply_of(again)["Content"]
    assert "不会重复登记" in reply_of(again)["Content"]
    t = (await api.get(f"/api/v1/tickets/{ticket_no}")).json()
    assert t["channel"] == "wechat"
    assert t["caller"]["caller_id"]
    assert user not in r.text.replace(user, "", 1)
    assert user not in str(t)  # the openid is personal data: only its hash travels


async def test_voice_with_recognition_is_an_appeal_and_other_types_get_a_polite_reply(api):
    user = openid()
    voice = push(
        user,
        "voice",
        "<MediaId><![CDATA[m1]]></MediaId><Format><![CDATA[amr]]></Format>"
        "<Recognition><![CDATA[和平路十字路口的红绿灯不亮了，车辆很乱，很危险]]></Recognition>",
    )
    r = await api.post(URL, params=signed(), content=voice)
    assert r.status_code == 200
    assert "工单号" in reply_of(r)["Content"]
    video = push(
        user, "video", "<MediaId><![CDATA[m2]]></MediaId><ThumbMediaId><![CDATA[m3]]></ThumbMediaId>"
    )
    r = await api.post(URL, params=signed(), content=video)
    assert r.status_code == 200
    assert "文字" in reply_of(r)["Content"]
    assert "工单号" not in r.text


async def test_location_then_text_and_text_then_location(api):
    user = openid()
    loc = push(
        user,
        "location",
        "<Location_X>39.915</Location_X><Location_Y>116.404</Location_Y>"
        "<Scale>15</Scale><Label><![CDATA[阳光花园3号楼]]></Label>",
    )
    r = await api.post(URL, params=signed(), content=loc)
    assert "30分钟内" in reply_of(r)["Content"]
    r = await api.post(
        URL, params=signed(), content=text(user, "小区门口的井盖不见了，晚上很危险，有人差点掉进去")
    )
    no = reply_of(r)["Content"].split("工单号：")[1][:15]
    t = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert t["location"] == {"lng": 116.404, "lat": 39.915}
    assert t["address"] == "阳光花园3号楼"

    other = openid()
    r = await api.post(
        URL, params=signed(), content=text(other, "锦绣家园门口垃圾堆了好几天没人清运，气味很大")
    )
    no2 = reply_of(r)["Content"].split("工单号：")[1][:15]
    loc2 = push(
        other,
        "location",
        "<Location_X>39.92</Location_X><Location_Y>116.41</Location_Y>"
        "<Scale>15</Scale><Label><![CDATA[锦绣家园东门]]></Label>",
    )
    r = await api.post(URL, params=signed(), content=loc2)
    assert no2 in reply_of(r)["Content"]

    async def located():
        t = (await api.get(f"/api/v1/tickets/{no2}")).json()
        return t if t.get("location") == {"lng": 116.41, "lat": 39.92} else None

    t2 = await eventually(located)
    assert t2["address"] == "锦绣家园东门"
    assert "appeal.located" in [h["topic"] for h in t2["history"]]


@pytest.mark.parametrize("case", ["bad_signature", "stale", "malformed", "dtd", "utf8"])
async def test_rejected_pushes_publish_nothing(api, redis, case):
    user = openid()
    body = text(user, "这是一条不应被受理的诉求内容测试消息")
    params = signed()
    expected = 400
    if case == "bad_signature":
        params, expected = signed(token="not-the-token"), 403
    elif case == "stale":
        params, expected = signed(timestamp=int(time.time()) - 3600), 403
    elif case == "malformed":
        body = body[:-10]
    elif case == "dtd":
        body = b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaa">]>' + body.replace(
            b"<Content>", b"<Content>&a;"
        )
    elif case == "utf8":
        body = body.replace("诉求".encode(), b"\xff\xfe")
    before = await seq(redis)
    r = await api.post(URL, params=params, content=body)
    assert r.status_code == expected, r.text
    assert ET.fromstring(r.content).find("Error").text  # a reason, in XML
    assert await seq(redis) == before


async def test_too_short_text_gets_a_reply_saying_why(api):
    r = await api.post(URL, params=signed(), content=text(openid(), "路灯"))
    assert r.status_code == 200
    assert "太短" in reply_of(r)["Content"]


# --- safe mode (encrypted pushes) ---------------------------------------------------------------------

AES_KEY, APP_ID = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wx12345hotline"  # the settings fixture's


def encrypted(body: bytes, *, app_id: str = APP_ID, compatible: bool = False) -> tuple[dict[str, str], bytes]:
    """A push as WeChat sends it in safe mode (or compatible mode: the plaintext fields stay beside it)."""
    from services.intake.wechat_crypto import WeChatCrypto, msg_signature

    enc = WeChatCrypto(TOKEN, AES_KEY, app_id).encrypt(body.decode())
    params = signed()
    params.update(
        encrypt_type="aes", msg_signature=msg_signature(TOKEN, params["timestamp"], params["nonce"], enc)
    )
    inner = body.decode()[len("<xml>") : -len("</xml>")] if compatible else ""
    return params, (
        f"<xml><ToUserName><![CDATA[gh_12345hotline]]></ToUserName>{inner}"
        f"<Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    ).encode()


def decrypted_reply(r) -> dict[str, str]:
    from services.intake.wechat_crypto import WeChatCrypto, msg_signature

    envelope = reply_of(r)
    assert envelope["MsgSignature"] == msg_signature(
        TOKEN, envelope["TimeStamp"], envelope["Nonce"], envelope["Encrypt"]
    )
    inner = WeChatCrypto(TOKEN, AES_KEY, APP_ID).decrypt(envelope["Encrypt"])
    return {child.tag: child.text or "" for child in ET.fromstring(inner)}


@pytest.mark.parametrize("mode", ["safe", "compatible"])
async def test_an_encrypted_push_becomes_an_appeal_with_an_encrypted_reply(api, mode):
    user = openid()
    params, body = encrypted(
        text(user, "朝阳路88号门口的井盖丢了一个，晚上很危险，请尽快处理"), compatible=mode == "compatible"
    )
    r = await api.post(URL, params=params, content=body)
    assert r.status_code == 200, r.text
    assert "工单号" not in r.text  # the reply is encrypted too
    reply = decrypted_reply(r)
    assert reply["ToUserName"] == user
    assert "工单号" in reply["Content"]
    ticket_no = reply["Content"].split("工单号：")[1][:15]
    t = (await api.get(f"/api/v1/tickets/{ticket_no}")).json()
    assert t["channel"] == "wechat"
    assert "井盖" in t["text"]


@pytest.mark.parametrize("case", ["msg_signature", "other_account", "no_encrypt"])
async def test_an_encrypted_push_that_is_not_ours_publishes_nothing(api, redis, case):
    body = text(openid(), "这是一条不应被受理的加密诉求内容测试消息")
    params, enc_body = encrypted(body, app_id="wx0ther" if case == "other_account" else APP_ID)
    expected = 403
    if case == "msg_signature":
        params["msg_signature"] = "0" * 40
    elif case == "no_encrypt":
        enc_body, expected = body, 400  # says aes, carries plaintext only
    before = await seq(redis)
    r = await api.post(URL, params=params, content=enc_body)
    assert r.status_code == expected, r.text
    assert ET.fromstring(r.content).find("Error").text
    assert await seq(redis) == before


def test_safe_mode_is_off_without_a_key_and_a_bad_key_stops_the_api_with_the_reason(settings):
    from services.api import create_app
    from services.intake.wechat_views import safe_mode

    assert safe_mode(settings.model_copy(update={"wechat_encoding_aes_key": ""})) is None
    with pytest.raises(ValueError, match="43 characters"):
        create_app(settings.model_copy(update={"wechat_encoding_aes_key": "short"}))


# --- image messages: the picture fetched from WeChat's media host (here, a server on this machine) --


@pytest.fixture(scope="module")
def media_host() -> Iterator[str]:
    """WeChat's media host as far as the system knows: 127.0.0.1 is in the test settings'
    WECHAT_MEDIA_HOSTS. Serves /photo-N.jpg (a JPEG) and /notes.txt (not a picture)."""
    pictures: dict[str, tuple[bytes, str]] = {"/notes.txt": (b"not a picture", "text/plain")}

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # the standard library names it
            body, kind = pictures.get(self.path) or (jpeg(color=unique_color()), "image/jpeg")
            pictures.setdefault(self.path, (body, kind))
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as server:
        yield f"http://127.0.0.1:{server.server_port}"


def image(user: str, url: str) -> bytes:
    return push(
        user, "image", f"<PicUrl><![CDATA[{url}]]></PicUrl><MediaId><![CDATA[m{random.random()}]]></MediaId>"
    )


async def test_photos_before_the_text_go_with_it_and_after_it_onto_its_ticket(api, media_host):
    user = openid()
    r = await api.post(URL, params=signed(), content=image(user, f"{media_host}/photo-1.jpg"))
    assert reply_of(r)["Content"] == "已收到照片。请在30分钟内发送文字描述问题，我们会把照片附在诉求上。"
    r = await api.post(
        URL, params=signed(), content=text(user, "小区东门口的路灯杆被车撞歪了，随时可能倒下来")
    )
    no = reply_of(r)["Content"].split("工单号：")[1][:15]
    t = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert len(t["photos"]) == 1
    got = await api.get(f"/api/v1/photos/{t['photos'][0]}")
    assert got.headers["content-type"] == "image/jpeg"  # kept as any photo: decoded, a clean JPEG

    r = await api.post(URL, params=signed(), content=image(user, f"{media_host}/photo-2.jpg"))
    assert reply_of(r)["Content"] == f"已将照片补充到工单{no}。"
    t = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert len(t["photos"]) == 2
    assert "appeal.photos_added" in [h["topic"] for h in t["history"]]
    # The same message again (WeChat retries when the reply is slow): the photo is there once.
    r = await api.post(URL, params=signed(), content=image(user, f"{media_host}/photo-2.jpg"))
    assert len((await api.get(f"/api/v1/tickets/{no}")).json()["photos"]) == 2


async def test_a_picture_that_is_not_one_or_not_on_wechats_host_is_refused_in_words(api, media_host):
    user = openid()
    r = await api.post(URL, params=signed(), content=image(user, f"{media_host}/notes.txt"))
    assert "无法识别为图片" in reply_of(r)["Content"]
    # An address that is not WeChat's media host is not fetched at all.
    r = await api.post(URL, params=signed(), content=image(user, "http://169.254.169.254/latest/meta-data"))
    assert reply_of(r)["Content"] == "抱歉，照片未能接收，请稍后重新发送。"
    assert not allowed("http://169.254.169.254/x", Settings(wechat_media_hosts="mmbiz.qpic.cn"))
    assert not allowed("file:///etc/passwd", Settings(wechat_media_hosts="mmbiz.qpic.cn"))
    assert allowed("https://mmbiz.qpic.cn/mmbiz_jpg/x/0", Settings(wechat_media_hosts="mmbiz.qpic.cn"))
