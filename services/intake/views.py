"""Intake's HTTP API: the hotline operators' submit and preview, and suggestion-box batch uploads.

The other channels have their own views (wechat_views.py, open311_views.py; SMS arrives at the
notifier's inbound endpoint, which hands what answers no survey to sms.py). All of them go through
IntakeService, so they share idempotency, durability and limits. Refusals are domain errors
(services.intake.errors): the API's handler answers them in the one error shape."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile as StarletteUpload

from services.intake import batch, wechat
from services.intake.domain import InvalidAppeal, Submission, checked_phone, validate
from services.intake.duplicates import similarity
from services.intake.errors import BadRequest, KeyReused
from services.intake.jsonbody import parse_json
from services.intake.photo_views import checked_photos
from services.intake.preview import LIKELY, open_in_grids
from services.intake.service import Accepted, IntakeService
from services.router import workflow
from shared.auth import Principal, require_admin, require_intake_staff
from shared.bodies import Limit
from shared.errors import DomainError
from shared.events import Channel, GeoPoint
from shared.http import api_error, multipart_schema
from shared.knowledge import category_filter
from shared.metrics import APPEALS_REJECTED
from shared.settings import Settings
from shared.tickets import STATUS_NAMES, Status, Ticket

router = APIRouter(prefix="/api/v1", tags=["intake"])
CHUNK = 500  # batch rows submitted together: one numbering call, one concurrent publish
M = TypeVar("M", bound=BaseModel)


class AppealIn(BaseModel):
    channel: Channel = Field(
        "hotline",
        description="optional: the token decides (hotline; web for the dispatch desk; patrol: a grid worker)",
    )
    caller_phone: str | None = Field(None, examples=["13812345678"])
    caller_name: str | None = None
    text: str = Field(examples=["阳光花园3号楼门口的路灯坏了一个星期，晚上很黑"])
    title: str = ""
    address: str = ""
    operator_id: str | None = None
    urgent: bool = False
    location: GeoPoint | None = Field(
        None, description="where it is (WGS-84), e.g. a grid worker's phone position; decides the grid"
    )
    direct_answer: str = Field(
        "",
        description="closed at first contact: the operator answered it on the call (直接答复: what the "
        "caller was told), or the grid worker dealt with it on the spot (现场处置: what was done); "
        "the ticket is then resolved at once",
        examples=["已告知来电人：社保卡补办可携带身份证到任一社保服务网点办理，当场可取。"],
    )
    photos: list[str] = Field(
        [], description="ids from POST /api/v1/photos (at most 9): the photos sent with the appeal"
    )


class AppealAccepted(BaseModel):
    ticket_no: str
    status: str = "received"
    message: str
    masked: list[str] | None = Field(
        None,
        description="only when it happened: the fields (text, title, address) in which personal data "
        "typed into the words (a phone, ID or bank card number, a name after 我叫 or before 先生) was "
        "masked, as every reader of the ticket sees them (138****5678, 张*)",
    )


# How the answer names a field in which typed personal data was masked.
MASKED_FIELDS = {"text": "诉求内容", "title": "标题", "address": "地址"}


def masked_notice(masked: Sequence[str]) -> str:
    """The line that tells whoever typed the appeal that its words changed, and how: a typed
    number or name is not kept, and the ticket shows it masked."""
    where = "、".join(MASKED_FIELDS.get(f, f) for f in masked)
    return f"已对{where}中的个人信息（电话、证件号、银行卡号、姓名）脱敏显示" if masked else ""


# Who sees a caller's history (来电历史) in the preview: those who take the calls, the operators and
# the desk. A grid worker's report has no caller on the line, and its token reads its grid only.
HISTORY_ROLES = frozenset({"operator", "admin"})

# The channel follows from the credential, not the client's word: an operator registers calls to
# the hotline; the dispatch desk may also enter what reached the city's website; a grid worker
# reports what it finds on patrol. None can pass an appeal off as a resident's WeChat message, SMS,
# Open311 request or slip, which arrive through their own endpoints and credentials (and fall under
# their own publication and survey rules).
STAFF_CHANNELS: dict[str, tuple[Channel, ...]] = {
    "operator": ("hotline",),
    "admin": ("hotline", "web"),
    "grid_worker": ("patrol",),
}


def channel_of(body: AppealIn, staff: Principal) -> Channel:
    allowed = STAFF_CHANNELS.get(staff.role, ("hotline",))
    if "channel" not in body.model_fields_set:
        return allowed[0]
    if body.channel not in allowed:
        raise InvalidAppeal(
            "channel",
            f"渠道由登录凭证决定：此凭证只能登记{'、'.join(allowed)}渠道的诉求，不能填写{body.channel}",
        )
    return body.channel


@contextmanager
def counting_rejections(channel: str) -> Iterator[None]:
    """Counts an invalid submission under its channel and the field at fault, and lets it through
    to the error handler."""
    try:
        yield
    except InvalidAppeal as e:
        APPEALS_REJECTED.labels(channel=channel, reason=e.field or "").inc()
        raise


def submission_of(body: AppealIn, staff: Principal, *, preview: bool = False) -> Submission:
    """The body as a validated submission, a refusal counted under the body's channel. A preview
    leaves out the caller's name and the operator: it needs neither, and the name is personal data."""
    with counting_rejections(body.channel):
        return validate(
            channel=channel_of(body, staff),
            text=body.text,
            title=body.title,
            address=body.address,
            phone=body.caller_phone,
            name=None if preview else body.caller_name,
            operator_id=None if preview else staff.operator or body.operator_id,
            urgent=body.urgent,
            location=body.location,
            direct_answer="" if preview else body.direct_answer,  # half-typed while the preview runs
            patrol_grid=staff.grid if staff.role == "grid_worker" else None,
        )


def preview_of(body: AppealIn, staff: Principal) -> tuple[Submission, list[dict[str, Any]]]:
    """The body as a preview's submission, and the problems the preview went on without, in the
    API's error shape. A phone that cannot be read costs a preview only what it looks up by the
    caller (their open tickets, their history): an operator who mistyped a digit still sees the
    category, grid, duplicates and answers, with the phone's problem beside them. Submitting it
    is refused as ever. What the preview cannot do without (the text) is refused here too."""
    problems: list[dict[str, Any]] = []
    try:
        checked_phone(body.caller_phone)
    except InvalidAppeal as e:
        problems.append({"error": e.code, "field": e.field, "message": e.message})
        body = body.model_copy(update={"caller_phone": None})
    return submission_of(body, staff, preview=True), problems


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def read_json(request: Request, model: type[M]) -> M:
    """The body as `model`; what is not JSON we accept is a 400 that says why (FastAPI's is opaque)."""
    data = parse_json(await request.body())
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


@router.post(
    "/appeals",
    status_code=201,
    response_model=AppealAccepted,
    response_model_exclude_none=True,  # `masked` only when something was: the usual answer as it was
    openapi_extra=_body_schema(AppealIn),
)
async def submit_appeal(
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(None, max_length=200),
    staff: Principal = Depends(require_intake_staff),
) -> AppealAccepted:
    body = await read_json(request, AppealIn)
    intake: IntakeService = request.app.state.intake
    await intake.check_ip(client_ip(request))
    sub = submission_of(body, staff)
    if body.photos:  # before a number is taken: an appeal never names a photo nobody can open
        sub = dataclasses.replace(sub, photos=await checked_photos(body.photos, request.app.state.photos))
    # A key is the caller's own: another operator's key of the same text is another submission.
    key = f"api:{staff.scope}:{idempotency_key}" if idempotency_key else None
    ticket_no, created = await intake.submit(sub, key)
    if not created:
        response.status_code = 200
    if sub.direct_answer and sub.channel == "patrol":
        message = f"已登记现场处置，工单号{ticket_no}，将自动办结"
    elif sub.direct_answer:
        message = f"已登记当场答复，工单号{ticket_no}，将自动办结并回访"
    else:
        message = f"诉求已受理，工单号{ticket_no}"
    if sub.masked:
        message = f"{message}；{masked_notice(sub.masked)}"
    return AppealAccepted(ticket_no=ticket_no, message=message, masked=list(sub.masked) or None)


@router.get("/knowledge")
async def search_knowledge(
    request: Request,
    q: str = Query("", max_length=500, description="what the caller asks, in their words"),
    category: str | None = Query(
        None, max_length=100, description="only this category's answers; a branch includes those under it"
    ),
    size: int = Query(5, ge=1, le=20),
    staff: Principal = Depends(require_intake_staff),
) -> dict[str, Any]:
    """The knowledge base's answers that fit `q` (an operator answering a question on the call), the
    retired ones left out; `review_due`: not confirmed within the city's review period (待复核). An
    unknown `category` is refused (422), not answered with nothing."""
    previewer = request.app.state.intake_preview
    kb, today = previewer.knowledge, previewer.today()
    within = category_filter(kb.city, category)
    return {"answers": [kb.view(s, today) for s in kb.search(q, within=within, k=size)]}


@router.post("/appeals/preview", openapi_extra=_body_schema(AppealIn))
async def preview_appeal(
    request: Request, staff: Principal = Depends(require_intake_staff)
) -> dict[str, Any]:
    """Suggested category, grid and department, and possible duplicates, before submitting; for
    the hotline (operators, the desk) with a phone, the caller's history in the record as well.
    `problems`: what the preview went on without (a phone it cannot read), each in the error
    shape ({"error", "field", "message"}); empty when there is nothing to correct."""
    body = await read_json(request, AppealIn)
    sub, problems = preview_of(body, staff)
    history = staff.role in HISTORY_ROLES
    result: dict[str, Any] = await request.app.state.intake_preview.preview(sub, history=history)
    result["problems"] = problems
    # Only a likely one is told to the caller: a neighbour's ticket of the same kind is the operator's
    # lead to check, not the caller's answer.
    if result["duplicates"] and result["duplicates"][0]["reason"] in LIKELY:
        d = result["duplicates"][0]
        status = STATUS_NAMES.get(Status(d["status"]), d["status"])
        result["hint"] = f"该问题可能已在办理中，工单号{d['ticket_no']}（{status}）"
        # A caller asking after "the matter I raised" with several open: which one is theirs to say.
        if len(mine := [x["ticket_no"] for x in result["duplicates"] if x["reason"] == "same_caller"]) > 1:
            result["hint"] = f"来电人有{len(mine)}件工单正在办理（{'、'.join(mine)}），请先确认所问的是哪一件"
    return result


_UPLOAD_SCHEMA = multipart_schema("file", {"type": "string", "format": "binary"})


def upload_limits(settings: Settings) -> batch.UploadLimits:
    return batch.UploadLimits(
        rows=settings.upload_max_rows,
        columns=settings.upload_max_columns,
        seconds=settings.upload_parse_seconds,
    )


def body_limits(settings: Settings) -> dict[str, Limit]:
    """Intake's endpoints whose bodies may be larger or must be smaller than the API's default."""
    return {
        "/api/v1/appeals/batch": Limit(settings.max_upload_bytes, "请把文件拆分后分批上传"),
        "/open311/": Limit(settings.max_form_bytes, "Open311表单只需诉求文字和位置，请精简后重试"),
        "/api/v1/channels/wechat": Limit(wechat.MAX_BODY, "这不是微信服务器推送的消息"),
    }


@router.post("/appeals/batch", openapi_extra=_UPLOAD_SCHEMA)
async def submit_batch(request: Request, staff: Principal = Depends(require_intake_staff)) -> dict[str, Any]:
    """Typed suggestion-box slips (CSV UTF-8 or XLSX). Per row: the ticket number, or why not.

    The token is checked before the body is read (the file is no parameter of the route, so FastAPI
    does not parse it first); the file is read and validated in a worker thread within
    `upload_limits`, so the API keeps answering meanwhile. Broker away mid-file: 503; rows
    acknowledged so far keep their tickets, and a retry of the same file returns them (row hashes
    are the idempotency keys)."""
    if staff.role == "grid_worker":
        raise HTTPException(status_code=403, detail="意见箱的意见由话务员或派单中心录入；网格员请用巡查上报")
    intake: IntakeService = request.app.state.intake
    await intake.check_ip(client_ip(request))  # the upload counts once; each row counts for its caller
    async with request.form(max_files=1, max_fields=5) as form:
        upload = form.get("file")
        if not isinstance(upload, StarletteUpload):
            raise BadRequest("请以multipart/form-data上传文件，字段名为file", field="file")
        slips = await asyncio.to_thread(
            batch.read,
            upload.filename or "",
            upload.content_type or "",
            upload.file,
            intake.today(),
            upload_limits(request.app.state.settings),
        )
    results: list[dict[str, Any]] = []
    chunk: list[tuple[int, Any]] = []
    for line, slip in slips:
        if isinstance(slip, InvalidAppeal):
            APPEALS_REJECTED.labels(channel="box", reason=slip.field or "").inc()
            results.append({"line": line, "field": slip.field, "error": slip.message})
            continue
        chunk.append((line, slip))
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
        elif isinstance(r, KeyReused):  # a slip's key is its box, date, text and phone
            message = (
                f"与已登记的工单{r.ticket_no}意见箱、日期、内容和电话都相同，但地址不同；"
                "如是同一条意见请改正地址，如是另一条请在内容中注明区别"
            )
            out.append({"line": line, "field": "address", "error": message})
        else:
            out.append({"line": line, "field": r.field or "phone", "error": r.message})
    return out


# --- the dispatch desk's duplicates (并案) -------------------------------------------------------

MERGE_CANDIDATES = 10
MERGE_CANDIDATES_BATCH = 100  # tickets asked about at once: the desk's page holds 40 cards


def _merge_candidates(ticket: Ticket, in_grid: Sequence[Ticket]) -> list[dict[str, Any]]:
    """The tickets of its grid (`in_grid`, open) `ticket` may be merged into: the same category,
    still being handled and not merged themselves, the most similar text first."""
    found = [
        (similarity(ticket.text, t.text), t)
        for t in in_grid
        if t.ticket_no != ticket.ticket_no
        and t.category == ticket.category
        and t.merged_into is None
        and workflow.allowed(t.status, "receive_duplicate")
    ]
    found.sort(key=lambda pair: -pair[0])
    return [
        {
            "ticket_no": t.ticket_no,
            "status": t.status,
            "status_name": STATUS_NAMES[t.status],
            "department": t.department.model_dump() if t.department else None,
            "text": t.text[:200],
            "similarity": round(score, 2),
            "merged": len(t.merged),
            "received_at": t.received_at.isoformat(),
        }
        for score, t in found[:MERGE_CANDIDATES]
    ]


def _mergeable_grids(ticket: Ticket) -> list[str]:
    """The grids whose tickets `ticket` may be merged into: its own, and the one its address names
    where that is another (定位与地址不一致: the problem may be there); none when it is no duplicate
    to merge (its status) or has no grid."""
    if ticket.grid is None or ticket.grid.grid is None or not workflow.allowed(ticket.status, "merge"):
        return []
    return list(dict.fromkeys(g for g in (ticket.grid.grid, ticket.grid.address_grid) if g))


def _in_grids(grids: Sequence[str], open_in: Mapping[str, Sequence[Ticket]]) -> list[Ticket]:
    """The open tickets of these grids, each once."""
    return list({t.ticket_no: t for g in grids for t in open_in.get(g, ())}.values())


@router.get("/tickets/{ticket_no}/merge/candidates")
async def merge_candidates(ticket_no: str, request: Request, _: Principal = Depends(require_admin)):
    """并案: the tickets this one may be merged into (the router's `merge`), as intake's duplicate
    finder sees the grid (its open tickets of the last 7 days): those of the same category still
    being handled and not merged themselves, the most similar text first. Only numbers, statuses,
    departments and texts: the desk reads every ticket anyway. Empty when the ticket is no
    duplicate to merge (its status) or has no grid. Several tickets at once:
    `POST /tickets/merge/candidates`."""
    store = request.app.state.store
    ticket = await store.get(ticket_no)
    if ticket is None:
        return api_error(404, "not_found", f"工单{ticket_no}不存在")
    grids = _mergeable_grids(ticket)
    in_grids = _in_grids(grids, await open_in_grids(store, grids))
    return {"ticket_no": ticket_no, "candidates": _merge_candidates(ticket, in_grids)}


class CandidatesIn(BaseModel):
    ticket_nos: list[str] = Field(description="the tickets to find the main tickets of (at most 100)")


@router.post("/tickets/merge/candidates")
async def merge_candidates_many(
    body: CandidatesIn, request: Request, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    """并案, for a page of the desk's queue: `GET /tickets/{no}/merge/candidates` for each of
    `ticket_nos`, in one request answered with three rounds of Redis reads whatever their number
    (the tickets; their grids' indexes, pipelined; the open tickets those name, each read once).
    `results` in the order asked (a number asked twice, once), each `{"ticket_no", "candidates"}`
    as the single form has it; a ticket that does not exist has no candidates and `error`, the
    refusal the single form gives it (404)."""
    nos = list(dict.fromkeys(no.strip() for no in body.ticket_nos))
    if not nos:
        raise DomainError("invalid_request", "请至少填写一个工单号", kind="invalid", field="ticket_nos")
    if len(nos) > MERGE_CANDIDATES_BATCH:
        message = f"一次最多查询{MERGE_CANDIDATES_BATCH}张工单（收到{len(nos)}张），请分批查询"
        raise DomainError("too_many_tickets", message, kind="invalid", field="ticket_nos")
    store = request.app.state.store
    tickets = dict(zip(nos, await store.get_many(nos), strict=True))
    grids = {no: _mergeable_grids(t) for no, t in tickets.items() if t is not None}
    in_grids = await open_in_grids(store, [g for each in grids.values() for g in each])
    results: list[dict[str, Any]] = []
    for no, ticket in tickets.items():
        if ticket is None:
            error = {"code": "not_found", "message": f"工单{no}不存在", "status": 404}
            results.append({"ticket_no": no, "candidates": [], "error": error})
            continue
        found = _merge_candidates(ticket, _in_grids(grids[no], in_grids))
        results.append({"ticket_no": no, "candidates": found})
    return {"results": results}
