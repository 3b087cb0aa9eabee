"""The ticket workflow: a state machine over `Ticket`, one table and one pure function per step.

    received -> assigned -> accepted -> resolved -> surveyed -> closed
                  |  ^  ^                              |
                  |  |  +----------- reopened (不满意) <-+   (a second 不满意: meeting)
                  |  +-- returned (退单): next candidate, or the dispatch desk; twice: meeting
                  +-> review (dispatch desk) -> assigned
    assigned / accepted -> assigned to another department (改派: the desk moved it, with a reason)
    assigned / accepted -> assigned to the street's mediation committee (转人民调解: the department
                           holding it says it is a dispute between parties, with a reason)
    meeting (联席会议) -> assigned to the lead the meeting decided
    urged (催办, the resident called again): any open status, which it keeps
    review / assigned -> closed, merged into another open ticket (并案: the desk found it a duplicate
                         of a ticket already being handled, which keeps its status and lists it);
                         the duplicates merged into it before move along: closed, they stay closed
                         and follow the new main ticket (the one step that starts from closed)
    resolved / surveyed -> verified (现场核查, the grid's worker looked): solved, the status stays;
                           not solved, back to the department that resolved it (重办), as 不满意 does
    assigned .. surveyed -> placed (事发网格: the desk sets or corrects the grid): the status stays
    assigned .. surveyed -> place requested (the grid's worker asks the desk to correct the grid,
                            申请更正事发网格) -> placed (the desk agrees) or refused: the status stays

`ALLOWED_STATUS_CHANGES` names every step, the statuses it may start from and the statuses it may
lead to; `check` is the one place that enforces it, and every step function below goes through it
(`allowed` answers the same question for steps driven by events, which skip rather than refuse).

Each step takes the current ticket (and what happened) and returns an `Outcome`: the new ticket and
the events that record it. It returns None when the input event was already applied (idempotency),
and raises `WorkflowError` with a message a person can act on when the step is not allowed. No I/O:
the handlers load, call these, and store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from services.router import meetings
from services.router.rules import (
    FIRST_CONTACT,
    Routing,
    candidates,
    describe_rule,
    mediation_committee,
    responsible,
)
from services.router.sla import Deadlines, add_working_days, deadlines
from shared.city import City, Department
from shared.decisions import Outcome, applied
from shared.errors import DomainError
from shared.events import (
    Answer,
    AppealClassified,
    DepartmentRef,
    Event,
    Extension,
    GridMatch,
    Mediation,
    MeetingReason,
    MeetingSpec,
    Merge,
    Place,
    PlaceRequest,
    Returned,
    ReturnReason,
    SurveyAnswered,
    SurveySent,
    TicketAction,
    TicketAssigned,
    TicketUpdated,
    Urge,
    Verification,
    derived_id,
)
from shared.privacy import mask_personal_data
from shared.survey_reply import answer_comment, rating_words
from shared.tickets import STATUS_NAMES, Status, Ticket


class WorkflowError(DomainError):
    """A step that is not allowed, or input it cannot take. `code` is for programs, the message
    (Chinese) for the person who asked; the kind decides the HTTP status in the views."""


# --- the table ---------------------------------------------------------------------------------

Step = Literal[
    "assign",  # the responsibility list routes a classified appeal
    "reclassify",  # a person corrected the category of a ticket waiting at the dispatch desk
    "dispatch",  # the dispatch desk picks the department
    "redispatch",  # 改派: the desk moves a ticket a department holds to another, with a reason
    "mediate",  # 转人民调解: the department holding it refers a dispute to its street's committee
    "accept",
    "resolve",
    "return",
    "request_extension",
    "decide_extension",
    "survey",  # the survey SMS went out
    "close",
    "reopen",
    "hold",  # a joint meeting takes the ticket
    "meeting_decided",
    "supervise",  # a deadline timer warns, marks overdue or escalates
    "urge",  # 催办: the resident called again about the open ticket
    "verify",  # 现场核查: the grid worker checked on the spot what the department resolved
    "merge",  # 并案: the desk merges a duplicate (从件) into the ticket already being handled (主件)
    "receive_duplicate",  # 并案, the main ticket's side: it lists the duplicate, its status stays
    "remerge",  # 并案, a duplicate of the one merged: closed, it follows it into the new main ticket
    "place",  # 事发网格: the desk sets or corrects the grid of a ticket already assigned
    "request_place",  # the grid worker of the ticket's grid asks the desk to correct its grid
    "decide_place",  # the desk agrees (a `place` to the grid asked for) or refuses, with its reason
]


@dataclass(frozen=True)
class Move:
    name: str  # the step in words, as a refusal says it: "不能{name}"
    sources: frozenset[Status]
    targets: frozenset[Status] | None  # None: the status stays as it is
    hint: str = ""  # what to do instead, added to a refusal


def _move(name: str, sources: Iterable[Status], targets: Iterable[Status] | None, hint: str = "") -> Move:
    return Move(name, frozenset(sources), None if targets is None else frozenset(targets), hint)


S = Status
# Where a ticket's grid may be corrected (`place`), and so asked to be corrected and decided on.
PLACEABLE = frozenset({S.ASSIGNED, S.ACCEPTED, S.MEETING, S.RESOLVED, S.SURVEYED})
ALLOWED_STATUS_CHANGES: dict[Step, Move] = {
    "assign": _move("派单", {S.RECEIVED}, {S.ASSIGNED, S.REVIEW}),
    "reclassify": _move("按更正的分类派单", {S.REVIEW}, {S.ASSIGNED, S.REVIEW}),
    "dispatch": _move("人工派单", {S.REVIEW}, {S.ASSIGNED}, "（只有待人工派单的工单可以派单）"),
    # Not once resolved (the survey is the resident's say, a reopen sends it back), nor while a
    # joint meeting holds it (the meeting decides who leads).
    "redispatch": _move(
        "改派",
        {S.ASSIGNED, S.ACCEPTED},
        {S.ASSIGNED},
        "（只有已派单或办理中的工单可以改派；联席会议中的工单由会议确定主办单位）",
    ),
    # Before the department says it is done: the committee then hears the parties with its own time.
    "mediate": _move(
        "转人民调解",
        {S.ASSIGNED, S.ACCEPTED},
        {S.ASSIGNED},
        "（只有本单位已派单或办理中的工单可以转人民调解）",
    ),
    "accept": _move("签收", {S.ASSIGNED}, {S.ACCEPTED}),
    "resolve": _move("办结", {S.ACCEPTED}, {S.RESOLVED}, "（请先签收）"),
    "return": _move("退单", {S.ASSIGNED}, {S.ASSIGNED, S.REVIEW, S.MEETING}, "（签收后不能退单）"),
    "request_extension": _move("申请延期", {S.ACCEPTED}, None, "（请先签收）"),
    "decide_extension": _move("审核延期", {S.ACCEPTED}, None),
    "survey": _move("回访", {S.RESOLVED}, {S.SURVEYED}),
    "close": _move("关闭", {S.RESOLVED, S.SURVEYED}, {S.CLOSED}),
    "reopen": _move("重办", {S.RESOLVED, S.SURVEYED}, {S.ASSIGNED}),
    "hold": _move("提请联席会议", {S.REVIEW, S.ASSIGNED, S.ACCEPTED}, {S.MEETING}),
    "meeting_decided": _move("按联席会议决定派单", {S.MEETING}, {S.ASSIGNED}),
    "supervise": _move("督办", {S.REVIEW, S.ASSIGNED, S.ACCEPTED, S.MEETING, S.RESOLVED}, None),
    # Every open status (`shared.tickets.OPEN_STATUSES`): a caller may call again at any point
    # before the department says it is done. After that the survey is the resident's say.
    "urge": _move(
        "催办",
        {S.RECEIVED, S.REVIEW, S.ASSIGNED, S.ACCEPTED, S.MEETING},
        None,
        "（办结后不再催办：问题仍未解决的，请登记新的诉求；回访尚未结束的，市民答复不满意即可重新办理）",
    ),
    # Once the department says it is done, until the ticket closes. Confirmed, the status stays;
    # not solved, the ticket goes back to the department (as a reopen does).
    "verify": _move(
        "现场核查",
        {S.RESOLVED, S.SURVEYED},
        {S.RESOLVED, S.SURVEYED, S.ASSIGNED},
        "（只有承办单位已办结、尚未结案的工单需要现场核查）",
    ),
    # 并案: a duplicate no department has taken up (at the desk, or assigned and not yet accepted);
    # once a department accepted it, it is that department's work (it may return it as 重复工单).
    "merge": _move(
        "并案",
        {S.REVIEW, S.ASSIGNED},
        {S.CLOSED},
        "（只有待人工派单或已派单尚未签收的工单可以并入其他工单；已签收的由承办单位办理，或以“重复工单”退单）",
    ),
    # The main ticket: any ticket past intake that is still being handled. A finished one cannot
    # answer for the duplicate's resident, whose problem would then wait on nothing.
    "receive_duplicate": _move(
        "接收并案",
        {S.REVIEW, S.ASSIGNED, S.ACCEPTED, S.MEETING},
        None,
        "（只能并入尚未办结的工单；请选择正在办理的工单作为主件）",
    ),
    # A closed duplicate whose main ticket is merged into another: its resident's problem is now
    # handled there, so it points there; nothing else of it changes. Closed is otherwise final.
    "remerge": _move("随原主件并入新主件", {S.CLOSED}, None),
    # 事发网格 after the assignment: a ticket routed without a grid (a district-wide category, a place
    # not found: 未定位) never waits at the desk, and a place found wrong (定位与地址不一致) may be
    # noticed only once a department is on it. Where the problem is decides whose grid worker checks
    # it and where it counts, until the ticket is finished: so any status from the assignment to the
    # survey, the department and the status staying. Not at the desk (待人工派单): its dispatch
    # places it (`dispatch`). Not before classification, which would overwrite it; not once closed:
    # the record of a finished ticket stays as it was closed.
    "place": _move(
        "更改事发网格",
        PLACEABLE,
        None,
        "（只有已派单、尚未结案的工单可以更改事发网格；待人工派单的工单请在派单时于“事发网格”中选择）",
    ),
    # 申请更正事发网格: the grid worker found on the spot that the problem is elsewhere (位置核实), and
    # asks the desk, which alone places tickets; where the desk could place it, and only there. The
    # request waits on the ticket (`place_request`) as a department's extension request does.
    "request_place": _move(
        "申请更正事发网格",
        PLACEABLE,
        None,
        "（只有已派单、尚未结案的工单可以申请更正事发网格）",
    ),
    "decide_place": _move("审核事发网格更正申请", PLACEABLE, None),
}
# Where every ticket starts (the appeal is numbered and recorded before anything else happens).
INITIAL = Status.RECEIVED


def allowed(status: Status, step: Step) -> bool:
    """Whether a ticket in `status` may take `step` (the table's answer; see `check`)."""
    return status in ALLOWED_STATUS_CHANGES[step].sources


def check(ticket: Ticket, step: Step, to: Status | None = None) -> None:
    """Raise `WorkflowError` unless the table lets `ticket` take `step` (and end in `to`)."""
    move = ALLOWED_STATUS_CHANGES[step]
    now = STATUS_NAMES[ticket.status]
    if not allowed(ticket.status, step):
        raise WorkflowError(
            "illegal_transition", f"工单{ticket.ticket_no}当前状态为“{now}”，不能{move.name}{move.hint}"
        )
    fits = to == ticket.status if move.targets is None else to in move.targets
    if to is not None and not fits:
        raise WorkflowError(
            "illegal_transition",
            f"工单{ticket.ticket_no}{move.name}后不能成为“{STATUS_NAMES[to]}”（当前状态为“{now}”）",
        )


# --- building events ---------------------------------------------------------------------------


def dept_ref(city: City, dept_id: str) -> DepartmentRef:
    return DepartmentRef(id=dept_id, name=city.department_by_id[dept_id].name)


def ticket_updated(
    ticket: Ticket,
    action: TicketAction,
    status: Status,
    *,
    actor: str,
    cause: Event | None = None,
    **fields: Any,
) -> TicketUpdated:
    """A `ticket.updated` about `ticket`, with the facts about it that consumers need (so they read
    no ticket): the caller's hashed id, category, grid and department. With `cause`, its id is
    derived from the cause's (the same input gives the same event)."""
    fields = {
        "action": action,
        "status": status,
        "actor": actor,
        "department": ticket.department,
        "caller_id": ticket.caller.caller_id,
        "category": ticket.category,
        "grid": ticket.grid.grid if ticket.grid else None,
        **fields,
    }
    if cause is not None:
        return TicketUpdated.caused(cause, **fields)
    return TicketUpdated(ticket_no=ticket.ticket_no, **fields)


def _updated(
    ticket: Ticket, step: Step, event: TicketUpdated, cause: Event | None = None, **changes: Any
) -> Outcome:
    status = Status(event.status)
    check(ticket, step, status)
    new = ticket.model_copy(
        update={
            "status": status,
            "applied": applied(ticket, *(e for e in (cause, event) if e is not None)),
            "updated_at": event.occurred_at,
            "place_request": _place_request_kept(ticket, status),
            **changes,
        }
    )
    return Outcome(new, publish=[event], record=[cause] if cause is not None else [])


def _place_request_kept(ticket: Ticket, status: Status) -> dict | None:
    """A grid worker's pending request to correct the grid (申请更正事发网格) waits while the desk may
    still place the ticket; a ticket that leaves those statuses (returned to the desk, whose dispatch
    places it; finished) drops it, so no request waits that the desk could not decide."""
    return ticket.place_request if status in PLACEABLE else None


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
    corrected = classified.reviewed_by is not None and allowed(ticket.status, "reclassify")
    if not allowed(ticket.status, "assign") and not corrected:
        # Already routed (e.g. a reclassification after a person decided): keep the person's call.
        return Outcome(ticket.model_copy(update={"applied": applied(ticket, classified)}))
    status = Status.REVIEW if routing.via == "dispatch_desk" else Status.ASSIGNED
    check(ticket, "reclassify" if corrected else "assign", status)
    # Flagged by the classifier or the operator, or a category the city always treats as urgent.
    urgent = ticket.urgent or classified.urgent or due.sla_class == city.sla.urgent_class
    assigned = TicketAssigned.caused(
        classified,
        caller_id=ticket.caller.caller_id,
        department=dept_ref(city, routing.lead),
        co_departments=tuple(dept_ref(city, d) for d in routing.co),
        via=routing.via,
        rule=routing.rule,
        explanation=routing.explanation,
        category=classified.category,
        category_names=classified.category_names,
        grid=classified.grid.grid,
        urgent=urgent,
        respond_by=due.respond_by,
        resolve_by=due.resolve_by,
        first=_first_dispatch(ticket, routing.via),
        occurred_at=classified.occurred_at,
    )
    new = ticket.model_copy(
        update={
            "status": status,
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
            "applied": applied(ticket, classified.appeal, classified, assigned),
            "updated_at": assigned.occurred_at,
        }
    )
    if routing.via in FIRST_CONTACT:
        answered = _answered_on_call(new, assigned, classified.appeal.direct_answer, city)
        return Outcome(answered.ticket, publish=[assigned, *answered.publish], record=[*recorded, classified])
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


def _first_dispatch(ticket: Ticket, via: str) -> bool:
    """Whether giving `ticket` to an owner `via` is its first dispatch (受理): not to the desk, and no
    department had it before (the desk or nobody held it, and none returned it; a joint meeting
    holds a ticket without owning it)."""
    unowned = ticket.assigned_via in (None, "dispatch_desk") and not ticket.returned_by
    return via != "dispatch_desk" and unowned


def _answered_on_call(ticket: Ticket, assigned: TicketAssigned, answer: str, city: City) -> Outcome:
    """An appeal closed at first contact: the operator answered it on the call (直接答复), or the
    grid worker who found it dealt with it there (现场处置). The unit it was assigned to (the
    hotline's desk, the grid's street office) accepts and resolves it at once, with what was said or
    done as the result. The same steps as a department's, so the record, the rates and the survey
    (回访, when a resident left a phone) treat it like any resolved ticket. Each event is caused by
    the one before: a replay produces the same ids."""
    desk, now = assigned.department.id, assigned.occurred_at
    accepted = accept(ticket, desk, city, now, cause=assigned)
    resolved = resolve(accepted.ticket, desk, answer, city, now, cause=accepted.publish[0])
    return Outcome(resolved.ticket, publish=[*accepted.publish, *resolved.publish])


def _assigned(
    ticket: Ticket,
    step: Step,
    dept_id: str,
    *,
    via: Literal["operator", "reroute", "redispatch", "mediation", "meeting", "dispatch_desk"],
    explanation: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
    rule: str = "",
    status: Status = Status.ASSIGNED,
    **changes: Any,
) -> tuple[Ticket, TicketAssigned]:
    """Give the ticket to `dept_id` with fresh deadlines from `now` (a new owner gets its full time,
    of its kind's class where the city gives its kind one: a committee's is mediation's)."""
    check(ticket, step, status)
    # Every ticket past `received` has a category (the classifier's, or the operator's correction).
    category: str = changes.get("category") or ticket.category or ""
    # The grid the desk chose as it dispatched (`dispatch`), else the ticket's own.
    grid: GridMatch | None = changes.get("grid") or ticket.grid
    due = deadlines(city, category, ticket.urgent, now, tz, department=dept_id)
    event = TicketAssigned(
        ticket_no=ticket.ticket_no,
        caller_id=ticket.caller.caller_id,
        department=dept_ref(city, dept_id),
        via=via,
        rule=rule,
        explanation=explanation,
        category=category,
        category_names=city.category_names_by_id.get(category, ticket.category_names),
        grid=grid.grid if grid else None,
        grid_chosen="grid" in changes,
        urgent=ticket.urgent,
        respond_by=due.respond_by,
        resolve_by=due.resolve_by,
        first=_first_dispatch(ticket, via),
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
            "place_request": _place_request_kept(ticket, status),
            "meeting_by": None,
            "applied": applied(ticket, event),
            "updated_at": now,
            **changes,
        }
    )
    return new, event


def _escalate(
    ticket: Ticket,
    city: City,
    *,
    reason: MeetingReason,
    summoned: Iterable[str],
    now: datetime,
    tz: ZoneInfo,
    note: str,
    cause: Event | None = None,
) -> Outcome:
    """Hold the ticket for a joint meeting of its own (the meeting this cause convenes)."""
    grid = ticket.grid.grid if ticket.grid else None
    mid = meetings.meeting_id(ticket.ticket_no, reason, str(ticket.returns), str(ticket.reopens))
    spec = meetings.spec(
        city, mid=mid, reason=reason, grid=grid, category=ticket.category, summoned=summoned, now=now, tz=tz
    )
    return _hold(ticket, spec, now=now, note=note, cause=cause)


def _hold(
    ticket: Ticket, spec: MeetingSpec, *, now: datetime, note: str, cause: Event | None = None
) -> Outcome:
    """Hold the ticket for the meeting `spec` describes. The `escalated` event carries the spec: the
    router opens the meeting (or attaches the ticket to it) when it sees the event."""
    fields: dict[str, Any] = {"note": note, "meeting": spec, "occurred_at": now}
    event = ticket_updated(ticket, "escalated", Status.MEETING, actor="system", cause=cause, **fields)
    return _updated(
        ticket,
        "hold",
        event,
        escalated=True,
        meeting_id=spec.meeting_id,
        extension_request=None,
        meeting_by=spec.deadline,
    )


def hold_for_meeting(
    ticket: Ticket | None, spec: MeetingSpec, now: datetime, cause: Event | None = None
) -> Outcome | None:
    """Attach an open ticket to a meeting that gathers several (a hotspot cluster's: its spec is the
    cluster's, built once for all its tickets); tickets already there, or finished, are left alone.
    `cause`: the assignment written with the hold, which the hold then names (`caused_by`): a reader
    that gets the hold first knows the assignment is on its way."""
    if ticket is None or ticket.meeting_id == spec.meeting_id or not allowed(ticket.status, "hold"):
        return None
    note = f"{meetings.REASON_NAMES[spec.reason]}，提请联席会议（{spec.meeting_id}）统筹解决"
    return _hold(ticket, spec, now=now, note=note, cause=cause)


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
    if ticket is None or ticket.meeting_id != mid or not allowed(ticket.status, "meeting_decided"):
        return None
    new, event = _assigned(
        ticket,
        "meeting_decided",
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


def _department(city: City, dept_id: str) -> Department:
    """The department a person chose to send a ticket to (the desk itself is none)."""
    dept = city.department_by_id.get(dept_id)
    if dept is None or dept.kind == "dispatch_desk":
        raise WorkflowError(
            "unknown_department",
            f"承办单位{dept_id!r}不存在（见departments.yaml）",
            kind="invalid",
            field="department",
        )
    return dept


def chosen_grid(city: City, grid_id: str) -> GridMatch:
    """The grid the dispatch desk chose for a ticket (人工选定), placed in its community and street
    as areas.yaml has them; refused, in words the desk can act on, when the city has no such grid."""
    info = city.grids.get(grid_id)
    if info is None:
        raise WorkflowError(
            "unknown_grid",
            f"没有编号为“{grid_id}”的网格，请在“事发网格”中按街道、社区选择一个网格",
            kind="invalid",
            field="grid",
        )
    return GridMatch(
        grid=grid_id,
        community=info.community_id,
        street=info.street_id,
        method="desk",
        confidence=1.0,
        evidence="派单中心人工选定",
    )


def place_words(city: City, grid: GridMatch | None) -> str:
    """Where a ticket is, as the history says it: the place as its page writes it (City.place_name)."""
    return city.place_name(grid.grid if grid else None)


def dispatch(
    ticket: Ticket,
    dept_id: str,
    category: str | None,
    note: str,
    operator: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
    grid: str | None = None,
) -> Outcome:
    """An operator at the dispatch desk picks the department (and may correct the category, and
    place the ticket in a grid: one the classifier could not find from a vague address, or got
    wrong). The grid chosen is the ticket's from then on, with its community and street: its grid
    worker reads it and checks its resolution on the spot, and the rankings count it there."""
    check(ticket, "dispatch")
    dept = _department(city, dept_id)
    changes: dict[str, Any] = {}
    if category is not None and category != ticket.category:
        if category not in city.leaf_categories:
            raise WorkflowError(
                "unknown_category",
                f"分类{category!r}不是有效的末级分类（见categories.yaml）",
                kind="invalid",
                field="category",
            )
        changes = {"category": category, "category_names": city.category_names(category)}
    placed = ""
    if grid:
        place = chosen_grid(city, grid)
        if ticket.grid is None or ticket.grid.grid != place.grid:
            was = place_words(city, ticket.grid)
            placed = f"（事发网格人工选定为{place_words(city, place)}，原为{was}）"
            changes["grid"] = place
        elif ticket.grid.address_grid:
            # 定位与地址不一致, and the desk chose the located grid itself: confirmed, and no longer
            # a question for the department (the match the desk chose names no other grid).
            placed = f"（事发网格经人工核实为{place_words(city, place)}）"
            changes["grid"] = place
    new, event = _assigned(
        ticket,
        "dispatch",
        dept_id,
        via="operator",
        city=city,
        tz=tz,
        now=now,
        explanation=f"{dispatcher(city, operator)}人工派单至{dept.name}{placed}"
        + (f"：{note}" if note else ""),
        **changes,
    )
    return Outcome(new, publish=[event])


def place(ticket: Ticket, grid_id: str, operator: str, city: City, now: datetime) -> Outcome:
    """事发网格: the dispatch desk (`operator`) places a ticket already assigned in the grid where the
    problem is (one routed without a grid, 未定位, or placed wrongly), or confirms the grid it was
    located in when its address named another (定位与地址不一致), as the desk's dispatch does. The
    grid, its community and street (areas.yaml) are the ticket's from then on: its grid worker's
    list and check, the duplicate index, the record and its figures. The department and the status
    stay: whether another department should hold it is 改派's question, asked with a reason.

    The desk only (the view's rule): a department whose place is wrong returns the ticket (退单,
    属地有误) before it accepts it, or asks the desk. A department may not move its own ticket: the
    place decides whose street it counts against, and often who is responsible for it. A grid
    worker asks the desk (`request_place`); any placement settles a pending request, said in the
    history: granted when it is the grid asked for, dropped otherwise."""
    check(ticket, "place")
    chosen = chosen_grid(city, grid_id)
    words = place_words(city, chosen)
    was = ticket.grid.grid if ticket.grid else None
    if was != chosen.grid:
        note = f"事发网格人工选定为{words}，原为{place_words(city, ticket.grid)}"
    elif ticket.grid is not None and ticket.grid.address_grid:
        note = f"事发网格经人工核实为{words}"  # the located grid, confirmed: no longer a question
    else:
        raise WorkflowError(
            "same_grid",
            f"工单{ticket.ticket_no}的事发网格已是{words}，无需更改；如位置有误，请选择问题实际所在的网格",
            field="grid",
        )
    if (pending := ticket.place_request) is not None:
        by = pending.get("by", "")
        if pending.get("grid") == chosen.grid:
            note += f"，同意网格员{by}的更正申请"
        else:
            asked = (
                place_words(city, chosen_grid(city, pending["grid"]))
                if pending.get("grid") in city.grids
                else ""
            )
            note += f"，网格员{by}的更正申请（更正为{asked or pending.get('grid')}）随之撤销"
    event = ticket_updated(
        ticket,
        "placed",
        ticket.status,
        actor=operator,
        grid=chosen.grid,
        note=f"{note}（{dispatcher(city, operator)}）",
        place=Place(
            grid=grid_id,
            community=chosen.community,
            street=chosen.street,
            was=was,
            confirmed=was == chosen.grid,
        ),
        occurred_at=now,
    )
    return _updated(ticket, "place", event, grid=chosen, place_request=None)


def request_place(
    ticket: Ticket, worker: str, grid: str | None, grid_id: str, reason: str, city: City, now: datetime
) -> Outcome:
    """申请更正事发网格: the grid worker (`worker`, of `grid`) found on the spot that the problem is in
    another grid (`grid_id`), and asks the desk to place it there, saying what was seen (`reason`).
    The status and the grid stay until the desk decides (`decide_place`); the request waits on the
    ticket (`place_request`), as a department's extension request does (`request_extension`).

    One at a time: a second request is refused while the first waits, as a second extension request
    is. The desk decides on the request it was shown; one replaced meanwhile would have it approve a
    grid it never read. The worker who finds more says so once the first is decided."""
    if ticket.grid is None or grid is None or ticket.grid.grid != grid:
        # Another grid's ticket: the same answer as no ticket, as reading it gives (see `verify`).
        raise WorkflowError("not_found", f"工单{ticket.ticket_no}不存在", kind="not_found")
    check(ticket, "request_place")
    if ticket.place_request is not None:
        by = ticket.place_request.get("by", "")
        raise WorkflowError(
            "place_request_pending",
            f"工单{ticket.ticket_no}已有一项事发网格更正申请（网格员{by}提出）待派单中心审核，请等待审核结果",
        )
    chosen = chosen_grid(city, grid_id)
    words = place_words(city, chosen)
    if chosen.grid == grid:
        raise WorkflowError(
            "same_grid",
            f"工单{ticket.ticket_no}的事发网格已是{words}，无需申请更正；现场核实问题在其他网格的，请选择该网格",
            field="grid",
        )
    reason = _stated(reason, "request_place")
    request = {"grid": chosen.grid, "reason": reason, "by": worker, "at": now.isoformat()}
    event = ticket_updated(
        ticket,
        "place_requested",
        ticket.status,
        actor=worker,
        note=f"网格员{worker}申请将事发网格更正为{words}（现为{place_words(city, ticket.grid)}）：{reason}",
        place_request=PlaceRequest(grid=chosen.grid, was=grid, reason=reason, by=worker),
        occurred_at=now,
    )
    return _updated(ticket, "request_place", event, place_request=request)


def decide_place(
    ticket: Ticket, approve: bool, operator: str, note: str, city: City, now: datetime
) -> Outcome:
    """The desk decides a grid worker's request to correct the grid (`request_place`). Approved: the
    desk's own placement in the grid asked for (`place`: `placed`, which the record, the duplicate
    index and the figures follow), which settles the request. Refused: the request is dropped, the
    desk's reason (`note`, required: the worker who went to look reads why) in the history."""
    check(ticket, "decide_place")
    pending = ticket.place_request
    if pending is None:
        raise WorkflowError("no_place_request", f"工单{ticket.ticket_no}没有待审核的事发网格更正申请")
    if approve:
        return place(ticket, str(pending["grid"]), operator, city, now)
    reason = _stated(note, "decide_place")
    asked = str(pending.get("grid", ""))
    words = place_words(city, chosen_grid(city, asked)) if asked in city.grids else asked
    by = str(pending.get("by", ""))
    event = ticket_updated(
        ticket,
        "place_refused",
        ticket.status,
        actor=operator,
        note=f"{dispatcher(city, operator)}不同意将事发网格更正为{words}（网格员{by}申请）：{reason}",
        place_request=PlaceRequest(
            grid=asked,
            was=ticket.grid.grid if ticket.grid else None,
            reason=str(pending.get("reason", "")),
            by=by,
        ),
        occurred_at=now,
    )
    return _updated(ticket, "decide_place", event, place_request=None)


def dispatcher(city: City, operator: str) -> str:
    """Who dispatched by hand, as the history says it: the desk's own token names the desk."""
    desk = city.department_by_id.get(city.responsibilities.dispatch_desk)
    return desk.name if desk and operator == desk.id else f"派单员{operator}"


REASON_MIN = 4  # characters: enough to say why a ticket moves (e.g. 属地有误), for whoever gets it


def _reason_wanted(asked: str, reader: str) -> str:
    return f"请填写{asked}（至少{REASON_MIN}个字），{reader}将看到原因"


# What is refused when a field a step needs is left empty ("step.field"), some only with another
# field's value (see each step). The console asks for them in these words before a form is sent,
# and before it asks to confirm a step that cannot be undone; the refusal here stays the rule.
REQUIRED: dict[str, str] = {
    "resolve.note": "办结时必须填写办理结果说明",
    "resolve.mediation": "人民调解委员会办结时须填写调解结果：达成协议（并写明协议内容）或调解不成",
    "resolve.mediation.agreement": "调解达成协议的，请填写协议内容（双方约定的事项、履行方式和期限）",
    "return.reason": "请选择退单理由",
    "return.note": "请在说明中写明诉求实际反映的是什么问题，以便派单中心重新分类派单",
    "extend.reason": "申请延期必须说明理由",
    "verify.solved": "请选择核查结果：已解决或未解决",  # the console's refusal (to the API, a bool)
    "verify.note": "核查未解决时必须写明现场看到的情况，承办单位将据此重新办理",
    "redispatch.department": "请选择改派的承办单位",
    "redispatch.reason": _reason_wanted("改派原因", "承办单位"),
    "merge.reason": _reason_wanted("并案原因（为何与主件是同一问题）", "主件的承办单位"),
    "mediate.reason": _reason_wanted("转人民调解的原因（为何属于当事人之间的纠纷）", "人民调解委员会"),
    "place.grid": "请在“事发网格”中按街道、社区选择问题所在的网格",  # the console's (the API's: required)
    "request_place.grid": "请选择现场核实的问题实际所在的网格",  # the console's (the API's: required)
    "request_place.reason": _reason_wanted("现场核实的情况，即问题实际在哪里", "派单中心"),
    "decide_place.reason": _reason_wanted("不同意的理由", "申请的网格员"),
    "decide_extension.reason": _reason_wanted("驳回延期申请的理由", "申请延期的承办单位"),
}


def _stated(reason: str, step: str) -> str:
    """The reason a person gives for moving a ticket (改派, 并案, 转人民调解) or refusing a request
    (不同意 a grid correction, 驳回 an extension): `step`, on one line;
    refused when too short to say why (REQUIRED says what to fill in, and who will read it)."""
    reason = " ".join(reason.split())
    if len(reason) < REASON_MIN:
        raise WorkflowError("reason_required", REQUIRED[f"{step}.reason"], kind="invalid", field="reason")
    return reason


def _not_settled_by_meeting(ticket: Ticket, doing: str) -> None:
    """A lead a joint meeting named keeps the ticket: the departments settled it together (联席会议),
    and neither the lead (退单, 转人民调解) nor the desk alone (改派) overturns that, so a dispute
    cannot go round again."""
    if ticket.assigned_via == "meeting":
        raise WorkflowError("meeting_decided", f"该工单的主办单位由联席会议确定，不能{doing}")


def _dropped_place_request(ticket: Ticket, city: City) -> str:
    """What a return to the desk says about a grid worker's pending request to correct the grid,
    which goes (`_place_request_kept`): the desk places the ticket as it dispatches it, so what the
    worker asked for is read here, in the history, as it does."""
    pending = ticket.place_request
    if pending is None:
        return ""
    asked = str(pending.get("grid") or "")
    words = place_words(city, chosen_grid(city, asked)) if asked in city.grids else asked
    return (
        f"（网格员{pending.get('by', '')}的事发网格更正申请（更正为{words}：{pending.get('reason', '')}）"
        "随之撤销，请派单时在“事发网格”中确定）"
    )


def _dropped_extension(ticket: Ticket) -> str:
    """What a move says about the old department's pending extension request, which goes with it."""
    return "其延期申请随之撤销" if ticket.extension_request is not None else ""


def redispatch(
    ticket: Ticket,
    dept_id: str,
    reason: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
) -> Outcome:
    """改派: the dispatch desk moves a ticket a department holds (assigned or accepted) to another
    department on its own initiative (a wrong assignment noticed by a supervisor, a resident, or the
    department on the phone), without waiting for a return. The new department gets its full time
    from now; whatever the old one had started (its acceptance, a pending extension request, its
    overdue marks) goes with it, and its timers find the deadlines moved and fire nothing. The
    reason is the assignment's explanation, which the new department reads in the history."""
    check(ticket, "redispatch")
    _not_settled_by_meeting(ticket, "改派")
    if not dept_id.strip():  # none chosen: said so, not as an unknown department ''
        raise WorkflowError(
            "department_required", REQUIRED["redispatch.department"], kind="invalid", field="department"
        )
    dept = _department(city, dept_id)
    old = ticket.department
    if old is not None and old.id == dept_id:
        raise WorkflowError(
            "same_department",
            f"工单{ticket.ticket_no}已由{dept.name}承办，无需改派；请选择其他单位",
            field="department",
        )
    reason = _stated(reason, "redispatch")
    was = "，".join(w for w in (f"原承办单位：{old.name}" if old else "", _dropped_extension(ticket)) if w)
    new, event = _assigned(
        ticket,
        "redispatch",
        dept_id,
        via="redispatch",
        city=city,
        tz=tz,
        now=now,
        explanation=f"派单中心改派：{reason}" + (f"（{was}）" if was else ""),
    )
    return Outcome(new, publish=[event])


# --- the dispatch desk: merging duplicates (并案) ----------------------------------------------------


def merge(
    duplicate: Ticket,
    main: Ticket | None,
    into: str,
    reason: str,
    by: str,
    now: datetime,
    carried: Mapping[str, Ticket | None] | None = None,
) -> tuple[Outcome, ...]:
    """并案: the dispatch desk (`by`) merges a duplicate (从件: the same problem reported again, by
    another resident or on another channel) that no department has taken up yet into the ticket
    already being handled (主件: `main`, numbered `into`; None when there is no such ticket), so one
    department works one ticket. The duplicate is closed pointing at the main ticket: its clocks
    stop and it leaves its queue (a closed ticket has no timers and goes to its department's closed
    list), and its resident is told which ticket to follow. The main ticket keeps its status and
    deadlines and lists the duplicate, so its department sees how many residents wait on it.

    A duplicate that is a main ticket itself (others were merged into it) brings them along: they
    are the same problem too, and their residents wait on whichever ticket is being handled.
    `carried` are those tickets (`duplicate.merged`, each by its number) as read with the other two;
    each is `remerge`d to point at `into`, the main ticket lists them all, and the duplicate lists
    none any more. One no longer in the store (None: it left Redis long after it was closed) is
    listed all the same: its number is what its resident follows.

    Returns the duplicate's outcome, the main ticket's, then one per carried ticket, to be written
    in one transaction (`shared.store.together`): no side may exist without the others."""
    no = duplicate.ticket_no
    if into == no:
        raise WorkflowError(
            "same_ticket",
            f"工单{no}不能并入自身；请填写与它反映同一问题、正在办理的另一张工单的编号",
            kind="invalid",
            field="into",
        )
    check(duplicate, "merge")
    if duplicate.reopens:
        # Its resident found the work wanting (不满意, or a grid worker's check): the department
        # owes them this ticket's redo, which another ticket's progress would not answer for.
        raise WorkflowError(
            "reopened",
            f"工单{no}已重办{duplicate.reopens}次，由承办单位继续办理，不能并入其他工单",
        )
    if main is None:
        raise WorkflowError(
            "not_found", f"工单{into}不存在，请核对主件的工单号", kind="not_found", field="into"
        )
    if main.merged_into == no or into in duplicate.merged:
        # Each would wait on the other, and nobody would handle either.
        raise WorkflowError(
            "merge_cycle",
            f"工单{into}已并入本工单（工单{no}）合并办理，两张工单不能互相并入；"
            "请选择正在办理的其他工单作为主件",
            field="into",
        )
    if main.merged_into is not None:
        raise WorkflowError(
            "main_merged",
            f"工单{into}已并入工单{main.merged_into}，不能作为主件；请并入工单{main.merged_into}",
            field="into",
        )
    try:
        check(main, "receive_duplicate")
    except WorkflowError as e:  # the main ticket's status: said beside the number that named it
        raise WorkflowError(e.code, e.message, kind=e.kind, field="into") from None
    reason = _stated(reason, "merge")
    moved = duplicate.merged
    along = f"工单{'、'.join(moved)}"  # said only when some move along
    payload = Merge(into=into, duplicate=no, moved=moved)
    held = duplicate.status == Status.ASSIGNED  # by a department that had not accepted it yet
    closed = ticket_updated(
        duplicate,
        "merged",
        Status.CLOSED,
        actor=by,
        note=f"并入工单{into}合并办理：{reason}" + (f"（原并入本工单的{along}随同并入）" if moved else ""),
        occurred_at=now,
        merge=payload.model_copy(
            update={"response_on_time": _in_time(duplicate.respond_by, now) if held else None}
        ),
        marked_overdue=duplicate.overdue if held else None,
    )
    listed = ticket_updated(
        main,
        "duplicate_merged",
        main.status,
        actor=by,
        note=f"并案：工单{no}并入本工单（{reason}）" + (f"，原并入该工单的{along}随同并入" if moved else ""),
        occurred_at=now,
        merge=payload,
    )
    found = carried or {}
    if missing := [m for m in moved if m not in found]:  # the caller's to read, with the other two
        raise ValueError(f"merge of {no}: its duplicates {missing} were not read")
    followers = [remerge(t, no, into, reason, by, now) for m in moved if (t := found[m]) is not None]
    return (
        _updated(duplicate, "merge", closed, closed_at=now, merged_into=into, merged=()),
        _updated(
            main,
            "receive_duplicate",
            listed,
            merged=tuple(dict.fromkeys((*main.merged, no, *moved))),
        ),
        *followers,
    )


def remerge(ticket: Ticket, via: str, into: str, reason: str, by: str, now: datetime) -> Outcome:
    """并案, carried along: `ticket`, a closed duplicate merged into `via`, follows `via` into `into`
    (see `merge`). Only its pointer moves; it stays closed, and as its own merge answered for the
    department that held it, this one counts in no rate (`remerged`, not `merged`)."""
    check(ticket, "remerge")
    if ticket.merged_into != via:
        raise WorkflowError(
            "not_merged",
            f"工单{ticket.ticket_no}没有并入工单{via}，不能随其并入工单{into}；请刷新后重试",
        )
    event = ticket_updated(
        ticket,
        "remerged",
        ticket.status,
        actor=by,
        note=f"随工单{via}并入工单{into}合并办理：{reason}",
        occurred_at=now,
        merge=Merge(into=into, duplicate=ticket.ticket_no, via=via),
    )
    return _updated(ticket, "remerge", event, merged_into=into)


# --- people's mediation (人民调解) -----------------------------------------------------------------


def is_mediation_committee(city: City, dept_id: str) -> bool:
    dept = city.department_by_id.get(dept_id)
    return dept is not None and dept.kind == "mediation"


def refer_to_mediation(
    ticket: Ticket,
    dept_id: str,
    reason: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
) -> Outcome:
    """转人民调解: the department holding the ticket (assigned or accepted) finds it a dispute between
    parties (neighbours' noise, a leaking ceiling, property fees, a small debt) and refers it to the
    People's Mediation Committee of the ticket's street, which becomes its department with its full
    time from now, as after a re-dispatch (改派); the reason is the assignment's explanation, which
    the mediator reads. Not a return (`returns` stays): the committee may still return it. Only
    an appeal of a category the city marks for mediation (`mediation: true` in categories.yaml,
    `City.mediable`): a water cut or a broken street light is no one's dispute."""
    _require_owner(ticket, dept_id)
    check(ticket, "mediate")
    _not_settled_by_meeting(ticket, "转人民调解")
    holder = ticket.department.name if ticket.department else dept_id
    if is_mediation_committee(city, dept_id):
        raise WorkflowError(
            "already_with_committee",
            f"工单{ticket.ticket_no}已由{holder}调解，不能再转人民调解；调解不成的，办结时如实记录调解结果",
        )
    if not city.mediable(ticket.category):
        raise WorkflowError("not_a_dispute", not_mediable(ticket, city))
    grid = ticket.grid.grid if ticket.grid else None
    committee = mediation_committee(city, grid)
    if committee is None:
        info = city.grids.get(grid or "")
        where = f"工单所在的{info.street_name}没有人民调解委员会" if info else "工单未定位，无法确定所属街道"
        raise WorkflowError(
            "no_mediation_committee",
            f"{where}，不能转人民调解；请本单位办理，或请派单中心改派",
        )
    reason = _stated(reason, "mediate")
    dropped = _dropped_extension(ticket)
    new, event = _assigned(
        ticket,
        "mediate",
        committee,
        via="mediation",
        city=city,
        tz=tz,
        now=now,
        explanation=f"{holder}转{city.department_by_id[committee].name}调解：{reason}"
        + (f"（{dropped}）" if dropped else ""),
    )
    return Outcome(new, publish=[event])


def not_mediable(ticket: Ticket, city: City) -> str:
    """Why a ticket of its category is not referred to people's mediation, and what to do instead:
    a dispute between parties wrongly classified goes back to the desk, which may send it to the
    committee (改派)."""
    names = city.category_names_by_id.get(ticket.category or "")
    kinds = "、".join(city.category_names(c)[-1] for c in city.mediation_categories)
    fits = f"可转人民调解的是当事人之间的纠纷（{kinds}）" if kinds else "本市未设可转人民调解的诉求分类"
    return (
        f"工单{ticket.ticket_no}的诉求分类为“{names[-1] if names else '未分类'}”，不能转人民调解：{fits}；"
        "确属当事人之间纠纷而分类有误的，请以“诉求分类有误”退单，或请派单中心改派"
    )


def _mediation_recorded(city: City, dept_id: str, mediation: Mediation | None) -> Mediation | None:
    """What a resolution records of a mediation: a committee must say how it ended (and, agreed, the
    agreement's terms); another department says nothing of one."""
    if not is_mediation_committee(city, dept_id):
        if mediation is not None:
            raise WorkflowError(
                "not_a_committee",
                "只有人民调解委员会办结时填写调解结果；请只填写办理结果说明",
                kind="invalid",
                field="mediation",
            )
        return None
    if mediation is None:
        raise WorkflowError(
            "mediation_required",
            REQUIRED["resolve.mediation"],
            kind="invalid",
            field="mediation",
        )
    agreement = mediation.agreement.strip()
    if mediation.outcome == "agreed" and not agreement:
        raise WorkflowError(
            "agreement_required",
            REQUIRED["resolve.mediation.agreement"],
            kind="invalid",
            field="mediation.agreement",
        )
    if mediation.outcome == "not_agreed" and agreement:
        raise WorkflowError(
            "no_agreement",
            "调解不成时不填写协议内容；已告知当事人的其他解决途径（诉讼、仲裁或主管部门）请写在办理结果说明中",
            kind="invalid",
            field="mediation.agreement",
        )
    return Mediation(outcome=mediation.outcome, agreement=agreement)


# --- department actions ------------------------------------------------------------------------


def _require_owner(ticket: Ticket, dept_id: str) -> None:
    if ticket.department is None or ticket.department.id != dept_id:
        # Same answer as "no such ticket": a department learns nothing about others' tickets.
        raise WorkflowError("not_found", f"工单{ticket.ticket_no}不存在", kind="not_found")


def _by_department(
    ticket: Ticket,
    action: TicketAction,
    status: Status,
    dept_id: str,
    city: City,
    now: datetime,
    cause: Event | None = None,
    **fields: Any,
) -> TicketUpdated:
    """The `ticket.updated` of a step the ticket's department took at `now`: by it, naming it.
    `cause`: the event it answers, when the step is the router's own (see `ticket_updated`)."""
    return ticket_updated(
        ticket,
        action,
        status,
        actor=dept_id,
        cause=cause,
        department=dept_ref(city, dept_id),
        occurred_at=now,
        **fields,
    )


def _in_time(deadline: datetime | None, now: datetime) -> bool:
    """A stage's step is on time up to its deadline, included; a stage without one is never late."""
    return deadline is None or now <= deadline


def accept(
    ticket: Ticket,
    dept_id: str,
    city: City,
    now: datetime,
    cause: Event | None = None,
    *,
    event_id: str | None = None,
) -> Outcome:
    """签收. `event_id` (`accept_id`): the acceptance's id, when a retry must recognise it."""
    _require_owner(ticket, dept_id)
    if ticket.status == Status.ACCEPTED:  # a colleague was quicker (批量签收 meets it most)
        raise WorkflowError(
            "illegal_transition", f"工单{ticket.ticket_no}已签收（本单位已有人先签收），无需再签收"
        )
    check(ticket, "accept")
    fields: dict[str, Any] = {"on_time": _in_time(ticket.respond_by, now), "marked_overdue": ticket.overdue}
    if event_id is not None:
        fields["event_id"] = event_id
    event = _by_department(ticket, "accepted", Status.ACCEPTED, dept_id, city, now, cause=cause, **fields)
    # Accepted late: the response's lateness is counted (`on_time`, `marked_overdue`), and the
    # deadline that runs from now on is the resolution's.
    overdue = _still_overdue(ticket, ticket.resolve_by, now)
    return _updated(ticket, "accept", event, accepted_at=now, overdue=overdue)


def _still_overdue(ticket: Ticket, due: datetime | None, now: datetime) -> bool:
    """Whether a ticket marked overdue stays so once `due` is the deadline that runs (accepted late,
    a resolution extended): only if that one has passed too; its timer marks it again when it does."""
    return ticket.overdue and due is not None and due <= now


# 批量签收: a department signs for many new tickets at once, at most this many in one request.
BATCH_ACCEPT_MAX = 50


def batch_to_accept(ticket_nos: Sequence[str]) -> list[str]:
    """The numbers of a 批量签收 (trimmed), or the refusal of the whole request when it cannot be
    taken as it stands: none, more than `BATCH_ACCEPT_MAX`, or one number twice (a list built
    wrong; accepting it once would hide that)."""
    nos = [no.strip() for no in ticket_nos]
    if not nos or not all(nos):
        raise WorkflowError(
            "nothing_to_accept", "请至少选择一件要签收的工单", kind="invalid", field="ticket_nos"
        )
    if len(nos) > BATCH_ACCEPT_MAX:
        raise WorkflowError(
            "too_many_to_accept",
            f"一次最多批量签收{BATCH_ACCEPT_MAX}件工单（本次{len(nos)}件），请分批签收",
            kind="invalid",
            field="ticket_nos",
        )
    twice = [no for no, n in Counter(nos).items() if n > 1]
    if twice:
        raise WorkflowError(
            "duplicate_ticket_nos",
            f"工单{'、'.join(twice)}在签收清单中重复出现，请每件工单只选一次",
            kind="invalid",
            field="ticket_nos",
        )
    return nos


def accept_id(ticket_no: str, by: str, key: str) -> str:
    """The id of the acceptance `by` makes of the ticket under the key `key` (a 批量签收's
    idempotency key): the same batch sent again is the same event, which the ticket has applied."""
    return derived_id(f"accept/{ticket_no}/{by}/{key}")


def accept_once(ticket: Ticket, dept_id: str, city: City, now: datetime, event_id: str) -> Outcome | None:
    """签收 as one ticket of a batch: None when this very acceptance (`event_id`, see `accept_id`)
    was made already, whatever happened to the ticket since; otherwise `accept`, refusals and all
    (another department's ticket, one accepted or returned meanwhile)."""
    if ticket.has_applied(event_id):
        return None
    return accept(ticket, dept_id, city, now, event_id=event_id)


def resolve(
    ticket: Ticket,
    dept_id: str,
    note: str,
    city: City,
    now: datetime,
    cause: Event | None = None,
    *,
    photos: tuple[str, ...] = (),
    mediation: Mediation | None = None,
) -> Outcome:
    """办结, with the result in words and, if the department took any, in photos (处置照片: ids the
    view checked were kept). They replace an earlier resolution's: a ticket reopened (重办) keeps
    its last resolution's note and photos until it is resolved again, because what the resident
    found wanting is what the department must do better, and whoever handles the reopened ticket
    needs to see it; the earlier ones stay in the history's `resolved` events. A mediation committee
    resolves with the mediation's outcome (`mediation`, required of it and of no one else); when the
    parties did not agree, the note says what they were told of the other ways."""
    _require_owner(ticket, dept_id)
    check(ticket, "resolve")
    note = note.strip()
    if not note:
        raise WorkflowError("note_required", REQUIRED["resolve.note"], kind="invalid", field="note")
    mediated = _mediation_recorded(city, dept_id, mediation)
    event = _by_department(
        ticket,
        "resolved",
        Status.RESOLVED,
        dept_id,
        city,
        now,
        cause=cause,
        note=note,
        photos=photos,
        on_time=_in_time(ticket.resolve_by, now),
        mediation=mediated,
    )
    # A pending extension request is moot once the work is done. A new resolution is checked anew
    # (现场核查): the grid worker's verdict on the last one stays in the history.
    return _updated(
        ticket,
        "resolve",
        event,
        resolved_at=now,
        resolution_note=note,
        resolution_photos=photos,
        resolution_id=event.event_id,
        mediation_outcome=mediated.outcome if mediated else None,
        mediation_agreement=mediated.agreement if mediated else "",
        extension_request=None,
        **UNVERIFIED,
    )


RETURN_REASONS: dict[ReturnReason, str] = {
    "not_ours": "不属于本单位职责",
    "wrong_grid": "属地（网格）有误",
    "duplicate": "重复工单",
    "needs_other": "需其他部门办理",
    "wrong_category": "诉求分类有误",
}
# Reasons that dispute the responsibility list: a department the list names must say which rule.
DISPUTES = ("not_ours", "needs_other")
# The list was read for the wrong problem (the appeal is not what its category says): its rule binds
# no one and its next candidate is as wrong, so the desk classifies it again, from the department's
# account of what the problem really is.
_MISCLASSIFIED = "wrong_category"
# What the desk is asked to do with a returned ticket no candidate of the list takes next.
_TO_THE_DESK: dict[ReturnReason, str] = {
    "not_ours": "权责清单没有其他候选单位，转人工派单",
    "needs_other": "权责清单没有其他候选单位，转人工派单",
    "wrong_category": "请派单中心重新分类后派单",
}


def listed_rule(city: City, category: str | None, grid: GridMatch | None, dept_id: str) -> str:
    """The responsibility rule that names the department the lead for this appeal, in words (as a
    routing's `rule` says it), or "" when none does."""
    rule = responsible(city, category, grid or GridMatch(grid=None), dept_id) if category else None
    return describe_rule(city, rule) if rule is not None else ""


def dispute_wanted(city: City, category: str | None, grid: GridMatch | None, dept_id: str) -> str:
    """What a return disputing the responsibility list (DISPUTES) must say when the list names the
    department for this appeal: the rule it disputes (the refusal's words); "" when none names it."""
    rule = listed_rule(city, category, grid, dept_id)
    if not rule:
        return ""
    return f"权责清单规定由本单位主办（{rule}）；如有异议，请写明所争议的规则及理由"


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
    check(ticket, "return")
    if not reason.strip():  # none chosen: said so, not as the list of the reasons' codes
        raise WorkflowError("reason_required", REQUIRED["return.reason"], kind="invalid", field="reason")
    if reason not in RETURN_REASONS:
        choices = "、".join(f"{k}（{v}）" for k, v in RETURN_REASONS.items())
        raise WorkflowError(
            "invalid_reason", f"退单理由必须是以下之一：{choices}", kind="invalid", field="reason"
        )
    why_code: ReturnReason = reason
    _not_settled_by_meeting(ticket, "退单")
    if not _in_time(ticket.respond_by, now):
        raise WorkflowError("window_closed", "已超过签收时限，不能退单；请签收办理或申请延期")
    if reason == _MISCLASSIFIED and not note.strip():
        raise WorkflowError(
            "note_required",
            REQUIRED["return.note"],
            kind="invalid",
            field="note",
        )
    grid = ticket.grid or GridMatch(grid=None)
    wanted = dispute_wanted(city, ticket.category, grid, dept_id)
    if reason in DISPUTES and wanted and not disputed_rule.strip():
        raise WorkflowError("rule_not_disputed", wanted, kind="invalid", field="disputed_rule")
    returns, returned_by = ticket.returns + 1, tuple(dict.fromkeys((*ticket.returned_by, dept_id)))
    detail = Returned(
        reason=why_code, reason_name=RETURN_REASONS[why_code], disputed_rule=disputed_rule, returns=returns
    )
    base = ticket.model_copy(update={"returns": returns, "returned_by": returned_by})

    def returned(status: Status) -> TicketUpdated:
        check(ticket, "return", status)
        return _by_department(ticket, "returned", status, dept_id, city, now, note=note, returned=detail)

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
        return Outcome(held.ticket, publish=[returned(Status.MEETING), *held.publish])
    nxt = None
    if reason in DISPUTES and ticket.category:
        nxt = next((d for d in candidates(city, ticket.category, grid) if d not in returned_by), None)
    why = f"{dept_ref(city, dept_id).name}退单（{RETURN_REASONS[why_code]}）" + (f"：{note}" if note else "")
    if nxt is None:
        desk = city.responsibilities.dispatch_desk
        new, assigned = _assigned(
            base,
            "return",
            desk,
            via="dispatch_desk",
            status=Status.REVIEW,
            city=city,
            tz=tz,
            now=now,
            explanation=f"{why}；{_TO_THE_DESK.get(why_code, '转派单中心处理')}"
            + _dropped_place_request(ticket, city),
        )
    else:
        new, assigned = _assigned(
            base,
            "return",
            nxt,
            via="reroute",
            city=city,
            tz=tz,
            now=now,
            explanation=f"{why}；按权责清单改派下一候选单位{city.department_by_id[nxt].name}",
        )
    event = returned(new.status)
    return Outcome(new.model_copy(update={"applied": applied(new, event)}), publish=[event, assigned])


def request_extension(
    ticket: Ticket, dept_id: str, days: int, reason: str, city: City, now: datetime
) -> Outcome:
    """延期申请: the dispatch desk approves or refuses; the deadline moves only on approval."""
    _require_owner(ticket, dept_id)
    check(ticket, "request_extension")
    if ticket.extension_request is not None:
        raise WorkflowError("extension_pending", "已有一项延期申请待派单中心审核，请等待审核结果")
    if not reason.strip():
        raise WorkflowError("reason_required", REQUIRED["extend.reason"], kind="invalid", field="reason")
    request = {"days": days, "reason": reason.strip(), "by": dept_id, "at": now.isoformat()}
    event = _by_department(
        ticket,
        "extension_requested",
        ticket.status,
        dept_id,
        city,
        now,
        note=reason.strip(),
        extension=Extension(days=days, reason=reason.strip(), old_resolve_by=ticket.resolve_by),
    )
    return _updated(ticket, "request_extension", event, extension_request=request)


def decide_extension(
    ticket: Ticket,
    approve: bool,
    operator: str,
    note: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
) -> Outcome:
    """The desk decides a department's extension request (`request_extension`). Approved: the
    resolution deadline moves by the days asked for, in working days; the desk's note is optional.
    Refused: the deadline stays, and the desk's reason (`note`, required: the department reads why,
    and what to do instead) is in the history."""
    if ticket.extension_request is None:
        raise WorkflowError("no_extension_request", f"工单{ticket.ticket_no}没有待审核的延期申请")
    check(ticket, "decide_extension")
    if not approve:
        note = _stated(note, "decide_extension")
    days = int(ticket.extension_request["days"])
    changes: dict[str, Any] = {"extension_request": None}
    new_due = None
    if approve and ticket.resolve_by is not None:
        new_due = add_working_days(ticket.resolve_by, days, city.sla, tz)
        changes.update(resolve_by=new_due, overdue=_still_overdue(ticket, new_due, now))
    event = ticket_updated(
        ticket,
        "extension_approved" if approve else "extension_refused",
        ticket.status,
        actor=operator,
        note=note,
        occurred_at=now,
        extension=Extension(
            days=days,
            reason=str(ticket.extension_request.get("reason", "")),
            old_resolve_by=ticket.resolve_by,
            resolve_by=new_due,
        ),
    )
    return _updated(ticket, "decide_extension", event, **changes)


# --- the hotline: a repeat call (重复来电 → 催办) ---------------------------------------------------


def urge_id(ticket_no: str, by: str, key: str) -> str:
    """The id of the urge `by` records on the ticket under the idempotency key `key`: the same call
    urged twice (a double click, a retry) is the same event, which the ticket has applied already."""
    return derived_id(f"urge/{ticket_no}/{by}/{key}")


def urge(ticket: Ticket, by: str, note: str, now: datetime, *, event_id: str | None = None) -> Outcome | None:
    """催办: the resident called again about this open ticket instead of getting a second one. The
    status and the deadlines stay; the ticket counts the urge, and the call's words (`note`) and
    who took it (`by`) go into its history for the department to read. `event_id` (`urge_id`):
    None when this urge was recorded already."""
    if event_id is not None and ticket.has_applied(event_id):
        return None
    check(ticket, "urge")
    urges = ticket.urges + 1
    # The caller's words, as an appeal's: a phone, ID or card number or a name typed into them is
    # masked (the history goes to the department and the record).
    note = mask_personal_data(note.strip())
    fields: dict[str, Any] = {"note": note, "urge": Urge(urges=urges), "occurred_at": now}
    if event_id is not None:
        fields["event_id"] = event_id
    event = ticket_updated(ticket, "urged", ticket.status, actor=by, **fields)
    return _updated(ticket, "urge", event, urges=urges)


# --- the survey --------------------------------------------------------------------------------


def survey_sent(ticket: Ticket | None, sent: SurveySent) -> Outcome | None:
    if ticket is None or ticket.has_applied(sent.event_id) or not allowed(ticket.status, "survey"):
        return None
    if sent.survey_id in ticket.void_surveys:
        return None  # a survey of a resolution the grid worker found not solved, sent late
    event = ticket_updated(
        ticket, "surveyed", Status.SURVEYED, actor="system", cause=sent, survey_id=sent.survey_id
    )
    return _updated(ticket, "survey", event, cause=sent)


def record_rating(
    ticket: Ticket | None,
    answer: SurveyAnswered,
    city: City | None = None,
    tz: ZoneInfo | None = None,
) -> Outcome | None:
    """The resident's rating closes the ticket, or reopens it (重办) when unsatisfied or not solved;
    a second unsatisfied answer escalates to a joint meeting (with `city`)."""
    if ticket is None or ticket.has_applied(answer.event_id):
        return None
    if answer.survey_id in ticket.void_surveys:
        # About a resolution the grid worker found not solved (现场核查未解决): the ticket went back to
        # the department then. Its answer (or its end without one) closes and reopens nothing, even
        # after the department resolved it again; the words stay in the history.
        return Outcome(ticket.model_copy(update={"applied": applied(ticket, answer)}), record=[answer])
    closable = allowed(ticket.status, "close")
    if (
        answer.outcome in ("skipped_anonymous", "erased")
        and closable
        and awaits_check(ticket)
        and ticket.verified_at is None
    ):
        # No resident to ask (none ever, or none since the erasure): the grid worker's check will
        # close it (see `verify`).
        return Outcome(ticket.model_copy(update={"applied": applied(ticket, answer)}), record=[answer])
    if answer.outcome in ("no_answer", "opted_out", "skipped_anonymous", "erased") and closable:
        # No rating will come: the survey's end closes the ticket without one.
        event = ticket_updated(
            ticket,
            "closed",
            Status.CLOSED,
            actor="system",
            cause=answer,
            answer=Answer(outcome=answer.outcome, reopens=ticket.reopens),
        )
        return _updated(ticket, "close", event, cause=answer, closed_at=answer.occurred_at)
    if not closable or answer.rating is None:
        # Late or unratable: keep the words in the history, change nothing else.
        return Outcome(ticket.model_copy(update={"applied": applied(ticket, answer)}), record=[answer])
    unhappy = answer.rating == 3 or answer.solved is False
    # The history says the rating in words (the event's `answer`) and, in the note, only what the
    # resident said beyond it: not their reply as sent ("满意，1"), which the answer's record keeps.
    said = answer_comment(answer.text, by=answer.by, via=answer.via)
    if not unhappy:
        event = ticket_updated(
            ticket,
            "closed",
            Status.CLOSED,
            actor="resident",
            cause=answer,
            note=said,
            answer=Answer(rating=answer.rating, solved=answer.solved, reopens=ticket.reopens),
        )
        return _updated(
            ticket,
            "close",
            event,
            cause=answer,
            rating=answer.rating,
            solved=answer.solved,
            closed_at=answer.occurred_at,
        )
    fresh = _fresh_deadlines(ticket, city, tz, answer.occurred_at) if city and tz else {}
    event = ticket_updated(
        ticket,
        "reopened",
        Status.ASSIGNED,
        actor="resident",
        cause=answer,
        note=said,
        answer=Answer(
            rating=answer.rating,
            solved=answer.solved,
            reopens=ticket.reopens + 1,
            respond_by=fresh.get("respond_by"),
            resolve_by=fresh.get("resolve_by"),
        ),
    )
    reopened = _updated(
        ticket,
        "reopen",
        event,
        cause=answer,
        rating=answer.rating,
        solved=answer.solved,
        reopens=ticket.reopens + 1,
        accepted_at=None,
        resolved_at=None,  # the resolution's note and photos stay until the next one (see resolve)
        **fresh,
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
        # What the resident answered, as the history says it (满意，问题未解决 is not 不满意), and
        # what they said beyond it; as a grid worker's check says its reopen (see verify).
        note=f"第{ticket.reopens + 1}次重办：市民回访答复{rating_words(answer.rating, answer.solved)}"
        + (f"；市民意见：{said}" if said else ""),
    )
    return Outcome(held.ticket, publish=[*reopened.publish, *held.publish], record=reopened.record)


def _fresh_deadlines(ticket: Ticket, city: City, tz: ZoneInfo, now: datetime) -> dict[str, Any]:
    """重办 gets the full time again, from the resident's answer (or the worker's check), of the
    department it goes back to: a committee's ticket mediation's, not its category's."""
    if ticket.category is None:
        return {}
    holder = ticket.department.id if ticket.department else None
    due = deadlines(city, ticket.category, ticket.urgent, now, tz, department=holder)
    return {
        "assigned_at": now,
        "respond_by": due.respond_by,
        "resolve_by": due.resolve_by,
        "overdue": False,
        "escalated": False,
    }


# --- the grid worker's check on the spot (现场核查) -------------------------------------------------

# The fields of a verification, as a ticket has them before its resolution was checked.
UNVERIFIED: dict[str, Any] = {
    "verified_at": None,
    "verified_by": None,
    "verification": None,
    "verification_note": "",
    "verification_photos": (),
}


def awaits_check(ticket: Ticket) -> bool:
    """A grid worker's report with no resident to ask (网格巡查 with no caller): nobody answers a
    survey, so the on-site check closes it (核查结案), not the skipped survey. It waits, resolved,
    in its grid's 待核查 list until a grid worker has looked."""
    return ticket.channel == "patrol" and ticket.caller.caller_id is None and not needs_no_check(ticket)


def needs_no_check(ticket: Ticket) -> bool:
    """Closed at first contact and never reopened: answered on the call (a question the hotline
    answered), or dealt with on the spot by the grid worker who found it. Nothing to go and see."""
    return ticket.assigned_via in FIRST_CONTACT and ticket.reopens == 0


def verify(
    ticket: Ticket,
    worker: str,
    grid: str | None,
    solved: bool,
    note: str,
    city: City,
    tz: ZoneInfo,
    now: datetime,
    *,
    photos: tuple[str, ...] = (),
) -> Outcome:
    """现场核查: the grid worker (`worker`, of `grid`) went to look at what the department reported
    resolved. Solved: the ticket records it, once per resolution (a second check of the same
    resolution is refused: the first one stands, and the resident's survey has the last word).
    Not solved: the ticket goes back to the department that resolved it, like a resident's
    不满意 (重办: its full time again, a second reopen to a joint meeting), with what the
    worker saw (`note`, required) as the reason; the survey already sent about that resolution is
    void from then on (see `record_rating`)."""
    if ticket.grid is None or grid is None or ticket.grid.grid != grid:
        # Another grid's ticket: the same answer as no ticket, as reading it gives.
        raise WorkflowError("not_found", f"工单{ticket.ticket_no}不存在", kind="not_found")
    check(ticket, "verify")
    if needs_no_check(ticket):
        raise WorkflowError(
            "nothing_to_verify",
            f"工单{ticket.ticket_no}已在受理时当场办结（话务员答复或网格员现场处置），无需现场核查",
        )
    if ticket.verified_at is not None:
        by = f"网格员{ticket.verified_by}" if ticket.verified_by else "网格员"
        raise WorkflowError(
            "already_verified",
            f"工单{ticket.ticket_no}的本次办结已于{ticket.verified_at.astimezone(tz):%m月%d日%H:%M}由{by}"
            "现场核查为已解决，无需重复核查；如问题再次出现，请上报新的问题",
        )
    note = note.strip()
    if not solved and not note:
        raise WorkflowError(
            "note_required",
            REQUIRED["verify.note"],
            kind="invalid",
            field="note",
        )
    checked: dict[str, Any] = {
        "verified_at": now,
        "verified_by": worker,
        "verification": "solved" if solved else "not_solved",
        "verification_note": note,
        "verification_photos": photos,
    }
    fields: dict[str, Any] = {"note": note, "photos": photos, "occurred_at": now}
    if solved:
        event = ticket_updated(
            ticket, "verified", ticket.status, actor=worker, verification=Verification(solved=True), **fields
        )
        verified = _updated(ticket, "verify", event, **checked)
        if not awaits_check(ticket):
            return verified  # the resident's survey has the last word
        # A report no resident can rate: checked, it is done (核查结案).
        closed = ticket_updated(
            verified.ticket,
            "closed",
            Status.CLOSED,
            actor=worker,
            cause=event,
            # Erased, the resident is not anonymous: the history says why nobody was asked.
            answer=Answer(
                outcome="erased" if ticket.personal_data_removed_at else "skipped_anonymous",
                reopens=ticket.reopens,
            ),
            occurred_at=now,
        )
        done = _updated(verified.ticket, "close", closed, closed_at=now)
        return Outcome(done.ticket, publish=[*verified.publish, *done.publish])
    fresh = _fresh_deadlines(ticket, city, tz, now)
    reopens = ticket.reopens + 1
    event = ticket_updated(
        ticket,
        "verified",
        Status.ASSIGNED,
        actor=worker,
        verification=Verification(
            solved=False,
            reopens=reopens,
            respond_by=fresh.get("respond_by"),
            resolve_by=fresh.get("resolve_by"),
            survey_id=ticket.resolution_id,
        ),
        **fields,
    )
    void = (ticket.resolution_id,) if ticket.resolution_id else ()
    reopened = _updated(
        ticket,
        "verify",
        event,
        reopens=reopens,
        accepted_at=None,
        resolved_at=None,  # the resolution's note and photos stay until the next one (see resolve)
        void_surveys=tuple(dict.fromkeys((*ticket.void_surveys, *void))),
        **checked,
        **fresh,
    )
    if ticket.reopens < 1:
        return reopened
    held = _escalate(
        reopened.ticket,
        city,
        reason="reopened_twice",
        now=now,
        tz=tz,
        cause=event,
        summoned=(d.id for d in (ticket.department, *ticket.co_departments) if d),
        note=f"第{reopens}次重办：网格员{worker}现场核查仍未解决：{note}",
    )
    return Outcome(held.ticket, publish=[*reopened.publish, *held.publish])
