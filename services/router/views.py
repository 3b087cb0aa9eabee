"""The tickets API: read a ticket with its history; department actions on it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.router import workflow
from services.router.workflow import WorkflowError
from shared.bus import publish
from shared.store import Change, ConcurrentUpdate, Outcome, apply_and_publish
from shared.tickets import Ticket

router = APIRouter(prefix="/api/v1/tickets", tags=["tickets"])


def not_found(ticket_no: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": "not_found", "message": f"工单{ticket_no}不存在"})


def ticket_view(ticket: Ticket, history: list[dict]) -> dict:
    body = ticket.model_dump(mode="json", exclude={"applied"})
    body["status_name"] = workflow.STATUS_NAMES.get(ticket.status, ticket.status)
    body["history"] = history
    return body


@router.get("/{ticket_no}")
async def get_ticket(ticket_no: str, request: Request):
    store = request.app.state.store
    ticket = await store.get(ticket_no)
    if ticket is None:
        return not_found(ticket_no)
    return ticket_view(ticket, await store.history(ticket_no))


async def act(request: Request, ticket_no: str, transition: Callable[[Ticket, datetime], Outcome]):
    """Apply a department action: the transition decides, the store writes, the event is published."""
    state = request.app.state
    errors: list[WorkflowError] = []

    def decide(ticket: Ticket | None) -> Outcome | None:
        if ticket is None:
            errors.append(WorkflowError("not_found", f"工单{ticket_no}不存在", status=404))
            return None
        try:
            return transition(ticket, datetime.now(UTC))
        except WorkflowError as e:
            errors.append(e)
            return None

    try:
        [(ticket, _)] = await apply_and_publish(
            state.store, [Change(ticket_no, decide)], lambda events: publish(state.publisher, events)
        )
    except ConcurrentUpdate:
        return JSONResponse(status_code=409, headers={"Retry-After": "1"},
                            content={"error": "busy", "message": "工单正在被其他操作修改，请稍后重试"})
    except Exception:
        # Written to the store; the router's outbox relay will publish it.
        ticket = await state.store.get(ticket_no)
    if errors:
        e = errors[-1]
        return JSONResponse(status_code=e.status, content={"error": e.code, "message": e.message})
    return ticket_view(ticket, await state.store.history(ticket_no))


class ResolveIn(BaseModel):
    note: str = Field(min_length=1, max_length=2000)


def _owner(ticket: Ticket) -> str:
    # Until departments authenticate (bearer tokens), the acting department is the ticket's owner.
    return ticket.department.id if ticket.department else ""


@router.post("/{ticket_no}/accept")
async def accept_ticket(ticket_no: str, request: Request):
    city = request.app.state.city
    return await act(request, ticket_no, lambda t, now: workflow.accept(t, _owner(t), city, now))


@router.post("/{ticket_no}/resolve")
async def resolve_ticket(ticket_no: str, body: ResolveIn, request: Request):
    city = request.app.state.city

    def transition(t: Ticket, now: datetime) -> Outcome:
        if t.status == "assigned":  # resolving straight away implies accepting it
            accepted = workflow.accept(t, _owner(t), city, now)
            resolved = workflow.resolve(accepted.ticket, _owner(t), body.note, city, now)
            return Outcome(resolved.ticket, publish=[*accepted.publish, *resolved.publish])
        return workflow.resolve(t, _owner(t), body.note, city, now)

    return await act(request, ticket_no, transition)
