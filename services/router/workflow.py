"""The ticket workflow: a state machine over `Ticket`, one pure function per transition.

    received -> assigned -> accepted -> resolved -> surveyed -> closed
                  |  ^                                 |
                  |  +------------- reopened (不满意) <-+
                  +-> review (dispatch desk) -> assigned

Each function takes the current ticket (and what happened), checks that the transition is allowed,
and returns an `Outcome`: the new ticket and the events that record it. It returns None when the
input event was already applied (idempotency), and raises `WorkflowError` with a message a person
can act on when the transition is not allowed. No I/O: the handlers load, call these, and store.
"""

from __future__ import annotations

from datetime import datetime

from services.router.rules import Routing
from services.router.sla import Deadlines
from shared import tickets as st
from shared.city import City
from shared.events import (
    AppealClassified,
    DepartmentRef,
    Event,
    SurveyAnswered,
    SurveySent,
    TicketAssigned,
    TicketUpdated,
)
from shared.store import Outcome
from shared.tickets import Ticket


class WorkflowError(Exception):
    """A transition that is not allowed. `code` is for programs, the message for people."""

    def __init__(self, code: str, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def dept_ref(city: City, dept_id: str) -> DepartmentRef:
    return DepartmentRef(id=dept_id, name=city.department_by_id[dept_id].name)


def _applied(ticket: Ticket, *events: Event) -> list[str]:
    # The last few hundred ids are plenty: duplicates arrive close to the original.
    return (ticket.applied + [e.event_id for e in events])[-300:]


def _updated(ticket: Ticket, event: TicketUpdated, cause: Event | None = None, **changes) -> Outcome:
    new = ticket.model_copy(
        update={
            "status": event.status,
            "applied": _applied(ticket, *(e for e in (cause, event) if e is not None)),
            "updated_at": event.occurred_at,
            **changes,
        }
    )
    return Outcome(new, publish=[event], record=[cause] if cause is not None else [])


# --- intake and assignment ---------------------------------------------------------------------


def assign(
    ticket: Ticket | None,
    classified: AppealClassified,
    routing: Routing,
    due: Deadlines,
    city: City,
) -> Outcome | None:
    """Assign a classified appeal to the department the responsibility list names."""
    recorded: list[Event] = []
    if ticket is None:  # the router saw the classification before intake's write landed
        ticket = Ticket.from_appeal(classified.appeal)
        recorded.append(classified.appeal)
    if ticket.has_applied(classified.event_id):
        return None
    if ticket.status != st.RECEIVED:
        # Already routed (e.g. a reclassification after a person decided): keep the person's call.
        return Outcome(ticket.model_copy(update={"applied": _applied(ticket, classified)}))
    assigned = TicketAssigned.caused(
        classified,
        department=dept_ref(city, routing.lead),
        co_departments=tuple(dept_ref(city, d) for d in routing.co),
        via=routing.via,
        rule=routing.rule,
        explanation=routing.explanation,
        category=classified.category,
        grid=classified.grid.grid,
        urgent=classified.urgent,
        respond_by=due.respond_by,
        resolve_by=due.resolve_by,
        occurred_at=classified.occurred_at,
    )
    new = ticket.model_copy(
        update={
            "status": st.REVIEW if routing.via == "dispatch_desk" else st.ASSIGNED,
            "category": classified.category,
            "category_names": classified.category_names,
            "confidence": classified.confidence,
            "top_categories": classified.top,
            "appeal_type": classified.appeal_type,
            "grid": classified.grid,
            "model_version": classified.model_version,
            "urgent": ticket.urgent or classified.urgent,
            "department": assigned.department,
            "co_departments": assigned.co_departments,
            "assigned_via": routing.via,
            "assigned_at": assigned.occurred_at,
            "respond_by": due.respond_by,
            "resolve_by": due.resolve_by,
            "applied": _applied(ticket, classified.appeal, classified, assigned),
            "updated_at": assigned.occurred_at,
        }
    )
    return Outcome(new, publish=[assigned], record=[*recorded, classified])


# --- department actions ------------------------------------------------------------------------


def _require_owner(ticket: Ticket, dept_id: str) -> None:
    if ticket.department is None or ticket.department.id != dept_id:
        # Same answer as "no such ticket": a department learns nothing about others' tickets.
        raise WorkflowError("not_found", f"工单{ticket.ticket_no}不存在", status=404)


def _require_status(ticket: Ticket, allowed: set[str], action: str) -> None:
    if ticket.status not in allowed:
        raise WorkflowError(
            "illegal_transition",
            f"工单{ticket.ticket_no}当前状态为“{STATUS_NAMES.get(ticket.status, ticket.status)}”，不能{action}",
        )


STATUS_NAMES = {
    st.RECEIVED: "已受理",
    st.REVIEW: "待人工派单",
    st.ASSIGNED: "已派单",
    st.ACCEPTED: "办理中",
    st.RESOLVED: "已办结",
    st.SURVEYED: "回访中",
    st.CLOSED: "已关闭",
    st.MEETING: "联席会议",
}


def accept(ticket: Ticket, dept_id: str, city: City, now: datetime) -> Outcome:
    _require_owner(ticket, dept_id)
    _require_status(ticket, {st.ASSIGNED}, "签收")
    event = TicketUpdated(
        ticket_no=ticket.ticket_no, action="accepted", status=st.ACCEPTED, actor=dept_id,
        department=dept_ref(city, dept_id), occurred_at=now,
        data={"on_time": ticket.respond_by is None or now <= ticket.respond_by},
    )
    return _updated(ticket, event, accepted_at=now)


def resolve(ticket: Ticket, dept_id: str, note: str, city: City, now: datetime) -> Outcome:
    _require_owner(ticket, dept_id)
    _require_status(ticket, {st.ACCEPTED}, "办结（请先签收）")
    note = note.strip()
    if not note:
        raise WorkflowError("note_required", "办结时必须填写办理结果说明", status=422)
    event = TicketUpdated(
        ticket_no=ticket.ticket_no, action="resolved", status=st.RESOLVED, actor=dept_id,
        department=dept_ref(city, dept_id), note=note, occurred_at=now,
        data={"on_time": ticket.resolve_by is None or now <= ticket.resolve_by},
    )
    return _updated(ticket, event, resolved_at=now, resolution_note=note)


# --- the survey --------------------------------------------------------------------------------


def survey_sent(ticket: Ticket | None, sent: SurveySent) -> Outcome | None:
    if ticket is None or ticket.has_applied(sent.event_id) or ticket.status != st.RESOLVED:
        return None
    event = TicketUpdated.caused(
        sent, action="surveyed", status=st.SURVEYED, actor="system", department=ticket.department,
        data={"survey_id": sent.survey_id},
    )
    return _updated(ticket, event, cause=sent)


def rate(ticket: Ticket | None, answer: SurveyAnswered) -> Outcome | None:
    """The resident's rating closes the ticket, or reopens it when unsatisfied or not solved."""
    if ticket is None or ticket.has_applied(answer.event_id):
        return None
    if answer.outcome in ("no_answer", "opted_out", "skipped_anonymous") and ticket.status in (
        st.RESOLVED, st.SURVEYED
    ):
        # No rating will come (issue 6): the survey closes the ticket without one.
        event = TicketUpdated.caused(
            answer, action="closed", status=st.CLOSED, actor="system", department=ticket.department,
            data={"survey": answer.outcome},
        )
        return _updated(ticket, event, cause=answer, closed_at=answer.occurred_at)
    if ticket.status not in (st.RESOLVED, st.SURVEYED) or answer.rating is None:
        # Late or unratable: keep the words in the history, change nothing else.
        return Outcome(ticket.model_copy(update={"applied": _applied(ticket, answer)}), record=[answer])
    unhappy = answer.rating == 3 or answer.solved is False
    if unhappy:
        event = TicketUpdated.caused(
            answer, action="reopened", status=st.ASSIGNED, actor="resident",
            department=ticket.department, note=answer.text,
            data={"rating": answer.rating, "solved": answer.solved, "reopens": ticket.reopens + 1},
        )
        return _updated(
            ticket, event, cause=answer, rating=answer.rating, solved=answer.solved,
            reopens=ticket.reopens + 1, accepted_at=None, resolved_at=None,
        )
    event = TicketUpdated.caused(
        answer, action="closed", status=st.CLOSED, actor="resident", department=ticket.department,
        note=answer.text, data={"rating": answer.rating, "solved": answer.solved},
    )
    return _updated(
        ticket, event, cause=answer, rating=answer.rating, solved=answer.solved,
        closed_at=answer.occurred_at,
    )
