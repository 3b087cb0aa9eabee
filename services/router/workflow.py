"""The ticket workflow: a state machine over `Ticket`, one pure function per transition.

    received -> assigned -> accepted -> resolved -> surveyed -> closed
                  |  ^  ^                              |
                  |  |  +----------- reopened (不满意) <-+   (a second 不满意: meeting)
                  |  +-- returned (退单): next candidate, or the dispatch desk; twice: meeting
                  +-> review (dispatch desk) -> assigned
    meeting (联席会议) -> assigned to the lead the meeting decided

Each function takes the current ticket (and what happened), checks that the transition is allowed,
and returns an `Outcome`: the new ticket and the events that record it. It returns None when the
input event was already applied (idempotency), and raises `WorkflowError` with a message a person
can act on when the transition is not allowed. No I/O: the handlers load, call these, and store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from services.router import meetings
from services.router.rules import Routing, candidates, describe_rule, responsible
from services.router.sla import Deadlines, add_working_days, deadlines
from shared import tickets as st
from shared.city import City
from shared.events import (
    AppealClassified,
    DepartmentRef,
    Event,
    GridMatch,
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
    *,
    tz: ZoneInfo,
    contested: Sequence[str] = (),
) -> Outcome | None:
    """Assign a classified appeal to the department the responsibility list names. `contested`:
    other departments with an equal claim; the ticket then goes to a joint meeting to decide."""
    recorded: list[Event] = []
    if ticket is None:  # the router saw the classification before intake's write landed
        ticket = Ticket.from_appeal(classified.appeal)
        recorded.append(classified.appeal)
    if ticket.has_applied(classified.event_id):
        return None
    corrected = classified.reviewed_by is not None and ticket.status == st.REVIEW
    if ticket.status != st.RECEIVED and not corrected:
        # Already routed (e.g. a reclassification after a person decided): keep the person's call.
        return Outcome(ticket.model_copy(update={"applied": _applied(ticket, classified)}))
    # Flagged by the classifier or the operator, or a category the city always treats as urgent.
    urgent = ticket.urgent or classified.urgent or due.sla_class == city.sla.urgent_class
    assigned = TicketAssigned.caused(
        classified,
        department=dept_ref(city, routing.lead),
        co_departments=tuple(dept_ref(city, d) for d in routing.co),
        via=routing.via,
        rule=routing.rule,
        explanation=routing.explanation,
        category=classified.category,
        grid=classified.grid.grid,
        urgent=urgent,
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
            "urgent": urgent,
            "department": assigned.department,
            "co_departments": assigned.co_departments,
            "assigned_via": routing.via,
            "assigned_at": assigned.occurred_at,
            "respond_by": due.respond_by,
            "resolve_by": due.resolve_by,
            "overdue": False,  # the dispatch desk's clock (if it was late) is not the department's
            "applied": _applied(ticket, classified.appeal, classified, assigned),
            "updated_at": assigned.occurred_at,
        }
    )
    if contested and routing.via == "rule":
        held = _escalate(
            new,
            city,
            reason="ambiguous",
            summoned=(routing.lead, *contested),
            now=assigned.occurred_at,
            tz=tz,
            cause=classified,
            note=f"{routing.explanation}；另有{'、'.join(city.department_by_id[d].name for d in contested)}"
            "同样有责，提请联席会议确定主办单位",
        )
        return Outcome(held.ticket, publish=[assigned, *held.publish], record=[*recorded, classified])
    return Outcome(new, publish=[assigned], record=[*recorded, classified])


def _assigned(
    ticket: Ticket,
    dept_id: str,
    *,
    via: str,
    explanation: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
    rule: str = "",
    status: str = st.ASSIGNED,
    **changes,
) -> tuple[Ticket, TicketAssigned]:
    """Give the ticket to `dept_id` with fresh deadlines from `now` (a new owner gets its full time)."""
    category = changes.get("category", ticket.category)
    due = deadlines(city, category, ticket.urgent, now, tz)
    event = TicketAssigned(
        ticket_no=ticket.ticket_no,
        department=dept_ref(city, dept_id),
        via=via,
        rule=rule,
        explanation=explanation,
        category=category,
        grid=ticket.grid.grid if ticket.grid else None,
        urgent=ticket.urgent,
        respond_by=due.respond_by,
        resolve_by=due.resolve_by,
        occurred_at=now,
    )
    new = ticket.model_copy(
        update={
            "status": status,
            "department": event.department,
            "co_departments": (),
            "assigned_via": via,
            "assigned_at": now,
            "respond_by": due.respond_by,
            "resolve_by": due.resolve_by,
            "accepted_at": None,
            "overdue": False,
            "escalated": False,
            "extension_request": None,
            "meeting_by": None,
            "applied": _applied(ticket, event),
            "updated_at": now,
            **changes,
        }
    )
    return new, event


def _escalate(
    ticket: Ticket,
    city: City,
    *,
    reason: str,
    summoned: Sequence[str],
    now: datetime,
    tz: ZoneInfo,
    note: str,
    cause: Event | None = None,
    mid: str | None = None,
) -> Outcome:
    """Hold the ticket for a joint meeting. The `escalated` event carries what the meeting needs;
    the router opens the meeting (or attaches the ticket to it) when it sees the event."""
    grid = ticket.grid.grid if ticket.grid else None
    mid = mid or meetings.meeting_id(ticket.ticket_no, reason, str(ticket.returns), str(ticket.reopens))
    data = {
        "meeting": meetings.spec(
            city,
            mid=mid,
            reason=reason,
            grid=grid,
            category=ticket.category,
            summoned=summoned,
            now=now,
            tz=tz,
        )
    }
    fields = {
        "action": "escalated",
        "status": st.MEETING,
        "actor": "system",
        "department": ticket.department,
        "note": note,
        "data": data,
    }
    event = (
        TicketUpdated.caused(cause, **fields)
        if cause
        else TicketUpdated(ticket_no=ticket.ticket_no, occurred_at=now, **fields)
    )
    return _updated(
        ticket,
        event,
        escalated=True,
        meeting_id=mid,
        extension_request=None,
        meeting_by=datetime.fromisoformat(data["meeting"]["deadline"]),
    )


def hold_for_meeting(
    ticket: Ticket | None,
    mid: str,
    reason: str,
    summoned: Sequence[str],
    city: City,
    tz: ZoneInfo,
    now: datetime,
) -> Outcome | None:
    """Attach an open ticket to a meeting (a hotspot cluster); tickets already there, or finished,
    are left alone."""
    if (
        ticket is None
        or ticket.meeting_id == mid
        or ticket.status not in (st.ASSIGNED, st.ACCEPTED, st.REVIEW)
    ):
        return None
    return _escalate(
        ticket,
        city,
        reason=reason,
        summoned=summoned,
        now=now,
        tz=tz,
        mid=mid,
        note=f"{meetings.REASON_NAMES[reason]}，提请联席会议（{mid}）统筹解决",
    )


def meeting_decided(
    ticket: Ticket | None,
    mid: str,
    lead: str,
    note: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
) -> Outcome | None:
    """The meeting named the lead: its tickets go there, with fresh deadlines."""
    if ticket is None or ticket.meeting_id != mid or ticket.status != st.MEETING:
        return None
    new, event = _assigned(
        ticket,
        lead,
        via="meeting",
        city=city,
        tz=tz,
        now=now,
        rule=f"联席会议{mid}决定",
        explanation=f"联席会议{mid}决定由{city.department_by_id[lead].name}主办"
        + (f"：{note}" if note else ""),
    )
    return Outcome(new, publish=[event])


# --- the dispatch desk (人工派单) -----------------------------------------------------------------


def dispatch(
    ticket: Ticket,
    dept_id: str,
    category: str | None,
    note: str,
    operator: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
) -> Outcome:
    """An operator at the dispatch desk picks the department (and may correct the category)."""
    _require_status(ticket, {st.REVIEW}, "人工派单（只有待人工派单的工单可以派单）")
    dept = city.department_by_id.get(dept_id)
    if dept is None or dept.kind == "dispatch_desk":
        raise WorkflowError(
            "unknown_department", f"承办单位{dept_id!r}不存在（见departments.yaml）", status=422
        )
    changes = {}
    if category is not None and category != ticket.category:
        if category not in city.leaf_categories:
            raise WorkflowError(
                "unknown_category", f"分类{category!r}不是有效的末级分类（见categories.yaml）", status=422
            )
        changes = {"category": category, "category_names": city.category_names(category)}
    new, event = _assigned(
        ticket,
        dept_id,
        via="operator",
        city=city,
        tz=tz,
        now=now,
        explanation=f"派单员{operator}人工派单至{dept.name}" + (f"：{note}" if note else ""),
        **changes,
    )
    return Outcome(new, publish=[event])


# --- department actions ------------------------------------------------------------------------


def _require_owner(ticket: Ticket, dept_id: str) -> None:
    if ticket.department is None or ticket.department.id != dept_id:
        # Same answer as "no such ticket": a department learns nothing about others' tickets.
        raise WorkflowError("not_found", f"工单{ticket.ticket_no}不存在", status=404)


def _require_status(ticket: Ticket, allowed: set[str], action: str) -> None:
    if ticket.status not in allowed:
        raise WorkflowError(
            "illegal_transition",
            f"工单{ticket.ticket_no}当前状态为“{STATUS_NAMES.get(ticket.status, ticket.status)}”，"
            f"不能{action}",
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
        ticket_no=ticket.ticket_no,
        action="accepted",
        status=st.ACCEPTED,
        actor=dept_id,
        department=dept_ref(city, dept_id),
        occurred_at=now,
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
        ticket_no=ticket.ticket_no,
        action="resolved",
        status=st.RESOLVED,
        actor=dept_id,
        department=dept_ref(city, dept_id),
        note=note,
        occurred_at=now,
        data={"on_time": ticket.resolve_by is None or now <= ticket.resolve_by},
    )
    # A pending extension request is moot once the work is done.
    return _updated(ticket, event, resolved_at=now, resolution_note=note, extension_request=None)


RETURN_REASONS = {
    "not_ours": "不属于本单位职责",
    "wrong_grid": "属地（网格）有误",
    "duplicate": "重复工单",
    "needs_other": "需其他部门办理",
}
# Reasons that dispute the responsibility list: a department the list names must say which rule.
_DISPUTES = {"not_ours", "needs_other"}


def return_ticket(
    ticket: Ticket,
    dept_id: str,
    reason: str,
    note: str,
    disputed_rule: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
) -> Outcome:
    """退单: within the acceptance window, with a reason from the fixed list. Re-routes to the next
    candidate the responsibility list names (or the dispatch desk); a second return goes to a meeting."""
    _require_owner(ticket, dept_id)
    _require_status(ticket, {st.ASSIGNED}, "退单（签收后不能退单）")
    if reason not in RETURN_REASONS:
        choices = "、".join(f"{k}（{v}）" for k, v in RETURN_REASONS.items())
        raise WorkflowError("invalid_reason", f"退单理由必须是以下之一：{choices}", status=422)
    if ticket.assigned_via == "meeting":
        raise WorkflowError("meeting_decided", "该工单的主办单位由联席会议确定，不能退单")
    if ticket.respond_by is not None and now > ticket.respond_by:
        raise WorkflowError("window_closed", "已超过签收时限，不能退单；请签收办理或申请延期")
    grid = ticket.grid or GridMatch(grid=None)
    rule = responsible(city, ticket.category, grid, dept_id) if ticket.category else None
    if reason in _DISPUTES and rule is not None and not disputed_rule.strip():
        raise WorkflowError(
            "rule_not_disputed",
            f"权责清单规定由本单位主办（{describe_rule(city, rule)}）；"
            "如有异议，请在disputed_rule中写明所争议的规则及理由",
            status=422,
        )
    returns, returned_by = ticket.returns + 1, tuple(dict.fromkeys((*ticket.returned_by, dept_id)))
    data = {
        "reason": reason,
        "reason_name": RETURN_REASONS[reason],
        "disputed_rule": disputed_rule,
        "returns": returns,
    }
    base = ticket.model_copy(update={"returns": returns, "returned_by": returned_by})
    if returns >= 2:
        held = _escalate(
            base,
            city,
            reason="returned_twice",
            now=now,
            tz=tz,
            summoned=(*returned_by, *(candidates(city, ticket.category, grid) if ticket.category else ())),
            note=f"工单已被{'、'.join(city.department_by_id[d].name for d in returned_by)}退回，"
            "提请联席会议确定主办单位",
        )
        returned = TicketUpdated(
            ticket_no=ticket.ticket_no,
            action="returned",
            status=st.MEETING,
            actor=dept_id,
            department=dept_ref(city, dept_id),
            note=note,
            occurred_at=now,
            data=data,
        )
        return Outcome(held.ticket, publish=[returned, *held.publish])
    nxt = None
    if reason in _DISPUTES and ticket.category:
        nxt = next((d for d in candidates(city, ticket.category, grid) if d not in returned_by), None)
    why = f"{dept_ref(city, dept_id).name}退单（{RETURN_REASONS[reason]}）" + (f"：{note}" if note else "")
    if nxt is None:
        desk = city.responsibilities.dispatch_desk
        new, assigned = _assigned(
            base,
            desk,
            via="dispatch_desk",
            status=st.REVIEW,
            city=city,
            tz=tz,
            now=now,
            explanation=f"{why}；权责清单没有其他候选单位，转人工派单",
        )
    else:
        new, assigned = _assigned(
            base,
            nxt,
            via="reroute",
            city=city,
            tz=tz,
            now=now,
            explanation=f"{why}；按权责清单改派下一候选单位{city.department_by_id[nxt].name}",
        )
    returned = TicketUpdated(
        ticket_no=ticket.ticket_no,
        action="returned",
        status=new.status,
        actor=dept_id,
        department=dept_ref(city, dept_id),
        note=note,
        occurred_at=now,
        data=data,
    )
    return Outcome(new.model_copy(update={"applied": _applied(new, returned)}), publish=[returned, assigned])


def request_extension(
    ticket: Ticket, dept_id: str, days: int, reason: str, city: City, now: datetime
) -> Outcome:
    """延期申请: the dispatch desk approves or refuses; the deadline moves only on approval."""
    _require_owner(ticket, dept_id)
    _require_status(ticket, {st.ACCEPTED}, "申请延期（请先签收）")
    if ticket.extension_request is not None:
        raise WorkflowError("extension_pending", "已有一项延期申请待派单中心审核，请等待审核结果")
    if not reason.strip():
        raise WorkflowError("reason_required", "申请延期必须说明理由", status=422)
    request = {"days": days, "reason": reason.strip(), "by": dept_id, "at": now.isoformat()}
    event = TicketUpdated(
        ticket_no=ticket.ticket_no,
        action="extension_requested",
        status=ticket.status,
        actor=dept_id,
        department=dept_ref(city, dept_id),
        note=reason.strip(),
        occurred_at=now,
        data={"days": days},
    )
    return _updated(ticket, event, extension_request=request)


def decide_extension(
    ticket: Ticket,
    approve: bool,
    operator: str,
    note: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
) -> Outcome:
    if ticket.extension_request is None or not ticket.is_open:
        raise WorkflowError("no_extension_request", f"工单{ticket.ticket_no}没有待审核的延期申请")
    days = int(ticket.extension_request["days"])
    data = {"days": days, "old_resolve_by": ticket.resolve_by.isoformat() if ticket.resolve_by else None}
    changes: dict = {"extension_request": None}
    if approve and ticket.resolve_by is not None:
        new_due = add_working_days(ticket.resolve_by, days, city.sla, tz)
        changes.update(resolve_by=new_due, overdue=ticket.overdue and new_due <= now)
        data["resolve_by"] = new_due.isoformat()
    event = TicketUpdated(
        ticket_no=ticket.ticket_no,
        action="extension_approved" if approve else "extension_refused",
        status=ticket.status,
        actor=operator,
        department=ticket.department,
        note=note,
        occurred_at=now,
        data=data,
    )
    return _updated(ticket, event, **changes)


# --- the survey --------------------------------------------------------------------------------


def survey_sent(ticket: Ticket | None, sent: SurveySent) -> Outcome | None:
    if ticket is None or ticket.has_applied(sent.event_id) or ticket.status != st.RESOLVED:
        return None
    event = TicketUpdated.caused(
        sent,
        action="surveyed",
        status=st.SURVEYED,
        actor="system",
        department=ticket.department,
        data={"survey_id": sent.survey_id},
    )
    return _updated(ticket, event, cause=sent)


def rate(
    ticket: Ticket | None,
    answer: SurveyAnswered,
    city: City | None = None,
    tz: ZoneInfo | None = None,
) -> Outcome | None:
    """The resident's rating closes the ticket, or reopens it (重办) when unsatisfied or not solved;
    a second unsatisfied answer escalates to a joint meeting (with `city`)."""
    if ticket is None or ticket.has_applied(answer.event_id):
        return None
    if answer.outcome in ("no_answer", "opted_out", "skipped_anonymous") and ticket.status in (
        st.RESOLVED,
        st.SURVEYED,
    ):
        # No rating will come (issue 6): the survey closes the ticket without one.
        event = TicketUpdated.caused(
            answer,
            action="closed",
            status=st.CLOSED,
            actor="system",
            department=ticket.department,
            data={"survey": answer.outcome},
        )
        return _updated(ticket, event, cause=answer, closed_at=answer.occurred_at)
    if ticket.status not in (st.RESOLVED, st.SURVEYED) or answer.rating is None:
        # Late or unratable: keep the words in the history, change nothing else.
        return Outcome(ticket.model_copy(update={"applied": _applied(ticket, answer)}), record=[answer])
    unhappy = answer.rating == 3 or answer.solved is False
    if unhappy:
        event = TicketUpdated.caused(
            answer,
            action="reopened",
            status=st.ASSIGNED,
            actor="resident",
            department=ticket.department,
            note=answer.text,
            data={"rating": answer.rating, "solved": answer.solved, "reopens": ticket.reopens + 1},
        )
        reopened = _updated(
            ticket,
            event,
            cause=answer,
            rating=answer.rating,
            solved=answer.solved,
            reopens=ticket.reopens + 1,
            accepted_at=None,
            resolved_at=None,
            **(_fresh_deadlines(ticket, city, tz, answer.occurred_at) if city and tz else {}),
        )
        if city is None or tz is None or ticket.reopens < 1:
            return reopened
        held = _escalate(
            reopened.ticket,
            city,
            reason="reopened_twice",
            now=answer.occurred_at,
            tz=tz,
            cause=event,
            summoned=(d.id for d in (ticket.department, *ticket.co_departments) if d),
            note=f"市民第{ticket.reopens + 1}次不满意：{answer.text}",
        )
        return Outcome(held.ticket, publish=[*reopened.publish, *held.publish], record=reopened.record)
    event = TicketUpdated.caused(
        answer,
        action="closed",
        status=st.CLOSED,
        actor="resident",
        department=ticket.department,
        note=answer.text,
        data={"rating": answer.rating, "solved": answer.solved},
    )
    return _updated(
        ticket,
        event,
        cause=answer,
        rating=answer.rating,
        solved=answer.solved,
        closed_at=answer.occurred_at,
    )


def _fresh_deadlines(ticket: Ticket, city: City, tz: ZoneInfo, now: datetime) -> dict:
    """重办 gets the category's time again, from the resident's answer."""
    if ticket.category is None:
        return {}
    due = deadlines(city, ticket.category, ticket.urgent, now, tz)
    return {
        "assigned_at": now,
        "respond_by": due.respond_by,
        "resolve_by": due.resolve_by,
        "overdue": False,
        "escalated": False,
    }
