"""Deadline timers (督办): when to warn, mark overdue and escalate, and what firing one does. Pure.

Each ticket deadline gets three timers: a warning at `warning_ratio` of the time, overdue at the
deadline, and (for resolution) escalation at `escalate_ratio` of the time. A ticket waiting at the
dispatch desk (待人工派单) has a clock too: `dispatch_hours` from when it got there, with a warning and
an overdue timer, so no ticket waits unseen for a person; one held for a joint meeting has an overdue
timer at the meeting's deadline (`meeting_days` working days). A grid worker's report that no
resident can rate waits, resolved, for the on-site check that closes it (现场核查): `check_hours`
from its resolution, with a warning, and overdue tells the grid's street office, which directs
its grid workers. A timer names the deadline
it was set for, so a timer left over from before an extension, a re-route or an acceptance finds the
ticket moved on and fires nothing. Firing is idempotent: the event id is derived from the timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from services.router.rules import street_office
from services.router.workflow import allowed, awaits_check, ticket_updated
from shared.city import City, Supervision
from shared.decisions import Outcome, applied
from shared.events import DeadlineNotice, Stage, derived_id
from shared.tickets import Status, Ticket

Kind = Literal["warning", "overdue", "escalated"]
STAGE_NAMES: dict[Stage, str] = {
    "dispatch": "派单",
    "respond": "签收",
    "resolve": "办结",
    "meeting": "联席会议决定",
    "check": "现场核查",
}
# While a ticket is in these statuses a stage's clock runs (each within the statuses the workflow
# table lets a timer supervise; a test holds them to it).
RUNNING: dict[Stage, frozenset[Status]] = {
    "dispatch": frozenset({Status.REVIEW}),
    "respond": frozenset({Status.ASSIGNED}),
    "resolve": frozenset({Status.ASSIGNED, Status.ACCEPTED}),
    "meeting": frozenset({Status.MEETING}),
    "check": frozenset({Status.RESOLVED}),
}
STAGES: tuple[Stage, ...] = ("dispatch", "respond", "resolve", "meeting", "check")


@dataclass(frozen=True)
class Timer:
    ticket_no: str
    stage: Stage
    kind: Kind
    deadline: datetime  # the deadline it watches
    due: datetime  # when it fires

    @property
    def member(self) -> str:
        return f"{self.ticket_no}|{self.stage}|{self.kind}|{self.deadline.isoformat()}"

    @classmethod
    def parse(cls, member: str, due: float) -> Timer:
        no, stage, kind, deadline = member.split("|")
        d = datetime.fromisoformat(deadline)
        return cls(no, stage, kind, d, datetime.fromtimestamp(due, d.tzinfo))  # type: ignore[arg-type]


def _start(ticket: Ticket, stage: Stage) -> datetime | None:
    """When the stage's clock started: the check's at the resolution, the others' at assignment
    (`assigned_at` is set for the desk too, when the ticket got there)."""
    return ticket.resolved_at if stage == "check" else ticket.assigned_at


def _deadline(ticket: Ticket, stage: Stage, sup: Supervision) -> datetime | None:
    if stage == "dispatch":
        return ticket.assigned_at + timedelta(hours=sup.dispatch_hours) if ticket.assigned_at else None
    if stage == "meeting":
        return ticket.meeting_by
    if stage == "check":
        if ticket.resolved_at is None or ticket.verified_at is not None or not awaits_check(ticket):
            return None
        return ticket.resolved_at + timedelta(hours=sup.check_hours)
    return ticket.respond_by if stage == "respond" else ticket.resolve_by


def timers_for(ticket: Ticket, sup: Supervision) -> list[Timer]:
    """The timers a ticket needs now (none once its clocks stopped)."""
    out: list[Timer] = []
    for stage in STAGES:
        start, deadline = _start(ticket, stage), _deadline(ticket, stage, sup)
        if start is None or deadline is None or ticket.status not in RUNNING[stage]:
            continue
        if stage == "meeting":  # the meeting was convened with its deadline: no warning needed
            out.append(Timer(ticket.ticket_no, stage, "overdue", deadline, deadline))
            continue
        window = deadline - start
        out.append(Timer(ticket.ticket_no, stage, "warning", deadline, start + window * sup.warning_ratio))
        out.append(Timer(ticket.ticket_no, stage, "overdue", deadline, deadline))
        if stage == "resolve":
            out.append(
                Timer(ticket.ticket_no, stage, "escalated", deadline, start + window * sup.escalate_ratio)
            )
    return out


def fire(ticket: Ticket | None, timer: Timer, city: City, tz: ZoneInfo) -> Outcome | None:
    """What a due timer does to the ticket; None when the ticket moved on or it already fired."""
    if (
        ticket is None
        or not allowed(ticket.status, "supervise")
        or ticket.status not in RUNNING[timer.stage]
        or _deadline(ticket, timer.stage, city.sla.supervision) != timer.deadline
    ):
        return None
    event_id = derived_id("timer/" + timer.member)
    if ticket.has_applied(event_id):
        return None
    what = STAGE_NAMES[timer.stage]
    local = timer.deadline.astimezone(tz)
    notes = {
        "warning": f"{what}时限即将到期（{local:%m-%d %H:%M}），请抓紧办理",
        "overdue": f"已超过{what}时限（{local:%m-%d %H:%M}），督办："
        + {
            "dispatch": "请派单中心立即派单",
            "meeting": f"请派单中心督促联席会议（{ticket.meeting_id}）尽快确定主办单位",
            "check": "已通知所在街道，请督促网格员尽快现场核查",
        }.get(timer.stage, "已通知承办单位主管"),
        "escalated": f"超过{what}时限已久，升级督办至"
        f"{city.department_by_id[city.responsibilities.fallback_owner].name}",
    }
    supervisor = None
    if timer.kind != "warning":
        if timer.stage == "meeting":
            supervisor = city.responsibilities.dispatch_desk
        elif timer.stage == "check":  # the grid workers' street office (the department is done)
            supervisor = street_office(city, ticket.grid.grid if ticket.grid else None)
        elif ticket.department:
            supervisor = ticket.department.id
    event = ticket_updated(
        ticket,
        timer.kind,
        ticket.status,
        actor="system",
        event_id=event_id,
        note=notes[timer.kind],
        occurred_at=timer.due,
        supervision=DeadlineNotice(
            stage=timer.stage,
            stage_name=what,
            deadline=timer.deadline,
            supervisor=supervisor,
            to=city.responsibilities.fallback_owner if timer.kind == "escalated" else None,
        ),
    )
    flags = {"overdue": {"overdue": True}, "escalated": {"escalated": True}}.get(timer.kind, {})
    new = ticket.model_copy(
        update={"applied": applied(ticket, event), "updated_at": event.occurred_at, **flags}
    )
    return Outcome(new, publish=[event])
