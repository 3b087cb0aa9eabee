"""The WeChat official account's server-side message interface (the messages themselves). Pure functions.

WeChat signs every request to the server URL: `signature = sha1("".join(sorted([token, timestamp,
nonce])))`. It pushes user messages as XML:

    <xml><ToUserName><![CDATA[gh_account]]></ToUserName><FromUserName><![CDATA[openid]]></FromUserName>
    <CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>
    <Content><![CDATA[...]]></Content><MsgId>1234567890123456</MsgId></xml>

Location messages carry Location_X (latitude), Location_Y (longitude), Scale and Label; voice
messages carry Recognition when speech recognition is on. The passive reply is an XML text message
with To/From swapped, answered within 5 seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from xml.sax.saxutils import escape

MAX_BODY = 64 * 1024  # a text message is at most 2,048 characters; anything near this is not WeChat


class BadMessage(ValueError):
    """The push is not a WeChat message we can read (HTTP 400)."""


def signature(token: str, timestamp: str, nonce: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


def signature_ok(token: str, sig: str, timestamp: str, nonce: str) -> bool:
    # compare_digest refuses non-ASCII strings (a TypeError): such a signature is simply wrong.
    return (
        bool(token) and sig.isascii() and hmac.compare_digest(signature(token, timestamp, nonce), sig.lower())
    )


def timestamp_fresh(timestamp: str, now: float, max_skew: int) -> bool:
    """WeChat signs the current time; an old timestamp with a valid signature is a replay."""
    try:
        return abs(now - int(timestamp)) <= max_skew
    except ValueError:
        return False


@dataclass(frozen=True)
class Message:
    to_user: str  # the official account
    from_user: str  # the user's openid (personal data)
    create_time: int
    msg_type: str
    msg_id: str  # empty for events (subscribe etc.), which carry no MsgId
    content: str = ""  # text, or the voice's recognition result
    lat: float | None = None
    lng: float | None = None
    label: str = ""
    event: str = ""
    pic_url: str = ""  # an image message's picture, on WeChat's media host


# The events by which a user acts towards the account and so, as a message does, opens WeChat's 48
# hours of customer-service messages: following it, scanning its QR code, the menu's click and scan
# buttons. Not the others: unfollowing, a menu link (VIEW), the location the client reports by
# itself (LOCATION), WeChat's own reports (TEMPLATESENDJOBFINISH) are nothing the user sent.
WINDOW_EVENTS = frozenset({"subscribe", "scan", "click", "scancode_push", "scancode_waitmsg"})


def opens_window(message: Message) -> bool:
    """Whether WeChat lets the account write to the user for 48 hours from this push: any message
    they sent (text, voice, image, location, video…), and the events above."""
    return message.msg_type != "event" or message.event in WINDOW_EVENTS


def read_xml(body: bytes) -> ET.Element:
    """The push's XML root, refusing DTDs and entities (XML from the internet must not expand or fetch)."""
    if len(body) > MAX_BODY:
        raise BadMessage("消息过大")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage("消息不是有效的UTF-8编码") from None
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise BadMessage("消息不能包含DTD或实体声明")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise BadMessage(f"XML格式错误：{e}") from None
    if root.tag != "xml":
        raise BadMessage("根元素应为<xml>")
    return root


def parse(body: bytes) -> Message:
    return message(read_xml(body))


def message(root: ET.Element) -> Message:
    """The message in a push's XML root."""

    def field(name: str, required: bool = False) -> str:
        node = root.find(name)
        value = (node.text or "").strip() if node is not None else ""
        if required and not value:
            raise BadMessage(f"缺少字段{name}")
        return value

    msg_type = field("MsgType", True).lower()
    try:
        create_time = int(field("CreateTime", True))
    except ValueError:
        raise BadMessage("CreateTime应为整数") from None
    common = Message(
        to_user=field("ToUserName", True),
        from_user=field("FromUserName", True),
        create_time=create_time,
        msg_type=msg_type,
        msg_id=field("MsgId", msg_type != "event"),
    )
    if msg_type == "text":
        return replace(common, content=field("Content"))
    if msg_type == "voice":
        return replace(common, content=field("Recognition"))
    if msg_type == "image":
        return replace(common, pic_url=field("PicUrl", True))
    if msg_type == "location":
        try:
            lat, lng = float(field("Location_X", True)), float(field("Location_Y", True))
        except ValueError:
            raise BadMessage("Location_X/Location_Y应为数字") from None
        if not (-90 <= lat <= 90 and -180 <= lng <= 180):
            raise BadMessage("Location_X/Location_Y超出经纬度范围")
        return replace(common, lat=lat, lng=lng, label=field("Label"))
    return replace(common, event=field("Event").lower())


def text_reply(message: Message, content: str, now: int) -> str:
    """The passive reply: a text message back to the user, from the account they wrote to."""
    return (
        "<xml>"
        f"<ToUserName><![CDATA[{_cdata(message.from_user)}]]></ToUserName>"
        f"<FromUserName><![CDATA[{_cdata(message.to_user)}]]></FromUserName>"
        f"<CreateTime>{now}</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{_cdata(content)}]]></Content>"
        "</xml>"
    )


def _cdata(s: str) -> str:
    # "]]>" would end the CDATA section early; split it across two sections.
    return s.replace("]]>", "]]]]><![CDATA[>")


def error_reply(message: str) -> str:
    """Body for a request we could not read (no user to address): plain XML with the reason."""
    return f"<xml><Error>{escape(message)}</Error></xml>"


ACCEPTED = (
    "您的诉求已受理，工单号：{ticket_no}。我们会尽快转交相关部门办理，办理结果将通过本公众号告知；"
    "发送“查询”可随时查看办理进度。"
)
ALREADY = "您的诉求已受理，工单号：{ticket_no}（此消息已收到过，不会重复登记）。"
LOCATED_LAST = "已将位置“{label}”补充到工单{ticket_no}。"
LOCATED_NEXT = "已收到您的位置“{label}”。请在30分钟内发送文字描述问题，我们会把位置附在诉求上。"
WELCOME = (
    "您好，这里是12345市民服务热线。请直接发送文字或语音描述您的诉求，也可以发送位置帮助我们定位；"
    "发送“查询”可查看您的工单办理进度。"
)
UNSUPPORTED = "您好，目前只能受理文字、语音、图片和位置消息。请用文字或语音描述您的诉求，谢谢。"
PHOTO_LAST = "已将照片补充到工单{ticket_no}。"
PHOTO_NEXT = "已收到照片。请在30分钟内发送文字描述问题，我们会把照片附在诉求上。"
PHOTO_FAILED = "抱歉，照片未能接收，请稍后重新发送。"
NO_SPEECH = "抱歉，未能识别您的语音内容，请改用文字描述您的诉求。"
# The passive reply to a survey's answer (1/2/3, 满意…) sent in the chat.
SURVEY_THANKS = "感谢您的评价！工单{ticket_no}已办结。如有新的问题，欢迎随时在这里反映。"
SURVEY_REOPENED = "感谢您的评价。工单{ticket_no}将退回承办单位重新办理，办理结果会再通过本公众号告知您。"
