"""Intake's HTTP adapters: the hotline operators' API (and, through it, every channel's entry)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.intake.domain import InvalidAppeal, validate
from services.intake.service import BrokerUnavailable, IntakeService
from shared.events import Channel
from shared.metrics import APPEALS_REJECTED

router = APIRouter(prefix="/api/v1", tags=["intake"])


class AppealIn(BaseModel):
    channel: Channel = "hotline"
    caller_phone: str | None = Field(None, examples=["13812345678"])
    caller_name: str | None = None
    text: str = Field(examples=["阳光花园3号楼门口的路灯坏了一个星期，晚上很黑"])
    title: str = ""
    address: str = ""
    operator_id: str | None = None
    urgent: bool = False


class AppealAccepted(BaseModel):
    ticket_no: str
    status: str = "received"
    message: str


def intake_service(request: Request) -> IntakeService:
    return request.app.state.intake


def rejection(channel: str, e: InvalidAppeal) -> JSONResponse:
    APPEALS_REJECTED.labels(channel=channel, reason=e.field).inc()
    return JSONResponse(
        status_code=422, content={"error": "invalid_appeal", "field": e.field, "message": e.message}
    )


def unavailable() -> JSONResponse:
    return JSONResponse(
        status_code=503,
        headers={"Retry-After": "5"},
        content={"error": "unavailable", "message": "系统繁忙，诉求未能保存，请稍后重试（不会重复登记）"},
    )


@router.post("/appeals", status_code=201, response_model=AppealAccepted)
async def submit_appeal(
    body: AppealIn,
    response: Response,
    intake: IntakeService = Depends(intake_service),
    idempotency_key: str | None = Header(None, max_length=200),
):
    try:
        sub = validate(
            channel=body.channel, text=body.text, title=body.title, address=body.address,
            phone=body.caller_phone, name=body.caller_name, operator_id=body.operator_id,
            urgent=body.urgent,
        )
        ticket_no, created = await intake.submit(sub, idempotency_key)
    except InvalidAppeal as e:
        return rejection(body.channel, e)
    except BrokerUnavailable:
        return unavailable()
    if not created:
        response.status_code = 200
    return AppealAccepted(ticket_no=ticket_no, message=f"诉求已受理，工单号{ticket_no}")
