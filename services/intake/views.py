"""Intake's HTTP API: the hotline operators' submit and preview, and suggestion-box batch uploads.

The other channels have their own views (wechat_views.py, open311_views.py, sms.py). All of them go
through IntakeService, so they share idempotency, durability and limits. Refusals are domain errors
(services.intake.errors): the API's handler answers them in the one error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, File, Header, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from services.intake import batch
from services.intake.domain import InvalidAppeal, validate
from services.intake.errors import BadRequest
from services.intake.service import Accepted, IntakeService
from shared.auth import Principal, require_intake_staff
from shared.events import Channel
from shared.metrics import APPEALS_REJECTED

router = APIRouter(prefix="/api/v1", tags=["intake"])
CHUNK = 500  # batch rows submitted together: one numbering call, one concurrent publish
M = TypeVar("M", bound=BaseModel)


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


@contextmanager
def counting_rejections(channel: str) -> Iterator[None]:
    """Counts an invalid submission under its channel and the field at fault, and lets it through
    to the error handler."""
    try:
        yield
    except InvalidAppeal as e:
        APPEALS_REJECTED.labels(channel=channel, reason=e.field or "").inc()
        raise


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def read_json(request: Request, model: type[M]) -> M:
    """The body as `model`; invalid UTF-8 or JSON is a 400 that says so (FastAPI's is opaque)."""
    raw = await request.body()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(f"请求内容不是有效的UTF-8编码（第{e.start}字节）") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"请求内容不是有效的JSON：第{e.lineno}行第{e.colno}列 {e.msg}") from None
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
) -> AppealAccepted:
    body = await read_json(request, AppealIn)
    intake: IntakeService = request.app.state.intake
    await intake.check_ip(client_ip(request))
    with counting_rejections(body.channel):
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
    if not created:
        response.status_code = 200
    return AppealAccepted(ticket_no=ticket_no, message=f"诉求已受理，工单号{ticket_no}")


@router.post("/appeals/preview", openapi_extra=_body_schema(AppealIn))
async def preview_appeal(request: Request, _: Principal = Depends(require_intake_staff)) -> dict[str, Any]:
    """Suggested category, grid and department, and possible duplicates, before submitting."""
    body = await read_json(request, AppealIn)
    with counting_rejections(body.channel):
        sub = validate(
            channel=body.channel,
            text=body.text,
            title=body.title,
            address=body.address,
            phone=body.caller_phone,
            urgent=body.urgent,
        )
    result: dict[str, Any] = await request.app.state.intake_preview.preview(sub)
    if result["duplicates"]:
        d = result["duplicates"][0]
        result["hint"] = f"该问题可能已在办理中，工单号{d['ticket_no']}（{d['status']}）"
    return result


@router.post("/appeals/batch")
async def submit_batch(
    request: Request, file: UploadFile = File(...), _: Principal = Depends(require_intake_staff)
) -> dict[str, Any]:
    """Typed suggestion-box slips (CSV UTF-8 or XLSX). Per row: the ticket number, or why not.

    Broker away mid-file: 503; rows acknowledged so far keep their tickets, and a retry of the same
    file returns them (row hashes are the idempotency keys)."""
    intake: IntakeService = request.app.state.intake
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
            with counting_rejections("box"):
                chunk.append((line, batch.to_submission(row, today)))
        except InvalidAppeal as e:
            results.append({"line": line, "field": e.field, "error": e.message})
        if len(chunk) >= CHUNK:
            results.extend(await _submit_chunk(intake, chunk))
            chunk = []
    results.extend(await _submit_chunk(intake, chunk))
    results.sort(key=lambda r: r["line"])
    accepted = sum(1 for r in results if "ticket_no" in r)
    return {"accepted": accepted, "rejected": len(results) - accepted, "rows": results}


async def _submit_chunk(intake: IntakeService, chunk: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    if not chunk:
        return []
    outcomes = await intake.submit_many([sub_key for _, sub_key in chunk])
    out: list[dict[str, Any]] = []
    for (line, _), r in zip(chunk, outcomes, strict=True):
        if isinstance(r, Accepted):
            out.append({"line": line, "ticket_no": r.ticket_no, "duplicate": not r.created})
        else:
            out.append({"line": line, "field": "phone", "error": r.message})
    return out
