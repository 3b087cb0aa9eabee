"""Joint meetings (联席会议 / 吹哨报到) and hotspot detection. Pure functions, no I/O.

A meeting is convened when the responsibility list cannot say who leads, when a ticket was returned
or reopened twice, or when one category piles up in one grid (a hotspot, 主动治理). The lead street
office calls the departments summoned; each checks in (报到); the dispatch desk records the decision
naming the lead department, and every attached ticket is reassigned to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from services.router.rules import Precedent, street_office
from services.router.sla import add_working_days
from shared.city import City
from shared.errors import DomainError
from shared.events import MeetingReason, MeetingSpec, derived_id
from shared.privacy import REMOVED

REASON_NAMES: dict[str, str] = {
    "ambiguous": "权责不清，需明确主办单位",
    "returned_twice": "工单两次被退回",
    "reopened_twice": "重办两次仍未解决（市民不满意或答复未解决，或网格员核查未解决）",
    "hotspot": "同一网格同类诉求集中（热点）",
}


def explanation(reason: str, note: str) -> str:
    """Why a meeting was convened, as its `meeting.convened` says it: the reason's name once, then
    what the hold that asked for it said. A hotspot's hold opens with the reason itself (each of its
    tickets has its own hold in its history, and only the first has the convening), so its note is
    not prefixed with the name again; the other holds say what happened (who returned it, what the
    resident said) and the name comes first."""
    name = REASON_NAMES[reason]
    if not note:
        return name
    return note if note.startswith(name) else f"{name}：{note}"


class MeetingError(DomainError):
    """A meeting step that is not allowed; the message (Chinese) says why and what to do."""


class Meeting(BaseModel):
    meeting_id: str
    reason: MeetingReason
    status: Literal["open", "decided"] = "open"
    lead_street: str
    summoned: list[str]
    tickets: list[str]
    category: str | None = None
    grid: str | None = None
    deadline: datetime
    convened_at: datetime
    checkins: dict[str, datetime] = {}
    lead: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    note: str = ""


def meeting_id(*parts: str) -> str:
    """A deterministic id: the same cause convenes the same meeting, however often it is seen."""
    return "M" + derived_id("/".join(parts))[:15]


def lead_street_office(city: City, grid_id: str | None) -> str:
    """The street office of the grid's street (吹哨 is the street's call); else the fallback owner."""
    return street_office(city, grid_id) or city.responsibilities.fallback_owner


def spec(
    city: City,
    *,
    mid: str,
    reason: MeetingReason,
    grid: str | None,
    category: str | None,
    summoned: Iterable[str],
    now: datetime,
    tz: ZoneInfo,
) -> MeetingSpec:
    """What an escalation carries so that whoever sees it first can open the meeting."""
    lead_street = lead_street_office(city, grid)
    return MeetingSpec(
        meeting_id=mid,
        reason=reason,
        lead_street=lead_street,
        summoned=tuple(dict.fromkeys(d for d in (lead_street, *summoned) if d in city.department_by_id)),
        category=category,
        grid=grid,
        deadline=add_working_days(now, city.sla.supervision.meeting_days, city.sla, tz),
    )


def merge(
    meeting: Meeting | None, spec: MeetingSpec, tickets: Sequence[str], now: datetime
) -> tuple[Meeting, list[str]]:
    """Open the meeting the spec describes, or attach tickets to it. Returns it and the tickets that
    are new to it (none: nothing changed)."""
    if meeting is None:
        m = Meeting(
            meeting_id=spec.meeting_id,
            reason=spec.reason,
            lead_street=spec.lead_street,
            summoned=list(spec.summoned),
            tickets=list(dict.fromkeys(tickets)),
            category=spec.category,
            grid=spec.grid,
            deadline=spec.deadline,
            convened_at=now,
        )
        return m, m.tickets
    known = set(meeting.tickets)  # a hotspot's meeting may hold thousands
    added = [t for t in dict.fromkeys(tickets) if t not in known]
    if not added or meeting.status != "open":
        return meeting, []
    summoned = list(dict.fromkeys([*meeting.summoned, *spec.summoned]))
    return meeting.model_copy(update={"tickets": [*meeting.tickets, *added], "summoned": summoned}), added


def check_in(meeting: Meeting, dept_id: str, now: datetime) -> Meeting:
    if dept_id not in meeting.summoned:
        raise MeetingError(
            "not_summoned", f"本单位未被召集参加联席会议{meeting.meeting_id}", kind="forbidden"
        )
    if meeting.status != "open":
        raise MeetingError("meeting_closed", f"联席会议{meeting.meeting_id}已作出决定，无需报到")
    if dept_id in meeting.checkins:
        return meeting
    return meeting.model_copy(update={"checkins": {**meeting.checkins, dept_id: now}})


# What a decision without its lead is refused with (the console asks for it in these words first).
LEAD_REQUIRED = "请选择主办单位（参会单位之一）"


def decide(meeting: Meeting, lead: str, by: str, note: str, city: City, now: datetime) -> Meeting:
    if meeting.status != "open":
        raise MeetingError(
            "meeting_closed", f"联席会议{meeting.meeting_id}已作出决定（主办单位：{meeting.lead}）"
        )
    if not lead.strip():
        raise MeetingError("lead_required", LEAD_REQUIRED, kind="invalid", field="lead")
    dept = city.department_by_id.get(lead)
    if dept is None or dept.kind == "dispatch_desk":
        raise MeetingError(
            "unknown_department",
            f"主办单位{lead!r}不是有效的承办单位（见departments.yaml）",
            kind="invalid",
            field="lead",
        )
    if lead not in meeting.summoned:
        raise MeetingError(
            "not_summoned",
            f"{dept.name}未被召集参加本次联席会议，不能确定为主办单位",
            kind="invalid",
            field="lead",
        )
    return meeting.model_copy(
        update={"status": "decided", "lead": lead, "decided_by": by, "decided_at": now, "note": note}
    )


def precedent(before: Meeting | None, meeting: Meeting) -> Precedent | None:
    """The precedent a write of the meeting sets: its lead for its category in its grid, as it is
    decided (a meeting written again as it is, decided, sets none: a later meeting of the cluster
    may have set another since). None for a meeting with no category or grid."""
    if (
        meeting.status != "decided"
        or (before is not None and before.status == "decided")
        or meeting.lead is None
        or not meeting.category
        or not meeting.grid
    ):
        return None
    return Precedent(
        category=meeting.category,
        grid=meeting.grid,
        lead=meeting.lead,
        meeting_id=meeting.meeting_id,
        decided_at=meeting.decided_at or meeting.convened_at,
    )


# --- the departments' lists of meetings -----------------------------------------------------------

# A decided meeting stays on the lists of the departments it summoned this long after its decision,
# so that they see how it ended; then it leaves the lists (still readable by its id), which keeps
# them bounded. An open meeting never leaves them, however old: it is the one that needs attention.
DECIDED_LISTED_DAYS = 30

Listed = Literal["open", "decided"]


def listed_as(meeting: Meeting) -> tuple[Listed, float]:
    """Which list holds the meeting, and its score there. Open meetings are scored by their deadline,
    the order they are listed in (the nearest first: what a department must attend to). Decided ones
    are scored by when they were decided: that is the clock their time on the list runs by, and the
    latest decision is listed first."""
    if meeting.status == "open":
        return "open", meeting.deadline.timestamp()
    return "decided", (meeting.decided_at or meeting.convened_at).timestamp()


def listing(meeting: Meeting | None) -> tuple[object, ...] | None:
    """What of a meeting its places on the lists follow (`listed_as`, who is summoned, who checked
    in): a write that changes none of it (a hotspot's meeting taking more tickets, most of its
    writes) leaves the lists as they are."""
    if meeting is None:
        return None
    return (listed_as(meeting), tuple(meeting.summoned), frozenset(meeting.checkins))


def listed_since(now: float) -> float:
    """The oldest decision still listed at `now` (unix time)."""
    return now - DECIDED_LISTED_DAYS * 86400


def page_spans(open_count: int, decided_count: int, page: int, size: int) -> tuple[range, range]:
    """Where page `page` (of `size`, from 1) of a list that shows the open meetings first, then the
    decided ones, falls in each of the two: a range of positions in the open list, and one in the
    decided list (either may be empty)."""
    start, stop = (page - 1) * size, page * size
    opened = range(min(start, open_count), min(stop, open_count))
    past = max(start - open_count, 0), max(stop - open_count, 0)  # the page's ends past the open ones
    decided = range(min(past[0], decided_count), min(past[1], decided_count))
    return opened, decided


# --- leaving Redis -------------------------------------------------------------------------------

# What the record's copy of a meeting need not match: the clocks of its steps. The record has each
# from the fact of the step, stamped with it; facts written before they were stamped with the
# meeting's own clock miss it by the moments the router took to write them.
_CLOCKS = {"convened_at", "decided_at", "checkins"}


def _content(m: Meeting) -> dict[str, object]:
    """The meeting without its clocks, its lists as sets (the record keeps them in the order of
    its facts), and who checked in without when."""
    body = m.model_dump(exclude=_CLOCKS)
    body.update(
        summoned=frozenset(m.summoned), tickets=frozenset(m.tickets), checked_in=frozenset(m.checkins)
    )
    return body


def unrecorded(meeting: Meeting, recorded: Meeting | None) -> list[str]:
    """What of the meeting, as Redis holds it, the record's copy (folded from the meeting's facts)
    does not hold: the names of the fields that differ, none when it holds it all. A note the record
    holds scrubbed is held: an erasure of one of its tickets removed it there on purpose."""
    if recorded is None:
        return ["meeting_id"]
    ours, theirs = _content(meeting), _content(recorded)
    differ = [name for name, value in ours.items() if theirs.get(name) != value]
    if "note" in differ and recorded.note == REMOVED:
        differ.remove("note")
    return differ


def may_leave_redis(meeting: Meeting, recorded: Meeting | None, decided_before: datetime) -> bool:
    """Whether a meeting leaves Redis, the working set, for the record, which then answers for it:
    decided before `decided_before` (a decided meeting changes no more) and held by the record
    (`unrecorded`). Its tickets must have left Redis before it, which the store asks as it removes
    it: a ticket in Redis looks its meeting up there (who is summoned to it reads the ticket)."""
    return (
        meeting.status == "decided"
        and meeting.decided_at is not None
        and meeting.decided_at < decided_before
        and not unrecorded(meeting, recorded)
    )


# --- hotspots ------------------------------------------------------------------------------------


def window_start(now: float, window_days: float) -> float:
    return now - window_days * 86400


def hot_clusters(
    recent: Mapping[tuple[str, str], Sequence[tuple[str, float]]], now: float, window_days: float, count: int
) -> dict[tuple[str, str], list[str]]:
    """Clusters (category, grid) with at least `count` appeals in the last `window_days`, given each
    cluster's (ticket_no, received timestamp) pairs. Returns each hot cluster's tickets, oldest first."""
    since = window_start(now, window_days)
    hot: dict[tuple[str, str], list[str]] = {}
    for key, members in recent.items():
        inside = [no for no, ts in sorted(members, key=lambda m: m[1]) if since <= ts <= now]
        if len(inside) >= count:
            hot[key] = inside
    return hot
