"""The WeChat official account's server URL: `GET` verifies the URL, `POST` receives user messages.

Safe and compatible modes (`encrypt_type=aes`): the push is decrypted and its reply encrypted
(services.intake.wechat_crypto); a wrong msg_signature or another account's AppID is 403.

Status codes: a request that is not from WeChat (bad signature, stale timestamp: 403) or not a
readable message (malformed XML, invalid UTF-8: 400) is refused and nothing is published. Problems
the *resident* must fix (text too short, too many appeals) are answered with HTTP 200 and a passive
reply saying so, because WeChat shows the user nothing but "该公众号暂时无法提供服务" for any other
status, and would retry the message three times. Broker down: 503, and WeChat's retry (same MsgId)
is then the resubmission.
"""

from __future__ import annotations

import hashlib
import logging
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from services.intake import keys, wechat, wechat_crypto, wechat_media
from services.intake.domain import InvalidAppeal, validate, wechat_caller_id
from services.intake.errors import BrokerUnavailable, KeyReused, RateLimited
from services.intake.photo_views import decode
from services.intake.queries import ProgressQueries
from services.intake.service import IntakeService
from services.notifier.inbound import InboundMessages
from services.notifier.survey import Inbound, answers_survey_in_chat, read_inbound
from shared.errors import Unavailable
from shared.events import GeoPoint
from shared.lookup_link import LookupLinks, day_number
from shared.metrics import APPEALS_REJECTED
from shared.photos import PhotoRefused
from shared.redis_client import text
from shared.settings import Settings

router = APIRouter(prefix="/api/v1/channels/wechat", tags=["wechat"])
XML = "application/xml; charset=utf-8"
log = logging.getLogger("intake.wechat")


def _xml(body: str, status: int = 200, **headers: str) -> Response:
    return Response(body, status_code=status, media_type=XML, headers=headers or None)


def safe_mode(settings: Settings) -> wechat_crypto.WeChatCrypto | None:
    """The decrypter for safe / compatible mode when WECHAT_ENCODING_AES_KEY is set; ValueError names
    what is wrong with the key or the AppID."""
    if not settings.wechat_encoding_aes_key:
        return None
    return wechat_crypto.WeChatCrypto(
        settings.wechat_token, settings.wechat_encoding_aes_key, settings.wechat_app_id
    )


def _verified(request: Request, signature: str, timestamp: str, nonce: str) -> Response | None:
    settings = request.app.state.settings
    if not settings.wechat_token:
        return _xml(wechat.error_reply("未配置WECHAT_TOKEN"), 503)
    if not wechat.signature_ok(settings.wechat_token, signature, timestamp, nonce):
        return _xml(wechat.error_reply("签名校验失败"), 403)
    if not wechat.timestamp_fresh(timestamp, time.time(), settings.wechat_max_clock_skew_seconds):
        return _xml(wechat.error_reply("时间戳已过期（疑似重放）"), 403)
    return None


@router.get("", response_class=PlainTextResponse)
async def verify_url(
    request: Request, signature: str = "", timestamp: str = "", nonce: str = "", echostr: str = ""
):
    refused = _verified(request, signature, timestamp, nonce)
    return refused or PlainTextResponse(echostr)


@router.post("")
async def receive(
    request: Request,
    signature: str = Query(""),
    timestamp: str = Query(""),
    nonce: str = Query(""),
    encrypt_type: str = Query(""),
    msg_signature: str = Query(""),
):
    refused = _verified(request, signature, timestamp, nonce)
    if refused:
        return refused
    crypto: wechat_crypto.WeChatCrypto | None = request.app.state.wechat_crypto
    body = await request.body()
    try:
        root = wechat.read_xml(body)
        aes = encrypt_type.lower() == "aes"
        encrypted = wechat_crypto.encrypted_field(root) if aes else None
        if encrypted is not None:
            if crypto is None:
                return _xml(wechat.error_reply("未配置WECHAT_ENCODING_AES_KEY，无法解密安全模式消息"), 503)
            if not crypto.signature_ok(msg_signature, timestamp, nonce, encrypted):
                return _xml(wechat.error_reply("消息签名（msg_signature）校验失败"), 403)
            root = wechat.read_xml(crypto.decrypt(encrypted))
        elif aes:
            raise wechat.BadMessage("encrypt_type=aes 的消息缺少Encrypt字段")
        elif not await _fresh_nonce(request, timestamp, nonce, body):
            APPEALS_REJECTED.labels(channel="wechat", reason="replay").inc()
            return _xml(wechat.error_reply("该签名已用于另一条消息（疑似重放）"), 403)
        msg = wechat.message(root)
    except wechat_crypto.CryptoError as e:
        APPEALS_REJECTED.labels(channel="wechat", reason="crypto").inc()
        return _xml(wechat.error_reply(str(e)), 403)
    except wechat.BadMessage as e:
        APPEALS_REJECTED.labels(channel="wechat", reason="xml").inc()
        return _xml(wechat.error_reply(str(e)), 400)
    now = int(time.time())
    intake: IntakeService = request.app.state.intake
    try:
        reply = await _handle(intake, msg, request.app.state)
    except BrokerUnavailable:
        await _wrote(request.app.state, msg)  # they wrote, whether or not we could take it
        return _xml(wechat.error_reply("系统繁忙，请稍后重试"), 503, **{"Retry-After": "5"})
    await _wrote(request.app.state, msg)
    if not reply:
        return PlainTextResponse("success")  # WeChat's "received, nothing to say", in every mode
    answer = wechat.text_reply(msg, reply, now)
    if encrypted is not None and crypto is not None:
        answer = crypto.reply(answer, now, nonce)  # an encrypted push gets an encrypted reply
    return _xml(answer)


async def _wrote(state: Any, msg: wechat.Message) -> None:
    """The user's push opened WeChat's 48 hours again: what the notifier kept for them while they
    could not be reached goes out at its next scan (`Notifier.wrote`, one Redis command: nothing is
    sent while WeChat waits for this reply). Never in the way of the reply: a failure here leaves
    the notices kept for the user's next message."""
    if not wechat.opens_window(msg):
        return
    try:
        await state.notifier.wrote(msg.from_user)
    except Exception as e:
        log.warning("notices kept for a WeChat user not scheduled: %s", type(e).__name__)


async def _fresh_nonce(request: Request, timestamp: str, nonce: str, body: bytes) -> bool:
    """Plaintext mode signs the timestamp and nonce, not the body: within the clock window anyone who
    saw one push could send another body under its signature. Each signed nonce is remembered with
    the hash of its body for as long as the window lasts: the same push again (WeChat's retry) is
    fine, another body under a used nonce is a replay."""
    digest = hashlib.sha256(body).hexdigest()
    window = 2 * request.app.state.settings.wechat_max_clock_skew_seconds
    redis = request.app.state.redis
    key = keys.wechat_nonce(timestamp, nonce)
    if await redis.set(key, digest, nx=True, ex=window):
        return True
    seen = await redis.get(key)
    return seen is not None and text(seen) == digest


async def _handle(intake: IntakeService, msg: wechat.Message, state: Any) -> str:
    """What to tell the user. Raises BrokerUnavailable."""
    if msg.msg_type == "image":
        return await _photo(intake, msg, state)
    if msg.msg_type == "location":
        label = msg.label or f"{msg.lat:.6f},{msg.lng:.6f}"
        point = GeoPoint(lat=msg.lat, lng=msg.lng)
        ticket_no = await intake.locate(wechat_caller_id(msg.from_user), msg.msg_id, point, label)
        template = wechat.LOCATED_LAST if ticket_no else wechat.LOCATED_NEXT
        return template.format(label=label, ticket_no=ticket_no)
    if msg.msg_type == "event":
        return wechat.WELCOME if msg.event == "subscribe" else ""
    if msg.msg_type not in ("text", "voice"):
        return wechat.UNSUPPORTED
    if msg.msg_type == "voice" and not msg.content:
        return wechat.NO_SPEECH
    # What the message is, read as an SMS is (`read_inbound`): a query, a survey's rating (one that
    # reads as a reply, `answers_survey_in_chat`), or else an appeal, as before surveys reached
    # WeChat (TD, words without a rating and a complaint that says 不满意 in passing included).
    inbound = read_inbound(msg.content)
    if inbound.query is not None:  # "查询", a ticket number: answered here, not registered as an appeal
        progress: ProgressQueries = state.progress
        # A WeChat resident has no phone digits for the lookup form: each ticket in the answer links
        # to its page, signed today, which is how they get a new link once the last one expired.
        links: LookupLinks | None = state.lookup_links
        link = partial(links.url, today=day_number(time.time())) if links else None
        try:
            return (await progress.answer(wechat_caller_id(msg.from_user), inbound.query, link)).text
        except RateLimited as e:
            return e.message
    if answers_survey_in_chat(inbound):
        thanks = await _survey_answer(msg, inbound, state)
        if thanks is not None:
            return thanks
    try:
        sub = validate(channel="wechat", text=msg.content, wechat_openid=msg.from_user)
        ticket_no, created = await intake.submit(sub, f"wechat:{msg.to_user}:{msg.msg_id}")
    except InvalidAppeal as e:
        APPEALS_REJECTED.labels(channel="wechat", reason=e.field or "").inc()
        return e.message
    except (RateLimited, KeyReused) as e:
        return e.message
    return (wechat.ACCEPTED if created else wechat.ALREADY).format(ticket_no=ticket_no)


async def _survey_answer(msg: wechat.Message, inbound: Inbound, state: Any) -> str | None:
    """The passive reply when the message answers the user's open survey (the notifier's
    `SurveyBook.answer_in_wechat`), else None. WeChat's retry of the same message (our reply did
    not reach it in 5 s) gets the same reply, as the survey is closed by then; a retry while the
    first is being handled gets none (WeChat shows the first reply). Raises BrokerUnavailable
    when the answer could not be published (the survey stays open for WeChat's retry)."""

    async def handle() -> tuple[int, dict[str, Any]]:
        try:
            answered = await state.notifier.surveys.answer_in_wechat(msg.from_user, inbound)
        except Exception:
            log.exception("WeChat survey answer not recorded")
            raise BrokerUnavailable() from None
        return 200, answered.model_dump(mode="json") if answered else {}

    first = await InboundMessages(state.redis).once(
        wechat_caller_id(msg.from_user), f"wechat:{msg.to_user}:{msg.msg_id}", handle
    )
    if first is None:
        return ""
    answer = first[1]
    if not answer:
        return None
    if answer.get("kind") == "which_ticket":  # several surveys open: which ticket it rates (kept pending)
        return str(answer["question"])
    reopened = answer["rating"] == 3 or answer["solved"] is False
    return (wechat.SURVEY_REOPENED if reopened else wechat.SURVEY_THANKS).format(
        ticket_no=answer["ticket_no"]
    )


async def _photo(intake: IntakeService, msg: wechat.Message, state: Any) -> str:
    """An image message: its picture fetched from WeChat's media host, kept as an upload is
    (`photo_views.decode`), and added to the user's last appeal or kept for their next one."""
    try:
        raw = await wechat_media.fetch_picture(msg.pic_url, state.settings)
        photo = await decode(state, raw)
        await state.photos.put(photo)
    except wechat_media.MediaRefused as e:
        log.warning("WeChat picture not fetched: %s", e)
        APPEALS_REJECTED.labels(channel="wechat", reason="photos").inc()
        return wechat.PHOTO_FAILED
    except PhotoRefused as e:
        APPEALS_REJECTED.labels(channel="wechat", reason="photos").inc()
        return e.message
    except Unavailable:
        return wechat.PHOTO_FAILED
    ticket_no = await intake.add_photo(wechat_caller_id(msg.from_user), msg.msg_id, photo.id)
    return wechat.PHOTO_LAST.format(ticket_no=ticket_no) if ticket_no else wechat.PHOTO_NEXT
