"""The notifier's HTTP side: SMS from residents (progress queries, answered by SMS; survey replies
and opt-outs; anything else goes to intake as a new appeal), the provider's delivery receipts, the
outbox (embedded mode) and the scorecard (the three rates)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.intake.errors import BrokerUnavailable
from services.intake.sms import SmsIntake
from services.intake.views import counting_rejections
from services.notifier.gateway import OutboxGateway
from services.notifier.inbound import Answer, InboundMessages
from services.notifier.scorecard import Scorecard
from services.notifier.service import Notifier
from services.notifier.survey import read_inbound
from services.notifier.surveys import CALL_ANSWER_REQUIRED, CALL_ATTEMPTS, Call
from services.notifier.wechat_gateway import WeChatOutbox
from shared.auth import Principal, require_admin, require_resident_sms, require_role, require_sms_gateway
from shared.errors import DomainError
from shared.http import api_error, domain_error
from shared.periods import stats_period
from shared.privacy import InvalidPhone, StaffText, caller_id, mask_phone, normalize_phone
from shared.spreadsheets import Bracketed, Format, Percent, download, each

router = APIRouter(prefix="/api/v1", tags=["sms"])
log = logging.getLogger(__name__)


class InboundSms(BaseModel):
    phone: str
    text: str = Field(max_length=1000)
    message_id: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="the provider's id of this inbound message: its repeat gets the first answer",
    )


class Receipt(BaseModel):
    message_id: str = Field(description="our message id, sent to the provider as client_ref")
    status: Literal["delivered", "failed"]
    error: str = ""


# Those who take residents' calls: operators, and the desk. They phone back the residents who have
# not answered the SMS survey, and resend a caller's 受理短信.
require_callers = require_role(
    "operator", "admin", refusal="只有话务员（或派单中心）可以电话回访或补发受理短信"
)


def _bad_phone(e: InvalidPhone, field: str = "phone") -> JSONResponse:
    return api_error(422, "invalid_phone", str(e), field=field)


@router.post("/sms/inbound")
async def inbound_sms(body: InboundSms, request: Request, _: Principal = Depends(require_resident_sms)):
    try:
        phone = normalize_phone(body.phone)
    except InvalidPhone as e:
        return _bad_phone(e)
    handle = partial(_handle_sms, request, phone, body.text, body.message_id)
    if body.message_id is None:
        answered = await handle()
    else:  # the provider's repeat of a message gets the first answer
        messages = InboundMessages(request.app.state.redis)
        first = await messages.once(caller_id(phone), body.message_id, handle)
        if first is None:
            return api_error(409, "in_progress", f"短信{body.message_id}正在处理，请稍后重试")
        answered = first
    status, content = answered
    return JSONResponse(content, status_code=status)


async def _handle_sms(request: Request, phone: str, text: str, message_id: str | None) -> Answer:
    """The status and body of the answer to one inbound SMS."""
    notifier: Notifier = request.app.state.notifier
    sms_intake: SmsIntake = request.app.state.sms_intake
    # What the message is, read as WeChat reads it (`read_inbound`). A progress query first: it is
    # never a survey's answer (a "1", "满意" or "TD" is no query, see services.intake.progress), and
    # a resident with a survey open may still ask how things stand.
    inbound = read_inbound(text)
    if inbound.query is not None:
        answer = await sms_intake.query(phone, inbound.query)
        sent = await notifier.answer_query(phone, answer.text, answer.ticket_nos)
        return 200, {"kind": "query", "tickets": list(answer.ticket_nos), "sms": sent}
    try:
        answered = await notifier.surveys.reply(phone, inbound)
    except Exception:  # the broker did not take the answer: the provider retries the SMS
        log.exception("survey reply not recorded")
        raise BrokerUnavailable() from None
    if answered is not None:
        return 200, answered.model_dump(mode="json")
    # Not about a survey: a new appeal by SMS, which is intake's.
    with counting_rejections("sms"):
        ticket_no = await sms_intake.submit(phone, text, message_id)
    return 201, {"kind": "appeal", "ticket_no": ticket_no}


@router.post("/sms/receipts")
async def delivery_receipt(body: Receipt, request: Request, _: Principal = Depends(require_sms_gateway)):
    notifier: Notifier = request.app.state.notifier
    if not await notifier.states.receipt(body.message_id, body.status == "delivered", body.error):
        return api_error(404, "not_found", f"短信{body.message_id}不存在")
    return {
        "message_id": body.message_id,
        "state": "delivered" if body.status == "delivered" else "undelivered",
    }


@router.get("/sms/outbox")
async def outbox(
    request: Request,
    phone: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(require_admin),
):
    notifier: Notifier = request.app.state.notifier
    gateway = notifier.gateway
    if not isinstance(gateway, OutboxGateway):
        return api_error(
            404, "no_outbox", "短信经服务商网关发送（SMS_GATEWAY=http），发件箱仅在内嵌模式下可用"
        )
    try:
        wanted = normalize_phone(phone) if phone else None
    except InvalidPhone as e:
        return _bad_phone(e)
    return {"messages": await gateway.sent(wanted, limit)}


@router.get("/tickets/{ticket_no}/messages")
async def ticket_messages(ticket_no: str, request: Request, _: Principal = Depends(require_admin)):
    """短信与微信通知记录: what the ticket's resident was sent, or was to be sent, oldest first, each
    with its text, its state (held for quiet hours, sent, delivered, failed ...) and when: what the
    desk reads when a resident calls to say no message came. Whatever the gateway (the provider's
    or the embedded outbox); kept 30 days; none after an erasure."""
    notifier: Notifier = request.app.state.notifier
    return {"ticket_no": ticket_no, "messages": await notifier.states.of_ticket(ticket_no)}


MESSAGE_ID = re.compile(r"[0-9a-f]{32}")


@router.post("/tickets/{ticket_no}/messages/{message_id}/resend", status_code=201)
async def resend_message(
    ticket_no: str, message_id: str, request: Request, principal: Principal = Depends(require_admin)
):
    """补发: the desk sends one of the ticket's messages (受理告知, 进度告知, 办理结果) to its resident
    again, now, with the text it had (`Notifier.resend`). Answers the new message's id and what
    became of it (`duplicate`: the same message was sent again a moment ago)."""
    if not MESSAGE_ID.fullmatch(message_id):
        return api_error(404, "message_not_found", f"工单{ticket_no}没有这条通知")
    ticket = await request.app.state.store.get(ticket_no)
    if ticket is None:
        return api_error(404, "not_found", f"工单{ticket_no}不存在或已归档，无法补发")
    notifier: Notifier = request.app.state.notifier
    try:
        message, state = await notifier.resend(ticket_no, message_id, ticket.caller.caller_id)
    except DomainError as e:
        return domain_error(e)
    log.info("desk %s resent %s %s of %s", principal.scope, message.kind, message_id, ticket_no)
    return {"message_id": message.message_id, "resent_from": message_id, "state": state}


class AcknowledgementResendIn(BaseModel):
    caller_phone: str = Field(max_length=40, description="the number calling, as the operator typed it")


@router.post("/tickets/{ticket_no}/acknowledgement/resend", status_code=201)
async def resend_acknowledgement(
    ticket_no: str,
    body: AcknowledgementResendIn,
    request: Request,
    principal: Principal = Depends(require_callers),
):
    """补发受理短信: a caller tells the hotline the SMS with their ticket number never came. The
    operator, who reads no ticket, resends that ticket's 受理告知 to its resident only when the number
    calling is the one the ticket was registered from: the message goes to that number, and nobody
    has another's resent. Answers as the desk's 补发 does."""
    try:
        calling = caller_id(normalize_phone(body.caller_phone))
    except InvalidPhone as e:
        return _bad_phone(e, "caller_phone")
    ticket = await request.app.state.store.get(ticket_no)
    if ticket is None:
        return api_error(404, "not_found", f"工单{ticket_no}不存在或已归档，无法补发")
    if ticket.caller.caller_id != calling:
        refusal = f"工单{ticket_no}不是从这个来电号码登记的，无法向其补发受理短信"
        return api_error(403, "not_the_caller", refusal)
    notifier: Notifier = request.app.state.notifier
    try:
        message, state = await notifier.resend_acknowledgement(ticket_no, calling)
    except DomainError as e:
        return domain_error(e)
    log.info("%s resent the acknowledgement of %s", _caller_of(principal), ticket_no)
    return {"message_id": message.message_id, "resent_from": message.resent_from, "state": state}


@router.get("/wechat/outbox")
async def wechat_outbox(
    request: Request,
    openid: str | None = Query(None, max_length=64),
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(require_admin),
):
    """The WeChat messages sent to residents who left no phone (embedded mode), newest first."""
    notifier: Notifier = request.app.state.notifier
    gateway = notifier.wechat
    if not isinstance(gateway, WeChatOutbox):
        return api_error(
            404, "no_outbox", "微信消息经微信客服消息接口发送（WECHAT_GATEWAY=api），发件箱仅在内嵌模式下可用"
        )
    return {"messages": await gateway.sent(openid, limit)}


GroupBy = Literal["department", "category", "grid", "street"]
GROUP_NAMES = {"department": "承办单位", "category": "诉求分类", "grid": "网格", "street": "街道"}


@router.get("/stats")
async def scorecard(
    request: Request,
    group_by: GroupBy = "department",
    _: Principal = Depends(require_admin),  # first: who asks, then what
    period: tuple[date, date] = Depends(stats_period),
):
    card: Scorecard = request.app.state.scorecard
    start, end = period
    w = card.weights
    return {
        "group_by": group_by,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "weights": {
            "basically_satisfied": w.basic,
            "response": w.response,
            "resolution": w.resolution,
            "satisfaction": w.satisfaction,
        },
        # Fewer answered surveys than this in the period: not ranked (样本不足, `ranked` false).
        "min_answers": card.city.sla.ranking.min_answers,
        "groups": await card.query(group_by, start, end),
    }


def _percent(rate: float | None) -> Percent | None:
    return None if rate is None else Percent(rate)  # no rate (nothing to count): an empty cell, not 0


def _score(g: dict[str, Any]) -> float | Bracketed | None:
    """The score as a number to sort and compare; a group with too few answers (样本不足) has its
    score in brackets, as the page shows it (a number still in Excel, its format brackets it): to
    read, not to be compared with the ranked. A group no resident answered has none (`rates`): an
    empty cell, as the page's —."""
    if g["score"] is None or g["ranked"]:
        return g["score"]
    return Bracketed(g["score"])


# The ranking as managers publish it: the three rates and the score, then the figures beside them.
RANKING: dict[str, Callable[[dict[str, Any]], Any]] = {
    "派单": lambda g: g["assigned"],
    "回访答复": lambda g: g["answered"],
    "响应率": lambda g: _percent(g["response_rate"]),
    "解决率": lambda g: _percent(g["resolution_rate"]),
    "满意率": lambda g: _percent(g["satisfaction_rate"]),
    "综合得分": lambda g: _score(g),
    "直接答复率": lambda g: _percent(g["direct_answer_rate"]),
    "催办件数": lambda g: g["urged"],
    "现场核查": lambda g: g["verified"],
    "核查未解决": lambda g: g["verification_failed"],
    "人民调解": lambda g: g["mediated"],
    "达成协议": lambda g: g["mediation_agreed"],
    "并案件数": lambda g: g["merged"],
    "电话回访": lambda g: g["answered_by_phone"],  # of 回访答复: answered on an operator's call
    # Not in 回访答复 nor in any rate: answers to a survey whose resolution a check had sent back.
    "作废回访": lambda g: g.get("answered_void", 0),
}


@router.get("/stats/export")
async def scorecard_export(
    request: Request,
    group_by: GroupBy = "department",
    format: Format = "xlsx",
    _: Principal = Depends(require_admin),  # first: who asks, then what
    period: tuple[date, date] = Depends(stats_period),
):
    """The ranking of /stats as a table to open in Excel (排名表): rank, name, the three rates and
    the score in percent and points, and the figures beside them, best score first; those with too
    few answers (样本不足) after them, said in the rank's column."""
    card: Scorecard = request.app.state.scorecard
    start, end = period
    groups = await card.query(group_by, start, end)
    header = ["名次", GROUP_NAMES[group_by], *RANKING]
    # Those with too few answers come last, named so in the rank's column rather than numbered
    # (their score is there to read, not to be compared).
    few = f"样本不足（回访答复少于{card.city.sla.ranking.min_answers}件）"
    # Counters in the middle of a move into another grid (`scoring.settling`): no rate for now.
    settling = "统计中（工单刚更改事发网格，请稍后重新导出）"
    rows = [
        [
            rank if g["ranked"] else settling if g.get("settling") else few,
            g["name"],  # the group with none: 未知, or 未定位 for a grid or street (`name_of`)
            *(cell(g) for cell in RANKING.values()),
        ]
        for rank, g in enumerate(groups, 1)
    ]
    name = f"ranking-{group_by}-{start:%Y%m%d}-{end:%Y%m%d}"
    return download(format, name, header, each(rows), f"按{GROUP_NAMES[group_by]}排名")


# --- phone callbacks (电话回访) -------------------------------------------------------------------


def _caller_of(principal: Principal) -> str:
    """Who made the call, as the answer's event names them: the operator's number (工号)."""
    return principal.operator or ("派单中心" if principal.is_admin else principal.token_id)


def _call_view(call: Call) -> dict[str, Any]:
    survey = call.survey
    return {
        "survey_id": survey.survey_id,
        "ticket_no": survey.ticket_no,
        # The number to dial: the operator's to see, as the caller's number is when they register.
        # Only SMS surveys are called back (`SurveyBook._open`): their address is a phone.
        "phone": survey.to,
        "masked_phone": mask_phone(survey.to),
        "department": survey.department.model_dump() if survey.department else None,
        "surveyed_at": survey.started_at.isoformat(),
        "due_at": call.due.isoformat(),
        "attempts": call.attempts,
        "calling": call.calling,
    }


class CallbackIn(BaseModel):
    reached: bool = Field(description="false: nobody answered the call (未接通)")
    rating: Literal[1, 2, 3] | None = Field(None, description="满意 1, 基本满意 2, 不满意 3 (reached)")
    solved: bool | None = Field(None, description="whether the resident says the problem is solved")
    note: StaffText = Field("", max_length=500, description="what the resident said, in a few words")


@router.get("/callbacks")
async def due_callbacks(
    request: Request,
    size: int = Query(50, ge=1, le=200),
    principal: Principal = Depends(require_callers),
):
    """The surveys due for a phone call (电话回访), the longest waiting first: unanswered by SMS
    `due_after_hours` after the survey went out (SURVEY_CALLBACK_HOURS), or again a while after a
    call nobody took. `calling`: the operator holding one now (`mine`: the one asking)."""
    notifier: Notifier = request.app.state.notifier
    total, calls = await notifier.surveys.due_calls(notifier.clock(), size)
    me = _caller_of(principal)
    return {
        "total": total,
        "attempts": CALL_ATTEMPTS,
        "due_after_hours": notifier.surveys.callback_after.total_seconds() / 3600,
        "items": [_call_view(c) | {"mine": c.calling == me} for c in calls],
    }


@router.get("/callbacks/count")
async def due_callbacks_count(request: Request, _: Principal = Depends(require_callers)):
    """How many surveys are due for a phone call now (the list's `total`), and nothing else: one
    Redis command, cheap enough for the console's menu to show on every page."""
    notifier: Notifier = request.app.state.notifier
    return {"total": await notifier.surveys.due_count(notifier.clock())}


@router.post("/callbacks/{survey_id}/call")
async def take_callback(survey_id: str, request: Request, principal: Principal = Depends(require_callers)):
    """The operator is about to phone this resident: held for them for a few minutes (409 when
    another operator holds it or the survey ended); with the appeal's text and the resolution."""
    notifier: Notifier = request.app.state.notifier
    call = await notifier.surveys.call(survey_id, _caller_of(principal), notifier.clock())
    # What the operator reads out: the appeal and what the department says it did (operators do
    # not read tickets otherwise).
    ticket = await notifier.store.get(call.survey.ticket_no)
    return _call_view(call) | {
        "text": ticket.text if ticket else "",
        "category_names": list(ticket.category_names) if ticket else [],
        "resolution_note": ticket.resolution_note if ticket else "",
    }


@router.post("/callbacks/{survey_id}")
async def record_callback(
    survey_id: str, body: CallbackIn, request: Request, principal: Principal = Depends(require_callers)
):
    """What the call gave: the resident's answer, which closes the survey as an SMS answer does
    (an unsatisfied one reopens the ticket), or a call nobody answered (tried again later)."""
    notifier: Notifier = request.app.state.notifier
    now, operator = notifier.clock(), _caller_of(principal)
    if not body.reached:
        attempts = await notifier.surveys.unreachable(survey_id, operator, now)
        return {"outcome": "unreachable", "attempts": attempts, "again": attempts < CALL_ATTEMPTS}
    if body.rating is None or body.solved is None:
        missing = "rating" if body.rating is None else "solved"
        return api_error(422, "answer_required", CALL_ANSWER_REQUIRED[missing], field=missing)
    answered = await notifier.surveys.answer_by_phone(
        survey_id, operator, body.rating, body.solved, body.note, now
    )
    return {"outcome": "answered", "ticket_no": answered.ticket_no, "rating": answered.rating}
