"""The router's HTTP API: tickets (read, department actions), department queues, the dispatch desk
and joint meetings. Every call carries a bearer token (`appeals token --department ID|--admin`):
a department sees and acts on its own tickets only; the dispatch desk (admin) reads everything,
assigns from its queue, re-dispatches a department's ticket, decides extensions and meeting outcomes;
a grid worker reads its grid's tickets, checks their resolutions on the spot (现场核查) and asks the
desk to correct a ticket's grid (申请更正事发网格), which the desk approves or refuses. A
department refers a dispute between parties to its street's mediation committee (转人民调解), which
then works it as any department does and resolves it with the mediation's outcome."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from services.intake.photo_views import checked_photos, photo_store
from services.router import meetings, workflow
from services.router.service import ListedStatus, MeetingStore, QueueFilter, Queues
from shared.auth import Principal, current_principal, require_admin, require_role
from shared.bus import publish
from shared.city import City
from shared.decisions import Change, Outcome
from shared.errors import DomainError
from shared.events import Event, Mediation, MeetingUpdated, TicketUpdated
from shared.feedback import record_example
from shared.http import domain_error
from shared.knowledge import category_filter
from shared.photo_store import PhotoStore
from shared.privacy import StaffText, mask_personal_data
from shared.store import ConcurrentUpdate, Result, Then, TicketStore, apply_and_publish, together
from shared.tickets import STATUS_NAMES, TICKET_NO_PATTERN, Status, Ticket

router = APIRouter(prefix="/api/v1", tags=["tickets"])


def ticket_not_found(ticket_no: str) -> DomainError:
    return DomainError("not_found", f"工单{ticket_no}不存在", kind="not_found")


def busy() -> JSONResponse:
    return domain_error(
        DomainError("busy", "工单正在被其他操作修改，请稍后重试", kind="conflict"),
        headers={"Retry-After": "1"},
    )


def flags(ticket: Ticket) -> list[str]:
    """What every view shows at a glance."""
    return [
        name
        for on, name in (
            (ticket.urgent, "紧急"),
            (ticket.reopens > 0, "重办"),
            (ticket.overdue, "督办"),
            (ticket.escalated, "升级督办"),
            (ticket.status == Status.MEETING, "联席会议"),
            (ticket.extension_request is not None, "延期待审"),
            (ticket.place_request is not None, "网格更正待审"),  # a grid worker asked the desk
            (ticket.urges > 0, f"催办{ticket.urges}次"),
            (ticket.verification == "not_solved", "核查未解决"),  # the grid worker sent it back
            (bool(ticket.merged), f"并案{len(ticket.merged)}件"),  # more residents wait on its result
            (ticket.merged_into is not None, "已并案"),  # closed into another ticket
        )
        if on
    ]


def ticket_view(ticket: Ticket, history: list[dict] | None = None) -> dict:
    body = ticket.model_dump(mode="json", exclude={"applied"})
    body["status_name"] = STATUS_NAMES[ticket.status]
    body["flags"] = flags(ticket)
    if history is not None:
        body["history"] = history
    return body


def can_read(principal: Principal, ticket: Ticket) -> bool:
    depts = [d.id for d in (ticket.department, *ticket.co_departments) if d]
    return principal.may_read(depts, ticket.grid.grid if ticket.grid else None)


@router.get("/tickets/{ticket_no}")
async def get_ticket(ticket_no: str, request: Request, principal: Principal = Depends(current_principal)):
    store = request.app.state.store
    ticket = await store.get(ticket_no)
    if ticket is None:  # closed long ago, it has left Redis: the record (PostgreSQL) has it
        from services.records.views import archived_ticket

        found = await archived_ticket(request, ticket_no, partial(may_read_ticket, request, principal))
        if isinstance(found, JSONResponse):
            return found
        # The same view wherever the ticket is; `archived`: read from the record.
        return {**ticket_view(*found), "archived": True}
    if not await may_read_ticket(request, principal, ticket):
        # Another department's ticket looks like no ticket at all.
        return domain_error(ticket_not_found(ticket_no))
    return ticket_view(ticket, await store.history(ticket_no))


async def may_read_ticket(
    request: Request, principal: Principal, ticket: Ticket, recorded_summons: Sequence[str] = ()
) -> bool:
    """Who reads a ticket, in Redis or in the record: those who handle it (`can_read`), the grid
    worker who reported it (`reported_it`), and a department summoned to its joint meeting.
    `recorded_summons`: those the record has summoned to it, for a meeting Redis no longer holds."""
    return (
        can_read(principal, ticket)
        or reported_it(principal, ticket)
        or await summoned_to_its_meeting(request, principal, ticket, recorded_summons)
    )


def reported_it(principal: Principal, ticket: Ticket) -> bool:
    """A grid worker reads what it reported on patrol (我上报的) wherever the desk placed it: it found
    the problem and follows it. Reading only: `act` asks `can_read`, and a check on the spot
    (现场核查) stays with the worker of the ticket's grid."""
    return (
        principal.role == "grid_worker"
        and principal.operator is not None
        and ticket.channel == "patrol"
        and ticket.operator_id == principal.operator
    )


async def summoned_to_its_meeting(
    request: Request, principal: Principal, ticket: Ticket, recorded_summons: Sequence[str] = ()
) -> bool:
    """Whether a department is summoned to the joint meeting of this ticket: it reads the ticket,
    to come to the meeting knowing the case (吹哨报到), though it acts on it only if it leads it."""
    if principal.role != "department" or ticket.meeting_id is None:
        return False
    meeting = await meeting_store(request).get(ticket.meeting_id)
    return principal.summoned(meeting.summoned if meeting is not None else recorded_summons)


def summoned(principal: Principal, meeting: meetings.Meeting) -> bool:
    """Whether the principal's department is summoned to the meeting (it reads and attends it)."""
    return principal.summoned(meeting.summoned)


async def act(
    request: Request,
    ticket_no: str,
    transition: Callable[[Ticket, datetime], Outcome | None],
    *,
    principal: Principal,
    may_act: Callable[[Principal, Ticket], bool] = can_read,
    answer: Callable[[Ticket], dict] | None = None,
):
    """Apply an action: the transition decides (None: nothing to do), the store writes, the events
    are published. The answer is the ticket with its history, or what `answer` makes of it for
    those who may act on a ticket they may not read (`may_act`: an operator's urge)."""
    errors: list[DomainError] = []

    def decide(ticket: Ticket | None) -> Outcome | None:
        if ticket is None or not may_act(principal, ticket):
            errors.append(ticket_not_found(ticket_no))
            return None
        try:
            return transition(ticket, datetime.now(UTC))
        except DomainError as e:
            errors.append(e)
            return None

    return await written(request, ticket_no, errors, [Change(ticket_no, decide)], answer=answer)


async def written(
    request: Request,
    ticket_no: str,
    errors: list[DomainError],
    changes: list[Change],
    then: Then | None = None,
    *,
    answer: Callable[[Ticket], dict] | None = None,
):
    """Write the decisions (see `apply_and_publish`) and answer with `ticket_no`, the first ticket
    they are about, or with the refusal its decisions noted in `errors`."""
    state = request.app.state
    try:
        results = await apply_and_publish(
            state.store, changes, lambda events: publish(state.publisher, events), then
        )
        ticket = results[0][0] if results else None
    except ConcurrentUpdate:
        return busy()
    except Exception:
        # Written to the store; the router's outbox relay will publish it.
        ticket = await state.store.get(ticket_no)
    if errors:
        return domain_error(errors[-1])
    if ticket is None:
        return domain_error(ticket_not_found(ticket_no))
    if answer is not None:
        return answer(ticket)
    return ticket_view(ticket, await state.store.history(ticket_no))


def _tz(request: Request) -> ZoneInfo:
    return ZoneInfo(request.app.state.settings.timezone)


def desk_context(request: Request) -> tuple[City, ZoneInfo, str]:
    """What a dispatch-desk decision needs: the city, its time zone, and the desk's id (the actor)."""
    city = request.app.state.city
    return city, _tz(request), city.responsibilities.dispatch_desk


# --- department actions ------------------------------------------------------------------------


async def acting_department(principal: Principal = Depends(current_principal)) -> Principal:
    if principal.is_admin or not principal.department:
        raise HTTPException(status_code=403, detail="此操作须由承办单位使用本单位凭证办理，派单中心不能代办")
    return principal


Transition = Callable[[Ticket, str, City, ZoneInfo, datetime], Outcome]


async def act_as(request: Request, ticket_no: str, principal: Principal, transition: Transition):
    """A department's action on its own ticket: the transition gets the department, city, zone, time."""
    city, tz = request.app.state.city, _tz(request)
    dept = principal.department or ""  # never empty: `acting_department` refuses that
    return await act(
        request,
        ticket_no,
        lambda t, now: transition(t, dept, city, tz, now),
        principal=principal,
    )


@router.post("/tickets/{ticket_no}/accept")
async def accept_ticket(ticket_no: str, request: Request, principal: Principal = Depends(acting_department)):
    return await act_as(
        request, ticket_no, principal, lambda t, d, city, tz, now: workflow.accept(t, d, city, now)
    )


class BatchAcceptIn(BaseModel):
    # The limits (at least one, at most 50, each once) are the workflow's, refused in words.
    ticket_nos: list[str] = Field(
        max_length=1000,
        description=f"the tickets to sign for (已派单), at most {workflow.BATCH_ACCEPT_MAX}, each once",
    )


def _batch_answer(no: str, result: Result | None, error: DomainError | None) -> dict:
    """One ticket's line of a 批量签收's answer (see `accept_many`); `repeat`: accepted before."""
    if error is not None or result is None:
        error = error or ticket_not_found(no)
        return {"ticket_no": no, "outcome": "refused", "code": error.code, "message": error.message}
    _, events = result
    on_time = next((e.on_time for e in events if isinstance(e, TicketUpdated)), None)
    return {"ticket_no": no, "outcome": "accepted", "on_time": on_time, "repeat": not events}


@router.post("/departments/{dept_id}/tickets/accept")
async def accept_many(
    dept_id: str,
    body: BatchAcceptIn,
    request: Request,
    idempotency_key: str | None = Header(None, max_length=200),
    principal: Principal = Depends(acting_department),
):
    """批量签收: the department signs for several of its new tickets (已派单) at once, each decided
    by the very step of `POST /tickets/{no}/accept` and all written in one batch, their events
    published as the single accept publishes them. The answer lists every number in the order
    given: `accepted` (with `on_time`, the response rate's measure) or `refused`, with the
    workflow's reason (another department's ticket reads as no ticket; one accepted, returned or
    re-dispatched meanwhile says its status). One refused ticket does not stop the others. 422 for
    none, more than 50 or a number twice; 403 for another department's path or the desk (as the
    single accept). The same `Idempotency-Key` (per token) accepts nothing twice: each acceptance's
    id derives from it (`workflow.accept_id`), the ticket remembers the ids it applied, and a
    ticket the key accepted already answers `accepted` again (`repeat`: true) with its `on_time`."""
    if principal.department != dept_id:
        return domain_error(DomainError("forbidden", "只能签收本单位的工单", kind="forbidden"))
    try:
        nos = workflow.batch_to_accept(body.ticket_nos)
    except DomainError as e:
        return domain_error(e)
    city, store = request.app.state.city, request.app.state.store
    # Without a key each request is its own: a fresh key still lets a busy batch be written again
    # ticket by ticket below without accepting twice what its first attempt did write.
    key = idempotency_key or uuid.uuid4().hex
    ids = {no: workflow.accept_id(no, principal.scope, key) for no in nos}
    errors: dict[str, DomainError] = {}

    def decide(no: str, ticket: Ticket | None) -> Outcome | None:
        errors.pop(no, None)  # decided again when the write is retried
        if ticket is None:
            errors[no] = ticket_not_found(no)
            return None
        try:
            return workflow.accept_once(ticket, dept_id, city, datetime.now(UTC), ids[no])
        except DomainError as e:
            errors[no] = e
            return None

    state = request.app.state
    changes = [Change(no, partial(decide, no)) for no in nos]
    send = partial(publish, state.publisher)
    results: dict[str, Result] = {}
    try:
        results = dict(zip(nos, await apply_and_publish(store, changes, send), strict=True))
    except ConcurrentUpdate:
        # Some tickets kept changing under the batch: each on its own, so only those stay unsigned.
        for change in changes:
            try:
                (results[change.ticket_no],) = await apply_and_publish(store, [change], send)
            except ConcurrentUpdate:
                errors[change.ticket_no] = DomainError(
                    "busy", f"工单{change.ticket_no}正在被其他操作修改，请稍后重试", kind="conflict"
                )
    except Exception:
        # Written to the store; the router's outbox relay will publish it. Read back what was.
        results = {}
        for no, ticket in zip(nos, await store.get_many(nos), strict=True):
            if ticket is not None and ticket.has_applied(ids[no]):
                errors.pop(no, None)
                results[no] = (ticket, [])
    answers = [_batch_answer(no, results.get(no), errors.get(no)) for no in nos]
    for a in answers:
        if a["outcome"] == "accepted" and a.pop("repeat"):
            a["on_time"] = await _accepted_on_time(store, a["ticket_no"], ids[a["ticket_no"]])
    accepted = sum(a["outcome"] == "accepted" for a in answers)
    refused = len(answers) - accepted
    return {"department": dept_id, "accepted": accepted, "refused": refused, "tickets": answers}


async def _accepted_on_time(store: TicketStore, ticket_no: str, event_id: str) -> bool | None:
    """Whether the acceptance `event_id`, made before (a retry's), was on time: its history says."""
    return next(
        (h.get("on_time") for h in await store.history(ticket_no) if h.get("event_id") == event_id), None
    )


class ResolveIn(BaseModel):
    note: StaffText = Field(min_length=1, max_length=2000)
    photos: list[str] = Field(
        [], description="ids from POST /api/v1/photos (at most 9): photos of the result (处置照片)"
    )
    mediation: Mediation | None = Field(
        None,
        description="a mediation committee only, and required of it: agreed (with the agreement's "
        "terms) or not_agreed (the note then says what the parties were told)",
    )

    @field_validator("mediation")
    @classmethod
    def _agreement_masked(cls, mediation: Mediation | None) -> Mediation | None:
        # The agreement's terms are staff text like the note (`StaffText`).
        if mediation is None or not mediation.agreement:
            return mediation
        return mediation.model_copy(update={"agreement": mask_personal_data(mediation.agreement)})


def _resolve(note: str, photos: tuple[str, ...], mediation: Mediation | None = None) -> Transition:
    def transition(t: Ticket, dept: str, city: City, tz: ZoneInfo, now: datetime) -> Outcome:
        if workflow.allowed(t.status, "accept"):  # resolving straight away implies accepting it
            accepted = workflow.accept(t, dept, city, now)
            # Caused by the acceptance: both happen at `now`, and the record orders events of one
            # instant by cause, so the ticket's row ends resolved, not accepted.
            resolved = workflow.resolve(
                accepted.ticket,
                dept,
                note,
                city,
                now,
                cause=accepted.publish[0],
                photos=photos,
                mediation=mediation,
            )
            return Outcome(resolved.ticket, publish=[*accepted.publish, *resolved.publish])
        return workflow.resolve(t, dept, note, city, now, photos=photos, mediation=mediation)

    return transition


@router.post("/tickets/{ticket_no}/resolve")
async def resolve_ticket(
    ticket_no: str,
    body: ResolveIn,
    request: Request,
    principal: Principal = Depends(acting_department),
    photos: PhotoStore = Depends(photo_store),
):
    kept = await checked_photos(body.photos, photos)  # every id a kept photo, before the ticket changes
    return await act_as(request, ticket_no, principal, _resolve(body.note, kept, body.mediation))


class MediateIn(BaseModel):
    # Checked by the workflow (at least a few characters), so a blank one is refused in words.
    reason: StaffText = Field("", max_length=2000, description="why it is a dispute between parties")


@router.post("/tickets/{ticket_no}/mediate")
async def mediate_ticket(
    ticket_no: str, body: MediateIn, request: Request, principal: Principal = Depends(acting_department)
):
    """转人民调解: the department holding the ticket (已派单 or 办理中) refers a dispute between parties
    to the People's Mediation Committee of the ticket's street, with the reason; the committee holds
    it from then on with fresh deadlines, and the department no longer sees it. 409 when the street
    has no committee, the ticket is with a committee already, a joint meeting named its lead, or it
    is not (or no longer) in a status to move; 422 for a missing or short reason."""
    return await act_as(
        request,
        ticket_no,
        principal,
        lambda t, d, city, tz, now: workflow.refer_to_mediation(t, d, body.reason, city, tz, now),
    )


class ReturnIn(BaseModel):
    reason: str = Field(examples=list(workflow.RETURN_REASONS))
    note: StaffText = Field("", max_length=2000)
    disputed_rule: str = Field(
        "", max_length=500, description="the responsibility rule disputed, if it names us"
    )


@router.post("/tickets/{ticket_no}/return")
async def return_ticket(
    ticket_no: str, body: ReturnIn, request: Request, principal: Principal = Depends(acting_department)
):
    return await act_as(
        request,
        ticket_no,
        principal,
        lambda t, d, city, tz, now: workflow.return_ticket(
            t, d, body.reason, body.note, body.disputed_rule, city, tz, now
        ),
    )


class ExtendIn(BaseModel):
    days: int = Field(ge=1, le=30)
    reason: StaffText = Field(min_length=1, max_length=2000)


@router.post("/tickets/{ticket_no}/extend")
async def extend_ticket(
    ticket_no: str, body: ExtendIn, request: Request, principal: Principal = Depends(acting_department)
):
    return await act_as(
        request,
        ticket_no,
        principal,
        lambda t, d, city, tz, now: workflow.request_extension(t, d, body.days, body.reason, city, now),
    )


class DecisionIn(BaseModel):
    note: StaffText = Field("", max_length=2000)


@router.post("/tickets/{ticket_no}/extension/{verdict}")
async def decide_extension(
    ticket_no: str,
    verdict: Literal["approve", "refuse"],
    request: Request,
    body: DecisionIn | None = None,
    principal: Principal = Depends(require_admin),
):
    """The desk decides a department's extension request (延期申请): approve moves the resolution
    deadline by the days asked for (`note` optional); refuse keeps it, with the desk's reason
    (`note`, required: 422 field reason), which the department reads in the history. No request
    waiting: 409."""
    city, tz, desk = desk_context(request)
    note = body.note if body else ""
    return await act(
        request,
        ticket_no,
        lambda t, now: workflow.decide_extension(t, verdict == "approve", desk, note, city, tz, now),
        principal=principal,
    )


# --- the hotline: a repeat call urges the open ticket (重复来电 → 催办) ------------------------------


# Who takes the resident's repeat call: hotline operators, and the dispatch desk.
urging_staff = require_role("operator", "admin", refusal="只有话务员（或派单中心）可以催办工单")


class UrgeIn(BaseModel):
    note: StaffText = Field("", max_length=5000, description="what the resident said on this call")
    operator_id: str | None = Field(
        None, max_length=50, description="the dispatch desk's token only: the operator who took the call"
    )


def urge_answer(ticket: Ticket) -> dict:
    """What the operator reads to the caller, and no more of the ticket: an operator's token reads
    no tickets (the preview shows a caller's open tickets by number, status and department)."""
    dept = ticket.department.name if ticket.department else "正在分派"
    return {
        "ticket_no": ticket.ticket_no,
        "status": ticket.status,
        "status_name": STATUS_NAMES[ticket.status],
        "department": ticket.department.model_dump() if ticket.department else None,
        "urges": ticket.urges,
        "message": f"已催办工单{ticket.ticket_no}，承办单位：{dept}，不新建工单",
    }


@router.post("/tickets/{ticket_no}/urge")
async def urge_ticket(
    ticket_no: str,
    request: Request,
    body: UrgeIn | None = None,
    idempotency_key: str | None = Header(None, max_length=200),
    principal: Principal = Depends(urging_staff),
):
    """催办: the resident called again about an open ticket. The ticket keeps its status and
    deadlines, counts the urge, and its department reads the call in the history; no new ticket.
    A finished ticket (办结, 回访, 关闭) is refused (409) with what to do instead. The same
    `Idempotency-Key` (per token) urges once, however often it is sent."""
    body = body or UrgeIn()
    desk = request.app.state.city.responsibilities.dispatch_desk
    by = principal.operator or (body.operator_id if principal.is_admin else None) or desk
    event_id = workflow.urge_id(ticket_no, principal.scope, idempotency_key) if idempotency_key else None
    return await act(
        request,
        ticket_no,
        lambda t, now: workflow.urge(t, by, body.note, now, event_id=event_id),
        principal=principal,
        may_act=lambda p, t: True,  # any ticket, by its number: the operator has it from the preview
        answer=urge_answer,
    )


# --- grid workers: the check on the spot of a resolution (现场核查) ---------------------------------


# Who checks a resolution on the spot: the grid worker of the ticket's grid, no one else (a
# department does not check its own work, the desk is not there).
verifying_worker = require_role("grid_worker", refusal="只有本网格的网格员可以现场核查工单")


class VerifyIn(BaseModel):
    solved: bool = Field(description="true: 核查属实，已解决; false: 核查未解决, back to the department")
    note: StaffText = Field("", max_length=2000, description="what the worker saw (required when not solved)")
    photos: list[str] = Field([], description="ids from POST /api/v1/photos (at most 9): the worker's photos")


@router.post("/tickets/{ticket_no}/verify")
async def verify_ticket(
    ticket_no: str,
    body: VerifyIn,
    request: Request,
    principal: Principal = Depends(verifying_worker),
    photos: PhotoStore = Depends(photo_store),
):
    """现场核查: the grid worker of the ticket's grid went to look at a resolved ticket (办结 or
    回访中). Solved: recorded, the status stays (once per resolution: a second check is 409). Not
    solved: the ticket goes back to the department that resolved it with the worker's note (重办,
    fresh deadlines; a second reopen goes to a joint meeting). Another grid's ticket is 404."""
    kept = await checked_photos(body.photos, photos)  # every id a kept photo, before the ticket changes
    city, tz = request.app.state.city, _tz(request)
    worker, grid = principal.operator or principal.token_id, principal.grid
    return await act(
        request,
        ticket_no,
        lambda t, now: workflow.verify(t, worker, grid, body.solved, body.note, city, tz, now, photos=kept),
        principal=principal,
    )


# --- queues ------------------------------------------------------------------------------------


def queues(request: Request) -> Queues:
    return Queues(request.app.state.redis, request.app.state.store)


def queue_refused(request: Request, principal: Principal, dept_id: str) -> JSONResponse | None:
    """Why the principal may not read the department's queue (another department's, or no such
    department), or None."""
    if not principal.is_admin and principal.department != dept_id:
        return domain_error(DomainError("forbidden", "只能查看本单位的工单", kind="forbidden"))
    if dept_id not in request.app.state.city.department_by_id:
        return domain_error(DomainError("unknown_department", f"承办单位{dept_id}不存在", kind="not_found"))
    return None


@router.get("/departments/{dept_id}/tickets/numbers")
async def department_ticket_numbers(
    dept_id: str, request: Request, principal: Principal = Depends(current_principal)
):
    """The numbers of every open ticket in the department's queue, in its order, and no more of
    them: for a client that follows the queue's changes (the console's live page), which would
    otherwise read every ticket of a queue of thousands, page by page, to learn their numbers."""
    if refused := queue_refused(request, principal, dept_id):
        return refused
    nos = await queues(request).numbers(dept_id)
    return {"department": dept_id, "total": len(nos), "ticket_nos": nos}


@router.get("/departments/{dept_id}/tickets")
async def department_tickets(
    dept_id: str,
    request: Request,
    principal: Principal = Depends(current_principal),
    status: str | None = None,
    overdue: bool | None = None,
    category: str | None = Query(None, description="a category, with those under it"),
    grid: str | None = None,
    date: dt.date | None = Query(None, description="received that day (the city's date)"),
    desk: bool | None = Query(
        None,
        description="an extension or grid-correction request waiting for the desk, or returned at least once",
    ),
    page: int = Query(1, ge=1),
    size: int = Query(20, ge=1, le=200),
):
    """The department's queue, most urgent deadline first (`status=closed`: its closed tickets,
    newest first), narrowed by the filters given."""
    if refused := queue_refused(request, principal, dept_id):
        return refused
    city: City = request.app.state.city
    try:
        categories = category_filter(city, category)
    except DomainError as e:
        return domain_error(e)
    where = QueueFilter(
        status=status,
        overdue=overdue,
        categories=categories,
        grid=grid,
        received_on=date,
        tz=_tz(request),
        desk=desk,
    )
    total, items = await queues(request).page(dept_id, where, page=page, size=size)
    # Already JSON (model_dump(mode="json")): sent as is, not walked again by FastAPI's encoder, which
    # took half the time of a page of 200.
    return JSONResponse(
        {
            "department": dept_id,
            "total": total,
            "page": page,
            "size": size,
            "tickets": [ticket_view(t) for t in items],
        }
    )


# --- the dispatch desk (人工派单) -----------------------------------------------------------------


@router.get("/dispatch/queue")
async def dispatch_queue(
    request: Request,
    principal: Principal = Depends(require_admin),
    page: int = Query(1, ge=1),
    size: int = Query(20, ge=1, le=200),
    low: bool | None = Query(
        None,
        description="true: only those classified below the review threshold (低置信度待复核); "
        "false: only the others (未能自动派单)",
    ),
    desk: bool | None = Query(None, description="true: only those returned at least once"),
    ticket: str = Query("", max_length=40, description="the page holding this ticket, where it is listed"),
):
    """The tickets waiting for the desk to dispatch them, oldest first, a page at a time."""
    desk_id = request.app.state.city.responsibilities.dispatch_desk
    where = QueueFilter(
        status=Status.REVIEW,
        desk=desk,
        low_confidence=low,
        threshold=request.app.state.settings.review_confidence_threshold,
    )
    if ticket:
        total, page, items = await queues(request).page_holding(desk_id, where, ticket, page=page, size=size)
    else:
        total, items = await queues(request).page(desk_id, where, page=page, size=size)
    return JSONResponse(  # already JSON, as a department's queue above
        {"total": total, "page": page, "size": size, "tickets": [ticket_view(t) for t in items]}
    )


@router.get("/dispatch/followed")
async def dispatch_followed(
    request: Request,
    principal: Principal = Depends(require_admin),
    page: int = Query(1, ge=1, description="the page of the returned tickets; past the last: the last"),
    size: int = Query(20, ge=1, le=200),
):
    """What the dispatch desk follows of the open tickets: every extension request waiting for its
    decision (`extensions`: each a decision to take, all of them), every grid worker's request to
    correct a ticket's grid (`place_requests`, all of them), every call answered on the spot that
    its resident found wanting, reopened at the desk to be sent to a department (`reopened`, all of
    them, the most urgent first), and a page of the tickets returned
    at least once (`returned`: those the departments hold, department by department, then those
    waiting at the desk to be dispatched again), with how many there are. One pass over the queues
    reads both; only the tickets sent are made models."""
    city: City = request.app.state.city
    departments = [d.id for d in city.departments if d.kind != "dispatch_desk"]
    followed = await queues(request).followed(city.responsibilities.dispatch_desk, departments)
    total = len(followed.returned)
    page = min(page, max(1, -(-total // size)))  # the list shrank since the link was made: its last page
    shown = followed.returned[(page - 1) * size : page * size]
    return JSONResponse(  # already JSON, as a department's queue above
        {
            "extensions": [ticket_view(Ticket.model_validate_json(raw)) for raw in followed.extensions],
            "place_requests": [
                ticket_view(Ticket.model_validate_json(raw)) for raw in followed.place_requests
            ],
            "reopened": [ticket_view(Ticket.model_validate_json(raw)) for raw in followed.reopened],
            "returned": {
                "total": total,
                "page": page,
                "size": size,
                "tickets": [ticket_view(Ticket.model_validate_json(raw)) for raw in shown],
            },
        }
    )


class DispatchIn(BaseModel):
    department: str
    category: str | None = None  # a corrected leaf category, if the classifier got it wrong
    note: StaffText = Field("", max_length=2000)
    # The grid the ticket is in (areas.yaml's id), when the classifier found none or the wrong one:
    # the ticket's grid, community and street from then on. An unknown id is refused (422, field grid).
    grid: str | None = Field(None, max_length=100)


@router.post("/dispatch/{ticket_no}/assign")
async def dispatch_assign(
    ticket_no: str, body: DispatchIn, request: Request, principal: Principal = Depends(require_admin)
):
    """人工派单: the desk sends a ticket waiting for it (待人工派单) to a department, maybe with a
    corrected category and the grid the ticket is in (人工选定: `ticket.assigned` carries it with
    `grid_chosen`, and the record, the grid worker and the rankings place the ticket there)."""
    city, tz, desk = desk_context(request)
    response = await act(
        request,
        ticket_no,
        lambda t, now: workflow.dispatch(
            t, body.department, body.category, body.note, desk, city, tz, now, grid=body.grid
        ),
        principal=principal,
    )
    if isinstance(response, dict):
        # The operator's choice is a labelled example for the next training run.
        await record_example(
            request.app.state.redis,
            ticket_no=ticket_no,
            text=response["text"],
            title=response["title"],
            label=response["category"],
            grid=(response.get("grid") or {}).get("grid"),
            source="dispatch",
            by=desk,
        )
    return response


class RedispatchIn(BaseModel):
    department: str = Field(description="the department that is to hold the ticket now")
    # Checked by the workflow (at least a few characters), so a blank one is refused in words.
    reason: StaffText = Field("", max_length=2000, description="改派原因: the new department reads it")


@router.post("/tickets/{ticket_no}/redispatch")
async def redispatch_ticket(
    ticket_no: str, body: RedispatchIn, request: Request, principal: Principal = Depends(require_admin)
):
    """改派: the dispatch desk moves a ticket a department holds (已派单 or 办理中) to another
    department, with the reason, without waiting for a return. The new department starts with
    fresh deadlines; the old one no longer sees the ticket. 409 when the ticket is not held by a
    department (waiting at the desk, in a joint meeting, resolved) or already held by that one."""
    city, tz, _ = desk_context(request)
    return await act(
        request,
        ticket_no,
        lambda t, now: workflow.redispatch(t, body.department, body.reason, city, tz, now),
        principal=principal,
    )


class PlaceIn(BaseModel):
    grid: str = Field(max_length=100, description="the grid the problem is in (areas.yaml's id)")


# Who sets a ticket's grid once it is assigned: the dispatch desk, which decides where tickets go.
# Not the department holding it: the place decides whose street a ticket counts against and often
# who is responsible for it, so the department says so to the desk instead (see `workflow.place`).
placing_staff = require_role(
    "admin",
    refusal="只有派单中心可以更改事发网格；发现事发位置有误的，请联系派单中心更正"
    "（承办单位也可在签收前以“属地（网格）有误”退单）",
)


@router.post("/tickets/{ticket_no}/place")
async def place_ticket(
    ticket_no: str, body: PlaceIn, request: Request, principal: Principal = Depends(placing_staff)
):
    """事发网格: the dispatch desk places a ticket already assigned (已派单 to 回访中, or held by a
    joint meeting) in the grid where the problem is: one routed without a grid (未定位), or placed
    wrongly, or the located grid of a disputed place confirmed (定位与地址不一致). The department and
    the status stay; the grid, community and street are the ticket's from then on (`ticket.updated`
    `placed`, which the record, intake's duplicate index and the grid worker's list follow). 422 for
    a grid the city does not have (`unknown_grid`, field grid); 409 for the grid it has already, for
    a ticket waiting at the desk (its dispatch places it) and for a closed one, also one that has
    left the working set for the record."""
    city, _, desk = desk_context(request)
    if await request.app.state.store.get(ticket_no) is None:
        from services.records.views import archived_ticket

        found = await archived_ticket(request, ticket_no, partial(may_read_ticket, request, principal))
        if isinstance(found, JSONResponse):
            return found
        try:  # only a finished ticket leaves Redis: refused as the table refuses it
            workflow.check(found[0], "place")
        except DomainError as e:
            return domain_error(e)
    return await act(
        request,
        ticket_no,
        lambda t, now: workflow.place(t, body.grid.strip(), desk, city, now),
        principal=principal,
    )


# Who asks the desk to correct a ticket's grid: the grid worker of that grid, who went to look (位置核实);
# the desk places tickets itself, a department says so to the desk or returns it (属地有误).
requesting_worker = require_role("grid_worker", refusal="只有本网格的网格员可以申请更正事发网格")


class PlaceRequestIn(BaseModel):
    grid: str = Field(
        max_length=100, description="the grid the problem is in, as seen on the spot (areas.yaml's id)"
    )
    # Checked by the workflow (at least a few characters), so a blank one is refused in words.
    reason: StaffText = Field("", max_length=2000, description="what the worker saw on the spot")


@router.post("/tickets/{ticket_no}/place-request")
async def request_place(
    ticket_no: str, body: PlaceRequestIn, request: Request, principal: Principal = Depends(requesting_worker)
):
    """申请更正事发网格: the grid worker of the ticket's grid found on the spot that the problem is in
    another grid, and asks the dispatch desk to place it there, saying what was seen. Nothing moves
    until the desk decides (`/place-request/approve` or `/refuse`); the request waits on the ticket
    (`place_request`) and in what the desk follows (`/dispatch/followed`). Another grid's ticket is
    404 (as for verify), another role 403; an unknown grid or a reason too short 422 (field grid or
    reason); the grid it has already, a request already waiting, or a status the desk could not
    place it in 409."""
    city = request.app.state.city
    worker, grid = principal.operator or principal.token_id, principal.grid
    return await act(
        request,
        ticket_no,
        lambda t, now: workflow.request_place(t, worker, grid, body.grid.strip(), body.reason, city, now),
        principal=principal,
    )


@router.post("/tickets/{ticket_no}/place-request/{verdict}")
async def decide_place_request(
    ticket_no: str,
    verdict: Literal["approve", "refuse"],
    request: Request,
    body: DecisionIn | None = None,
    principal: Principal = Depends(require_admin),
):
    """The desk decides a grid worker's request to correct the grid: approve places the ticket in the
    grid asked for (`placed`, as `/place` does); refuse drops the request with the desk's reason
    (`note`, required: 422 field reason). No request waiting: 409."""
    city, _, desk = desk_context(request)
    note = body.note if body else ""
    return await act(
        request,
        ticket_no,
        lambda t, now: workflow.decide_place(t, verdict == "approve", desk, note, city, now),
        principal=principal,
    )


class MergeIn(BaseModel):
    into: str = Field(max_length=40, description="the main ticket (主件) the duplicate is merged into")
    # Checked by the workflow (at least a few characters), so a blank one is refused in words.
    reason: StaffText = Field("", max_length=2000, description="并案原因: why it is the same problem")


def _merge_nos(ticket_no: str, into: str) -> list[str]:
    """The duplicate and the main ticket to read (a main ticket's number that is none: not read,
    so the workflow says it does not exist)."""
    return [ticket_no, into] if re.fullmatch(TICKET_NO_PATTERN, into) else [ticket_no]


def _merged(
    tickets: Mapping[str, Ticket | None], ticket_no: str, into: str, reason: str, desk: str
) -> dict[str, Outcome]:
    """The merge's outcome per ticket it changes, decided on `tickets` (the duplicate, the main
    ticket and the duplicate's own duplicates, as read), or the refusal raised."""
    duplicate = tickets[ticket_no]
    if duplicate is None:
        raise ticket_not_found(ticket_no)
    carried = {no: tickets.get(no) for no in duplicate.merged}
    outcomes = workflow.merge(
        duplicate, tickets.get(into), into, reason, desk, datetime.now(UTC), carried=carried
    )
    return {o.ticket.ticket_no: o for o in outcomes}


def _carried(tickets: Mapping[str, Ticket | None], ticket_no: str) -> list[str]:
    """The duplicates merged into `ticket_no` before, which move with it (see `workflow.merge`)."""
    duplicate = tickets.get(ticket_no)
    return list(duplicate.merged) if duplicate is not None else []


@router.post("/tickets/{ticket_no}/merge")
async def merge_ticket(
    ticket_no: str, body: MergeIn, request: Request, principal: Principal = Depends(require_admin)
):
    """并案: the dispatch desk merges a duplicate (从件: 待人工派单, or 已派单 and not yet accepted)
    into the ticket already being handled (主件, `into`). The duplicate is closed, pointing at it
    (`merged_into`), and leaves its department's queue; its resident is texted which ticket to
    follow; the main ticket lists it (`merged`). A duplicate others were merged into brings them
    along: each points at the new main ticket (`remerged`), which lists them too, and their
    residents are texted the ticket to follow now. All tickets change in one write. Refused:
    another role 403; a main ticket that does not exist 404 (`into`); one that is finished, merged
    itself or merged into this ticket 409 (`into`); a duplicate in another status 409; the ticket
    itself, or a short reason, 422. The answer is the duplicate with its history."""
    _, _, desk = desk_context(request)
    into = body.into.strip()
    errors: list[DomainError] = []

    def decide(tickets: Mapping[str, Ticket | None]) -> dict[str, Outcome] | None:
        try:
            return _merged(tickets, ticket_no, into, body.reason, desk)
        except DomainError as e:
            errors.append(e)
            return None

    then = together(_merge_nos(ticket_no, into), decide, also=lambda t: _carried(t, ticket_no))
    return await written(request, ticket_no, errors, [], then)


@router.post("/tickets/{ticket_no}/merge/preview")
async def preview_merge(
    ticket_no: str, body: MergeIn, request: Request, principal: Principal = Depends(require_admin)
):
    """并案, asked before it is made (the console's confirmation of a typed number): what
    `POST .../merge` with the same body would do, without doing it. 200 with the main ticket
    (`into`, as `GET /tickets/{no}` has it, without its history) and the duplicates that would
    move along (`moved`); otherwise the very refusal the merge would give, with its status."""
    _, _, desk = desk_context(request)
    store = request.app.state.store
    into = body.into.strip()
    nos = _merge_nos(ticket_no, into)
    tickets: dict[str, Ticket | None] = dict(zip(nos, await store.get_many(nos), strict=True))
    if carried := _carried(tickets, ticket_no):
        tickets |= dict(zip(carried, await store.get_many(carried), strict=True))
    try:
        _merged(tickets, ticket_no, into, body.reason, desk)
    except DomainError as e:
        return domain_error(e)
    main = tickets[into]
    assert main is not None  # the merge would have been refused
    return {"ticket_no": ticket_no, "into": ticket_view(main), "moved": carried}


# --- joint meetings (联席会议) -------------------------------------------------------------------


def meeting_view(m: meetings.Meeting, city: City) -> dict:
    body = m.model_dump(mode="json")
    body["reason_name"] = meetings.REASON_NAMES[m.reason]
    body["summoned"] = [
        {"id": d, "name": city.department_by_id[d].name, "checked_in": d in m.checkins} for d in m.summoned
    ]
    return body


# Who lists meetings: a department (those it is summoned to) and the dispatch desk (every one).
meeting_lister = require_role("department", "admin", refusal="只有承办单位和派单中心可以查看联席会议列表")


def meeting_store(request: Request) -> MeetingStore:
    state = request.app.state
    return MeetingStore(
        state.redis, state.store, precedent_days=state.city.sla.supervision.meeting_precedent_days
    )


def listed_department(
    request: Request,
    principal: Principal = Depends(meeting_lister),
    department: str | None = Query(
        None, max_length=64, description="the desk only: one department's meetings (else every meeting)"
    ),
) -> str | None:
    """Whose meetings a list is of: a department's own (it may name no other), or, for the desk,
    the department it names or None (every meeting)."""
    if not principal.is_admin:
        if not principal.department or department not in (None, principal.department):
            raise DomainError(
                "forbidden", "只能查看本单位参加的联席会议", kind="forbidden", field="department"
            )
        return principal.department
    if department is not None and department not in request.app.state.city.department_by_id:
        raise DomainError(
            "unknown_department", f"承办单位{department}不存在", kind="not_found", field="department"
        )
    return department


@router.get("/meetings")
async def list_meetings(
    request: Request,
    dept: str | None = Depends(listed_department),
    store: MeetingStore = Depends(meeting_store),
    status: ListedStatus = Query("all", description="open (待决定), decided (已决定) or all"),
    page: int = Query(1, ge=1),
    size: int = Query(20, ge=1, le=200),
):
    """The joint meetings a department is summoned to, whether or not it holds any of their
    tickets (the lead street office, each department called: 吹哨报到), or, for the desk, every
    meeting (`department`: one department's). The open ones first, the nearest deadline first;
    then those decided in the last 30 days, the latest decision first. Each as
    `GET /meetings/{id}` has it. `total` counts the list (of `status`), `open` its open meetings."""
    total, open_count, found = await store.listing(dept, status, page, size, time.time())
    city = request.app.state.city
    return {
        "department": dept,
        "status": status,
        "total": total,
        "open": open_count,
        "page": page,
        "size": size,
        "meetings": [meeting_view(m, city) for m in found],
    }


@router.get("/meetings/count")
async def count_meetings(
    dept: str | None = Depends(listed_department), store: MeetingStore = Depends(meeting_store)
):
    """For a menu: how many open meetings the list has (`open`, one count) and, of a department's,
    how many still wait for it to check in (`to_check_in`; null for every meeting's)."""
    open_count, to_check_in = await store.counts(dept)
    return {"department": dept, "open": open_count, "to_check_in": to_check_in}


@router.get("/meetings/{meeting_id}")
async def get_meeting(meeting_id: str, request: Request, principal: Principal = Depends(current_principal)):
    city = request.app.state.city
    m = await meeting_store(request).get(meeting_id)
    if m is None:  # decided long ago, it has left Redis with its tickets: the record has it
        from services.records.views import archived_meeting

        found = await archived_meeting(request, meeting_id, partial(may_read_meeting, principal))
        if isinstance(found, JSONResponse):
            return found
        # The same view wherever the meeting is; `archived`: read from the record.
        return {**meeting_view(found, city), "archived": True}
    if not may_read_meeting(principal, m):
        return domain_error(meeting_not_found(meeting_id))
    return meeting_view(m, city)


def may_read_meeting(principal: Principal, meeting: meetings.Meeting) -> bool:
    """Who reads a meeting, in Redis or in the record: the departments it summons, and the desk."""
    return principal.is_admin or summoned(principal, meeting)


def meeting_not_found(meeting_id: str) -> DomainError:
    return DomainError("not_found", f"联席会议{meeting_id}不存在", kind="not_found")


MeetingStep = Callable[[meetings.Meeting], tuple[meetings.Meeting, list[Event]] | None]


async def change_meeting(
    request: Request, meeting_id: str, principal: Principal, step: MeetingStep
) -> meetings.Meeting | JSONResponse:
    errors: list[DomainError] = []

    def decide(m: meetings.Meeting | None) -> tuple[meetings.Meeting, list[Event]] | None:
        if m is None or not may_read_meeting(principal, m):
            errors.append(meeting_not_found(meeting_id))
            return None
        try:
            return step(m)
        except DomainError as e:
            errors.append(e)
            return None

    try:
        m = await meeting_store(request).change(meeting_id, decide)
    except ConcurrentUpdate:
        return busy()
    if m is None:
        # Not in Redis: decided long ago, it has left with its tickets (or it never was). A meeting
        # the caller may read is told as decided, not as missing.
        from services.records.views import archived_meeting

        found = await archived_meeting(request, meeting_id, partial(may_read_meeting, principal))
        if isinstance(found, JSONResponse):
            return found
        decided = (found.decided_at or found.convened_at).astimezone(_tz(request))
        return domain_error(
            DomainError(
                "meeting_decided",
                f"联席会议{meeting_id}已于{decided:%Y-%m-%d}作出决定并归档，不能再报到或更改",
                kind="conflict",
            )
        )
    if errors:
        return domain_error(errors[-1])
    return m


@router.post("/meetings/{meeting_id}/checkin")
async def meeting_checkin(
    meeting_id: str, request: Request, principal: Principal = Depends(acting_department)
):
    dept, city = principal.department or "", request.app.state.city  # never empty: see acting_department

    def step(m: meetings.Meeting) -> tuple[meetings.Meeting, list[Event]] | None:
        now = datetime.now(UTC)
        new = meetings.check_in(m, dept, now)
        if new is m:
            return None  # already checked in
        return new, [
            MeetingUpdated(
                occurred_at=now,  # the meeting's clock: the record reads the check-in's time from it
                ticket_no=m.tickets[0],
                meeting_id=m.meeting_id,
                action="checked_in",
                actor=dept,
                department=workflow.dept_ref(city, dept),
            )
        ]

    m = await change_meeting(request, meeting_id, principal, step)
    return m if isinstance(m, JSONResponse) else meeting_view(m, city)


class MeetingDecisionIn(BaseModel):
    lead: str
    note: StaffText = Field("", max_length=2000)


@router.post("/meetings/{meeting_id}/decide")
async def meeting_decide(
    meeting_id: str, body: MeetingDecisionIn, request: Request, principal: Principal = Depends(require_admin)
):
    state = request.app.state
    (city, tz, desk), now = desk_context(request), datetime.now(UTC)

    def step(m: meetings.Meeting) -> tuple[meetings.Meeting, list[Event]] | None:
        if m.status == "decided" and m.lead == body.lead:
            return None  # asked again: make sure the tickets followed, below
        new = meetings.decide(m, body.lead, desk, body.note, city, now)
        return new, [
            MeetingUpdated(
                occurred_at=now,  # as `decided_at`, which the record reads from it
                ticket_no=m.tickets[0],
                meeting_id=m.meeting_id,
                action="decided",
                actor=desk,
                department=workflow.dept_ref(city, body.lead),
                tickets=tuple(m.tickets),
                note=body.note,
            )
        ]

    m = await change_meeting(request, meeting_id, principal, step)
    if isinstance(m, JSONResponse):
        return m
    # The attached tickets follow the decision (the same decision again changes nothing).
    lead = m.lead or body.lead
    follow = partial(
        workflow.meeting_decided, mid=meeting_id, lead=lead, note=m.note, city=city, tz=tz, now=now
    )
    changes = [Change(no, follow) for no in m.tickets]
    try:
        await apply_and_publish(state.store, changes, lambda events: publish(state.publisher, events))
    except ConcurrentUpdate:
        return busy()
    return meeting_view(m, city)
