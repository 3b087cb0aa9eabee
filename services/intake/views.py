"""Intake's HTTP API: the hotline operators' submit and preview, and suggestion-box batch uploads.

The other channels have their own views (wechat_views.py, open311_views.py; SMS arrives at the
notifier's inbound endpoint, which hands what answers no survey to sms.py). All of them go through
IntakeService, so they share idempotency, durability and limits."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, File, Header, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from services.intake import batch
from services.intake.domain import InvalidAppeal, validate
from services.intake.limits import RateLimited
from services.intake.service import Accepted, BrokerUnavailable, IntakeService
from shared.auth import Principal, require_intake_staff
from shared.events import Channel
from shared.http import api_error
from shared.metrics import APPEALS_REJECTED

router = APIRouter(prefix="/api/v1", tags=["intake"])
CHUNK = 500  # batch rows submitted together: one numbering call, one concurrent publish


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


def rejection(channel: str, e: InvalidAppeal) -> JSONResponse:
    APPEALS_REJECTED.labels(channel=channel, reason=e.field).inc()
    return api_error(422, "invalid_appeal", e.message, field=e.field)


def unavailable() -> JSONResponse:
    return api_error(
        503, "unavailable", "系统繁忙，诉求未能保存，请稍后重试（不会重复登记）", headers={"Retry-After": "5"}
    )


def too_many(e: RateLimited) -> JSONResponse:
    return api_error(
        429, "rate_limited", e.message, headers={"Retry-After": str(e.retry_after)}, retry_after=e.retry_after
    )


def bad_request(message: str, field: str = "body") -> JSONResponse:
    return api_error(400, "bad_request", message, field=field)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def read_json(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
    """The body as `model`; invalid UTF-8 or JSON is a 400 that says so (FastAPI's is opaque)."""
    raw = await request.body()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return bad_request(f"请求内容不是有效的UTF-8编码（第{e.start}字节）")
    except json.JSONDecodeError as e:
        return bad_request(f"请求内容不是有效的JSON：第{e.lineno}行第{e.colno}列 {e.msg}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


@router.post("/appeals", status_code=201, response_model=AppealAccepted, openapi_extra=_body_schema(AppealIn))
async def submit_appeal(
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(None, max_length=200),
    staff: Principal = Depends(require_intake_staff),
):
    body = await read_json(request, AppealIn)
    if isinstance(body, JSONResponse):
        return body
    assert isinstance(body, AppealIn)
    intake: IntakeService = request.app.state.intake
    try:
        await intake.check_ip(client_ip(request))
        sub = validate(
            channel=body.channel,
            text=body.text,
            title=body.title,
            address=body.address,
            phone=body.caller_phone,
            name=body.caller_name,
            operator_id=staff.operator or body.operator_id,
            urgent=body.urgent,
        )
        ticket_no, created = await intake.submit(sub, f"api:{idempotency_key}" if idempotency_key else None)
    except InvalidAppeal as e:
        return rejection(body.channel, e)
    except RateLimited as e:
        return too_many(e)
    except BrokerUnavailable:
        return unavailable()
    if not created:
        response.status_code = 200
    return AppealAccepted(ticket_no=ticket_no, message=f"诉求已受理，工单号{ticket_no}")


@router.post("/appeals/preview", openapi_extra=_body_schema(AppealIn))
async def preview_appeal(request: Request, _: Principal = Depends(require_intake_staff)):
    """Suggested category, grid and department, and possible duplicates, before submitting."""
    body = await read_json(request, AppealIn)
    if isinstance(body, JSONResponse):
        return body
    assert isinstance(body, AppealIn)
    try:
        sub = validate(
            channel=body.channel,
            text=body.text,
            title=body.title,
            address=body.address,
            phone=body.caller_phone,
            urgent=body.urgent,
        )
    except InvalidAppeal as e:
        return rejection(body.channel, e)
    result = await request.app.state.intake_preview.preview(sub)
    if result["duplicates"]:
        d = result["duplicates"][0]
        result["hint"] = f"该问题可能已在办理中，工单号{d['ticket_no']}（{d['status']}）"
    return result


@router.post("/appeals/batch")
async def submit_batch(
    request: Request, file: UploadFile = File(...), _: Principal = Depends(require_intake_staff)
):
    """Typed suggestion-box slips (CSV UTF-8 or XLSX). Per row: the ticket number, or why not."""
    intake: IntakeService = request.app.state.intake
    try:
        await intake.check_ip(client_ip(request))  # the upload counts once; each row counts for its caller
        rows = batch.rows_of(file.filename or "", file.content_type or "", file.file)
        today = intake.today()
        results: list[dict[str, Any]] = []
        chunk: list[tuple[int, Any]] = []
        for line, row in rows:
            if isinstance(row, InvalidAppeal):
                results.append({"line": line, "field": row.field, "error": row.message})
                continue
            try:
                chunk.append((line, batch.to_submission(row, today)))
            except InvalidAppeal as e:
                APPEALS_REJECTED.labels(channel="box", reason=e.field).inc()
                results.append({"line": line, "field": e.field, "error": e.message})
            if len(chunk) >= CHUNK:
                results.extend(await _submit_chunk(intake, chunk))
                chunk = []
        results.extend(await _submit_chunk(intake, chunk))
    except batch.BadFile as e:
        return bad_request(str(e), "file")
    except RateLimited as e:
        return too_many(e)
    except BrokerUnavailable:
        # Rows acknowledged so far keep their tickets; a retry of the same file returns them (row hashes).
        return unavailable()
    results.sort(key=lambda r: r["line"])
    accepted = sum(1 for r in results if "ticket_no" in r)
    return {"accepted": accepted, "rejected": len(results) - accepted, "rows": results}


async def _submit_chunk(intake: IntakeService, chunk: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    if not chunk:
        return []
    outcomes = await intake.submit_many([sub_key for _, sub_key in chunk])
    out = []
    for (line, _), r in zip(chunk, outcomes, strict=False):
        if isinstance(r, Accepted):
            out.append({"line": line, "ticket_no": r.ticket_no, "duplicate": not r.created})
        else:
            out.append({"line": line, "field": "phone", "error": r.message})
    return out
