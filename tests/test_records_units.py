"""The record's pure parts: the fold of a ticket's events, scrubbing, the search filters, and a
caller's history as the operator's preview shows it (and goes without it while the record is away)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest

from services.records.callers import CallerHistories, history_of, survey_words
from services.records.projection import TICKET_TOPICS, at, fold_meeting, fold_ticket, meeting_of, ticket_of
from services.records.query import REPORTED_STATES, build, reported
from services.records.service import events_json, payload
from services.router import meetings
from shared.bus import read_batch
from shared.city import City
from shared.errors import DomainError
from shared.events import (
    Answer,
    AppealClassified,
    AppealPhotosAdded,
    AppealReceived,
    Caller,
    CategoryScore,
    DeadlineNotice,
    DepartmentRef,
    Extension,
    GeoPoint,
    GridMatch,
    Mediation,
    MeetingConvened,
    MeetingSpec,
    MeetingUpdated,
    Merge,
    Payload,
    PersonalDataRemoved,
    Place,
    Returned,
    SurveyAnswered,
    TicketAssigned,
    TicketUpdated,
    Urge,
    Verification,
    topic_first,
)
from shared.privacy import REMOVED, scrub_event
from shared.tickets import Status
from tests.cities import demo_city

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DEPT = DepartmentRef(id="street_office_a", name="阳光街道办事处")
STREETS = {"g-001": ("c-01", "s-01")}
TZ = ZoneInfo("Asia/Shanghai")
CITY = demo_city()
OVERDUE = DeadlineNotice(stage="resolve", stage_name="办结", deadline=T0 + timedelta(minutes=15))


def dump(e) -> dict:
    return {"topic": e.topic, **e.model_dump(mode="json")}


def life() -> list[dict]:
    appeal = AppealReceived(
        ticket_no="20261102-000001",
        channel="hotline",
        text="阳光花园3号楼门口的路灯坏了",
        address="阳光花园3号楼",
        caller=Caller(caller_id="abc", masked_phone="138****5678"),
        received_at=T0,
        occurred_at=T0,
    )
    classified = AppealClassified(
        ticket_no=appeal.ticket_no,
        appeal=appeal,
        category="city.facility.streetlight",
        category_names=("城市管理", "市政设施", "路灯故障"),
        confidence=0.93,
        top=(CategoryScore(category="city.facility.streetlight", probability=0.93),),
        grid=GridMatch(grid="g-001", method="gazetteer", confidence=1.0),
        model_version="m1",
        occurred_at=T0 + timedelta(seconds=1),
    )
    assigned = TicketAssigned(
        ticket_no=appeal.ticket_no,
        department=DEPT,
        via="rule",
        explanation="路灯归街道",
        category=classified.category,
        grid="g-001",
        respond_by=T0 + timedelta(hours=2),
        resolve_by=T0 + timedelta(days=3),
        occurred_at=classified.occurred_at,  # the router stamps it with the classification's time
    )

    def update(action: str, status: str, minutes: int, **kw) -> TicketUpdated:
        return TicketUpdated(
            ticket_no=appeal.ticket_no,
            action=action,
            status=status,
            actor=DEPT.id,
            department=DEPT,
            occurred_at=T0 + timedelta(minutes=minutes),
            **kw,
        )

    answer = SurveyAnswered(
        ticket_no=appeal.ticket_no,
        survey_id="s1",
        rating=1,
        solved=True,
        text="1",
        occurred_at=T0 + timedelta(minutes=90),
    )
    return [
        dump(e)
        for e in (
            appeal,
            classified,
            assigned,
            update("accepted", "accepted", 10, on_time=True),
            update("overdue", "accepted", 20, supervision=OVERDUE),
            update("resolved", "resolved", 30, note="已更换灯泡", on_time=True),
            update("surveyed", "surveyed", 31, survey_id="s1"),
            answer,
            update("closed", "closed", 90, answer=Answer(rating=1, solved=True)),
        )
    ]


def test_a_ticket_accepted_late_is_overdue_only_while_its_resolution_is_late_too():
    """The response's lateness is counted (`accepted_on_time`); from the acceptance the deadline that
    runs is the resolution's, as the router's ticket has it."""
    appeal, classified, assigned = life()[:3]
    respond_late = DeadlineNotice(stage="respond", stage_name="签收", deadline=T0 + timedelta(hours=2))

    def update(action: str, status: str, hours: float, **kw) -> dict:
        return dump(
            TicketUpdated(
                ticket_no=appeal["ticket_no"],
                action=action,
                status=status,
                actor=DEPT.id,
                department=DEPT,
                occurred_at=T0 + timedelta(hours=hours),
                **kw,
            )
        )

    late = [appeal, classified, assigned, update("overdue", "assigned", 2, supervision=respond_late)]
    assert fold_ticket(late, STREETS)["overdue"] is True
    accepted = fold_ticket([*late, update("accepted", "accepted", 3, on_time=False)], STREETS)
    assert (accepted["overdue"], accepted["accepted_on_time"]) == (False, False)
    # Accepted after its resolution was due too (three days): overdue still.
    very_late = fold_ticket([*late, update("accepted", "accepted", 80, on_time=False)], STREETS)
    assert very_late["overdue"] is True


def test_the_fold_follows_a_ticket_through_its_life():
    row = fold_ticket(life(), STREETS)
    assert row is not None
    assert row["status"] == "closed"
    assert row["category"] == "city.facility.streetlight"
    assert (row["grid"], row["community"], row["street"]) == ("g-001", "c-01", "s-01")
    assert row["department"] == DEPT.id
    assert row["accepted_on_time"] is True
    assert row["overdue"] is True
    assert row["rating"] == 1
    assert row["solved"] is True
    assert row["resolution_note"] == "已更换灯泡"
    assert row["masked_phone"] == "138****5678"
    assert row["closed_at"] == T0 + timedelta(minutes=90)
    assert row["events"] == 9


def test_the_category_the_desk_gives_is_named_on_the_row_as_the_classifiers_was():
    """The dispatch desk's category comes with the assignment, names and all: the list, the export
    and the caller's history read the names. An assignment from before it named them (version 2)
    keeps the names the row has."""
    received, classified, assigned = life()[:3]
    by_desk = {
        **assigned,
        "event_id": "by-desk",
        "via": "operator",
        "category": "public.security.dogs",
        "category_names": ["公共安全", "养犬管理"],
        "occurred_at": (T0 + timedelta(minutes=5)).isoformat(),
    }
    row = fold_ticket([received, classified, assigned, by_desk], STREETS)
    assert row is not None
    assert (row["category"], row["category_names"]) == ("public.security.dogs", ["公共安全", "养犬管理"])
    earlier = {k: v for k, v in by_desk.items() if k != "category_names"} | {"version": 2}
    row = fold_ticket([received, classified, assigned, earlier], STREETS)
    assert row is not None
    assert row["category_names"] == ["城市管理", "市政设施", "路灯故障"]


def test_the_grid_the_desk_chooses_places_the_row_with_its_community_and_street():
    """A ticket the classifier could not place (no grid: a vague address) is placed by the dispatch
    desk as it dispatches it (`grid_chosen`, version 4): the row takes the grid, and the community
    and street the city puts it in, so the grid worker's list and the rankings find it there. An
    assignment that names the grid the ticket had (any other, and every one before version 4)
    changes no place; nor does one after the desk's, which carries the desk's grid on."""
    received, classified, assigned = life()[:3]
    unplaced = {**classified, "grid": {"grid": None, "method": "none", "confidence": 0.0}}
    to_desk = {**assigned, "event_id": "to-desk", "via": "dispatch_desk", "grid": None}
    streets = {**STREETS, "g-002": ("c-02", "s-02")}
    waiting = fold_ticket([received, unplaced, to_desk], streets)
    assert waiting is not None
    assert (waiting["status"], waiting["grid"], waiting["community"], waiting["street"]) == (
        "review",
        None,
        None,
        None,
    )
    by_desk = {
        **assigned,
        "event_id": "by-desk",
        "via": "operator",
        "grid": "g-002",
        "grid_chosen": True,
        "version": 4,
        "occurred_at": (T0 + timedelta(minutes=5)).isoformat(),
    }
    row = fold_ticket([received, unplaced, to_desk, by_desk], streets)
    assert row is not None
    assert (row["status"], row["grid"], row["community"], row["street"]) == (
        "assigned",
        "g-002",
        "c-02",
        "s-02",
    )
    # A correction of the classifier's grid is the desk's too.
    corrected = fold_ticket([received, classified, to_desk, by_desk], streets)
    assert corrected is not None
    assert (corrected["grid"], corrected["community"], corrected["street"]) == ("g-002", "c-02", "s-02")
    # An assignment that does not say the desk chose it keeps the place the row has.
    unsaid = fold_ticket([received, classified, {**by_desk, "grid_chosen": False}], streets)
    older = {k: v for k, v in by_desk.items() if k != "grid_chosen"} | {"version": 3}
    for kept in (unsaid, fold_ticket([received, classified, older], streets)):
        assert kept is not None
        assert (kept["grid"], kept["community"], kept["street"]) == ("g-001", "c-01", "s-01")
    # A later assignment (a return's reroute) carries the desk's grid on, not chosen again.
    rerouted = {**by_desk, "event_id": "reroute", "via": "reroute", "grid_chosen": False}
    rerouted["occurred_at"] = (T0 + timedelta(minutes=9)).isoformat()
    again = fold_ticket([received, unplaced, to_desk, by_desk, rerouted], streets)
    assert again is not None
    assert (again["grid"], again["street"]) == ("g-002", "s-02")
    # Read back, the ticket is in the desk's grid.
    ticket = ticket_of(again, CITY)
    assert ticket.grid is not None
    assert (ticket.grid.grid, ticket.grid.street) == ("g-002", "s-02")


def test_a_ticket_the_desk_places_after_its_assignment_moves_the_row_to_that_grid():
    """事发网格 (`ticket.updated` `placed`, version 3): the row takes the grid and the community and
    street the city puts it in, as for a grid chosen at dispatch, so that lists, search and reports
    follow; its status, department and deadlines stay. Updates of version 2 place nothing; a
    rebuild (the same events in another order of arrival) folds the same row."""
    received, classified, assigned = life()[:3]
    unplaced = {**classified, "grid": {"grid": None, "method": "none", "confidence": 0.0}}
    routed = {**assigned, "grid": None}
    streets = {**STREETS, "g-002": ("c-02", "s-02")}
    before = fold_ticket([received, unplaced, routed], streets)
    assert before is not None
    assert (before["grid"], before["community"], before["street"]) == (None, None, None)
    placed = dump(
        TicketUpdated(
            ticket_no=received["ticket_no"],
            action="placed",
            status="assigned",
            actor="dispatch_desk",
            department=DEPT,
            grid="g-002",
            note="事发网格人工选定为…，原为未定位（12345派单中心）",
            place=Place(grid="g-002", community="c-x", street="s-x"),
            occurred_at=T0 + timedelta(hours=1),
        )
    )
    events = [received, unplaced, routed, placed]
    row = fold_ticket(events, streets)
    assert row is not None
    assert (row["grid"], row["community"], row["street"]) == ("g-002", "c-02", "s-02")  # the city's
    kept = ("status", "department", "respond_by", "resolve_by", "assigned_at", "assigned_via")
    assert {k: row[k] for k in kept} == {k: before[k] for k in kept}
    assert fold_ticket(list(reversed(events)), streets) == row
    # A grid the city no longer has: the event's community and street.
    elsewhere = fold_ticket(events, STREETS)
    assert elsewhere is not None
    assert (elsewhere["grid"], elsewhere["community"], elsewhere["street"]) == ("g-002", "c-x", "s-x")
    # A later assignment (改派) carries the placed grid on, not chosen again: the row keeps it.
    moved = {**routed, "event_id": "redispatch", "via": "redispatch", "grid": "g-002"}
    moved["occurred_at"] = (T0 + timedelta(hours=2)).isoformat()
    again = fold_ticket([*events, moved], streets)
    assert again is not None
    assert (again["grid"], again["street"]) == ("g-002", "s-02")
    # An update of version 2 (an acceptance) names the ticket's grid and places nothing.
    accepted = {**placed, "event_id": "acc", "action": "accepted", "status": "accepted", "on_time": True}
    accepted |= {
        "place": None,
        "version": 2,
        "grid": "g-001",
        "occurred_at": (T0 + timedelta(hours=3)).isoformat(),
    }
    still = fold_ticket([*events, accepted], streets)
    assert still is not None
    assert (still["status"], still["grid"], still["street"]) == ("accepted", "g-002", "s-02")
    ticket = ticket_of(still, CITY)
    assert ticket.grid is not None
    assert (ticket.grid.grid, ticket.grid.street) == ("g-002", "s-02")


def test_urges_are_counted_and_change_nothing_else():
    """催办: a repeat call about the open ticket, counted on the row; its words stay in the event."""
    events = life()
    urges = [
        dump(
            TicketUpdated(
                ticket_no="20261102-000001",
                action="urged",
                status="accepted",
                actor="0231",
                department=DEPT,
                note="上周反映的路灯还没修",
                urge=Urge(urges=n),
                occurred_at=T0 + timedelta(minutes=10 + n),
            )
        )
        for n in (1, 2)
    ]
    plain = fold_ticket(events, STREETS)
    row = fold_ticket([*events, *urges], STREETS)
    assert plain is not None
    assert row is not None
    assert (plain["urges"], row["urges"]) == (0, 2)
    assert row["status"] == "closed"  # the urges came while it was open; the close came later
    assert row["events"] == plain["events"] + 2
    assert {k: v for k, v in row.items() if k not in ("urges", "events")} == {
        k: v for k, v in plain.items() if k not in ("urges", "events")
    }
    scrubbed = scrub_event(urges[0])
    assert scrubbed["note"] == REMOVED
    assert fold_ticket([*events, *(scrub_event(u) for u in urges)], STREETS)["urges"] == 2  # type: ignore[index]


def test_a_merge_closes_the_duplicate_s_row_into_its_main_ticket_and_lists_it_there():
    """并案: the duplicate's row is closed with the main ticket's number; the main ticket's lists its
    duplicates once each, in order, and keeps its status."""
    events = life()[:4]  # received, classified, assigned, accepted
    dup_events = [{**e, "ticket_no": "20261102-000002"} for e in life()[:3]]

    def merge_event(no: str, action: str, status: str, duplicate: str, minutes: int) -> dict:
        return dump(
            TicketUpdated(
                ticket_no=no,
                action=action,
                status=status,
                actor="dispatch_desk",
                department=DEPT,
                note="同一路灯",
                merge=Merge(into="20261102-000001", duplicate=duplicate),
                occurred_at=T0 + timedelta(minutes=minutes),
            )
        )

    closed = merge_event("20261102-000002", "merged", "closed", "20261102-000002", 15)
    dup = fold_ticket([*dup_events, closed], STREETS)
    assert dup is not None
    assert (dup["status"], dup["merged_into"], dup["merged"]) == ("closed", "20261102-000001", [])
    assert (dup["closed_at"], dup["rating"], dup["department"]) == (T0 + timedelta(minutes=15), None, DEPT.id)
    listed = [
        merge_event("20261102-000001", "duplicate_merged", "accepted", no, m)
        for no, m in (("20261102-000002", 15), ("20261102-000003", 16), ("20261102-000002", 15))
    ]
    main = fold_ticket([*events, *listed], STREETS)
    assert main is not None
    assert (main["status"], main["merged_into"]) == ("accepted", None)
    assert main["merged"] == ["20261102-000002", "20261102-000003"]  # a replay lists nobody twice
    plain = fold_ticket(events, STREETS)
    assert (plain["merged_into"], plain["merged"]) == (None, [])  # type: ignore[index]


def test_a_chained_merge_moves_the_duplicates_rows_to_the_new_main_ticket():
    """并案, chained: a ticket (A) others (D) were merged into is merged into M. D's row follows A to
    M (and stays closed as it was), A's lists nobody any more, M's lists A and D."""
    m_no, a_no, d_no = "20261102-000001", "20261102-000002", "20261102-000003"

    def opened(no: str, steps: int) -> list[dict]:
        return [{**e, "ticket_no": no} for e in life()[:steps]]

    def update(no: str, action: str, status: str, merge: Merge, minutes: int) -> dict:
        return dump(
            TicketUpdated(
                ticket_no=no,
                action=action,
                status=status,
                actor="dispatch_desk",
                department=DEPT,
                note="同一路灯",
                merge=merge,
                occurred_at=T0 + timedelta(minutes=minutes),
            )
        )

    first = Merge(into=a_no, duplicate=d_no)
    chained = Merge(into=m_no, duplicate=a_no, moved=(d_no,))
    d_events = [
        *opened(d_no, 3),
        update(d_no, "merged", "closed", first, 10),
        update(d_no, "remerged", "closed", Merge(into=m_no, duplicate=d_no, via=a_no), 20),
    ]
    a_events = [
        *opened(a_no, 3),
        update(a_no, "duplicate_merged", "assigned", first, 10),
        update(a_no, "merged", "closed", chained, 20),
    ]
    m_events = [*opened(m_no, 4), update(m_no, "duplicate_merged", "accepted", chained, 20)]

    d = fold_ticket(d_events, STREETS)
    assert d is not None
    assert (d["status"], d["merged_into"], d["merged"]) == ("closed", m_no, [])
    assert d["closed_at"] == T0 + timedelta(minutes=10)  # closed when it was merged, not again
    before = fold_ticket(d_events[:-1], STREETS)
    assert before is not None
    assert before["merged_into"] == a_no  # until A was merged
    assert {k: v for k, v in d.items() if k not in ("merged_into", "events", "updated_at")} == {
        k: v for k, v in before.items() if k not in ("merged_into", "events", "updated_at")
    }
    a = fold_ticket(a_events, STREETS)
    assert a is not None
    assert (a["status"], a["merged_into"], a["merged"]) == ("closed", m_no, [])
    assert fold_ticket(a_events[:-1], STREETS)["merged"] == [d_no]  # type: ignore[index]
    main = fold_ticket(m_events, STREETS)
    assert main is not None
    assert (main["status"], main["merged_into"], main["merged"]) == ("accepted", None, [a_no, d_no])
    # Folded on from the rows as they were (the record's left fold), the same rows.
    assert fold_ticket(d_events[-1:], STREETS, start=before) == d
    assert fold_ticket(a_events[-1:], STREETS, start=fold_ticket(a_events[:-1], STREETS)) == a


def test_a_reopened_ticket_has_the_deadlines_the_router_gave_it_again():
    """重办: the department gets the category's time again; the record follows the event's answer."""
    events = [e for e in life() if e["topic"] != "survey.answered" and e.get("action") != "closed"]
    when = T0 + timedelta(days=1)
    again = Answer(
        rating=3,
        solved=False,
        reopens=1,
        respond_by=when + timedelta(hours=2),
        resolve_by=when + timedelta(days=3),
    )
    reopened = TicketUpdated(
        ticket_no=events[0]["ticket_no"],
        action="reopened",
        status="assigned",
        actor="resident",
        department=DEPT,
        note="灯还是不亮",
        answer=again,
        occurred_at=when,
    )
    row = fold_ticket([*events, dump(reopened)], STREETS)
    assert row is not None
    assert (row["status"], row["reopens"]) == ("assigned", 1)
    assert row["respond_by"] == again.respond_by
    assert row["resolve_by"] == again.resolve_by
    assert row["overdue"] is False
    # A reopening written before the answer carried the deadlines leaves the last ones known.
    older = dump(reopened)
    del older["answer"]["respond_by"], older["answer"]["resolve_by"]
    kept = fold_ticket([*events, older], STREETS)
    assert kept is not None
    assert kept["resolve_by"] == T0 + timedelta(days=3)


def verified(solved: bool, minutes: int, note: str, **kw) -> dict:
    return dump(
        TicketUpdated(
            ticket_no="20261102-000001",
            action="verified",
            status="surveyed" if solved else "assigned",  # checked while the survey was out
            actor="W017",
            department=DEPT,
            grid="g-001",
            note=note,
            photos=("d" * 32,),
            verification=Verification(solved=solved, **kw),
            occurred_at=T0 + timedelta(minutes=minutes),
        )
    )


def test_a_check_on_the_spot_is_on_the_row_until_the_next_resolution():
    """现场核查: confirmed, the row says when, by whom, what was seen; not solved, the ticket is
    back with its department (重办, the new deadlines); a new resolution is checked anew."""
    events = [e for e in life() if e["topic"] != "survey.answered" and e.get("action") != "closed"]
    row = fold_ticket([*events, verified(True, 40, "路灯已亮")], STREETS)
    assert row is not None
    assert (row["status"], row["reopens"], row["resolved_at"]) == ("surveyed", 0, T0 + timedelta(minutes=30))
    assert (row["verified_at"], row["verified_by"], row["verification"]) == (
        T0 + timedelta(minutes=40),
        "W017",
        "solved",
    )
    assert (row["verification_note"], row["verification_photos"]) == ("路灯已亮", ["d" * 32])
    when = T0 + timedelta(days=1)
    back = verified(
        False,
        24 * 60,
        "灯还是不亮",
        reopens=1,
        respond_by=when + timedelta(hours=2),
        resolve_by=when + timedelta(days=3),
    )
    row = fold_ticket([*events, back], STREETS)
    assert row is not None
    assert (row["status"], row["reopens"], row["verification"]) == ("assigned", 1, "not_solved")
    assert (row["accepted_at"], row["resolved_at"]) == (None, None)
    assert (row["respond_by"], row["resolve_by"]) == (when + timedelta(hours=2), when + timedelta(days=3))
    assert row["resolution_note"] == "已更换灯泡"  # what was found wanting, as after a reopen
    resolved_again = TicketUpdated(
        ticket_no="20261102-000001",
        action="resolved",
        status="resolved",
        actor=DEPT.id,
        department=DEPT,
        note="更换了灯杆",
        on_time=True,
        occurred_at=when + timedelta(hours=5),
    )
    row = fold_ticket([*events, back, dump(resolved_again)], STREETS)
    assert row is not None
    assert (row["status"], row["resolution_note"]) == ("resolved", "更换了灯杆")
    assert (row["verified_at"], row["verification"], row["verification_note"]) == (None, None, "")
    assert row["verification_photos"] == []
    # Folding onto a stored row gives the same as folding everything.
    everything = [*events, back, dump(resolved_again)]
    for cut in range(1, len(everything)):
        start = fold_ticket(everything[:cut], STREETS)
        assert fold_ticket(everything[cut:], STREETS, start=start) == fold_ticket(everything, STREETS)


def test_a_committee_s_mediation_outcome_is_on_the_row_until_the_next_resolution():
    """人民调解: the ticket referred to the committee (an assignment like any other), resolved with
    the outcome and the agreement's terms; a later resolution sets them anew, by anyone."""
    events = [e for e in life() if e["topic"] != "survey.answered" and e.get("action") != "closed"]
    committee = DepartmentRef(id="mediation_a", name="阳光街道人民调解委员会")
    when = T0 + timedelta(hours=2)
    referred = TicketAssigned(
        ticket_no="20261102-000001",
        department=committee,
        via="mediation",
        explanation="阳光街道办事处转阳光街道人民调解委员会调解：邻里纠纷",
        category="city.facility.streetlight",
        grid="g-001",
        respond_by=when + timedelta(hours=2),
        resolve_by=when + timedelta(days=3),
        occurred_at=when,
    )

    def resolved(minutes: int, dept: DepartmentRef, mediation: Mediation | None) -> dict:
        return dump(
            TicketUpdated(
                ticket_no="20261102-000001",
                action="resolved",
                status="resolved",
                actor=dept.id,
                department=dept,
                note="已调解",
                on_time=True,
                mediation=mediation,
                occurred_at=when + timedelta(minutes=minutes),
            )
        )

    agreed = resolved(30, committee, Mediation(outcome="agreed", agreement="赔偿800元"))
    row = fold_ticket([*events, dump(referred), agreed], STREETS)
    assert row is not None
    assert (row["department"], row["assigned_via"], row["status"]) == ("mediation_a", "mediation", "resolved")
    assert (row["mediation_outcome"], row["mediation_agreement"]) == ("agreed", "赔偿800元")
    not_agreed = resolved(60, committee, Mediation(outcome="not_agreed"))
    row = fold_ticket([*events, dump(referred), agreed, not_agreed], STREETS)
    assert row is not None
    assert (row["mediation_outcome"], row["mediation_agreement"]) == ("not_agreed", "")
    # The street office's own resolution before the referral carried none.
    assert fold_ticket(events, STREETS)["mediation_outcome"] is None  # type: ignore[index]
    everything = [*events, dump(referred), agreed]
    for cut in range(1, len(everything)):
        start = fold_ticket(everything[:cut], STREETS)
        assert fold_ticket(everything[cut:], STREETS, start=start) == fold_ticket(everything, STREETS)


def test_the_list_of_resolutions_to_check_leaves_out_those_closed_at_first_contact():
    search = build(
        {"status": "resolved,surveyed", "verified": "false"},
        tz=TZ,
        city=CITY,
        department_scope=None,
        grid_scope="g",
    )
    assert search.where == (
        "grid = %s AND status = ANY(%s) AND verified_at IS NULL "
        "AND NOT (coalesce(assigned_via, '') = ANY(%s) AND reopens = 0)"
    )
    assert search.params == ["g", ["resolved", "surveyed"], ["answered", "on_spot"]]
    assert (
        build({"verified": "true"}, tz=TZ, city=CITY, department_scope=None).where
        == "verified_at IS NOT NULL"
    )
    assert build({"verified": ""}, tz=TZ, city=CITY, department_scope=None).where == "TRUE"
    assert invalid_field({"verified": "maybe"}) == "verified"


def test_order_of_arrival_and_replays_change_nothing():
    events = life()
    expected = fold_ticket(events, STREETS)
    shuffled = events * 2  # every event twice, in any order
    random.Random(3).shuffle(shuffled)
    deduplicated = list({e["event_id"]: e for e in shuffled}.values())
    assert fold_ticket(deduplicated, STREETS) == expected


def test_without_its_appeal_a_ticket_has_no_row_yet():
    assert fold_ticket([e for e in life() if e["topic"] == "ticket.updated"], STREETS) is None


def test_a_classification_alone_starts_the_row_from_the_appeal_it_carries():
    row = fold_ticket([life()[1]], STREETS)
    assert row is not None
    assert row["text"] == "阳光花园3号楼门口的路灯坏了"
    assert row["status"] == "received"


def test_scrubbing_keeps_the_statistics_and_removes_the_person():
    scrubbed = fold_ticket([scrub_event(e) for e in life()], STREETS)
    assert scrubbed is not None
    assert scrubbed["text"] == REMOVED
    assert scrubbed["address"] == REMOVED
    assert scrubbed["masked_phone"] is None
    assert scrubbed["caller_id"] is None
    assert scrubbed["resolution_note"] == REMOVED
    assert scrubbed["explanation"] == REMOVED  # staff wording may repeat the resident's
    original = fold_ticket(life(), STREETS)
    assert original is not None
    for kept in ("category", "street", "department", "rating", "solved", "accepted_on_time", "closed_at"):
        assert scrubbed[kept] == original[kept]


def test_an_erasure_notice_is_counted_and_changes_nothing_else():
    """Recorded as it comes (scrubbed: its ticket is erased), folded live and when refolded alike."""
    events = [scrub_event(e) for e in life()]
    notice = scrub_event(
        dump(
            PersonalDataRemoved(
                ticket_no="20261102-000001", caller_id="abc", occurred_at=T0 + timedelta(hours=2)
            )
        )
    )
    assert notice["topic"] in TICKET_TOPICS  # a refold reads it back with the ticket's other events
    before, after = fold_ticket(events, STREETS), fold_ticket([*events, notice], STREETS)
    assert before is not None
    assert after is not None
    assert after["events"] == before["events"] + 1
    assert after["updated_at"] == T0 + timedelta(hours=2)
    assert {k: v for k, v in after.items() if k not in ("events", "updated_at")} == {
        k: v for k, v in before.items() if k not in ("events", "updated_at")
    }
    assert fold_ticket([notice], STREETS, start=before) == after  # the live fold: onto the row


def test_scrubbed_returns_and_extensions_fold_to_the_same_figures():
    events = [e for e in life() if e["topic"] != "survey.answered" and e.get("action") != "closed"]
    words = "已联系阳光花园3号楼的住户"
    returned = TicketUpdated(
        ticket_no=events[0]["ticket_no"],
        action="returned",
        status="assigned",
        actor=DEPT.id,
        note=words,
        returned=Returned(reason="not_ours", reason_name="非本单位职责", disputed_rule=words, returns=1),
        occurred_at=T0 + timedelta(minutes=5),
    )
    approved = TicketUpdated(
        ticket_no=events[0]["ticket_no"],
        action="extension_approved",
        status="accepted",
        actor="desk",
        note=words,
        extension=Extension(days=2, reason=words, resolve_by=T0 + timedelta(days=5)),
        occurred_at=T0 + timedelta(minutes=25),
    )
    life_with_words = [*events, dump(returned), dump(approved)]
    original = fold_ticket(life_with_words, STREETS)
    scrubbed = fold_ticket([scrub_event(e) for e in life_with_words], STREETS)
    assert original is not None
    assert scrubbed is not None
    assert "阳光花园" not in str(scrubbed)
    # Everything but the words and the contact folds as before.
    kept = [k for k, v in scrubbed.items() if v != REMOVED and k not in ("caller_id", "masked_phone")]
    assert {k: scrubbed[k] for k in kept} == {k: original[k] for k in kept}
    assert sorted(k for k in scrubbed if k not in kept) == [
        "address", "caller_id", "explanation", "masked_phone", "resolution_note", "text"
    ]  # fmt: skip
    assert (scrubbed["returns"], scrubbed["resolve_by"]) == (1, T0 + timedelta(days=5))


def test_a_meeting_folds_from_convening_to_decision():
    convened = MeetingConvened(
        ticket_no="20261102-000001",
        meeting_id="m1",
        reason="ambiguous",
        lead_street=DEPT,
        summoned=(DEPT, DepartmentRef(id="water", name="水务局")),
        tickets=("20261102-000001",),
        deadline=T0 + timedelta(days=2),
        explanation="两家同样有责",
        occurred_at=T0,
    )
    attached = MeetingUpdated(
        ticket_no="20261102-000002",
        meeting_id="m1",
        action="attached",
        actor="system",
        tickets=("20261102-000002",),
        occurred_at=T0 + timedelta(hours=1),
    )
    decided = MeetingUpdated(
        ticket_no="20261102-000001",
        meeting_id="m1",
        action="decided",
        actor=DEPT.id,
        department=DEPT,
        note="由水务局主办",
        occurred_at=T0 + timedelta(hours=2),
    )
    row = fold_meeting([dump(decided), dump(attached), dump(convened), dump(attached)])
    assert row is not None
    assert row["tickets"] == ["20261102-000001", "20261102-000002"]
    assert row["summoned"] == [DEPT.id, "water"]
    assert row["decision"] == "由水务局主办"
    assert row["decided_at"] == T0 + timedelta(hours=2)
    # Without the words said at it (they may name a resident), the meeting's course stays.
    scrubbed = fold_meeting([scrub_event(dump(e)) for e in (decided, attached, convened)])
    assert scrubbed == {**row, "explanation": REMOVED, "decision": REMOVED}


def a_meeting_and_its_facts() -> tuple[meetings.Meeting, list[dict]]:
    """A hotspot's meeting as the router makes it (the pure steps), and the facts it writes with
    each step: convened, a ticket joining with a department more, a check-in, the decision."""
    street, heating, gas = (CITY.department_by_id[d] for d in ("street_s03", "heating", "gas"))
    ref = {d.id: DepartmentRef(id=d.id, name=d.name) for d in (street, heating, gas)}
    spec = MeetingSpec(
        meeting_id="M-hot",
        reason="hotspot",
        lead_street=street.id,
        summoned=(street.id, heating.id),
        category="utility.heating",
        grid="s03c01g02",
        deadline=(T0 + timedelta(days=3)).astimezone(TZ),  # the router's deadline is local
    )
    first, joining = "20001203-900001", "20001203-900002"
    m, _ = meetings.merge(None, spec, [first], T0)
    convened = MeetingConvened(
        ticket_no=first,
        meeting_id=m.meeting_id,
        reason=m.reason,
        lead_street=ref[street.id],
        summoned=tuple(ref[d] for d in m.summoned),
        tickets=tuple(m.tickets),
        category=m.category,
        grid=m.grid,
        deadline=m.deadline,
        explanation="同一网格同类诉求集中（热点）：5件",
        occurred_at=m.convened_at,
    )
    before = m.summoned
    m, added = meetings.merge(m, spec.model_copy(update={"summoned": (gas.id,)}), [joining], T0)
    attached = MeetingUpdated(
        ticket_no=joining,
        meeting_id=m.meeting_id,
        action="attached",
        actor="system",
        tickets=tuple(added),
        summoned=tuple(ref[d] for d in m.summoned if d not in before),
        occurred_at=T0 + timedelta(minutes=5),
    )
    checked_at = T0 + timedelta(hours=1, microseconds=123)
    m = meetings.check_in(m, gas.id, checked_at)
    checked_in = MeetingUpdated(
        ticket_no=first,
        meeting_id=m.meeting_id,
        action="checked_in",
        actor=gas.id,
        department=ref[gas.id],
        occurred_at=checked_at,
    )
    decided_at = T0 + timedelta(hours=2)
    m = meetings.decide(m, heating.id, "dispatch_desk", "由热力公司主办", CITY, decided_at)
    decided = MeetingUpdated(
        ticket_no=first,
        meeting_id=m.meeting_id,
        action="decided",
        actor="dispatch_desk",
        department=ref[heating.id],
        tickets=tuple(m.tickets),
        note=m.note,
        occurred_at=decided_at,
    )
    return m, [dump(e) for e in (convened, attached, checked_in, decided)]


def recorded_from(facts: list[dict]) -> meetings.Meeting:
    """The meeting as the record holds it, folded from these facts."""
    row = fold_meeting(facts)
    assert row is not None
    return meeting_of(row, TZ)


def test_a_meetings_row_reads_back_as_the_meeting_redis_held():
    """A meeting that has left Redis is answered from its row, folded from its facts: the meeting
    as the working set held it, whom it summoned, who checked in and when, whom it named and who
    decided."""
    meeting, facts = a_meeting_and_its_facts()
    row = fold_meeting(facts)
    assert row is not None
    recorded = meeting_of(row, TZ)
    assert recorded == meeting
    assert recorded.summoned == ["street_s03", "heating", "gas"]  # the joining ticket's department too
    assert meetings.unrecorded(meeting, recorded) == []
    # As PostgreSQL gives the row back: who checked in when, from JSON.
    stored = {**row, "checkins": {d: t.isoformat() for d, t in row["checkins"].items()}}
    assert meeting_of(stored, TZ) == meeting


def test_a_meeting_read_from_its_row_gives_its_times_as_redis_gave_them():
    """PostgreSQL gives a row's times back in the session's time zone, not the offsets they were
    written with; the meeting read from it gives each time as the router wrote it, the same
    string, so that a reader sees one clock before and after the meeting left Redis: the deadline
    in the city's time (+08:00), the steps' clocks in UTC."""
    meeting, facts = a_meeting_and_its_facts()
    live = meetings.Meeting.model_validate_json(meeting.model_dump_json()).model_dump(mode="json")
    row = fold_meeting(facts)
    assert row is not None
    as_stored = {
        **{k: v.astimezone(UTC) if isinstance(v, datetime) else v for k, v in row.items()},
        "checkins": {d: t.astimezone(UTC).isoformat() for d, t in row["checkins"].items()},
    }
    archived = meeting_of(as_stored, TZ).model_dump(mode="json")
    assert archived == live
    assert archived["deadline"].endswith("+08:00")
    assert archived["convened_at"] == "2026-11-02T09:00:00Z"
    assert archived["decided_at"] == "2026-11-02T11:00:00Z"
    assert archived["checkins"] == {"gas": "2026-11-02T10:00:00.000123Z"}


def test_a_decided_meeting_leaves_redis_only_once_the_record_holds_it():
    meeting, facts = a_meeting_and_its_facts()
    assert meeting.decided_at is not None
    later = meeting.decided_at + timedelta(seconds=1)
    recorded = recorded_from(facts)
    assert meetings.may_leave_redis(meeting, recorded, later)
    assert not meetings.may_leave_redis(meeting, recorded, meeting.decided_at)  # not decided before
    assert not meetings.may_leave_redis(meeting, None, later)  # the record has none of it
    opened = meeting.model_copy(update={"status": "open", "lead": None, "decided_at": None})
    assert not meetings.may_leave_redis(opened, recorded_from(facts[:3]), later)

    def without(action: str) -> meetings.Meeting:
        return recorded_from([f for f in facts if f.get("action") != action])

    assert meetings.unrecorded(meeting, without("checked_in")) == ["checked_in"]
    assert set(meetings.unrecorded(meeting, without("decided"))) == {"status", "lead", "decided_by", "note"}
    # An attached fact of an older version names no department it brings.
    older = [{k: v for k, v in f.items() if k != "summoned"} if f.get("action") else f for f in facts]
    assert meetings.unrecorded(meeting, recorded_from(older)) == ["summoned"]
    # The clocks are the facts': off by the router's moments, still held.
    late = [{**f, "occurred_at": (at(f["occurred_at"]) + timedelta(seconds=2)).isoformat()} for f in facts]
    assert meetings.may_leave_redis(meeting, recorded_from(late), later)
    # The record scrubbed the decision's words (an erasure of a ticket of the meeting): held.
    scrubbed = recorded_from([scrub_event(f) for f in facts])
    assert scrubbed.note == REMOVED
    assert meetings.may_leave_redis(meeting, scrubbed, later)


def invalid_field(raw: dict, **kw) -> str | None:
    with pytest.raises(DomainError) as e:
        build(raw, tz=TZ, city=CITY, department_scope=None, **kw)
    assert e.value.kind == "invalid"
    return e.value.field


def test_the_desk_finds_a_callers_tickets_by_the_number_kept_as_its_hash():
    from shared.privacy import caller_id

    search = build({"phone": "＋86 138-1234-5678"}, tz=TZ, city=CITY, department_scope=None)
    assert search.where == "caller_id = %s"
    assert search.params == [caller_id("13812345678")]  # the number itself is in no query
    assert invalid_field({"phone": "12345"}) == "phone"
    for scope in ({"department_scope": "water"}, {"department_scope": None, "grid_scope": "s01c01g01"}):
        with pytest.raises(DomainError) as e:
            build({"phone": "13812345678"}, tz=TZ, city=CITY, **scope)
        assert (e.value.kind, e.value.field) == ("forbidden", "phone")


def test_bad_filters_are_refused_with_the_field_named():
    assert invalid_field({"status": "open"}) == "status"
    assert invalid_field({"from": "2026-13-01"}) == "from"
    assert invalid_field({"from": "2026-11-02", "to": "2026-11-01"}) == "to"
    assert invalid_field({}, size=501) == "size"
    assert invalid_field({}, page=0) == "page"
    assert invalid_field({"urgent": "maybe"}) == "urgent"
    assert invalid_field({"sort": "text"}) == "sort"
    assert invalid_field({"channel": "fax"}) == "channel"
    assert invalid_field({"q": "灯"}) == "q"


def test_a_row_reads_back_as_the_ticket_the_working_set_held():
    """A ticket that has left Redis is answered in the live ticket's shape (the console's page reads
    `department.name`, `grid.grid`, `caller.masked_phone`): references rebuilt from the row's ids."""
    row = fold_ticket(life(), STREETS)
    assert row is not None
    row.update(co_departments=["water", "gone_since"], lng=116.4, lat=39.9, meeting_id="m-1")
    ticket = ticket_of(row, CITY)
    assert (ticket.ticket_no, ticket.status, ticket.rating, ticket.meeting_id) == (
        "20261102-000001",
        Status.CLOSED,
        1,
        "m-1",
    )
    assert ticket.department == DEPT  # the name recorded with the assignment
    assert ticket.co_departments == (
        DepartmentRef(id="water", name=CITY.department_by_id["water"].name),
        DepartmentRef(id="gone_since", name="gone_since"),  # no longer in the city: its id
    )
    assert ticket.grid is not None
    assert (ticket.grid.grid, ticket.grid.community, ticket.grid.street) == ("g-001", "c-01", "s-01")
    assert ticket.caller == Caller(caller_id="abc", masked_phone="138****5678")
    assert ticket.location == GeoPoint(lng=116.4, lat=39.9)
    assert ticket.resolution_note == "已更换灯泡"
    unplaced = ticket_of({**row, "grid": None, "community": None, "street": None, "lng": None}, CITY)
    assert (unplaced.grid, unplaced.location) == (None, None)


def test_a_category_takes_its_branch_from_the_citys_tree_not_from_the_ids_spelling():
    search = build({"category": "city.facility"}, tz=TZ, city=CITY, department_scope=None)
    assert search.where == "category = ANY(%s)"
    assert search.params == [sorted(CITY.branch("city.facility"))]
    assert "city.facility.streetlight" in search.params[0]
    # A city whose ids are not dotted paths: the branch is still the category and those under it.
    tree = CITY.model_dump()
    tree["categories"] = [
        *tree["categories"],
        {"id": "lighting", "name": "照明", "children": [{"id": "lamp_out", "name": "路灯不亮"}]},
    ]
    undotted = City.model_validate(tree)
    search = build({"category": "lighting"}, tz=TZ, city=undotted, department_scope="water")
    assert search.where == "(department = %s OR co_departments @> ARRAY[%s]) AND category = ANY(%s)"
    assert search.params == ["water", "water", ["lamp_out", "lighting"]]
    assert build({"category": " "}, tz=TZ, city=CITY, department_scope=None).where == "TRUE"


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("city.facilit", "分类“city.facilit”不存在"),  # a prefix of an id is no category
        ("路灯故障", "编号是 city.facility.streetlight"),  # its name: told its id
    ],
)
def test_a_category_the_city_does_not_have_is_refused_saying_what_to_give(given: str, said: str):
    with pytest.raises(DomainError) as e:
        build({"category": given}, tz=TZ, city=CITY, department_scope=None)
    assert (e.value.kind, e.value.field) == ("invalid", "category")
    assert said in e.value.message


def test_a_department_sees_only_what_it_leads_or_co_handles():
    search = build({"status": "assigned,accepted"}, tz=TZ, city=CITY, department_scope="water")
    assert search.where.startswith("(department = %s OR co_departments @> ARRAY[%s])")
    assert search.params[:2] == ["water", "water"]
    assert search.params[2] == ["assigned", "accepted"]
    assert build({}, tz=TZ, city=CITY, department_scope=None).where == "TRUE"


def test_a_grid_worker_sees_only_its_grid_and_who_reads_what():
    search = build({"grid": "s02c01g01"}, tz=TZ, city=CITY, department_scope=None, grid_scope="s01c01g02")
    assert search.where.startswith("grid = %s")
    assert search.params[0] == "s01c01g02"  # its own grid, whatever grid it asks for (then: none)
    from shared.auth import Principal

    worker = Principal("grid_worker", operator="W017", grid="s01c01g02")
    assert worker.may_read([], "s01c01g02")
    assert not worker.may_read(["urban_mgmt"], "s01c01g01")
    dept = Principal("department", department="urban_mgmt")
    assert dept.may_read(["urban_mgmt"], None)
    assert not dept.may_read(["water"], "s01c01g02")
    assert Principal("admin").may_read([], None)
    assert not Principal("operator", operator="0231").may_read([None], None)
    # Summoned to a joint meeting: only a department, and only one of those called.
    assert dept.summoned(["street_s01", "urban_mgmt"])
    assert not dept.summoned(["street_s01"])
    assert not Principal("admin").summoned(["street_s01"])  # the desk reads all anyway, not as summoned
    assert not worker.summoned(["street_s01", "urban_mgmt"])


def test_dates_are_local_days_and_to_includes_its_day():
    search = build({"from": "2026-11-01", "to": "2026-11-01"}, tz=TZ, city=CITY, department_scope=None)
    start, end = search.params
    assert start == datetime(2026, 11, 1, tzinfo=TZ)
    assert end == datetime(2026, 11, 2, tzinfo=TZ)


def test_q_is_a_literal_substring():
    search = build({"q": "100%_完成"}, tz=TZ, city=CITY, department_scope=None)
    assert search.params == ["%100\\%\\_完成%"]


def test_folding_later_events_onto_a_row_equals_folding_them_all():
    events = life()
    for cut in range(1, len(events)):
        start = fold_ticket(events[:cut], STREETS)
        assert fold_ticket(events[cut:], STREETS, start=start) == fold_ticket(events, STREETS)


def test_photos_sent_after_the_appeal_join_its_own_once_each():
    events = life()[:2]
    events[0]["photos"] = ["a" * 32]
    added = AppealPhotosAdded(
        ticket_no="20261102-000001", channel="wechat", photos=("b" * 32, "a" * 32), occurred_at=T0
    )
    row = fold_ticket([*events, dump(added)], STREETS)
    assert row is not None
    assert row["photos"] == ["a" * 32, "b" * 32]
    assert fold_ticket([*events, dump(added)], STREETS) == fold_ticket([dump(added), *events], STREETS)


# --- a caller's history (来电历史) ------------------------------------------------------------------


def test_a_callers_history_says_how_the_survey_went_in_words():
    assert [survey_words("closed", r) for r in (1, 2, 3)] == ["满意", "基本满意", "不满意"]
    assert survey_words("closed", None) == "未回访"  # no answer, opted out, anonymous, merged
    assert survey_words("assigned", 3) == "不满意"  # reopened: being worked on again after 不满意
    assert survey_words("surveyed", None) is None  # the survey is still out
    assert survey_words("accepted", None) is None


def test_a_callers_history_counts_and_lists_in_the_citys_days_and_words():
    rows = [
        {
            "ticket_no": "20261102-000007",
            "received_at": datetime(2026, 11, 1, 16, 30, tzinfo=UTC),  # 00:30 on 2 November in Beijing
            "category_names": ["城市管理", "市政设施", "路灯故障"],
            "status": "closed",
            "department_name": "阳光街道办事处",
            "rating": 2,
            "short_count": 2,
            "long_count": 5,
        },
        {
            "ticket_no": "20260101-000003",
            "received_at": datetime(2026, 1, 1, 2, 0, tzinfo=UTC),
            "category_names": [],
            "status": "review",
            "department_name": None,
            "rating": None,
            "short_count": 2,
            "long_count": 5,
        },
    ]
    view = history_of(rows).view(ZoneInfo("Asia/Shanghai"))
    assert (view["last_30_days"], view["last_365_days"]) == (2, 5)
    first, second = view["tickets"]
    assert first == {
        "ticket_no": "20261102-000007",
        "received_on": "2026-11-02",
        "category_names": ["城市管理", "市政设施", "路灯故障"],
        "status": "closed",
        "status_name": "已关闭",
        "department": "阳光街道办事处",
        "survey": "基本满意",
    }
    assert (second["status_name"], second["department"], second["survey"]) == ("待人工派单", None, None)
    # 并案: closed into another ticket, which is where the matter is handled and surveyed.
    merged = history_of([{**rows[0], "rating": None, "merged_into": "20261102-000001"}]).view(ZoneInfo("UTC"))
    (told,) = merged["tickets"]
    assert (told["status_name"], told["department"], told["survey"]) == (
        "已并入工单20261102-000001",
        None,
        None,
    )
    # Nothing of the person or the matter: the fields above are all there is.
    assert history_of([]).view(ZoneInfo("Asia/Shanghai")) == {
        "last_30_days": 0,
        "last_365_days": 0,
        "tickets": [],
    }


async def test_the_preview_goes_without_the_history_while_the_record_is_away(caplog):
    """A refused connection, or a server that hangs: None within the time allowed, one warning, and
    the record left alone for a while (no preview waits on it again meanwhile)."""
    tz = ZoneInfo("Asia/Shanghai")
    asked: list[str] = []

    async def refused():
        asked.append("refused")
        raise psycopg.OperationalError("connection refused")

    histories = CallerHistories(refused, tz, seconds=0.2, away_seconds=60)
    with caplog.at_level(logging.WARNING, logger="records.callers"):
        assert await histories.view("c1") is None
        assert await histories.view("c1") is None
    assert asked == ["refused"]  # the second preview did not try
    assert len([r for r in caplog.records if "did not answer" in r.getMessage()]) == 1

    async def hangs():
        await asyncio.sleep(3600)

    histories = CallerHistories(hangs, tz, seconds=0.2, away_seconds=60)
    started = time.monotonic()
    assert await histories.view("c1") is None
    assert await histories.view("c1") is None
    assert time.monotonic() - started < 1.0

    async def broken():
        raise KeyError("a bug, not the record away")

    with pytest.raises(KeyError):  # a fault of ours is not hidden as "no history"
        await CallerHistories(broken, tz).view("c1")


def test_the_list_filters_by_response_and_answer_as_the_rates_count_them():
    """签收 and 回访答复, for the dashboard's 响应率 and 回访答复 to open the tickets they count: the
    list takes the very SQL the rates count by (one definition), a ticket with any response of the
    kind, any answer counted (void ones not)."""
    from services.records import query
    from services.records.rates import COUNTERS
    from tests.cities import demo_city

    tz, city = ZoneInfo("Asia/Shanghai"), demo_city()
    on_time = build({"response": "on_time"}, tz=tz, city=city, department_scope=None).where
    late = build({"response": "late"}, tz=tz, city=city, department_scope=None).where
    assert on_time.startswith("EXISTS (SELECT 1 FROM ticket_events e WHERE e.ticket_no = tickets.ticket_no")
    assert f"({query.RESPONSE_ON_TIME})" in on_time
    assert f"({query.RESPONSE_LATE})" in late
    # The rate's 应响应 is exactly the two, and its numerator the first.
    assert COUNTERS["due"] == f"({query.RESPONSE_ON_TIME}) OR ({query.RESPONSE_LATE})"
    assert COUNTERS["due_on_time"] == COUNTERS["responded_on_time"] == query.RESPONSE_ON_TIME
    answered = build({"answered": "true"}, tz=tz, city=city, department_scope=None)
    assert query.RATED_ANSWER in answered.where
    assert f"NOT {query.VOID_ANSWER}" in answered.where
    assert answered.params == []
    unanswered = build({"answered": "false"}, tz=tz, city=city, department_scope=None).where
    assert unanswered == f"NOT {answered.where}"
    for name, value in (("response", "yes"), ("answered", "maybe")):
        with pytest.raises(DomainError) as refused:
            build({name: value}, tz=tz, city=city, department_scope=None)
        assert refused.value.field == name
    with pytest.raises(DomainError) as refused:
        build({"response": "soon"}, tz=tz, city=city, department_scope=None)
    assert "on_time（按时签收）、late（超时签收或逾期未签收）" in refused.value.message


def test_the_list_sorts_by_the_deadline_that_runs_now():
    """`due`: the dashboard's longest overdue first, by the deadline the console counts down to
    (present.due_of): to accept, to resolve, the meeting's; none (at the desk, resolved) last."""
    from services.records import query
    from tests.cities import demo_city

    search = build({"sort": "due"}, tz=ZoneInfo("Asia/Shanghai"), city=demo_city(), department_scope=None)
    assert search.order_by == f"{query.DUE} ASC NULLS LAST, ticket_no ASC"
    assert "WHEN 'assigned' THEN respond_by WHEN 'accepted' THEN resolve_by" in query.DUE
    assert f"WHEN 'meeting' THEN {query.MEETING_BY}" in query.DUE


def test_the_list_filters_by_any_answer_and_by_reopened_and_says_every_answer():
    """To reconcile with the rates, which count each answer on its day: the list filters by any
    counted answer of a rating (回访评价), by 重办, and says every answer (the ticket's `rating` is
    only the last), the void ones apart."""
    from services.records.query import answers_words
    from tests.cities import demo_city

    tz = ZoneInfo("Asia/Shanghai")
    search = build({"answer": "3", "reopened": "true"}, tz=tz, city=demo_city(), department_scope=None)
    assert "e.payload->>'rating' = %s" in search.where
    assert "'void'" in search.where
    assert "reopens > 0" in search.where
    assert search.params == ["3"]
    assert "reopens = 0" in build({"reopened": "false"}, tz=tz, city=demo_city(), department_scope=None).where
    with pytest.raises(DomainError) as refused:
        build({"answer": "4"}, tz=tz, city=demo_city(), department_scope=None)
    assert refused.value.field == "answer"
    assert "3（不满意）" in refused.value.message
    assert answers_words(["3", "3", "1"]) == "满意×1、不满意×2"
    assert answers_words(["3", "1v"]) == "不满意×1；作废1次（核查退回后答复，不计入三率）"
    assert answers_words(["1v"]) == "作废1次（核查退回后答复，不计入三率）"
    assert answers_words([]) == answers_words(None) == ""


# --- 我上报的: who reported a ticket, and a grid worker's list of its own reports ------------------


def patrol_life(operator: str | None = "W017") -> list[dict]:
    """A grid worker's report: its appeal (by `operator`) and the classification carrying it."""
    appeal = AppealReceived(
        ticket_no="20261102-000009",
        channel="patrol",
        text="巡查发现人行道井盖破损下陷",
        operator_id=operator,
        patrol_grid="g-001",
        received_at=T0,
        occurred_at=T0,
    )
    classified = AppealClassified(
        ticket_no=appeal.ticket_no,
        appeal=appeal,
        category="city.facility.manhole",
        category_names=("城市管理", "市政设施", "井盖"),
        confidence=0.9,
        top=(),
        grid=GridMatch(grid="g-001", method="patrol"),
        model_version="m1",
        occurred_at=T0 + timedelta(seconds=1),
    )
    return [dump(appeal), dump(classified)]


def test_the_row_knows_who_registered_the_ticket_from_its_appeal_or_the_classification_carrying_it():
    received, classified = patrol_life()
    assert (fold_ticket([received, classified], STREETS) or {})["operator_id"] == "W017"
    # The record reads each topic on its own: the classification may come first, and alone.
    assert (fold_ticket([classified], STREETS) or {})["operator_id"] == "W017"
    assert (fold_ticket(patrol_life(None), STREETS) or {})["operator_id"] is None
    # A resident's appeal names no staff: a WeChat one, say, or the hotline's without an operator.
    assert (fold_ticket(life(), STREETS) or {})["operator_id"] is None


def test_an_erasure_keeps_who_reported_the_ticket():
    """A staff id is no resident's data: the worker's list keeps the report, its words removed."""
    scrubbed = fold_ticket([scrub_event(e) for e in patrol_life()], STREETS)
    assert scrubbed is not None
    assert (scrubbed["operator_id"], scrubbed["text"]) == ("W017", REMOVED)


def test_a_workers_reports_are_its_own_patrol_reports_by_state_newest_first():
    search = reported("W017", None)
    assert search.where == "operator_id = %s AND channel = %s"  # no grid: wherever the desk put them
    assert search.params == ["W017", "patrol"]  # an operator with the same 工号 is someone else
    assert search.order_by.startswith("received_at DESC")
    assert (search.page, search.size) == (1, 20)
    open_ = reported("W017", "open", page=2, size=10)
    assert open_.where.endswith("AND status = ANY(%s)")
    assert set(open_.params[-1]) == {"received", "review", "assigned", "accepted", "meeting"}
    assert open_.offset == 10
    done = reported("W017", "done")
    assert done.params[-1] == ["resolved", "surveyed", "closed"]
    # Every status is in exactly one of open and done.
    assert sorted([*REPORTED_STATES["open"], *REPORTED_STATES["done"]]) == sorted(s.value for s in Status)


@pytest.mark.parametrize(
    ("state", "page", "size", "field"),
    [("closed", 1, 20, "state"), ("all", 0, 20, "page"), ("all", 1, 0, "size"), ("all", 1, 101, "size")],
)
def test_a_bad_reported_list_request_is_refused_naming_the_field(state, page, size, field):
    with pytest.raises(DomainError) as refused:
        reported("W017", state, page=page, size=size)
    assert refused.value.field == field


def test_a_grid_worker_reads_its_own_report_wherever_the_desk_placed_it_and_only_its_own():
    """The row read back (a ticket that has left Redis) carries who reported it, and the router's
    rule lets that worker read it in another grid; not another worker, nor a hotline operator's
    ticket under the same 工号."""
    from services.router.views import can_read, reported_it
    from shared.auth import Principal
    from shared.tickets import Ticket

    row = fold_ticket(patrol_life(), STREETS)
    assert row is not None
    placed = ticket_of({**row, "grid": "s02c01g01"}, CITY)  # the desk placed it in another grid
    assert placed.operator_id == "W017"
    worker = Principal("grid_worker", operator="W017", grid="g-001")
    assert not can_read(worker, placed)  # not its grid's any more
    assert reported_it(worker, placed)
    assert not reported_it(Principal("grid_worker", operator="W018", grid="s02c01g01"), placed)
    assert not reported_it(Principal("operator", operator="W017"), placed)
    by_phone = Ticket.from_appeal(AppealReceived(ticket_no="20261102-000010", channel="hotline",
                                                 text="路灯不亮了好几天", operator_id="W017"))  # fmt: skip
    assert not reported_it(worker, by_phone)


def test_the_search_box_takes_several_words_and_ticket_numbers_however_typed():
    from services.records.query import keywords

    assert keywords("拖欠 工资") == ([], ["拖欠", "工资"])
    assert keywords("路灯\u3000阳光花园") == ([], ["路灯", "阳光花园"])  # a full-width space
    for typed in ("20261203-000005", "20261203000005", "２０２６１２０３－０００００５"):
        assert keywords(typed) == (["20261203-000005"], [])
    assert keywords("000005 路灯") == (["000005"], ["路灯"])  # a serial's last digits
    assert keywords("12 路灯") == ([], ["12", "路灯"])  # too short for a number: a word
    search = build({"q": "拖欠 工资 20261203000005"}, tz=TZ, city=CITY, department_scope=None)
    assert search.params == ["20261203-000005", "%拖欠%", "%工资%"]
    assert search.where.count("search ILIKE %s") == 2
    assert build({"q": "000005"}, tz=TZ, city=CITY, department_scope=None).params == ["%000005"]
    assert invalid_field({"q": "路 灯"}) == "q"
    assert invalid_field({"q": "一二 三四 五六 七八 九十 十一"}) == "q"
    # A word keeps its full-width punctuation: the text has ， not ,.
    assert keywords("路灯不亮，晚上出行不便") == ([], ["路灯不亮，晚上出行不便"])


def test_the_rows_held_back_are_kept_oldest_first_and_their_earliest_time_follows_them():
    """The held tickets are a change per batch, not a pass over all of them: oldest first, so what
    is due is a prefix, and the earliest stored event (the crash mark's `since`) is the first's,
    or lower when PostgreSQL's clock went back while something was held."""
    from services.records.service import Records, events_by_ticket

    records = Records(None, CITY, hold_seconds=60, hold_most=4)  # type: ignore[arg-type]
    t0 = datetime(2026, 12, 4, 8, tzinfo=UTC)

    def received(no: str, i: int) -> dict:
        return {"topic": "appeal.received", "event_id": f"e{no}{i}", "ticket_no": no}

    def batch(nos: list[str], stored_at: datetime, i: int = 0) -> None:
        events = [received(no, i) for no in nos]
        due = records._due(False, len(events))
        held = records._held_after(events_by_ticket(events), {e["event_id"]: stored_at for e in events}, due)
        since = records._since_after(held)
        records._apply_holding(held)
        assert since == min((h.since for h in records._held.values()), default=None)

    batch(["A", "B"], t0)
    batch(["C"], t0 + timedelta(seconds=1))
    batch(["A"], t0 + timedelta(seconds=2), i=1)  # more for A: it keeps its place and its time
    assert list(records._held) == ["A", "B", "C"]
    assert records._held_events == 4
    assert records._held["A"].since == t0
    # One more event is over the most: the oldest ticket (A, with its two events) is due.
    batch(["D"], t0 + timedelta(seconds=3))
    assert list(records._held) == ["B", "C", "D"]
    assert records._held_events == 3
    # The clock went back: the new ticket is the earliest though it is last.
    batch(["E"], t0 - timedelta(hours=1))
    assert list(records._held) == ["B", "C", "D", "E"]  # four events: the most, not over it
    assert records._since_after(records._held_after({}, {}, set())) == t0 - timedelta(hours=1)
    # Everything due (the worker stopping): nothing held, no time, and the floor forgotten.
    held = records._held_after({}, {}, records._due(True, 0))
    assert len(held.fold) == 4
    assert records._since_after(held) is None
    records._apply_holding(held)
    assert (records._held, records._held_events, records._since_floor) == ({}, 0, None)


def test_a_tickets_row_waits_for_the_classification_its_assignment_answers():
    from services.records.service import still_waits

    received = {"topic": "appeal.received", "event_id": "r"}
    classified = {"topic": "appeal.classified", "event_id": "c"}
    assigned = {"topic": "ticket.assigned", "event_id": "a", "caused_by": "c"}
    held = {"topic": "ticket.updated", "event_id": "u", "action": "escalated"}
    assert still_waits((), [received])  # waits for the router
    assert still_waits([received], [classified])
    assert not still_waits([received, classified], [assigned])  # all here: written
    assert still_waits([received], [assigned])  # its classification is on its way
    assert still_waits([received, assigned], [held])
    assert not still_waits([received, assigned], [classified])  # come: written, once
    assert not still_waits((), [assigned])  # a ticket past its intake: written at once
    assert not still_waits([received], [{**assigned, "caused_by": None}])  # answers no classification


def test_events_are_stored_as_their_messages_bytes_with_the_topic_first():
    """What `ticket_events` is given: each event read from its message as those very bytes with its
    topic put first (not its object dumped again), one read from a model as that model's JSON, and
    any other object dumped; the whole a JSON array of the objects the worker folds."""
    appeal = AppealReceived(ticket_no="T1", channel="hotline", text="路灯坏了，晚上一片漆黑", occurred_at=T0)
    # Bytes as another writer may send them (its own spacing), which the record keeps.
    message = appeal.to_bytes().replace(b'{"', b'{ "', 1)
    [read], bad = read_batch(AppealReceived, [message])
    assert bad == []
    assert isinstance(read, Payload)
    read["topic"] = "appeal.received"  # as the worker sets it
    notice = PersonalDataRemoved(ticket_no="T1", caller_id="c1")
    from_model = payload(notice.topic, notice)
    plain = {"topic": "meeting.updated", "event_id": "e1", "ticket_no": "T1", "note": "会商"}
    stored = events_json([read, from_model, plain])
    assert stored.startswith(b"[" + topic_first("appeal.received", message) + b",")
    assert orjson.loads(stored) == [dict(read), dict(from_model), plain]


def test_a_lock_table_too_small_for_a_floods_batch_is_named_with_the_setting_to_raise():
    """The records worker locks each ticket a batch touches; a server whose lock table cannot hold
    a flood's batch is told at start which setting to raise, and to what."""
    from services.records.app import RECORDS_BATCH, lock_table_advice
    from shared.embedded import POSTGRES_MAX_LOCKS_PER_TRANSACTION

    most = RECORDS_BATCH + 20_000  # a batch and the most events held back (`Records.hold_most`)
    advice = lock_table_advice(64, 200, most)  # PostgreSQL's default, 200 connections
    assert advice is not None
    assert "max_locks_per_transaction to at least 200 (it is 64)" in advice
    assert lock_table_advice(200, 200, most) is None
    # What the embedded server and deploy/ set holds it.
    each = POSTGRES_MAX_LOCKS_PER_TRANSACTION
    assert lock_table_advice(each, 200, most) is None
