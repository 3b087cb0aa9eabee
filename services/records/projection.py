"""The fold: a ticket's row (and a meeting's) from its events, in the order they happened. Pure:
the worker and `appeals records rebuild` call the same functions on the same stored events, so a
rebuild equals the live projection by construction, and a replayed event changes nothing.

Events come as the dicts they were published as (`Event.model_dump(mode="json")`), not as the
classes: the record must still read events written by older versions of the services.

The deadlines are those of the last event that set them: an assignment, an approved extension, or a
reopening (重办 gives the department its full time again; a `reopened` written before its
answer carried the new deadlines leaves the old ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.router.meetings import Meeting
from shared.city import City
from shared.events import Caller, DepartmentRef, GeoPoint, GridMatch
from shared.photos import MAX_PER_ITEM
from shared.tickets import Ticket

# When two events of a ticket carry the same time (the router stamps an assignment with the time of
# the classification it answers), the order of the pipeline decides.
TOPIC_ORDER = {
    "appeal.received": 0,
    "appeal.located": 1,
    "appeal.photos_added": 1,
    "appeal.classified": 2,
    "appeal.review": 2,  # no longer published; kept so stored events of older versions fold
    "ticket.assigned": 3,
    "ticket.updated": 4,
    "survey.sent": 5,
    "survey.answered": 6,
    "meeting.convened": 7,  # meeting events: only from stored events of older versions
    "meeting.updated": 8,
    # An erasure's notice: recorded and counted among the ticket's events (the live fold and a
    # rebuild must agree), nothing else; the erasure itself changed the row.
    "ticket.personal_data_removed": 9,
}
TICKET_TOPICS = tuple(t for t in TOPIC_ORDER if not t.startswith("meeting."))

Row = dict[str, Any]


def unverified() -> Row:
    """The grid worker's check of the last resolution (现场核查), as a row has it before one."""
    return {
        "verified_at": None,
        "verified_by": None,
        "verification": None,
        "verification_note": "",
        "verification_photos": [],
    }


def at(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def in_order(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Sorted by time, then pipeline stage; an event caused by another of the list after it."""
    events = list(events)
    ids = {e["event_id"]: e for e in events}

    def depth(e: Mapping[str, Any]) -> int:
        d, seen = 0, set()
        while (cause := e.get("caused_by")) in ids and cause not in seen:
            seen.add(cause)
            e, d = ids[cause], d + 1
        return d

    return sorted(
        events, key=lambda e: (at(e["occurred_at"]), TOPIC_ORDER.get(e["topic"], 9), depth(e), e["event_id"])
    )


def _base(appeal: Mapping[str, Any]) -> Row:
    location = appeal.get("location") or {}
    caller = appeal.get("caller") or {}
    return {
        "ticket_no": appeal["ticket_no"],
        "status": "received",
        "channel": appeal["channel"],
        "title": appeal.get("title", ""),
        "text": appeal["text"],
        "address": appeal.get("address", ""),
        "lng": location.get("lng"),
        "lat": location.get("lat"),
        "caller_id": caller.get("caller_id"),
        "masked_phone": caller.get("masked_phone"),
        # Who registered it (staff, not the resident: no erasure removes it): a grid worker's list of
        # its own reports (我上报的) reads it.
        "operator_id": appeal.get("operator_id"),
        "urgent": bool(appeal.get("urgent_flag")),
        "received_at": at(appeal["received_at"]),
        "photos": list(appeal.get("photos") or ()),
        "category": None,
        "category_names": [],
        "confidence": None,
        "appeal_type": None,
        "grid": None,
        "community": None,
        "street": None,
        "department": None,
        "department_name": None,
        "co_departments": [],
        "assigned_via": None,
        "explanation": "",
        "assigned_at": None,
        "respond_by": None,
        "resolve_by": None,
        "accepted_at": None,
        "accepted_on_time": None,
        "resolved_at": None,
        "resolution_note": "",
        "resolution_photos": [],
        "mediation_outcome": None,
        "mediation_agreement": "",
        "closed_at": None,
        "returns": 0,
        "reopens": 0,
        "urges": 0,
        "merged_into": None,
        "merged": [],
        **unverified(),
        "overdue": False,
        "escalated": False,
        "meeting_id": None,
        "rating": None,
        "solved": None,
        "survey_outcome": None,
        "events": 0,
        "updated_at": at(appeal["occurred_at"]),
    }


def fold_ticket(
    events: Iterable[Mapping[str, Any]], streets: Mapping[str, tuple[str, str]], start: Row | None = None
) -> Row | None:
    """The ticket's row from all its events; None while its appeal is not among them.
    `streets`: grid id -> (community id, street id), from the city's areas. `start`: the row as
    folded so far, when every event given happened after all those already in it (a left fold)."""
    row: Row | None = dict(start) if start else None
    for e in in_order(events):
        topic = e["topic"]
        if row is None and topic == "appeal.received":
            row = _base(e)
        elif row is None and topic in ("appeal.classified", "appeal.review"):
            row = _base(e["appeal"])  # the classification carries the appeal: same starting row
        if row is None:
            continue
        _apply(row, e, streets)
        row["events"] += 1
        row["updated_at"] = max(row["updated_at"], at(e["occurred_at"]))
    return row


def _apply(row: Row, e: Mapping[str, Any], streets: Mapping[str, tuple[str, str]]) -> None:
    topic, when = e["topic"], at(e["occurred_at"])
    if topic in ("appeal.classified", "appeal.review"):
        grid = (e.get("grid") or {}).get("grid")
        community, street = streets.get(grid, (None, None)) if grid else (None, None)
        row.update(
            category=e["category"],
            category_names=list(e.get("category_names") or ()),
            confidence=e.get("confidence"),
            appeal_type=e.get("appeal_type"),
            grid=grid,
            community=community or (e.get("grid") or {}).get("community"),
            street=street or (e.get("grid") or {}).get("street"),
            urgent=row["urgent"] or bool(e.get("urgent")),
        )
        if row["status"] == "received" and e.get("needs_review"):
            row["status"] = "review"
    elif topic == "appeal.photos_added":
        row["photos"] = list(dict.fromkeys([*row["photos"], *(e.get("photos") or ())]))[:MAX_PER_ITEM]
    elif topic == "appeal.located" and e.get("location"):
        row.update(lng=e["location"]["lng"], lat=e["location"]["lat"])
    elif topic == "ticket.assigned":
        row.update(
            status="review" if e["via"] == "dispatch_desk" else "assigned",
            department=e["department"]["id"],
            department_name=e["department"]["name"],
            co_departments=[d["id"] for d in e.get("co_departments") or ()],
            assigned_via=e["via"],
            explanation=e.get("explanation", ""),
            assigned_at=when,
            respond_by=at(e["respond_by"]),
            resolve_by=at(e["resolve_by"]),
            category=e.get("category") or row["category"],
            # The desk may have changed the category; an assignment before version 3 did not name it.
            category_names=list(e.get("category_names") or row["category_names"]),
            urgent=bool(e.get("urgent")) or row["urgent"],
            accepted_at=None,
            accepted_on_time=None,
            overdue=False,
            escalated=False,
        )
        # The dispatch desk placed the ticket (version 4, `grid_chosen`: the classifier found no grid
        # or the wrong one): its grid, and the community and street that grid is in. Any other
        # assignment names the grid the ticket had, which the classification already folded.
        if e.get("grid_chosen") and (grid := e.get("grid")):
            community, street = streets.get(grid, (None, None))
            row.update(grid=grid, community=community, street=street)
    elif topic == "ticket.updated":
        _apply_update(row, e, when, streets)
    elif topic == "survey.answered":
        row["survey_outcome"] = e.get("outcome", "answered")


def _payload(e: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    """A typed payload of a `ticket.updated` (version 2), or the free `data` dict that version 1
    carried instead: stored events of both versions must fold."""
    value = e.get(field)
    if isinstance(value, Mapping):
        return value
    return e.get("data") or {}


def _back_to_department(row: Row, payload: Mapping[str, Any]) -> None:
    """重办: the ticket is the department's to work again (a resident's 不满意, or a grid worker's
    check that found it not solved), with the deadlines the payload gives it anew."""
    row.update(
        reopens=payload.get("reopens") or row["reopens"] + 1,
        accepted_at=None,
        accepted_on_time=None,
        resolved_at=None,
        closed_at=None,
        overdue=False,
        escalated=False,
    )
    for deadline in ("respond_by", "resolve_by"):
        if payload.get(deadline):
            row[deadline] = at(payload[deadline])


def _still_overdue(row: Row, when: datetime) -> bool:
    """As the router's ticket (`workflow._still_overdue`): accepted late or extended, a ticket stays
    overdue only while its resolution's deadline has passed too."""
    return bool(row["overdue"]) and row["resolve_by"] is not None and row["resolve_by"] <= when


def _apply_update(
    row: Row, e: Mapping[str, Any], when: datetime, streets: Mapping[str, tuple[str, str]]
) -> None:
    action = e["action"]
    row["status"] = e["status"]
    if action == "placed" and (place := e.get("place") or {}).get("grid"):
        # 事发网格 (version 3): the desk placed the assigned ticket; its community and street are
        # the city's for that grid, as for a grid chosen at dispatch (else the event's).
        grid = place["grid"]
        community, street = streets.get(grid, (place.get("community"), place.get("street")))
        row.update(grid=grid, community=community, street=street)
    if action == "accepted":
        on_time = e["on_time"] if e.get("on_time") is not None else _payload(e, "on_time").get("on_time")
        row.update(accepted_at=when, accepted_on_time=on_time)
        row["overdue"] = _still_overdue(row, when)
    elif action == "returned":
        row["returns"] += 1
    elif action == "extension_approved" and (resolve_by := _payload(e, "extension").get("resolve_by")):
        row["resolve_by"] = at(resolve_by)
        row["overdue"] = _still_overdue(row, when)
    elif action == "resolved":
        # The photos of the last resolution: a reopened ticket shows what was done before until
        # it is resolved again. So does a mediation committee's outcome (none from anyone else).
        mediation = e.get("mediation") or {}
        row.update(
            resolved_at=when,
            resolution_note=e.get("note", ""),
            resolution_photos=list(e.get("photos") or ()),
            mediation_outcome=mediation.get("outcome"),
            mediation_agreement=mediation.get("agreement") or "",
            **unverified(),  # a new resolution is checked anew
        )
    elif action == "closed":
        answer = _payload(e, "answer")
        row.update(
            closed_at=when,
            rating=answer.get("rating", row["rating"]),
            solved=answer.get("solved", row["solved"]),
            survey_outcome=answer.get("outcome") or answer.get("survey") or "answered",
        )
    elif action == "reopened":
        answer = _payload(e, "answer")
        row.update(rating=answer.get("rating"), solved=answer.get("solved"))
        _back_to_department(row, answer)
    elif action == "verified":
        check = e.get("verification") or {}
        row.update(
            verified_at=when,
            verified_by=e.get("actor"),
            verification="solved" if check.get("solved") else "not_solved",
            verification_note=e.get("note", ""),
            verification_photos=list(e.get("photos") or ()),
        )
        if not check.get("solved"):  # back to the department, as a reopen (重办)
            _back_to_department(row, check)
    elif action == "urged":
        row["urges"] += 1  # counted, like returns: the fold of the events gives the number
    elif action == "merged":  # 并案: this duplicate was closed into the main ticket
        merge = e.get("merge") or {}
        # Its own duplicates (if it was a main ticket) moved with it: the main ticket lists them.
        gone = set(merge.get("moved") or ())
        row.update(
            merged_into=merge.get("into"),
            merged=[n for n in row["merged"] if n not in gone],
            closed_at=when,
        )
    elif action == "duplicate_merged" and (duplicate := (e.get("merge") or {}).get("duplicate")):
        along = (e.get("merge") or {}).get("moved") or ()
        row["merged"] = list(dict.fromkeys([*row["merged"], duplicate, *along]))
    elif action == "remerged":  # 并案: the ticket it had been merged into was merged into another
        row["merged_into"] = (e.get("merge") or {}).get("into", row["merged_into"])
    elif action == "overdue":
        row["overdue"] = True
    elif action == "escalated":
        row["escalated"] = True
        meeting = (
            e.get("meeting")
            if isinstance(e.get("meeting"), Mapping)
            else _payload(e, "meeting").get("meeting")
        )
        row["meeting_id"] = (meeting or {}).get("meeting_id", row["meeting_id"])


def fold_meeting(events: Iterable[Mapping[str, Any]]) -> Row | None:
    """A joint meeting's row from its events; None until it was convened."""
    row: Row | None = None
    for e in in_order(events):
        when = at(e["occurred_at"])
        if e["topic"] == "meeting.convened":
            row = {
                "meeting_id": e["meeting_id"],
                "reason": e["reason"],
                "lead_street": e["lead_street"]["id"],
                "summoned": [d["id"] for d in e.get("summoned") or ()],
                "tickets": list(e.get("tickets") or ()),
                "category": e.get("category"),
                "grid": e.get("grid"),
                "deadline": at(e["deadline"]),
                "explanation": e.get("explanation", ""),
                "convened_at": when,
                "checked_in": [],
                "checkins": {},
                "decided_at": None,
                "lead": None,
                "decided_by": None,
                "decision": "",
                "updated_at": when,
            }
            continue
        if row is None:
            continue
        action = e.get("action")
        if action == "attached":
            row["tickets"] = list(dict.fromkeys([*row["tickets"], *e.get("tickets", ())]))
            # Those the joining tickets' departments add (a hotspot's); facts of older versions
            # did not say, and their meetings' rows lack them.
            added = [d["id"] for d in e.get("summoned") or ()]
            row["summoned"] = list(dict.fromkeys([*row["summoned"], *added]))
        elif action == "checked_in" and e.get("department"):
            dept = e["department"]["id"]
            row["checked_in"] = list(dict.fromkeys([*row["checked_in"], dept]))
            if dept not in row["checkins"]:  # the first check-in counts, as in Redis
                row["checkins"] = {**row["checkins"], dept: when}
        elif action == "decided":
            lead = (e.get("department") or {}).get("id")
            row.update(decided_at=when, decision=e.get("note", ""), lead=lead, decided_by=e.get("actor"))
        row["updated_at"] = max(row["updated_at"], when)
    return row


def meeting_of(row: Mapping[str, Any], tz: ZoneInfo) -> Meeting:
    """A meeting's row read back as the meeting the working set held, for a meeting that has left
    Redis: GET /api/v1/meetings/{id} answers in one shape wherever it is, down to the offsets of its
    times, which PostgreSQL does not keep. So they are put back as the router writes them: the
    deadline in the city's time zone `tz` (a number of working days there, `meetings.spec`), the
    clocks of its steps in UTC. Those clocks are its facts' (see `meetings.unrecorded`)."""
    decided_at = row["decided_at"]
    return Meeting(
        meeting_id=row["meeting_id"],
        reason=row["reason"],
        status="open" if decided_at is None else "decided",
        lead_street=row["lead_street"],
        summoned=list(row["summoned"]),
        tickets=list(row["tickets"]),
        category=row["category"],
        grid=row["grid"],
        deadline=row["deadline"].astimezone(tz),
        convened_at=row["convened_at"].astimezone(UTC),
        checkins={d: at(t).astimezone(UTC) for d, t in (row["checkins"] or {}).items()},
        lead=row["lead"],
        decided_by=row["decided_by"],
        decided_at=decided_at.astimezone(UTC) if decided_at is not None else None,
        note=row["decision"],
    )


def ticket_of(row: Mapping[str, Any], city: City) -> Ticket:
    """A ticket's row read back as the ticket the working set held, for a ticket that has left
    Redis: GET /api/v1/tickets/{no} answers in one shape wherever the ticket is, so a reader (the
    console's ticket page) needs no second one. The row keeps ids where the ticket kept references:
    a co-handler's name comes from the city (the lead's was recorded with its assignment), and the
    grid keeps its place, not how it was matched."""

    def ref(dept: str, name: str | None = None) -> DepartmentRef:
        known = city.department_by_id.get(dept)
        return DepartmentRef(id=dept, name=name or (known.name if known else dept))

    located = row["lng"] is not None and row["lat"] is not None
    placed = row["grid"] or row["community"] or row["street"]
    return Ticket.model_validate(
        {
            **row,
            "location": GeoPoint(lng=row["lng"], lat=row["lat"]) if located else None,
            "caller": Caller(caller_id=row["caller_id"], masked_phone=row["masked_phone"]),
            "grid": GridMatch(grid=row["grid"], community=row["community"], street=row["street"])
            if placed
            else None,
            "department": ref(row["department"], row["department_name"]) if row["department"] else None,
            "co_departments": tuple(ref(d) for d in row["co_departments"] or ()),
        }
    )
