"""Open311 GeoReport v2 endpoints, so any Open311 client can file and follow appeals.

The format is the path's extension, as in the spec: `requests.json` or `requests.xml`. Errors are the
spec's list in the same format: [{"code": 400, "description": "..."}]
or <errors><error>...</error></errors>."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from datetime import timedelta
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from services.intake import keys, media_fetch, media_rules, open311
from services.intake.domain import InvalidAppeal
from services.intake.media_rules import MediaRefused
from services.intake.photo_views import decode
from services.intake.service import IntakeService
from shared.errors import DomainError
from shared.metrics import APPEALS_REJECTED
from shared.photos import PhotoRefused
from shared.redis_client import text
from shared.tickets import TICKET_NO_PATTERN

router = APIRouter(prefix="/open311/v2", tags=["open311"])
TICKET_NO = re.compile(TICKET_NO_PATTERN)


def _respond(
    fmt: str, kind: open311.Kind, records: list[dict], status: int = 200, **headers: str
) -> Response:
    if fmt == "xml":
        return Response(
            open311.to_xml(kind, records),
            status_code=status,
            headers=headers or None,
            media_type="text/xml; charset=utf-8",
        )
    return JSONResponse(records, status_code=status, headers=headers or None)


def _error(
    status: int, code: str, message: str, fmt: str = "json", field: str | None = None, **headers: str
) -> Response:
    records = open311.error(status, code, message, field)
    return _respond(fmt if fmt in open311.FORMATS else "json", "errors", records, status, **headers)


def _refused(e: DomainError, fmt: str) -> Response:
    """A domain error in the spec's format. Invalid input is the spec's 400 (not the API's 422)."""
    status = {"invalid": 400, "unreadable": 400, "too_many": 429, "unavailable": 503}.get(e.kind, 400)
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else {}
    return _error(status, e.code, e.message, fmt, e.field, **headers)


def _unknown_format(fmt: str) -> Response | None:
    if fmt in open311.FORMATS:
        return None
    return _error(
        404, "unknown_format", f"format .{fmt} is not offered: use .json or .xml / 仅支持json和xml格式"
    )


async def _form(request: Request) -> dict[str, str]:
    """The POSTed fields. URL-encoded bodies are decoded strictly: invalid UTF-8 is an error."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        async with request.form(max_files=1, max_fields=50) as form:
            return {k: v for k, v in form.items() if isinstance(v, str)}
    raw = await request.body()
    return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict"))


@router.get("/services.{fmt}")
async def services(request: Request, fmt: str):
    return _unknown_format(fmt) or _respond(fmt, "services", open311.services(request.app.state.city))


@router.post("/requests.{fmt}", status_code=201)
async def create_request(
    request: Request, fmt: str, idempotency_key: str | None = Header(None, max_length=200)
):
    if refused := _unknown_format(fmt):
        return refused
    try:
        form = await _form(request)
    except UnicodeDecodeError:
        return _error(
            400, "bad_request", "request body is not valid UTF-8 / 请求内容不是有效的UTF-8编码", fmt, "body"
        )
    if (
        not request.app.state.settings.open311_keys
        or form.get("api_key") not in request.app.state.settings.open311_keys
    ):
        return _error(403, "forbidden", "api_key is missing or not valid / api_key无效", fmt, "api_key")
    intake: IntakeService = request.app.state.intake
    try:
        await intake.check_ip(request.client.host if request.client else None)
        sub = open311.submission(request.app.state.city, form)
        if media_url := (form.get("media_url") or "").strip():
            # Before a number is taken: a photo that cannot be had refuses the request, and nothing
            # is registered.
            sub = dataclasses.replace(sub, photos=(await _media_photo(request, media_url),))
        # Keys are per client (its api_key): two clients' "1" are two submissions.
        client = hashlib.sha256(form["api_key"].encode()).hexdigest()[:16]
        key = f"open311:{client}:{idempotency_key}" if idempotency_key else None
        ticket_no, _ = await intake.submit(sub, key)
    except (InvalidAppeal, MediaRefused) as e:
        APPEALS_REJECTED.labels(channel="open311", reason=e.field or "").inc()
        return _refused(e, fmt)
    except DomainError as e:
        return _refused(e, fmt)
    notice = f"诉求已受理，工单号{ticket_no}。可用GET requests/{ticket_no}.{fmt}查询办理状态。"
    return _respond(
        fmt,
        "requests",
        [{"service_request_id": ticket_no, "service_notice": notice, "account_id": None}],
        201,
    )


async def _media_photo(request: Request, url: str) -> str:
    """The request's media_url fetched (`media_fetch`), and kept as an uploaded photo is: decoded
    and cleaned by the same rules (`photo_views.decode`), in the same store. Returns its id.
    Raises MediaRefused saying what to fix; the photo store away is Unavailable (503)."""
    state = request.app.state
    try:
        raw = await media_fetch.fetch(url, state.settings)
        try:
            photo = await decode(state, raw)
        except PhotoRefused as e:
            raise media_rules.not_a_photo(e.code, state.settings.photo_max_bytes) from None
    except MediaRefused as e:
        media_fetch.log_refusal(url, e)
        raise
    await state.photos.put(photo)
    return photo.id


def _ticket_no(value: str) -> bool:
    return TICKET_NO.fullmatch(value) is not None


@router.get("/requests/{request_id}.{fmt}")
async def get_request(request: Request, request_id: str, fmt: str) -> Response:
    if refused := _unknown_format(fmt):
        return refused
    ticket = None
    if _ticket_no(request_id):  # anything else names no ticket, and never reaches a store key
        (ticket,) = await request.app.state.store.get_many([request_id])
    if ticket is None or not open311.is_public(ticket, request.app.state.settings.public_channels):
        # A ticket the city does not publish is as absent as one that does not exist.
        return _error(
            404, "not_found", f"service_request_id {request_id} not found / 未找到该工单", fmt, "request_id"
        )
    tz = ZoneInfo(request.app.state.settings.timezone)
    return _respond(fmt, "requests", [open311.request_record(ticket, request.app.state.city, tz)])


@router.get("/requests.{fmt}")
async def list_requests(
    request: Request,
    fmt: str,
    service_request_id: str | None = None,
    service_code: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    status: str | None = None,
) -> Response:
    if refused := _unknown_format(fmt):
        return refused
    city, store = request.app.state.city, request.app.state.store
    public = request.app.state.settings.public_channels
    tz = ZoneInfo(request.app.state.settings.timezone)
    if service_request_id:
        ids = [i.strip() for i in service_request_id.split(",") if _ticket_no(i.strip())]
        tickets = await store.get_many(ids[: open311.MAX_REQUESTS])
        return _respond(
            fmt,
            "requests",
            [
                open311.request_record(t, city, tz)
                for t in tickets
                if t is not None and open311.is_public(t, public)
            ],
        )
    try:
        start = open311.parse_time(start_date, "start_date")
        end = open311.parse_time(end_date, "end_date")
    except InvalidAppeal as e:
        return _refused(e, fmt)
    statuses = {s.strip() for s in (status or "").split(",") if s.strip()}
    if statuses - {"open", "closed"}:
        return _error(
            400, "invalid_request", "status must be open, closed or both (comma-separated)", fmt, "status"
        )
    codes = {c.strip() for c in (service_code or "").split(",") if c.strip()}
    end_ts = end.timestamp() if end else time.time()
    start_ts = start.timestamp() if start else end_ts - timedelta(days=open311.DEFAULT_DAYS).total_seconds()
    found: list[dict] = []
    offset, page = 0, open311.MAX_REQUESTS
    # Filters that match little must not walk the whole index: a request reads at most MAX_SCANNED.
    while len(found) < open311.MAX_REQUESTS and offset < open311.MAX_SCANNED:
        nos = await store.redis.zrevrangebyscore(
            keys.PUBLIC_BY_TIME, end_ts, start_ts, start=offset, num=page
        )
        if not nos:
            break
        offset += len(nos)
        for t in await store.get_many([text(n) for n in nos]):
            if t is None or not open311.is_public(t, public):
                continue
            record = open311.request_record(t, city, tz)
            if (not statuses or record["status"] in statuses) and (
                not codes or record["service_code"] in codes
            ):
                found.append(record)
    return _respond(fmt, "requests", found[: open311.MAX_REQUESTS])
