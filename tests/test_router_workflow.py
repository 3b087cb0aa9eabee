"""The department workflow as a state machine: the table itself, every transition directly, then
random sequences of actions (hypothesis) that must never reach an illegal state. Pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from services.console import present
from services.router import meetings, timers, workflow
from services.router.rules import answered_on_call, handled_on_spot
from services.router.sla import add_working_days, deadlines
from services.router.workflow import ALLOWED_STATUS_CHANGES, REQUIRED, Step, WorkflowError
from shared import tickets as st
from shared.city import City
from shared.decisions import Outcome
from shared.events import (
    AppealReceived,
    Caller,
    Mediation,
    Merge,
    SurveyAnswered,
    SurveySent,
    TicketAssigned,
    TicketUpdated,
)
from shared.tickets import STATUS_NAMES, Status, Ticket
from tests.cities import demo_city
from tests.router_factory import T0, TZ, assign, assigned_ticket, classified, garbage_hotspot

CITY = demo_city()


def survey(ticket, rating, n=0, text="还是没修好"):
    sent = SurveySent(
        ticket_no=ticket.ticket_no,
        survey_id=f"s{n}",
        masked_phone="138****0000",
        message_id="m",
        text="请回复",
    )
    t = workflow.survey_sent(ticket, sent).ticket
    ans = SurveyAnswered(
        ticket_no=ticket.ticket_no,
        survey_id=f"s{n}",
        rating=rating,
        text=text,
        occurred_at=T0 + timedelta(days=3 + n),
    )
    return workflow.record_rating(t, ans, city=CITY, tz=TZ)


# --- the table -----------------------------------------------------------------------------------


def test_the_table_names_every_status_and_every_one_is_reachable():
    named = {s for m in ALLOWED_STATUS_CHANGES.values() for s in (*m.sources, *(m.targets or ()))}
    assert named == set(Status)
    assert set(STATUS_NAMES) == set(Status)
    reached, frontier = {workflow.INITIAL}, [workflow.INITIAL]
    while frontier:
        status = frontier.pop()
        for move in ALLOWED_STATUS_CHANGES.values():
            if status not in move.sources:
                continue
            for nxt in move.targets or {status}:
                if nxt not in reached:
                    reached.add(nxt)
                    frontier.append(nxt)
    assert reached == set(Status)


def test_closed_is_final():
    # But for a merged duplicate's pointer, which follows its main ticket into another (并案): its
    # status stays closed.
    assert [step for step, m in ALLOWED_STATUS_CHANGES.items() if Status.CLOSED in m.sources] == ["remerge"]
    assert ALLOWED_STATUS_CHANGES["remerge"].sources == {Status.CLOSED}
    assert ALLOWED_STATUS_CHANGES["remerge"].targets is None


def _in(status: Status, **changes) -> Ticket:
    return assigned_ticket(CITY).model_copy(update={"status": status, **changes})


@pytest.mark.parametrize("step", list(ALLOWED_STATUS_CHANGES))
def test_the_table_refuses_every_other_move_in_chinese(step: Step):
    move = ALLOWED_STATUS_CHANGES[step]
    refused = [s for s in Status if s not in move.sources]
    assert refused  # no step may start anywhere
    for status in refused:
        assert not workflow.allowed(status, step)
        with pytest.raises(WorkflowError) as e:
            workflow.check(_in(status), step)
        assert e.value.code == "illegal_transition"
        assert e.value.kind == "conflict"
        assert f"“{STATUS_NAMES[status]}”" in e.value.message
        assert f"不能{move.name}" in e.value.message
    for status in move.sources:
        workflow.check(_in(status), step)  # raises if the table refused it


@pytest.mark.parametrize("step", list(ALLOWED_STATUS_CHANGES))
def test_a_step_cannot_end_in_a_status_the_table_does_not_name(step: Step):
    move = ALLOWED_STATUS_CHANGES[step]
    start = sorted(move.sources)[0]
    wrong = [s for s in Status if s not in (move.targets or {start})]
    for to in wrong:
        with pytest.raises(WorkflowError, match=re.escape(STATUS_NAMES[to])):
            workflow.check(_in(start), step, to)


MAIN = "20261123-000099"  # the main ticket (主件) of the merges below
CARRIER = "20261123-000098"  # a main ticket merged into MAIN, with its duplicates
SAME = "  同一盏路灯， 邻居重复反映 "


# Every department and desk action, as the API calls it: each must go through the table.
ACTS: dict[Step, Callable[[Ticket], Outcome]] = {
    "accept": lambda t: workflow.accept(t, "urban_mgmt", CITY, T0),
    "resolve": lambda t: workflow.resolve(t, "urban_mgmt", "已修复", CITY, T0),
    "return": lambda t: workflow.return_ticket(t, "urban_mgmt", "duplicate", "", "", CITY, TZ, T0),
    "request_extension": lambda t: workflow.request_extension(t, "urban_mgmt", 3, "等材料", CITY, T0),
    "decide_extension": lambda t: workflow.decide_extension(t, True, "dispatch_desk", "", CITY, TZ, T0),
    "dispatch": lambda t: workflow.dispatch(t, "water", None, "", "dispatch_desk", CITY, TZ, T0),
    "redispatch": lambda t: workflow.redispatch(t, "water", "属地有误，应由水务局处理", CITY, TZ, T0),
    "mediate": lambda t: workflow.refer_to_mediation(
        t, "urban_mgmt", "邻里之间因漏水赔偿产生纠纷", CITY, TZ, T0
    ),
    "urge": lambda t: workflow.urge(t, "0231", "还是没人来修", T0),
    "place": lambda t: workflow.place(t, "s02c01g02", "dispatch_desk", CITY, T0),
    "verify": lambda t: workflow.verify(t, "W017", "s01c01g01", False, "路灯仍不亮", CITY, TZ, T0),
    "request_place": lambda t: workflow.request_place(
        t, "W017", "s01c01g01", "s02c01g02", "路灯实际在对面小区门口", CITY, T0
    ),
    "decide_place": lambda t: workflow.decide_place(t, True, "dispatch_desk", "", CITY, T0),
    # 并案: the ticket as the duplicate, then as the main ticket (each side refused by its own row).
    "merge": lambda t: workflow.merge(t, _in(st.ACCEPTED, ticket_no=MAIN), MAIN, SAME, "dispatch_desk", T0)[
        0
    ],
    "receive_duplicate": lambda t: workflow.merge(
        _in(st.REVIEW, ticket_no=MAIN), t, t.ticket_no, SAME, "dispatch_desk", T0
    )[1],
    # And as a duplicate merged before into a ticket that is merged now, which it follows.
    "remerge": lambda t: workflow.merge(
        _in(st.REVIEW, ticket_no=CARRIER, merged=(t.ticket_no,)),
        _in(st.ACCEPTED, ticket_no=MAIN),
        MAIN,
        SAME,
        "dispatch_desk",
        T0,
        carried={t.ticket_no: t.model_copy(update={"merged_into": CARRIER})},
    )[2],
}


@pytest.mark.parametrize("step", list(ACTS))
def test_every_action_is_refused_where_the_table_refuses_it(step: Step):
    pending = {"days": 3, "reason": "等材料", "by": "urban_mgmt", "at": T0.isoformat()}
    for status in Status:
        if workflow.allowed(status, step):
            continue
        with pytest.raises(WorkflowError) as e:
            ACTS[step](_in(status, extension_request=pending))
        assert e.value.code == "illegal_transition"
        assert re.search("[\u4e00-\u9fff]", e.value.message)


def test_deadline_clocks_run_only_where_the_table_lets_a_timer_supervise():
    for running in timers.RUNNING.values():
        assert running <= ALLOWED_STATUS_CHANGES["supervise"].sources


def resolved(ticket, dept="urban_mgmt", at=T0 + timedelta(hours=1)):
    t = workflow.accept(ticket, dept, CITY, at).ticket
    return workflow.resolve(t, dept, "已修复", CITY, at).ticket


# --- a repeat call (重复来电 → 催办) ----------------------------------------------------------------


def test_an_urge_is_allowed_on_every_open_ticket_and_on_nothing_else():
    assert ALLOWED_STATUS_CHANGES["urge"].sources == st.OPEN_STATUSES
    assert ALLOWED_STATUS_CHANGES["urge"].targets is None  # the status stays


@pytest.mark.parametrize("status", sorted(st.OPEN_STATUSES))
def test_an_urge_counts_records_the_call_and_changes_nothing_else(status: Status):
    t = _in(status, meeting_id="m1" if status == Status.MEETING else None)
    later = T0 + timedelta(days=2)
    first = workflow.urge(t, "0231", "  上周打过电话，到现在还没人来修  ", later)
    assert first is not None
    (event,) = first.publish
    assert (event.action, event.status, event.actor) == ("urged", status, "0231")
    assert event.note == "上周打过电话，到现在还没人来修"
    assert event.urge is not None
    assert event.urge.urges == 1
    assert event.department == t.department  # the department sees it among its own events
    assert first.ticket.urges == 1
    # Nothing else moves: status, owner, deadlines, flags.
    same = {"urges", "applied", "updated_at"}
    assert first.ticket.model_dump(exclude=same) == t.model_dump(exclude=same)
    second = workflow.urge(first.ticket, "0232", "", later)
    assert second is not None
    assert second.ticket.urges == 2
    assert second.publish[0].urge.urges == 2  # type: ignore[union-attr]
    assert second.ticket.status == status


def test_the_same_urge_twice_is_recorded_once():
    t = assigned_ticket(CITY)
    key = workflow.urge_id(t.ticket_no, "operator:0231", "console:abc")
    assert key == workflow.urge_id(t.ticket_no, "operator:0231", "console:abc")
    assert key != workflow.urge_id(t.ticket_no, "operator:0232", "console:abc")  # keys are the caller's
    once = workflow.urge(t, "0231", "还是没人来修", T0, event_id=key)
    assert once is not None
    assert once.publish[0].event_id == key
    assert workflow.urge(once.ticket, "0231", "还是没人来修", T0, event_id=key) is None
    other = workflow.urge(
        once.ticket, "0231", "还是没人来修", T0, event_id=workflow.urge_id(t.ticket_no, "x", "y")
    )
    assert other is not None
    assert other.ticket.urges == 2


@pytest.mark.parametrize("status", [Status.RESOLVED, Status.SURVEYED, Status.CLOSED])
def test_a_finished_ticket_is_not_urged_and_the_operator_is_told_what_to_do(status: Status):
    t = _in(status, resolution_note="已修复")
    with pytest.raises(WorkflowError) as e:
        workflow.urge(t, "0231", "又坏了", T0)
    assert e.value.kind == "conflict"  # 409
    assert f"当前状态为“{STATUS_NAMES[status]}”，不能催办" in e.value.message
    assert "登记新的诉求" in e.value.message


# --- the grid worker's check on the spot (现场核查) -------------------------------------------------

GRID = "s01c01g01"  # assigned_ticket's grid


def test_a_check_on_the_spot_starts_from_a_resolution_and_may_send_the_ticket_back():
    move = ALLOWED_STATUS_CHANGES["verify"]
    assert move.sources == {st.RESOLVED, st.SURVEYED}
    assert move.targets == {st.RESOLVED, st.SURVEYED, st.ASSIGNED}


@pytest.mark.parametrize("surveyed", [False, True])
def test_a_grid_worker_confirms_a_resolution_once(surveyed: bool):
    t = resolved(assigned_ticket(CITY))
    if surveyed:
        t = workflow.survey_sent(t, sent(t)).ticket
    status, photo = t.status, "c" * 32
    later = T0 + timedelta(days=1)
    out = workflow.verify(t, "W017", GRID, True, "  路灯已亮，灯罩已更换 ", CITY, TZ, later, photos=(photo,))
    n, [event] = out.ticket, out.publish
    assert (n.status, n.department, n.reopens, n.resolve_by) == (status, t.department, 0, t.resolve_by)
    assert (n.verified_at, n.verified_by, n.verification) == (later, "W017", "solved")
    assert (n.verification_note, n.verification_photos) == ("路灯已亮，灯罩已更换", (photo,))
    assert (event.action, event.status, event.actor, event.department.id) == (
        "verified",
        status,
        "W017",
        "urban_mgmt",
    )
    assert event.verification is not None
    assert event.verification.solved
    assert (event.note, event.photos, event.grid) == ("路灯已亮，灯罩已更换", (photo,), GRID)
    assert present.describe({**event.model_dump(mode="json"), "topic": event.topic}, CITY) == (
        "网格员W017现场核查：已解决（路灯已亮，灯罩已更换，附照片1张）"
    )
    # Once per resolution: the second check is refused and says who checked it, and when.
    with pytest.raises(WorkflowError) as e:
        workflow.verify(n, "W018", GRID, True, "", CITY, TZ, later)
    assert (e.value.code, e.value.kind) == ("already_verified", "conflict")
    assert "网格员W017" in e.value.message
    assert "11月24日10:00" in e.value.message
    with pytest.raises(WorkflowError, match="无需重复核查"):
        workflow.verify(n, "W017", GRID, False, "又坏了", CITY, TZ, later)
    # The resident still has the last word: unsatisfied reopens it; the next resolution is checked anew.
    reopened = workflow.record_rating(
        n, answer(n, n.resolution_id, 3, text="灯还是一闪一闪"), city=CITY, tz=TZ
    ).ticket
    assert (reopened.status, reopened.verification) == (st.ASSIGNED, "solved")  # shown until resolved again
    again = resolved(reopened)
    assert (again.verified_at, again.verification, again.verification_photos) == (None, None, ())
    assert workflow.verify(again, "W017", GRID, True, "", CITY, TZ, later).ticket.verification == "solved"


def test_not_solved_goes_back_to_the_department_that_resolved_it_with_the_worker_s_note():
    t = resolved(assigned_ticket(CITY))
    later = T0 + timedelta(days=2)
    fresh = deadlines(CITY, t.category, t.urgent, later, TZ, department="urban_mgmt")
    out = workflow.verify(t, "W017", GRID, False, "灯还是不亮，灯杆有漏电", CITY, TZ, later)
    n, [event] = out.ticket, out.publish
    assert (n.status, n.department.id, n.reopens) == (st.ASSIGNED, "urban_mgmt", 1)
    assert (n.assigned_at, n.respond_by, n.resolve_by) == (later, fresh.respond_by, fresh.resolve_by)
    assert (n.accepted_at, n.resolved_at, n.overdue) == (None, None, False)
    assert n.resolution_note == "已修复"  # what was found wanting stays in view, as after a reopen
    assert (n.verification, n.verification_note, n.verified_by) == (
        "not_solved",
        "灯还是不亮，灯杆有漏电",
        "W017",
    )
    assert n.void_surveys == (t.resolution_id,)
    assert (event.action, event.status, event.note) == ("verified", st.ASSIGNED, "灯还是不亮，灯杆有漏电")
    assert event.verification is not None
    assert (event.verification.solved, event.verification.reopens) == (False, 1)
    assert (event.verification.respond_by, event.verification.resolve_by) == (
        fresh.respond_by,
        fresh.resolve_by,
    )
    assert present.describe({**event.model_dump(mode="json"), "topic": event.topic}, CITY) == (
        f"网格员W017现场核查未解决：灯还是不亮，灯杆有漏电，退回{t.department.name}重新办理"
    )
    # The department works it again as its own, and the next resolution is checked anew.
    again = resolved(n, at=later + timedelta(hours=2))
    assert (again.status, again.verification, again.void_surveys) == (st.RESOLVED, None, n.void_surveys)
    # A second time not solved: a joint meeting, as a second 不满意.
    second = workflow.verify(again, "W017", GRID, False, "仍然漏电", CITY, TZ, later + timedelta(days=1))
    assert (second.ticket.status, second.ticket.reopens) == (st.MEETING, 2)
    assert [e.action for e in second.publish] == ["verified", "escalated"]
    assert second.publish[-1].meeting.reason == "reopened_twice"
    assert "网格员W017现场核查仍未解决：仍然漏电" in second.publish[-1].note


def test_a_patrol_report_no_resident_can_rate_waits_for_the_check_and_the_check_closes_it():
    patrol = assigned_ticket(CITY).model_copy(
        update={"channel": "patrol", "caller": Caller(), "operator_id": "W017"}
    )
    t = resolved(patrol)
    skipped = answer(t, t.resolution_id, None, outcome="skipped_anonymous", text="")
    kept = workflow.record_rating(t, skipped, city=CITY, tz=TZ)
    assert kept is not None
    assert (kept.ticket.status, list(kept.publish)) == (st.RESOLVED, [])  # nobody to ask: it waits
    later = T0 + timedelta(days=1)
    out = workflow.verify(kept.ticket, "W018", GRID, True, "井盖已更换", CITY, TZ, later)
    assert (out.ticket.status, out.ticket.closed_at, out.ticket.verification) == (st.CLOSED, later, "solved")
    verified, closed = out.publish
    assert (verified.action, closed.action, closed.actor, closed.caused_by) == (
        "verified",
        "closed",
        "W018",
        verified.event_id,
    )
    assert closed.answer is not None
    assert closed.answer.outcome == "skipped_anonymous"
    # Not solved: back to the department, as for any ticket; a caller's ticket still closes on the
    # skipped survey's end, and one the worker dealt with on the spot has nothing to check.
    back = workflow.verify(kept.ticket, "W018", GRID, False, "井盖还是松动", CITY, TZ, later)
    assert back.ticket.status == st.ASSIGNED
    hotline = resolved(assigned_ticket(CITY))
    ended = workflow.record_rating(
        hotline, answer(hotline, hotline.resolution_id, None, "no_answer"), city=CITY, tz=TZ
    )
    assert ended is not None
    assert ended.ticket.status == st.CLOSED


def test_a_survey_ended_by_an_erasure_closes_the_ticket_saying_so():
    t = resolved(assigned_ticket(CITY))
    ended = workflow.record_rating(t, answer(t, t.resolution_id, None, "erased", text=""), city=CITY, tz=TZ)
    assert ended is not None
    assert ended.ticket.status == st.CLOSED
    (closed,) = ended.publish
    assert (closed.action, closed.actor, closed.answer.outcome) == ("closed", "system", "erased")
    assert closed.version == 5


def test_a_patrol_report_erased_waits_for_the_check_which_says_it_was_erased_not_anonymous():
    patrol = assigned_ticket(CITY).model_copy(
        update={"channel": "patrol", "caller": Caller(), "operator_id": "W017"}
        | {"personal_data_removed_at": T0}
    )
    t = resolved(patrol)
    kept = workflow.record_rating(t, answer(t, t.resolution_id, None, "erased", text=""), city=CITY, tz=TZ)
    assert kept is not None
    assert (kept.ticket.status, list(kept.publish)) == (st.RESOLVED, [])
    out = workflow.verify(kept.ticket, "W018", GRID, True, "井盖已更换", CITY, TZ, T0 + timedelta(days=1))
    closed = out.publish[-1]
    assert (closed.action, closed.answer.outcome) == ("closed", "erased")


def test_survey_events_written_before_the_erased_outcome_still_parse():
    """`survey.answered` version 1 and `ticket.updated` version 4 knew no "erased": they parse as
    they were written, and the new ones say their version."""
    old = {"event_id": "e1", "version": 1, "ticket_no": "20260301-000001", "survey_id": "s",
           "rating": None, "text": "", "outcome": "opted_out"}  # fmt: skip
    parsed = SurveyAnswered.model_validate(old)
    assert (parsed.version, parsed.outcome) == (1, "opted_out")
    assert SurveyAnswered(ticket_no="T", survey_id="s", rating=None, text="", outcome="erased").version == 2
    t = resolved(assigned_ticket(CITY))
    no_answer = answer(t, t.resolution_id, None, "no_answer", text="")
    ended = workflow.record_rating(t, no_answer, city=CITY, tz=TZ)
    assert ended is not None
    written = {**ended.publish[0].model_dump(mode="json"), "version": 4}
    assert TicketUpdated.model_validate(written).answer.outcome == "no_answer"


def test_a_check_is_refused_in_words_where_it_cannot_be_made():
    t = resolved(assigned_ticket(CITY))
    # Another grid's ticket: as if there were none (the API answers 404, as reading it does).
    for grid in ("s01c01g02", None):
        with pytest.raises(WorkflowError) as e:
            workflow.verify(t, "W020", grid, True, "", CITY, TZ, T0)
        assert (e.value.code, e.value.kind) == ("not_found", "not_found")
    for note in ("", "   "):
        with pytest.raises(WorkflowError) as e:
            workflow.verify(t, "W017", GRID, False, note, CITY, TZ, T0)
        assert (e.value.kind, e.value.field) == ("invalid", "note")
        assert "现场看到的情况" in e.value.message
    for status in (st.ASSIGNED, st.ACCEPTED, st.CLOSED, st.MEETING, st.REVIEW):
        with pytest.raises(WorkflowError) as e:
            workflow.verify(_in(status), "W017", GRID, True, "", CITY, TZ, T0)
        assert e.value.kind == "conflict"
        assert f"“{STATUS_NAMES[status]}”，不能现场核查" in e.value.message
    # What the worker dealt with there (or the hotline answered on the call): nothing to go and see.
    on_spot = t.model_copy(update={"assigned_via": "on_spot"})
    with pytest.raises(WorkflowError) as e:
        workflow.verify(on_spot, "W017", GRID, True, "", CITY, TZ, T0)
    assert (e.value.code, e.value.kind) == ("nothing_to_verify", "conflict")
    # ...unless it was reopened: the street office's second try is a department's resolution.
    assert workflow.verify(on_spot.model_copy(update={"reopens": 1}), "W017", GRID, True, "", CITY, TZ, T0)


def sent(t: Ticket, survey_id: str | None = None) -> SurveySent:
    return SurveySent(
        ticket_no=t.ticket_no,
        survey_id=survey_id or t.resolution_id or "s",
        masked_phone="138****0000",
        message_id="m",
        text="请回复",
    )


def answer(t: Ticket, survey_id: str | None, rating, outcome="answered", text="1") -> SurveyAnswered:
    return SurveyAnswered(
        ticket_no=t.ticket_no,
        survey_id=survey_id or "s",
        rating=rating,
        text=text,
        outcome=outcome,
        occurred_at=T0 + timedelta(days=3),
    )


@pytest.mark.parametrize("rating", [1, 3])
def test_the_resident_s_answer_to_a_survey_the_worker_overtook_changes_nothing(rating):
    """The survey went out after the resolution; the worker found it not solved first. The
    resident's later answer (satisfied or not) neither closes nor reopens the ticket again: it is
    kept in the history; and once the department resolved it again, neither that answer nor the
    old survey's end without one closes the new resolution, whose own survey does."""
    t = resolved(assigned_ticket(CITY))
    first = t.resolution_id
    assert first is not None
    t = workflow.survey_sent(t, sent(t)).ticket
    back = workflow.verify(t, "W017", GRID, False, "灯还是不亮", CITY, TZ, T0 + timedelta(days=1)).ticket
    late = workflow.record_rating(back, answer(back, first, rating), city=CITY, tz=TZ)
    assert late is not None
    assert list(late.publish) == []
    assert late.ticket.model_dump(exclude={"applied"}) == back.model_dump(exclude={"applied"})
    assert [e.survey_id for e in late.record] == [first]  # the words stay in the history
    # Resolved again: a late `survey.sent` of the old survey, its answer or its timeout change nothing.
    again = resolved(late.ticket, at=T0 + timedelta(days=2))
    assert again.resolution_id not in (None, first)
    assert workflow.survey_sent(again, sent(again, first)) is None
    for old in (answer(again, first, rating), answer(again, first, None, "no_answer", "")):
        kept = workflow.record_rating(again, old, city=CITY, tz=TZ)
        assert kept is not None
        assert (kept.ticket.status, list(kept.publish)) == (st.RESOLVED, [])
    # The new resolution's own survey decides.
    asked = workflow.survey_sent(again, sent(again)).ticket
    closed = workflow.record_rating(asked, answer(asked, again.resolution_id, 1), city=CITY, tz=TZ)
    assert closed is not None
    assert (closed.ticket.status, closed.publish[0].action) == (st.CLOSED, "closed")


def test_a_resident_who_answered_first_leaves_the_worker_nothing_to_check():
    t = resolved(assigned_ticket(CITY))
    reopened = survey(t, 3, 0).ticket  # 不满意: back to the department already
    with pytest.raises(WorkflowError, match="不能现场核查"):
        workflow.verify(reopened, "W017", GRID, False, "灯还是不亮", CITY, TZ, T0)
    closed = survey(t, 1, 1).ticket
    with pytest.raises(WorkflowError, match="“已关闭”，不能现场核查"):
        workflow.verify(closed, "W017", GRID, True, "", CITY, TZ, T0)


# --- assignment ----------------------------------------------------------------------------------


def test_assignment_explains_the_rule_and_sets_deadlines():
    c = classified(CITY, "city.facility.streetlight")
    out = assign(CITY, c)
    t, [e] = out.ticket, out.publish
    assert (t.status, t.department.id, t.assigned_via) == (st.ASSIGNED, "urban_mgmt", "rule")
    assert e.rule
    assert "权责清单" in e.explanation
    assert t.respond_by == T0 + timedelta(hours=24)
    assert assign(CITY, c, t) is None  # the same event twice changes nothing
    # The idempotency memory holds each event once, the appeal the ticket was made from too.
    assert t.applied == [c.appeal.event_id, c.event_id, e.event_id]


def test_a_call_answered_on_the_spot_is_resolved_by_the_desk_at_once():
    c = classified(CITY, "city.facility.streetlight", confidence=0.3)  # low confidence: no matter
    answer = "已告知来电人路灯报修可拨打96777，由路灯所在24小时内处理"
    c = c.model_copy(
        update={"appeal": c.appeal.model_copy(update={"direct_answer": answer, "operator_id": "op7"})}
    )
    routing = answered_on_call(CITY, "op7")
    due = deadlines(CITY, c.category, False, c.occurred_at, TZ, department=routing.lead)
    out = workflow.assign(None, c, routing, due, CITY, tz=TZ)
    assert out is not None
    t = out.ticket
    assert (t.status, t.department.id, t.assigned_via) == (st.RESOLVED, "dispatch_desk", "answered")
    assert t.resolution_note == answer
    assigned, accepted, resolved = out.publish
    assert (assigned.via, assigned.explanation) == ("answered", "话务员op7在来电中当场答复，直接办结")
    assert (accepted.action, accepted.on_time, accepted.caused_by) == ("accepted", True, assigned.event_id)
    assert (resolved.action, resolved.note, resolved.caused_by) == ("resolved", answer, accepted.event_id)
    # The router may see the classification twice: the same events, by id, and then nothing.
    again = workflow.assign(None, c, routing, due, CITY, tz=TZ)
    assert again is not None
    assert [e.event_id for e in again.publish] == [e.event_id for e in out.publish]
    assert workflow.assign(t, c, routing, due, CITY, tz=TZ) is None
    assert timers.timers_for(t, CITY.sla.supervision) == []  # done: no clock runs


def test_what_a_grid_worker_dealt_with_on_the_spot_is_resolved_by_its_street_office():
    c = classified(CITY, "city.facility.streetlight", confidence=0.3)
    done = "已现场联系物业更换灯泡，路灯恢复照明"
    appeal = c.appeal.model_copy(
        update={"channel": "patrol", "direct_answer": done, "operator_id": "W017", "patrol_grid": c.grid.grid}
    )
    c = c.model_copy(update={"appeal": appeal})
    routing = handled_on_spot(CITY, c.grid, "W017")
    assert (routing.lead, routing.via) == (f"street_{c.grid.street}", "on_spot")
    due = deadlines(CITY, c.category, False, c.occurred_at, TZ, department=routing.lead)
    out = workflow.assign(None, c, routing, due, CITY, tz=TZ)
    assert out is not None
    t = out.ticket
    assert (t.status, t.department.id, t.assigned_via) == (st.RESOLVED, routing.lead, "on_spot")
    assert t.resolution_note == done
    assigned, accepted, resolved = out.publish
    assert (assigned.via, assigned.explanation) == ("on_spot", "网格员W017巡查发现并现场处置，直接办结")
    assert [accepted.action, resolved.action] == ["accepted", "resolved"]
    # A grid the city cannot place: the desk takes it, and still closes it (the work was done).
    unplaced = c.grid.model_copy(update={"grid": None, "community": None, "street": None})
    assert handled_on_spot(CITY, unplaced, None).lead == CITY.responsibilities.dispatch_desk


def test_low_confidence_waits_at_the_desk_and_a_person_correction_routes_it():
    c = classified(CITY, "city.facility.streetlight", confidence=0.3)
    t = assign(CITY, c).ticket
    assert (t.status, t.department.id) == (st.REVIEW, "dispatch_desk")
    corrected = classified(CITY, "utility.water", confidence=0.3, reviewed_by="op7")
    corrected = corrected.model_copy(update={"event_id": "corrected-1"})
    t2 = assign(CITY, corrected, t).ticket
    assert (t2.status, t2.department.id, t2.category) == (st.ASSIGNED, "water", "utility.water")
    # A plain reclassification of a routed ticket keeps the person's call.
    again = classified(CITY, "city.facility.streetlight").model_copy(update={"event_id": "again"})
    assert assign(CITY, again, t2).ticket.department.id == "water"


def test_only_a_tickets_first_dispatch_says_it_is_the_first():
    """受理: the direct-answer rate counts each ticket once, at the first department it went to; the
    desk holding it is no dispatch, and every later one (a return's, 改派, a meeting's) is none."""
    c = classified(CITY, "city.facility.streetlight", confidence=0.3)
    waiting = assign(CITY, c)
    assert [e.first for e in waiting.publish] == [False]  # the desk's waiting room
    corrected = classified(CITY, "city.facility.streetlight", confidence=0.3, reviewed_by="op7")
    routed = assign(CITY, corrected.model_copy(update={"event_id": "corrected-1"}), waiting.ticket)
    assert [e.first for e in routed.publish] == [True]
    returned = workflow.return_ticket(
        routed.ticket, "urban_mgmt", "duplicate", "与上一单重复", "", CITY, TZ, T0
    )
    assert [e.first for e in returned.publish if isinstance(e, TicketAssigned)] == [False]
    again = workflow.dispatch(returned.ticket, "water", None, "请水务局处理", "dispatch_desk", CITY, TZ, T0)
    moved = workflow.redispatch(again.ticket, "urban_mgmt", "属地有误，应由城管委处理", CITY, TZ, T0)
    assert [again.publish[0].first, moved.publish[0].first] == [False, False]
    # Held for a joint meeting as it was first assigned; the meeting's decision sends it on.
    contested = assign(
        CITY, classified(CITY, "city.facility.streetlight", confidence=0.55, second=("utility.power", 0.5))
    )
    assert contested.publish[0].first is True
    held = contested.ticket
    decided = workflow.meeting_decided(held, held.meeting_id, "power", "供电局牵头", CITY, TZ, T0)
    assert decided is not None
    assert [e.first for e in decided.publish if isinstance(e, TicketAssigned)] == [False]


def test_contested_ownership_goes_to_a_joint_meeting():
    c = classified(CITY, "city.facility.streetlight", confidence=0.55, second=("utility.power", 0.5))
    out = assign(CITY, c)
    assert out.ticket.status == st.MEETING
    assert out.ticket.meeting_id
    assigned, escalated = out.publish
    spec = escalated.meeting
    assert spec.reason == "ambiguous"
    assert spec.lead_street == "street_s01"
    assert {"urban_mgmt", "power", "street_s01"} <= set(spec.summoned)
    assert assigned.department.id == "urban_mgmt"  # provisionally owned: never unowned


def test_urgent_appeals_get_the_urgent_deadline():
    t = assigned_ticket(CITY, "city.facility.streetlight", urgent=True)
    assert t.urgent
    assert t.resolve_by == T0 + timedelta(hours=2)


# --- department actions --------------------------------------------------------------------------


def test_illegal_transitions_are_refused_clearly():
    t = assigned_ticket(CITY)
    with pytest.raises(WorkflowError) as e:
        workflow.resolve(t, "urban_mgmt", "修好了", CITY, T0)
    assert e.value.code == "illegal_transition"
    assert "签收" in e.value.message
    with pytest.raises(WorkflowError) as e:
        workflow.accept(t, "water", CITY, T0)  # another department's ticket: as if it did not exist
    assert e.value.kind == "not_found"
    assert "不存在" in e.value.message
    closed = survey(resolved(t), 1, text="满意").ticket
    assert closed.status == st.CLOSED
    for act in (
        lambda: workflow.accept(closed, "urban_mgmt", CITY, T0),
        lambda: workflow.return_ticket(closed, "urban_mgmt", "not_ours", "", "x", CITY, TZ, T0),
        lambda: workflow.request_extension(closed, "urban_mgmt", 3, "材料", CITY, T0),
    ):
        with pytest.raises(WorkflowError) as e:
            act()
        assert e.value.kind == "conflict"
        assert "已关闭" in e.value.message


# --- 批量签收: a department signs for many new tickets at once ---------------------------------------


def test_a_batch_to_accept_is_refused_in_words_when_empty_too_long_or_naming_a_ticket_twice():
    assert workflow.batch_to_accept([" 20241105-000001", "20241105-000002 "]) == [
        "20241105-000001",
        "20241105-000002",
    ]
    most = [f"20241105-{n:06d}" for n in range(workflow.BATCH_ACCEPT_MAX)]
    assert workflow.batch_to_accept(most) == most
    refusals = {
        "nothing_to_accept": ([], "请至少选择一件要签收的工单"),
        "too_many_to_accept": (
            [*most, "20241105-999999"],
            "一次最多批量签收50件工单（本次51件），请分批签收",
        ),
        "duplicate_ticket_nos": (
            ["20241105-000001", "20241105-000002", "20241105-000001 "],
            "工单20241105-000001在签收清单中重复出现",
        ),
    }
    for code, (nos, words) in refusals.items():
        with pytest.raises(WorkflowError) as e:
            workflow.batch_to_accept(nos)
        assert (e.value.code, e.value.kind, e.value.field) == (code, "invalid", "ticket_nos")  # 422
        assert words in e.value.message
    with pytest.raises(WorkflowError) as e:
        workflow.batch_to_accept(["  "])  # a blank number is none
    assert e.value.code == "nothing_to_accept"


def test_an_acceptance_of_a_batch_is_the_single_accept_and_made_once_per_key():
    t = assigned_ticket(CITY)
    key = workflow.accept_id(t.ticket_no, "department:urban_mgmt", "batch-1")
    assert key == workflow.accept_id(t.ticket_no, "department:urban_mgmt", "batch-1")
    assert key != workflow.accept_id(t.ticket_no, "department:water", "batch-1")  # keys are the caller's
    assert key != workflow.accept_id("20241105-000002", "department:urban_mgmt", "batch-1")
    once = workflow.accept_once(t, "urban_mgmt", CITY, T0, key)
    single = workflow.accept(t, "urban_mgmt", CITY, T0)
    assert once is not None
    (event,) = once.publish
    assert event.event_id == key
    assert (event.action, event.status, event.on_time, event.actor) == (
        "accepted",
        "accepted",
        True,
        "urban_mgmt",
    )
    assert once.ticket.model_dump(exclude={"applied"}) == single.ticket.model_dump(exclude={"applied"})
    assert workflow.accept_once(once.ticket, "urban_mgmt", CITY, T0, key) is None  # the retry
    # Another key on the ticket accepted: refused by the table, as the single accept is.
    with pytest.raises(WorkflowError) as e:
        workflow.accept_once(once.ticket, "urban_mgmt", CITY, T0, workflow.accept_id(t.ticket_no, "x", "y"))
    assert f"工单{t.ticket_no}已签收（本单位已有人先签收），无需再签收" in e.value.message
    with pytest.raises(WorkflowError) as e:
        workflow.accept_once(t, "water", CITY, T0, key)  # another department's: as if none
    assert e.value.kind == "not_found"
    late = workflow.accept_once(t, "urban_mgmt", CITY, t.respond_by + timedelta(seconds=1), key)
    assert late is not None
    assert late.publish[0].on_time is False  # type: ignore[union-attr]


def test_return_needs_a_listed_reason_and_a_disputed_rule_when_the_list_names_us():
    t = assigned_ticket(CITY, "city.appearance.garbage", "s03c02g03")
    assert t.department.id == "street_s03"
    with pytest.raises(WorkflowError) as e:
        workflow.return_ticket(t, "street_s03", "too_busy", "", "", CITY, TZ, T0)
    assert e.value.kind == "invalid"
    assert "not_ours" in e.value.message
    # None chosen: asked for in words, as the form asks for it (REQUIRED), not with the codes.
    for none in ("", "  "):
        with pytest.raises(WorkflowError) as e:
            workflow.return_ticket(t, "street_s03", none, "", "", CITY, TZ, T0)
        assert (e.value.code, e.value.kind, e.value.field) == ("reason_required", "invalid", "reason")
        assert e.value.message == REQUIRED["return.reason"] == "请选择退单理由"
    with pytest.raises(WorkflowError) as e:
        workflow.return_ticket(t, "street_s03", "not_ours", "不归我们", "", CITY, TZ, T0)
    assert e.value.code == "rule_not_disputed"
    assert "垃圾清运" in e.value.message
    # The rule to dispute is limited to one grid: named as the department knows it, not by its code.
    assert "（限南苑社区第三网格）" in e.value.message
    assert "s03c02g03" not in e.value.message
    out = workflow.return_ticket(
        t,
        "street_s03",
        "not_ours",
        "批发市场内由市场方清运",
        "网格规则已过时",
        CITY,
        TZ,
        T0 + timedelta(hours=1),
    )
    returned, reassigned = out.publish
    assert returned.action == "returned"
    assert returned.returned.reason == "not_ours"
    assert (out.ticket.department.id, out.ticket.assigned_via, out.ticket.returns) == (
        "urban_mgmt",
        "reroute",
        1,
    )
    assert "退单" in reassigned.explanation
    assert out.ticket.respond_by == T0 + timedelta(hours=25)


def test_duplicate_goes_to_the_desk_and_a_second_return_to_a_meeting():
    t = assigned_ticket(CITY, "city.appearance.garbage", "s03c02g03")
    once = workflow.return_ticket(t, "street_s03", "duplicate", "与上一单重复", "", CITY, TZ, T0).ticket
    assert (once.status, once.department.id) == (st.REVIEW, "dispatch_desk")
    again = workflow.dispatch(once, "urban_mgmt", None, "请城管委处理", "dispatch_desk", CITY, TZ, T0).ticket
    twice = workflow.return_ticket(again, "urban_mgmt", "not_ours", "", "不同意", CITY, TZ, T0)
    assert twice.ticket.status == st.MEETING
    assert twice.ticket.returns == 2
    spec = twice.publish[-1].meeting
    assert spec.reason == "returned_twice"
    assert {"street_s03", "urban_mgmt"} <= set(spec.summoned)


def test_a_misclassified_ticket_goes_back_to_the_desk_with_what_it_really_is():
    # The list names the street office for garbage here: a wrong category is no dispute of its rule.
    t = assigned_ticket(CITY, "city.appearance.garbage", "s03c02g03")
    assert t.department.id == "street_s03"
    with pytest.raises(WorkflowError) as e:
        workflow.return_ticket(t, "street_s03", "wrong_category", " ", "", CITY, TZ, T0)
    assert (e.value.kind, e.value.field) == ("invalid", "note")
    assert "实际反映" in e.value.message
    out = workflow.return_ticket(t, "street_s03", "wrong_category", "实为自来水管漏水", "", CITY, TZ, T0)
    returned, assigned = out.publish
    assert (returned.returned.reason, returned.returned.reason_name) == ("wrong_category", "诉求分类有误")
    desk = (st.REVIEW, "dispatch_desk", 1)
    assert (out.ticket.status, out.ticket.department.id, out.ticket.returns) == desk
    assert "实为自来水管漏水" in assigned.explanation
    assert assigned.explanation.endswith("请派单中心重新分类后派单")
    # Other reasons that leave the list aside say only where the ticket went.
    dup = workflow.return_ticket(t, "street_s03", "duplicate", "", "", CITY, TZ, T0).publish[1]
    assert dup.explanation.endswith("转派单中心处理")


def test_return_only_within_the_acceptance_window_and_before_accepting():
    t = assigned_ticket(CITY)
    with pytest.raises(WorkflowError, match="签收时限"):
        workflow.return_ticket(
            t, "urban_mgmt", "duplicate", "", "", CITY, TZ, t.respond_by + timedelta(seconds=1)
        )
    accepted = workflow.accept(t, "urban_mgmt", CITY, T0).ticket
    with pytest.raises(WorkflowError, match="签收后不能退单"):
        workflow.return_ticket(accepted, "urban_mgmt", "duplicate", "", "", CITY, TZ, T0)


def test_extensions_move_the_deadline_only_when_approved():
    t = workflow.accept(assigned_ticket(CITY), "urban_mgmt", CITY, T0).ticket
    asked = workflow.request_extension(t, "urban_mgmt", 3, "需要采购灯杆", CITY, T0).ticket
    assert asked.resolve_by == t.resolve_by
    assert asked.extension_request["days"] == 3
    with pytest.raises(WorkflowError, match="待派单中心审核"):
        workflow.request_extension(asked, "urban_mgmt", 2, "再延", CITY, T0)
    refused = workflow.decide_extension(
        asked, False, "dispatch_desk", "理由不足，请先联系供货商", CITY, TZ, T0
    )
    assert refused.ticket.resolve_by == t.resolve_by
    assert refused.publish[0].action == "extension_refused"
    approved = workflow.decide_extension(asked, True, "dispatch_desk", "", CITY, TZ, T0).ticket
    # 2026-12-02 (Wed) + 3 working days = 2026-12-07 (Mon)
    assert approved.resolve_by.astimezone(TZ).date().isoformat() == "2026-12-07"
    with pytest.raises(WorkflowError, match="没有待审核"):
        workflow.decide_extension(approved, True, "dispatch_desk", "", CITY, TZ, T0)


@pytest.mark.parametrize("note", ["", "   ", "不行", " 不 行 "])
def test_the_desk_refuses_an_extension_only_with_a_reason_the_department_can_act_on(note):
    """驳回 says why (the department reads it, and what to do instead); 批准 needs no note."""
    t = workflow.accept(assigned_ticket(CITY), "urban_mgmt", CITY, T0).ticket
    asked = workflow.request_extension(t, "urban_mgmt", 3, "需要采购灯杆", CITY, T0).ticket
    with pytest.raises(WorkflowError) as e:
        workflow.decide_extension(asked, False, "dispatch_desk", note, CITY, TZ, T0)
    assert (e.value.code, e.value.kind, e.value.field) == ("reason_required", "invalid", "reason")
    assert e.value.message == REQUIRED["decide_extension.reason"]
    assert e.value.message == "请填写驳回延期申请的理由（至少4个字），申请延期的承办单位将看到原因"
    assert (
        workflow.decide_extension(asked, True, "dispatch_desk", note, CITY, TZ, T0).ticket.extension_request
        is None
    )
    out = workflow.decide_extension(
        asked, False, "dispatch_desk", "  灯杆库存充足，\n请按期办结 ", CITY, TZ, T0
    )
    assert (out.ticket.extension_request, out.ticket.resolve_by) == (None, t.resolve_by)
    (event,) = out.publish
    assert (event.action, event.note) == ("extension_refused", "灯杆库存充足， 请按期办结")
    assert event.extension is not None
    assert (event.extension.days, event.extension.reason) == (3, "需要采购灯杆")
    # The history says whose reason is whose: the department's request, then the desk's refusal.
    assert present.describe({**event.model_dump(mode="json"), "topic": event.topic}, CITY) == (
        "延期未批准：区城市管理委员会，3个工作日（需要采购灯杆），驳回理由：灯杆库存充足， 请按期办结"
    )


def test_unsatisfied_reopens_then_escalates():
    t = resolved(assigned_ticket(CITY))
    first = survey(t, 3, 0, "灯还是不亮")
    r = first.ticket
    assert (r.status, r.reopens, r.department.id) == (st.ASSIGNED, 1, "urban_mgmt")
    assert first.publish[0].action == "reopened"
    assert "灯还是不亮" in first.publish[0].note
    assert r.resolve_by > t.resolve_by  # 重办 gets its time again
    # ...and the event says so, for those who do not read the ticket (the record).
    assert (first.publish[0].answer.respond_by, first.publish[0].answer.resolve_by) == (
        r.respond_by,
        r.resolve_by,
    )
    second = survey(resolved(r), 3, 1, "第二次了还没修")
    assert second.ticket.status == st.MEETING
    assert second.ticket.reopens == 2
    assert second.publish[-1].meeting.reason == "reopened_twice"


# Replies as residents send them: the history says the rating in words, and their comment only
# when they said more than the digit or word they answered with; never the reply as sent.
REPLIES = [
    ("1", 1, "关闭：区城市管理委员会；回访结果：满意", ""),
    ("满意", 1, "关闭：区城市管理委员会；回访结果：满意", ""),
    ("满意，1", 1, "关闭：区城市管理委员会；回访结果：满意", ""),
    ("1 很满意谢谢", 1, "关闭：区城市管理委员会；回访结果：满意；市民意见：很满意谢谢", "很满意谢谢"),
    (
        "不满意，路灯还是不亮",
        3,
        "重新办理：区城市管理委员会；回访结果：不满意；市民意见：路灯还是不亮",
        "路灯还是不亮",
    ),
]


@pytest.mark.parametrize(("text", "rating", "line", "comment"), REPLIES)
def test_the_history_says_a_survey_reply_as_staff_write_it(text, rating, line, comment):
    r = resolved(assigned_ticket(CITY))
    t = workflow.survey_sent(r, sent(r)).ticket
    out = workflow.record_rating(t, answer(t, t.resolution_id, rating, text=text), city=CITY, tz=TZ)
    assert out is not None
    (event,) = out.publish
    assert event.note == comment
    assert out.record[0].text == text  # the answer's record keeps the reply as sent
    said = present.describe({**event.model_dump(mode="json"), "topic": event.topic}, CITY)
    assert said == line


@pytest.mark.parametrize(
    ("by", "via", "text", "comment"),
    [
        ("op09", None, "电话回访", ""),  # the operator wrote nothing down
        ("op09", None, "市民表示路灯已修好，3天才修好", "市民表示路灯已修好，3天才修好"),
        (None, "lookup", "查询页评价", ""),  # no comment typed on the lookup page
        (None, "lookup", "3天才修好，太慢了", "3天才修好，太慢了"),  # typed words, not a reply: kept whole
    ],
)
def test_an_answer_on_the_phone_or_the_lookup_page_keeps_the_words_written_down(by, via, text, comment):
    r = resolved(assigned_ticket(CITY))
    t = workflow.survey_sent(r, sent(r)).ticket
    given = answer(t, t.resolution_id, 2, text=text).model_copy(update={"by": by, "via": via})
    out = workflow.record_rating(t, given, city=CITY, tz=TZ)
    assert out is not None
    assert out.publish[0].note == comment


def test_a_second_unsatisfied_reply_convenes_the_meeting_with_the_resident_s_comment_only():
    first = survey(resolved(assigned_ticket(CITY)), 3, 0, "3 灯还是不亮").ticket
    second = survey(resolved(first), 3, 1, "不满意，第二次了还没修")
    assert second.publish[-1].note == "第2次重办：市民回访答复不满意；市民意见：第二次了还没修"
    third = survey(resolved(assigned_ticket(CITY)), 3, 0, "3").ticket
    assert survey(resolved(third), 3, 1, "不满意").publish[-1].note == "第2次重办：市民回访答复不满意"


@pytest.mark.parametrize(
    ("rating", "text", "said"),
    [
        (1, "1 未解决", "满意，问题未解决"),
        (2, "基本满意，但是没解决", "基本满意，问题未解决"),
    ],
)
def test_a_second_reopen_by_an_unsolved_answer_says_what_the_resident_answered(rating, text, said):
    """满意 (or 基本满意) but 未解决 reopens the ticket as 不满意 does, and a second reopen convenes a
    joint meeting: its note says the answer the resident gave, not 不满意, which they did not say."""
    first = survey(resolved(assigned_ticket(CITY)), 3, 0, "3 灯还是不亮").ticket
    sent = SurveySent(
        ticket_no=first.ticket_no, survey_id="s1", masked_phone="138****0000", message_id="m", text="请回复"
    )
    t = workflow.survey_sent(resolved(first), sent).ticket
    given = SurveyAnswered(
        ticket_no=t.ticket_no, survey_id="s1", rating=rating, solved=False, text=text, occurred_at=T0
    )
    out = workflow.record_rating(t, given, city=CITY, tz=TZ)
    assert out is not None
    assert out.ticket.status == st.MEETING
    held = out.publish[-1]
    assert held.action == "escalated"
    assert held.note.startswith(f"第2次重办：市民回访答复{said}")
    assert "不满意" not in held.note
    why = meetings.explanation(held.meeting.reason, held.note)
    assert "不满意" not in why.removeprefix(meetings.REASON_NAMES["reopened_twice"])


def test_a_convened_meeting_says_its_reason_once_whatever_convened_it():
    """召开联席会议：<why>. The convening's explanation is the reason's name and what the hold that
    asked for it said: the name once, whichever path held the ticket (a hotspot's hold opens with
    the name itself, the others say what happened), with what the hold said kept."""
    contested = classified(CITY, "city.facility.streetlight", confidence=0.55, second=("utility.power", 0.5))
    garbage = assigned_ticket(CITY, "city.appearance.garbage", "s03c02g03")
    once = workflow.return_ticket(garbage, "street_s03", "duplicate", "与上一单重复", "", CITY, TZ, T0).ticket
    again = workflow.dispatch(once, "urban_mgmt", None, "请城管委处理", "dispatch_desk", CITY, TZ, T0).ticket
    reopened = survey(resolved(assigned_ticket(CITY)), 3, 0, "灯还是不亮").ticket
    later = T0 + timedelta(days=2)
    checked = workflow.verify(resolved(assigned_ticket(CITY)), "W017", GRID, False, "不亮", CITY, TZ, later)
    hot = garbage_hotspot(CITY)
    holds = {
        "ambiguous": assign(CITY, contested).publish[-1],
        "returned_twice": workflow.return_ticket(
            again, "urban_mgmt", "not_ours", "", "不同意", CITY, TZ, T0
        ).publish[-1],
        "reopened_twice": survey(resolved(reopened), 3, 1, "第二次了还没修").publish[-1],
        "reopened_twice_checked": workflow.verify(
            resolved(checked.ticket, at=later), "W017", GRID, False, "仍然不亮", CITY, TZ, later
        ).publish[-1],
        "hotspot": workflow.hold_for_meeting(garbage, hot, T0).publish[-1],
    }
    assert {e.meeting.reason for e in holds.values()} == set(meetings.REASON_NAMES)
    for e in holds.values():
        assert e.action == "escalated"
        name = meetings.REASON_NAMES[e.meeting.reason]
        why = meetings.explanation(e.meeting.reason, e.note)
        assert why.count(name) == 1, why
        assert why.startswith(name)
        # The hold's own words are all there (the hotspot's note is the whole explanation).
        assert why.endswith(e.note)
        said = present.describe({"topic": "meeting.convened", "explanation": why}, CITY)
        assert said == f"召开联席会议：{why}"
    assert meetings.explanation("hotspot", holds["hotspot"].note) == (
        "同一网格同类诉求集中（热点），提请联席会议（M1）统筹解决"
    )
    assert meetings.explanation("returned_twice", "") == "工单两次被退回"


def test_resolution_photos_go_on_the_event_and_the_ticket_and_stay_until_the_next_resolution():
    before, after = "a" * 32, "b" * 32
    accepted = workflow.accept(assigned_ticket(CITY), "urban_mgmt", CITY, T0).ticket
    first = workflow.resolve(accepted, "urban_mgmt", "已更换灯泡", CITY, T0, photos=(before,))
    [event] = first.publish
    assert (event.action, event.photos) == ("resolved", (before,))
    assert first.ticket.resolution_photos == (before,)
    assert first.ticket.photos == ()  # the appeal's own photos are another list
    # Reopened: what the resident found wanting is still shown, with the note.
    reopened = survey(first.ticket, 3, 0, "灯还是不亮").ticket
    assert reopened.status == st.ASSIGNED
    assert reopened.resolution_photos == (before,)
    assert reopened.resolution_note == "已更换灯泡"
    again = workflow.accept(reopened, "urban_mgmt", CITY, T0).ticket
    second = workflow.resolve(again, "urban_mgmt", "更换了整套灯具", CITY, T0, photos=(after,))
    assert second.ticket.resolution_photos == (after,)
    assert second.publish[0].photos == (after,)
    # Resolved again without photos: none shown, not the earlier resolution's.
    bare = workflow.resolve(again, "urban_mgmt", "更换了整套灯具", CITY, T0)
    assert bare.ticket.resolution_photos == ()
    assert bare.publish[0].photos == ()


def test_dispatch_desk_assigns_and_may_correct_the_category():
    t = assign(CITY, classified(CITY, "city.facility.streetlight", confidence=0.2)).ticket
    out = workflow.dispatch(t, "power", "utility.power", "其实是小区停电", "dispatch_desk", CITY, TZ, T0)
    assert (out.ticket.department.id, out.ticket.category, out.ticket.assigned_via) == (
        "power",
        "utility.power",
        "operator",
    )
    assert out.ticket.resolve_by == T0 + timedelta(hours=24)
    # The assignment names the category it gives: the record's lists read the names from it.
    (assigned,) = out.publish
    assert assigned.category_names == out.ticket.category_names == CITY.category_names("utility.power")
    with pytest.raises(WorkflowError) as e:
        workflow.dispatch(t, "nobody", None, "", "dispatch_desk", CITY, TZ, T0)
    assert e.value.kind == "invalid"
    with pytest.raises(WorkflowError) as e:
        workflow.dispatch(t, "power", "utility", "", "dispatch_desk", CITY, TZ, T0)
    assert e.value.code == "unknown_category"
    with pytest.raises(WorkflowError):
        workflow.dispatch(out.ticket, "water", None, "", "dispatch_desk", CITY, TZ, T0)


def test_the_desk_places_a_ticket_the_classifier_could_not_in_the_grid_it_chooses():
    """No grid (a vague address): the desk chooses one as it dispatches. The ticket is in that grid,
    its community and street from then on (its grid worker reads it, the rankings count it there),
    marked as the desk's choice (人工选定), and the assignment says so, for the record to place it."""
    t = assign(CITY, classified(CITY, "city.facility.streetlight", None, confidence=0.2)).ticket
    assert t.status == Status.REVIEW
    assert t.grid is not None
    assert t.grid.grid is None
    out = workflow.dispatch(t, "urban_mgmt", None, "", "dispatch_desk", CITY, TZ, T0, grid="s02c01g02")
    grid = out.ticket.grid
    assert grid is not None
    assert (grid.grid, grid.community, grid.street, grid.method) == ("s02c01g02", "s02c01", "s02", "desk")
    assert (out.ticket.status, out.ticket.department.id) == (Status.ASSIGNED, "urban_mgmt")
    (assigned,) = out.publish
    assert (assigned.grid, assigned.grid_chosen, assigned.version, assigned.first) == (
        "s02c01g02",
        True,
        5,
        True,
    )
    assert "事发网格人工选定为建设街道/建设社区第二网格，原为未定位" in assigned.explanation
    # Its grid worker (of that grid) may check its resolution on the spot; another grid's may not.
    done = workflow.resolve(
        workflow.accept(out.ticket, "urban_mgmt", CITY, T0).ticket, "urban_mgmt", "已修好", CITY, T0
    ).ticket
    checked = workflow.verify(done, "W01", "s02c01g02", True, "", CITY, TZ, T0 + timedelta(hours=1))
    assert checked.ticket.verification == "solved"
    with pytest.raises(WorkflowError) as e:
        workflow.verify(done, "W02", "s01c01g01", True, "", CITY, TZ, T0 + timedelta(hours=1))
    assert e.value.kind == "not_found"
    # The ticket's later assignments (改派 here) carry its grid on, not as a choice made again.
    moved = workflow.redispatch(
        out.ticket, "water", "属地有误，应由水务处理", CITY, TZ, T0 + timedelta(minutes=5)
    )
    again = next(e for e in moved.publish if isinstance(e, TicketAssigned))
    assert (again.grid, again.grid_chosen) == ("s02c01g02", False)


def test_the_desk_corrects_the_classifiers_grid_and_keeps_it_when_it_chooses_none():
    t = assign(CITY, classified(CITY, "city.facility.streetlight", "s01c01g01", confidence=0.2)).ticket
    moved = workflow.dispatch(t, "urban_mgmt", None, "", "dispatch_desk", CITY, TZ, T0, grid="s03c02g01")
    assert moved.ticket.grid is not None
    assert moved.ticket.grid.street == "s03"
    assert "原为和平街道/和平里社区第一网格" in moved.publish[0].explanation
    for same in (None, "", "s01c01g01"):  # none chosen, or the grid it has: nothing to place
        kept = workflow.dispatch(t, "urban_mgmt", None, "", "dispatch_desk", CITY, TZ, T0, grid=same)
        assert kept.ticket.grid == t.grid
        assert (kept.publish[0].grid, kept.publish[0].grid_chosen) == ("s01c01g01", False)
        assert "人工选定" not in kept.publish[0].explanation


def test_the_desk_confirms_a_located_grid_the_address_disputed_by_choosing_it():
    """定位与地址不一致: the desk chooses the grid the coordinates gave. Confirmed: the ticket's grid
    is the desk's choice, naming no other grid, so the department is not asked to check it again."""
    c = classified(CITY, "city.facility.streetlight", "s01c01g01", confidence=0.2)
    apart = c.grid.model_copy(update={"method": "coordinates", "address_grid": "s02c01g01"})
    t = assign(CITY, c.model_copy(update={"grid": apart})).ticket
    assert t.grid is not None
    assert t.grid.address_grid == "s02c01g01"
    out = workflow.dispatch(t, "urban_mgmt", None, "", "dispatch_desk", CITY, TZ, T0, grid="s01c01g01")
    grid = out.ticket.grid
    assert grid is not None
    assert (grid.grid, grid.method, grid.address_grid) == ("s01c01g01", "desk", None)
    (assigned,) = out.publish
    assert assigned.grid_chosen
    assert "事发网格经人工核实为和平街道/和平里社区第一网格" in assigned.explanation
    kept = workflow.dispatch(t, "urban_mgmt", None, "", "dispatch_desk", CITY, TZ, T0, grid=None)
    assert kept.ticket.grid == apart  # none chosen: still the question it was


@pytest.mark.parametrize("grid", ["s09c09g09", "和平里社区第一网格", " s01c01g01"])
def test_a_grid_the_city_does_not_have_is_refused_saying_what_to_do(grid: str):
    t = assign(CITY, classified(CITY, "city.facility.streetlight", None, confidence=0.2)).ticket
    with pytest.raises(WorkflowError) as e:
        workflow.dispatch(t, "urban_mgmt", None, "", "dispatch_desk", CITY, TZ, T0, grid=grid)
    assert (e.value.code, e.value.kind, e.value.field) == ("unknown_grid", "invalid", "grid")
    assert e.value.message == f"没有编号为“{grid}”的网格，请在“事发网格”中按街道、社区选择一个网格"


# --- 事发网格 after the assignment (place) ---------------------------------------------------------


def test_a_ticket_is_placed_from_its_assignment_until_its_survey_and_its_status_stays():
    move = ALLOWED_STATUS_CHANGES["place"]
    assert move.sources == {st.ASSIGNED, st.ACCEPTED, st.MEETING, st.RESOLVED, st.SURVEYED}
    assert move.targets is None  # the status stays


def test_the_desk_places_a_ticket_routed_without_a_grid_and_nothing_else_moves():
    """A district-wide category with a vague address (a street light): routed by the rules with no
    grid (未定位), it never waited at the desk. Placed, it is in that grid, community and street;
    the department, status and deadlines stay; the history says where it was and who placed it; the
    grid's worker checks its resolution (another grid's does not)."""
    t = assign(CITY, classified(CITY, "city.facility.streetlight", None, confidence=0.95)).ticket
    assert (t.status, t.department.id, t.grid.grid if t.grid else None) == (st.ASSIGNED, "urban_mgmt", None)
    later = T0 + timedelta(hours=2)
    out = workflow.place(t, "s02c01g02", "dispatch_desk", CITY, later)
    grid = out.ticket.grid
    assert grid is not None
    assert (grid.grid, grid.community, grid.street, grid.method) == ("s02c01g02", "s02c01", "s02", "desk")
    same = {"grid", "applied", "updated_at"}
    assert out.ticket.model_dump(exclude=same) == t.model_dump(exclude=same)
    (event,) = out.publish
    assert (event.action, event.status, event.actor, event.grid, event.version) == (
        "placed",
        st.ASSIGNED,
        "dispatch_desk",
        "s02c01g02",
        5,
    )
    assert event.place is not None
    assert (event.place.grid, event.place.community, event.place.street) == ("s02c01g02", "s02c01", "s02")
    assert (event.place.was, event.place.confirmed) == (None, False)
    assert event.department == t.department  # the department reads it among its own events
    assert event.note == "事发网格人工选定为建设街道/建设社区第二网格，原为未定位（12345派单中心）"
    assert present.describe(event.model_dump(mode="json") | {"topic": event.topic}, CITY) == event.note
    # Placed again elsewhere: from where it was.
    moved = workflow.place(out.ticket, "s01c01g01", "dispatch_desk", CITY, later)
    assert "原为建设街道/建设社区第二网格" in moved.publish[0].note
    assert moved.publish[0].place.was == "s02c01g02"  # type: ignore[union-attr]
    # Its grid's worker checks it on the spot; another grid's worker reads no such ticket.
    done = resolved(out.ticket)
    assert (
        workflow.verify(done, "W01", "s02c01g02", True, "", CITY, TZ, later).ticket.verification == "solved"
    )
    with pytest.raises(WorkflowError) as e:
        workflow.verify(done, "W02", "s01c01g01", True, "", CITY, TZ, later)
    assert e.value.kind == "not_found"


@pytest.mark.parametrize("status", [st.ACCEPTED, st.RESOLVED, st.SURVEYED, st.MEETING])
def test_a_ticket_being_handled_or_checked_is_placed_in_its_status(status: Status):
    t = _in(status, meeting_id="m1" if status == st.MEETING else None, resolution_note="已修复")
    out = workflow.place(t, "s03c02g03", "dispatch_desk", CITY, T0)
    assert (out.ticket.status, out.ticket.department, out.publish[0].status) == (status, t.department, status)
    assert out.ticket.grid is not None
    assert out.ticket.grid.street == "s03"


def test_the_desk_confirms_the_located_grid_of_a_disputed_place_after_the_assignment():
    """定位与地址不一致, routed by its rule: the desk chooses the grid it was located in. Confirmed,
    the ticket names no other grid (the page's 位置核实 goes), and the history says 经人工核实."""
    c = classified(CITY, "city.facility.streetlight", "s01c01g01")
    apart = c.grid.model_copy(update={"method": "coordinates", "address_grid": "s01c01g02"})
    t = assign(CITY, c.model_copy(update={"grid": apart})).ticket
    assert (t.status, t.grid) == (st.ASSIGNED, apart)
    out = workflow.place(t, "s01c01g01", "dispatch_desk", CITY, T0)
    assert out.ticket.grid is not None
    assert (out.ticket.grid.grid, out.ticket.grid.address_grid) == ("s01c01g01", None)
    (event,) = out.publish
    assert event.note == "事发网格经人工核实为和平街道/和平里社区第一网格（12345派单中心）"
    assert event.place is not None
    assert (event.place.was, event.place.confirmed) == ("s01c01g01", True)
    # Confirmed once, it is no question any more: the same grid again is refused.
    with pytest.raises(WorkflowError) as e:
        workflow.place(out.ticket, "s01c01g01", "dispatch_desk", CITY, T0)
    assert (e.value.code, e.value.field) == ("same_grid", "grid")


# --- 申请更正事发网格: the grid worker asks, the desk decides ---------------------------------------------

SEEN = "  路灯实际在对面 建设社区小区门口 "


def test_a_place_request_is_asked_and_decided_where_the_desk_could_place_and_the_status_stays():
    for step in ("request_place", "decide_place"):
        move = ALLOWED_STATUS_CHANGES[step]
        assert move.sources == ALLOWED_STATUS_CHANGES["place"].sources
        assert move.targets is None


@pytest.mark.parametrize("status", sorted(workflow.PLACEABLE))
def test_the_grid_worker_asks_the_desk_to_correct_the_grid_and_nothing_moves_until_it_decides(status):
    t = _in(status, meeting_id="m1" if status == st.MEETING else None, resolution_note="已修复")
    out = workflow.request_place(t, "W017", "s01c01g01", " s02c01g02 ".strip(), SEEN, CITY, T0)
    assert out.ticket.place_request == {
        "grid": "s02c01g02",
        "reason": "路灯实际在对面 建设社区小区门口",
        "by": "W017",
        "at": T0.isoformat(),
    }
    same = {"place_request", "applied", "updated_at"}
    assert out.ticket.model_dump(exclude=same) == t.model_dump(exclude=same)  # grid, status stay
    (event,) = out.publish
    assert (event.action, event.status, event.actor, event.grid, event.version) == (
        "place_requested",
        status,
        "W017",
        "s01c01g01",  # the ticket's grid, still: intake's index and the record move nothing
        5,
    )
    assert event.place_request is not None
    assert (event.place_request.grid, event.place_request.was, event.place_request.by) == (
        "s02c01g02",
        "s01c01g01",
        "W017",
    )
    assert event.note == (
        "网格员W017申请将事发网格更正为建设街道/建设社区第二网格（现为和平街道/和平里社区第一网格）："
        "路灯实际在对面 建设社区小区门口"
    )
    assert present.describe(event.model_dump(mode="json") | {"topic": event.topic}, CITY) == event.note
    # The notifier and the scorecard count nothing for it.
    from services.notifier.scoring import fields_for

    assert fields_for(event) == ()


def test_a_place_request_is_refused_in_words_the_worker_can_act_on():
    t = assigned_ticket(CITY)  # in s01c01g01
    cases = [
        (("W09", "s02c01g02", "s01c01g02", SEEN), "not_found", "not_found", None),  # another grid's
        (("W017", None, "s01c01g02", SEEN), "not_found", "not_found", None),
        (("W017", "s01c01g01", "s09c09g09", SEEN), "unknown_grid", "invalid", "grid"),
        (("W017", "s01c01g01", "s01c01g01", SEEN), "same_grid", "conflict", "grid"),
        (("W017", "s01c01g01", "s01c01g02", " 有误 "), "reason_required", "invalid", "reason"),
    ]
    for args, code, kind, field in cases:
        with pytest.raises(WorkflowError) as e:
            workflow.request_place(t, *args, CITY, T0)
        assert (e.value.code, e.value.kind, e.value.field) == (code, kind, field)
        assert re.search("[\u4e00-\u9fff]", e.value.message)
    asked = workflow.request_place(t, "W017", "s01c01g01", "s01c01g02", SEEN, CITY, T0).ticket
    with pytest.raises(WorkflowError) as e:  # one at a time: the desk decides what it was shown
        workflow.request_place(asked, "W018", "s01c01g01", "s02c01g02", SEEN, CITY, T0)
    assert (e.value.code, e.value.kind) == ("place_request_pending", "conflict")
    assert "网格员W017" in e.value.message
    assert "等待审核结果" in e.value.message
    with pytest.raises(WorkflowError) as e:  # at the desk: its dispatch places it
        workflow.request_place(_in(st.REVIEW), "W017", "s01c01g01", "s01c01g02", SEEN, CITY, T0)
    assert e.value.code == "illegal_transition"


def test_the_desk_approves_a_place_request_by_placing_the_ticket_in_the_grid_asked_for():
    t = resolved(assigned_ticket(CITY))
    asked = workflow.request_place(t, "W017", "s01c01g01", "s02c01g02", SEEN, CITY, T0).ticket
    out = workflow.decide_place(asked, True, "dispatch_desk", "", CITY, T0 + timedelta(hours=1))
    assert out.ticket.place_request is None
    assert out.ticket.grid is not None
    assert (out.ticket.grid.grid, out.ticket.grid.street, out.ticket.status) == (
        "s02c01g02",
        "s02",
        st.RESOLVED,
    )
    (event,) = out.publish
    assert (event.action, event.grid, event.place.grid) == ("placed", "s02c01g02", "s02c01g02")  # type: ignore[union-attr]
    assert event.note == (
        "事发网格人工选定为建设街道/建设社区第二网格，原为和平街道/和平里社区第一网格，同意网格员W017的更正申请"
        "（12345派单中心）"
    )
    # Decided once: nothing waits any more.
    with pytest.raises(WorkflowError) as e:
        workflow.decide_place(out.ticket, True, "dispatch_desk", "", CITY, T0)
    assert (e.value.code, e.value.kind) == ("no_place_request", "conflict")


def test_the_desk_refuses_a_place_request_with_its_reason_and_the_grid_stays():
    t = assigned_ticket(CITY)
    asked = workflow.request_place(t, "W017", "s01c01g01", "s02c01g02", SEEN, CITY, T0).ticket
    with pytest.raises(WorkflowError) as e:  # the worker who went to look reads why
        workflow.decide_place(asked, False, "dispatch_desk", "  ", CITY, T0)
    assert (e.value.code, e.value.kind, e.value.field) == ("reason_required", "invalid", "reason")
    assert e.value.message == REQUIRED["decide_place.reason"]
    out = workflow.decide_place(asked, False, "dispatch_desk", "门牌号属和平里社区", CITY, T0)
    assert (out.ticket.place_request, out.ticket.grid) == (None, t.grid)
    (event,) = out.publish
    assert (event.action, event.grid, event.status) == ("place_refused", "s01c01g01", st.ASSIGNED)
    assert event.place_request is not None
    assert (event.place_request.grid, event.place_request.by) == ("s02c01g02", "W017")
    assert event.note == (
        "12345派单中心不同意将事发网格更正为建设街道/建设社区第二网格（网格员W017申请）：门牌号属和平里社区"
    )
    # Refused, the worker may ask again (something new seen on the spot).
    again = workflow.request_place(out.ticket, "W017", "s01c01g01", "s02c01g02", SEEN, CITY, T0)
    assert again.ticket.place_request is not None


def test_any_placement_by_the_desk_settles_a_pending_request_and_a_return_to_the_desk_drops_it():
    t = assigned_ticket(CITY)
    asked = workflow.request_place(t, "W017", "s01c01g01", "s02c01g02", SEEN, CITY, T0).ticket
    elsewhere = workflow.place(asked, "s03c02g03", "dispatch_desk", CITY, T0)
    assert elsewhere.ticket.place_request is None
    assert "网格员W017的更正申请（更正为建设街道/建设社区第二网格）随之撤销" in elsewhere.publish[0].note
    granted = workflow.place(asked, "s02c01g02", "dispatch_desk", CITY, T0)
    assert granted.ticket.place_request is None
    assert "同意网格员W017的更正申请" in granted.publish[0].note
    back = workflow.return_ticket(asked, "urban_mgmt", "duplicate", "", "", CITY, TZ, T0)
    # Back at the desk (重复工单): its dispatch places it, so no request waits that it could not decide;
    # the history says what the worker asked, for the desk to read as it dispatches.
    assert (back.ticket.status, back.ticket.place_request) == (st.REVIEW, None)
    assigned = next(e for e in back.publish if e.topic == "ticket.assigned")
    assert "网格员W017的事发网格更正申请（更正为建设街道/建设社区第二网格：" in assigned.explanation
    assert assigned.explanation.endswith("随之撤销，请派单时在“事发网格”中确定）")


def test_placing_is_refused_saying_what_to_do_for_a_grid_it_has_no_grid_and_a_finished_ticket():
    t = assigned_ticket(CITY)  # in s01c01g01, not disputed
    with pytest.raises(WorkflowError) as e:
        workflow.place(t, "s01c01g01", "dispatch_desk", CITY, T0)
    assert (e.value.code, e.value.kind, e.value.field) == ("same_grid", "conflict", "grid")
    assert "事发网格已是和平街道/和平里社区第一网格，无需更改" in e.value.message
    with pytest.raises(WorkflowError) as e:
        workflow.place(t, "s09c09g09", "dispatch_desk", CITY, T0)
    assert (e.value.code, e.value.kind, e.value.field) == ("unknown_grid", "invalid", "grid")
    assert e.value.message == "没有编号为“s09c09g09”的网格，请在“事发网格”中按街道、社区选择一个网格"
    with pytest.raises(WorkflowError) as e:
        workflow.place(_in(st.CLOSED), "s02c01g02", "dispatch_desk", CITY, T0)
    assert (e.value.code, e.value.kind) == ("illegal_transition", "conflict")
    assert (
        "当前状态为“已关闭”，不能更改事发网格（只有已派单、尚未结案的工单可以更改事发网格" in e.value.message
    )
    with pytest.raises(WorkflowError) as e:  # at the desk its dispatch places it
        workflow.place(_in(st.REVIEW), "s02c01g02", "dispatch_desk", CITY, T0)
    assert "待人工派单的工单请在派单时于“事发网格”中选择" in e.value.message


def test_the_desk_redispatches_a_department_s_ticket_with_fresh_deadlines_and_its_reason():
    """改派: from assigned or accepted only, to another department, which starts with its full time;
    the old department's acceptance, pending extension and overdue marks go with the move."""
    assert ALLOWED_STATUS_CHANGES["redispatch"].sources == {st.ASSIGNED, st.ACCEPTED}
    assert ALLOWED_STATUS_CHANGES["redispatch"].targets == {st.ASSIGNED}
    t = assigned_ticket(CITY)  # urban_mgmt, from T0
    later = T0 + timedelta(hours=5)
    accepted = workflow.accept(t, "urban_mgmt", CITY, T0 + timedelta(hours=1)).ticket
    asked = workflow.request_extension(accepted, "urban_mgmt", 3, "等材料", CITY, T0).ticket
    held = asked.model_copy(update={"overdue": True, "urges": 1, "returns": 1})
    fresh = deadlines(CITY, t.category, t.urgent, later, TZ, department="power")
    for before in (t, held):
        out = workflow.redispatch(before, "power", "  居民来电反映  实为供电线路故障 ", CITY, TZ, later)
        n = out.ticket
        assert (n.status, n.department.id, n.assigned_via) == (st.ASSIGNED, "power", "redispatch")
        assert (n.assigned_at, n.respond_by, n.resolve_by) == (later, fresh.respond_by, fresh.resolve_by)
        assert n.resolve_by > before.resolve_by
        assert (n.accepted_at, n.extension_request, n.overdue, n.co_departments) == (None, None, False, ())
        assert (n.urges, n.returns) == (before.urges, before.returns)  # the desk's move is no return
        [event] = out.publish
        assert (event.topic, event.via, event.department.id) == ("ticket.assigned", "redispatch", "power")
        assert (event.respond_by, event.resolve_by) == (fresh.respond_by, fresh.resolve_by)
        assert event.explanation.startswith("派单中心改派：居民来电反映 实为供电线路故障（原承办单位：")
        assert CITY.department_by_id["urban_mgmt"].name in event.explanation
        assert n.has_applied(event.event_id)
    assert (
        "延期申请随之撤销"
        in workflow.redispatch(held, "power", "实为停电", CITY, TZ, later).publish[0].explanation
    )
    # The old department's timers find the deadlines moved and fire nothing; the new ones are set.
    sup = CITY.sla.supervision
    old = timers.timers_for(held, sup)
    new = workflow.redispatch(held, "power", "实为停电", CITY, TZ, later).ticket
    assert old
    assert [timer for timer in old if timers.fire(new, timer, CITY, TZ) is not None] == []
    assert {x.deadline for x in timers.timers_for(new, sup)} == {new.respond_by, new.resolve_by}


def test_a_redispatch_is_refused_in_words_where_it_cannot_be_made():
    t = assigned_ticket(CITY)
    with pytest.raises(WorkflowError) as e:
        workflow.redispatch(t, "urban_mgmt", "换个单位试试", CITY, TZ, T0)
    assert (e.value.code, e.value.kind, e.value.field) == ("same_department", "conflict", "department")
    assert "无需改派" in e.value.message
    for dept in ("nobody", "dispatch_desk"):
        with pytest.raises(WorkflowError) as e:
            workflow.redispatch(t, dept, "属地有误", CITY, TZ, T0)
        assert (e.value.kind, e.value.field) == ("invalid", "department")
    # None chosen: asked for in words, as the form asks for it (REQUIRED), not as an unknown id ''.
    with pytest.raises(WorkflowError) as e:
        workflow.redispatch(t, "", "属地有误", CITY, TZ, T0)
    assert (e.value.code, e.value.kind, e.value.field) == ("department_required", "invalid", "department")
    assert e.value.message == REQUIRED["redispatch.department"] == "请选择改派的承办单位"
    for reason in ("", "   ", "错了"):
        with pytest.raises(WorkflowError) as e:
            workflow.redispatch(t, "power", reason, CITY, TZ, T0)
        assert (e.value.kind, e.value.field) == ("invalid", "reason")
        assert "改派原因" in e.value.message
    for status in (st.REVIEW, st.MEETING, st.RESOLVED, st.SURVEYED, st.CLOSED):
        with pytest.raises(WorkflowError) as e:
            workflow.redispatch(_in(status), "power", "属地有误", CITY, TZ, T0)
        assert e.value.kind == "conflict"
        assert f"“{STATUS_NAMES[status]}”，不能改派" in e.value.message


# --- merging duplicates (并案) ----------------------------------------------------------------------


def test_a_merge_takes_a_duplicate_no_department_has_taken_up_into_a_ticket_being_handled():
    assert ALLOWED_STATUS_CHANGES["merge"].sources == {st.REVIEW, st.ASSIGNED}
    assert ALLOWED_STATUS_CHANGES["merge"].targets == {st.CLOSED}
    assert ALLOWED_STATUS_CHANGES["receive_duplicate"].sources == {
        st.REVIEW,
        st.ASSIGNED,
        st.ACCEPTED,
        st.MEETING,
    }
    assert ALLOWED_STATUS_CHANGES["receive_duplicate"].targets is None  # the main ticket's status stays


@pytest.mark.parametrize("main_status", [st.REVIEW, st.ASSIGNED, st.ACCEPTED, st.MEETING])
@pytest.mark.parametrize("dup_status", [st.REVIEW, st.ASSIGNED])
def test_the_duplicate_closes_pointing_at_the_main_ticket_which_lists_it(dup_status, main_status):
    dup = _in(dup_status, ticket_no="20261123-000005", urges=1)
    main = _in(main_status, ticket_no=MAIN, merged=("20261123-000003",), meeting_id="m1")
    later = T0 + timedelta(hours=1)
    merged, listed = workflow.merge(dup, main, MAIN, SAME, "dispatch_desk", later)
    d, m = merged.ticket, listed.ticket
    assert (d.status, d.merged_into, d.closed_at, d.merged) == (st.CLOSED, MAIN, later, ())
    assert (d.department, d.urges, d.rating) == (dup.department, 1, None)  # who held it, for the record
    assert m.merged == ("20261123-000003", "20261123-000005")
    assert m.model_dump(exclude={"merged", "applied", "updated_at"}) == main.model_dump(
        exclude={"merged", "applied", "updated_at"}
    )  # its status, department and deadlines stay
    [closed], [took] = merged.publish, listed.publish
    assert (closed.ticket_no, closed.action, closed.status, closed.actor) == (
        dup.ticket_no,
        "merged",
        "closed",
        "dispatch_desk",
    )
    assert closed.note == f"并入工单{MAIN}合并办理：同一盏路灯， 邻居重复反映"
    assert (closed.department, closed.caller_id) == (dup.department, "c1")
    assert (took.ticket_no, took.action, took.status) == (MAIN, "duplicate_merged", main_status)
    assert took.note == "并案：工单20261123-000005并入本工单（同一盏路灯， 邻居重复反映）"
    assert (
        (closed.merge.into, closed.merge.duplicate)
        == (took.merge.into, took.merge.duplicate)
        == (MAIN, dup.ticket_no)
    )
    # A department that held it (not accepted yet) is answered for, on time within its deadline;
    # the desk's waiting room is in no rate.
    assert closed.merge.response_on_time is (True if dup_status == st.ASSIGNED else None)
    assert took.merge.response_on_time is None
    assert (d.has_applied(closed.event_id), m.has_applied(took.event_id)) == (True, True)
    assert TicketUpdated.model_validate_json(closed.json_bytes) == closed  # it parses back


def test_a_merged_duplicate_s_clocks_stop_and_a_late_merge_is_no_response_on_time():
    sup = CITY.sla.supervision
    for dup in (_in(st.ASSIGNED), _in(st.REVIEW, assigned_at=T0)):
        before = timers.timers_for(dup, sup)
        assert before  # the department's (or the desk's) clock was running
        merged, _ = workflow.merge(dup, _in(st.ACCEPTED, ticket_no=MAIN), MAIN, SAME, "dispatch_desk", T0)
        assert timers.timers_for(merged.ticket, sup) == []
        assert [x for x in before if timers.fire(merged.ticket, x, CITY, TZ) is not None] == []
    late = _in(st.ASSIGNED)
    merged, _ = workflow.merge(
        late,
        _in(st.ACCEPTED, ticket_no=MAIN),
        MAIN,
        SAME,
        "dispatch_desk",
        late.respond_by + timedelta(minutes=1),
    )
    assert merged.publish[0].merge.response_on_time is False


def test_a_merge_is_refused_in_words_where_it_cannot_be_made():
    dup, being_handled = _in(st.ASSIGNED, ticket_no="20261123-000005"), _in(st.ACCEPTED, ticket_no=MAIN)

    def refused(duplicate=dup, main=being_handled, into=MAIN, reason=SAME):
        with pytest.raises(WorkflowError) as e:
            workflow.merge(duplicate, main, into, reason, "dispatch_desk", T0)
        return e.value

    e = refused(main=dup, into=dup.ticket_no)
    assert (e.code, e.kind, e.field) == ("same_ticket", "invalid", "into")
    assert "不能并入自身" in e.message
    e = refused(main=None, into="20261123-000777")
    assert (e.code, e.kind, e.field) == ("not_found", "not_found", "into")
    assert "工单20261123-000777不存在" in e.message
    for status in (st.RECEIVED, st.RESOLVED, st.SURVEYED, st.CLOSED):
        e = refused(main=_in(status, ticket_no=MAIN))
        assert (e.kind, e.field) == ("conflict", "into")
        assert f"工单{MAIN}当前状态为“{STATUS_NAMES[status]}”，不能接收并案" in e.message
    e = refused(main=_in(st.CLOSED, ticket_no=MAIN, merged_into="20261123-000001"))
    assert (e.code, e.kind, e.field) == ("main_merged", "conflict", "into")
    assert "请并入工单20261123-000001" in e.message
    for status in (st.RECEIVED, st.ACCEPTED, st.MEETING, st.RESOLVED, st.SURVEYED, st.CLOSED):
        e = refused(duplicate=_in(status, ticket_no="20261123-000005"))
        assert (e.code, e.kind) == ("illegal_transition", "conflict")
        assert f"“{STATUS_NAMES[status]}”，不能并案" in e.message
    e = refused(duplicate=dup.model_copy(update={"reopens": 1}))
    assert (e.code, e.kind) == ("reopened", "conflict")
    assert "已重办1次" in e.message
    # A cycle: the main ticket chosen was merged into this one (or is listed by it).
    e = refused(main=_in(st.CLOSED, ticket_no=MAIN, merged_into="20261123-000005"))
    assert (e.code, e.kind, e.field) == ("merge_cycle", "conflict", "into")
    assert f"工单{MAIN}已并入本工单（工单20261123-000005）合并办理，两张工单不能互相并入" in e.message
    e = refused(duplicate=dup.model_copy(update={"merged": (MAIN,)}))
    assert (e.code, e.field) == ("merge_cycle", "into")
    # Its own duplicates are decided with it, so they must have been read with it; one that is not
    # merged into it (read apart from the merge) is refused rather than moved.
    carrier = dup.model_copy(update={"merged": ("20261123-000004",)})
    with pytest.raises(ValueError, match="were not read"):
        workflow.merge(carrier, being_handled, MAIN, SAME, "dispatch_desk", T0)
    stray = _in(st.CLOSED, ticket_no="20261123-000004", merged_into="20261123-000001")
    with pytest.raises(WorkflowError) as e_stray:
        workflow.merge(
            carrier, being_handled, MAIN, SAME, "dispatch_desk", T0, carried={stray.ticket_no: stray}
        )
    assert (e_stray.value.code, e_stray.value.kind) == ("not_merged", "conflict")
    assert "没有并入工单20261123-000005" in e_stray.value.message
    for reason in ("", "  ", "重复"):
        e = refused(reason=reason)
        assert (e.kind, e.field) == ("invalid", "reason")
        assert "并案原因" in e.message


def test_a_main_ticket_merged_into_another_brings_its_duplicates_along():
    """并案, chained: a ticket others were merged into is merged itself; they follow it to the new
    main ticket, which lists them all, and only its own merge counts (for its department)."""
    from services.notifier.scoring import fields_for

    d1 = _in(st.CLOSED, ticket_no="20261123-000001", merged_into=CARRIER, closed_at=T0, urges=1)
    d2 = _in(st.CLOSED, ticket_no="20261123-000002", merged_into=CARRIER, closed_at=T0)
    gone = "20261123-000003"  # closed long ago, it has left Redis: listed, nothing to rewrite
    carrier = _in(st.ASSIGNED, ticket_no=CARRIER, merged=(d1.ticket_no, d2.ticket_no, gone))
    main = _in(st.ACCEPTED, ticket_no=MAIN, merged=("20261123-000007",))
    later = T0 + timedelta(hours=1)
    carried = {d1.ticket_no: d1, d2.ticket_no: d2, gone: None}
    merged, listed, *followed = workflow.merge(
        carrier, main, MAIN, SAME, "dispatch_desk", later, carried=carried
    )

    moved = (d1.ticket_no, d2.ticket_no, gone)
    c, m = merged.ticket, listed.ticket
    assert (c.status, c.merged_into, c.merged, c.closed_at) == (st.CLOSED, MAIN, (), later)
    assert m.merged == ("20261123-000007", CARRIER, *moved)  # every resident waiting on it
    assert m.model_dump(exclude={"merged", "applied", "updated_at"}) == main.model_dump(
        exclude={"merged", "applied", "updated_at"}
    )
    [closed], [took] = merged.publish, listed.publish
    assert closed.merge == Merge(into=MAIN, duplicate=CARRIER, moved=moved, response_on_time=True)
    assert took.merge == Merge(into=MAIN, duplicate=CARRIER, moved=moved)
    assert closed.note == (
        f"并入工单{MAIN}合并办理：同一盏路灯， 邻居重复反映"
        f"（原并入本工单的工单{d1.ticket_no}、{d2.ticket_no}、{gone}随同并入）"
    )
    assert took.note == (
        f"并案：工单{CARRIER}并入本工单（同一盏路灯， 邻居重复反映），"
        f"原并入该工单的工单{d1.ticket_no}、{d2.ticket_no}、{gone}随同并入"
    )
    # Each duplicate there is follows, closed as it was: only where it points changes.
    assert [f.ticket.ticket_no for f in followed] == [d1.ticket_no, d2.ticket_no]
    for f, before in zip(followed, (d1, d2), strict=True):
        t = f.ticket
        assert (t.status, t.merged_into) == (st.CLOSED, MAIN)
        assert t.model_dump(exclude={"merged_into", "applied", "updated_at"}) == before.model_dump(
            exclude={"merged_into", "applied", "updated_at"}
        )
        [e] = f.publish
        assert (e.ticket_no, e.action, e.status, e.caller_id) == (
            before.ticket_no,
            "remerged",
            "closed",
            "c1",
        )
        assert e.merge == Merge(into=MAIN, duplicate=before.ticket_no, via=CARRIER)
        assert e.note == f"随工单{CARRIER}并入工单{MAIN}合并办理：同一盏路灯， 邻居重复反映"
        assert t.has_applied(e.event_id)
        assert TicketUpdated.model_validate_json(e.json_bytes) == e
        # Its own merge answered for whoever held it; moving it along counts for nobody again.
        assert fields_for(e) == ()
    # The carrier's department had not accepted it: its merge is that department's response, once.
    assert fields_for(closed) == ("merged", "responded", "responded_on_time", "due", "due_on_time")
    assert fields_for(took) == ()
    # Chained again: the new main ticket with all of them goes on the same way.
    again = workflow.merge(
        m.model_copy(update={"status": st.REVIEW}),
        _in(st.MEETING, ticket_no="20261123-000050", meeting_id="m1"),
        "20261123-000050",
        SAME,
        "dispatch_desk",
        later,
        carried={
            **{f.ticket.ticket_no: f.ticket for f in followed},
            c.ticket_no: c,
            gone: None,
            "20261123-000007": None,
        },
    )
    assert again[1].ticket.merged == (MAIN, "20261123-000007", CARRIER, *moved)
    assert [(o.ticket.ticket_no, o.ticket.merged_into) for o in again[2:]] == [
        (no, "20261123-000050") for no in (CARRIER, d1.ticket_no, d2.ticket_no)
    ]


# --- people's mediation (转人民调解, 调解结果) ----------------------------------------------------------

AGREED = Mediation(outcome="agreed", agreement="  楼上住户承担维修费800元，7日内修复防水层 ")
DISPUTE = "  楼上楼下因卫生间漏水  赔偿问题协商不成 "


def dispute_ticket() -> Ticket:
    """A 物业费 appeal (a category the city marks for mediation) the housing bureau holds, in
    和平街道 (s01c01g01): a dispute between owners and their property company."""
    return assigned_ticket(CITY, "housing.property.fee")


def test_a_referral_starts_where_the_department_holds_the_ticket():
    assert ALLOWED_STATUS_CHANGES["mediate"].sources == {st.ASSIGNED, st.ACCEPTED}
    assert ALLOWED_STATUS_CHANGES["mediate"].targets == {st.ASSIGNED}


def test_the_department_refers_a_dispute_to_its_street_s_committee_with_fresh_deadlines():
    """The committee of the ticket's street (s01 here) holds it with its full time from now; the
    reason is the assignment's explanation; the department's acceptance and pending extension go."""
    t = dispute_ticket()  # housing, grid s01c01g01
    later = T0 + timedelta(hours=5)
    accepted = workflow.accept(t, "housing", CITY, T0 + timedelta(hours=1)).ticket
    asked = workflow.request_extension(accepted, "housing", 3, "等材料", CITY, T0).ticket
    fresh = deadlines(CITY, t.category, t.urgent, later, TZ, department="mediation_s01")
    assert fresh.sla_class == "mediation"  # the committee's time, not the property fee's
    for before in (t, asked.model_copy(update={"overdue": True, "returns": 1})):
        out = workflow.refer_to_mediation(before, "housing", DISPUTE, CITY, TZ, later)
        n, [event] = out.ticket, out.publish
        assert (n.status, n.department.id, n.assigned_via) == (st.ASSIGNED, "mediation_s01", "mediation")
        assert (n.assigned_at, n.respond_by, n.resolve_by) == (later, fresh.respond_by, fresh.resolve_by)
        assert (n.accepted_at, n.extension_request, n.overdue, n.returns) == (
            None,
            None,
            False,
            before.returns,
        )
        assert (event.topic, event.via, event.department.name) == (
            "ticket.assigned",
            "mediation",
            "和平街道人民调解委员会",
        )
        assert event.explanation.startswith(
            "区住房和城乡建设局转和平街道人民调解委员会调解：楼上楼下因卫生间漏水 赔偿问题协商不成"
        )
        assert n.has_applied(event.event_id)
        words = present.describe({**event.model_dump(mode="json"), "topic": event.topic}, CITY)
        assert words.startswith("派单至和平街道人民调解委员会（转人民调解）：区住房和城乡建设局转")
    assert out.publish[0].explanation.endswith("（其延期申请随之撤销）")
    # The department no longer holds it: it acts on it no more (the same answer as no ticket).
    with pytest.raises(WorkflowError) as e:
        workflow.accept(out.ticket, "housing", CITY, later)
    assert e.value.kind == "not_found"


def test_a_noise_complaint_referred_to_a_committee_gets_mediation_s_time_and_keeps_it_on_reopening():
    """A committee's time is set by how mediation works (both parties heard, a session they can both
    attend), not by what the dispute is about: a 噪音扰民 ticket (7 working days) referred to it gets
    mediation's 20 working days from the referral, and again when the resident's 不满意 or the grid
    worker's 未解决 sends it back to the committee (重办). Urgent is urgent still."""
    t = assigned_ticket(CITY, "env.noise")
    assert t.department is not None
    holder = t.department.id
    assert t.resolve_by == add_working_days(T0, 7, CITY.sla, TZ)  # the category's time, with a bureau
    later = T0 + timedelta(hours=5)  # Monday 15:00 in Shanghai
    out = workflow.refer_to_mediation(t, holder, DISPUTE, CITY, TZ, later)
    n, [event] = out.ticket, out.publish
    assert n.department is not None
    assert n.department.id == "mediation_s01"
    # 20 working days, no holiday between: Monday 2026-12-21 15:00 (7 would end on 12-02).
    assert n.resolve_by == event.resolve_by == datetime(2026, 12, 21, 15, tzinfo=TZ)
    assert n.respond_by == later + timedelta(hours=24)
    # The resident is not satisfied with the mediation: back to the committee, with its time again.
    done = workflow.accept(n, "mediation_s01", CITY, later).ticket
    failed = Mediation(outcome="not_agreed")
    done = workflow.resolve(done, "mediation_s01", "双方未达成一致", CITY, later, mediation=failed).ticket
    out = survey(done, 3)
    reopened = out.ticket
    assert reopened.department is not None
    assert (reopened.status, reopened.department.id) == (st.ASSIGNED, "mediation_s01")
    at = T0 + timedelta(days=3)
    assert reopened.resolve_by == add_working_days(at, 20, CITY.sla, TZ)
    assert out.publish[0].answer.resolve_by == reopened.resolve_by
    # The grid worker finds it not solved: the same.
    checked = T0 + timedelta(days=4)
    sent_back = workflow.verify(done, "W017", GRID, False, "双方仍在争吵", CITY, TZ, checked).ticket
    assert sent_back.resolve_by == add_working_days(checked, 20, CITY.sla, TZ)
    # Urgent wins over the holder's kind.
    flagged = t.model_copy(update={"urgent": True})
    urgent = workflow.refer_to_mediation(flagged, holder, DISPUTE, CITY, TZ, later).ticket
    assert urgent.resolve_by == later + timedelta(hours=2)  # the emergency class's 2 hours


def test_the_desk_s_redispatch_to_a_committee_gives_it_mediation_s_time_too():
    t = assigned_ticket(CITY, "env.noise")
    out = workflow.redispatch(t, "mediation_s01", "属于邻里纠纷，转调解", CITY, TZ, T0)
    assert out.ticket.resolve_by == add_working_days(T0, 20, CITY.sla, TZ)


def test_a_referral_is_refused_in_words_where_it_cannot_be_made():
    t = dispute_ticket()
    with pytest.raises(WorkflowError) as e:  # only the department holding it
        workflow.refer_to_mediation(t, "water", DISPUTE, CITY, TZ, T0)
    assert e.value.kind == "not_found"
    for reason in ("", "   ", "纠纷"):
        with pytest.raises(WorkflowError) as e:
            workflow.refer_to_mediation(t, "housing", reason, CITY, TZ, T0)
        assert (e.value.code, e.value.kind, e.value.field) == ("reason_required", "invalid", "reason")
        assert "转人民调解的原因" in e.value.message
    # With the committee already: it records how the mediation ended instead.
    held = workflow.refer_to_mediation(t, "housing", DISPUTE, CITY, TZ, T0).ticket
    with pytest.raises(WorkflowError) as e:
        workflow.refer_to_mediation(held, "mediation_s01", DISPUTE, CITY, TZ, T0)
    assert (e.value.code, e.value.kind) == ("already_with_committee", "conflict")
    assert "已由和平街道人民调解委员会调解" in e.value.message
    # A street without a committee, a ticket that has no grid.
    without = CITY.model_copy(
        update={"departments": tuple(d for d in CITY.departments if d.id != "mediation_s01")}
    )
    with pytest.raises(WorkflowError) as e:
        workflow.refer_to_mediation(t, "housing", DISPUTE, without, TZ, T0)
    assert (e.value.code, e.value.kind) == ("no_mediation_committee", "conflict")
    assert "工单所在的和平街道没有人民调解委员会" in e.value.message
    with pytest.raises(WorkflowError, match="工单未定位，无法确定所属街道") as e:
        workflow.refer_to_mediation(t.model_copy(update={"grid": None}), "housing", DISPUTE, CITY, TZ, T0)
    assert e.value.kind == "conflict"
    # A lead a joint meeting named keeps it.
    named = t.model_copy(update={"assigned_via": "meeting"})
    with pytest.raises(WorkflowError, match="联席会议确定，不能转人民调解") as e:
        workflow.refer_to_mediation(named, "housing", DISPUTE, CITY, TZ, T0)
    assert e.value.kind == "conflict"
    for status in (st.REVIEW, st.MEETING, st.RESOLVED, st.SURVEYED, st.CLOSED):
        with pytest.raises(WorkflowError) as e:
            workflow.refer_to_mediation(
                dispute_ticket().model_copy(update={"status": status}), "housing", DISPUTE, CITY, TZ, T0
            )
        assert e.value.kind == "conflict"
        assert f"“{STATUS_NAMES[status]}”，不能转人民调解" in e.value.message


@pytest.mark.parametrize("category", ["city.facility.streetlight", "utility.water"])
def test_only_a_category_the_city_marks_for_mediation_is_referred(category):
    """A broken street light or a water cut is no one's dispute: the department holding it is
    refused, in words that say which categories are and what to do with a dispute misclassified.
    Which categories are is the city's data (`mediation: true` in categories.yaml, a branch's for
    the categories under it), not code."""
    t = assigned_ticket(CITY, category)
    assert t.department is not None
    with pytest.raises(WorkflowError) as e:
        workflow.refer_to_mediation(t, t.department.id, DISPUTE, CITY, TZ, T0)
    assert (e.value.code, e.value.kind) == ("not_a_dispute", "conflict")  # 409 at the API
    name = CITY.category_names(category)[-1]
    assert e.value.message == (
        f"工单{t.ticket_no}的诉求分类为“{name}”，不能转人民调解：可转人民调解的是当事人之间的纠纷"
        "（噪音扰民、物业服务、物业费、邻里纠纷）；确属当事人之间纠纷而分类有误的，请以“诉求分类有误”退单，"
        "或请派单中心改派"
    )
    # The demo city's: 物业管理 said on the branch holds for both its leaves.
    assert CITY.mediation_categories == (
        "env.noise",
        "housing.property.service",
        "housing.property.fee",
        "safety.disputes",
    )

    # A city that marks it (data) refers it; a leaf may say otherwise than its branch.
    def marked(c: dict) -> dict:
        said = {category: True, "housing.property.fee": False}.get(c["id"], c["mediation"])
        return {**c, "mediation": said, "children": [marked(k) for k in c["children"]]}

    data = CITY.model_dump()
    city = City.model_validate({**data, "categories": [marked(c) for c in data["categories"]]})
    assert (city.mediable(category), city.mediable("housing.property.fee")) == (True, False)
    assert city.mediable("housing.property.service")
    out = workflow.refer_to_mediation(t, t.department.id, DISPUTE, city, TZ, T0)
    assert out.ticket.department is not None
    assert out.ticket.department.id == "mediation_s01"


def test_the_desk_may_redispatch_a_ticket_to_a_committee_too():
    out = workflow.redispatch(assigned_ticket(CITY), "mediation_s02", "属于邻里纠纷，转调解", CITY, TZ, T0)
    assert (out.ticket.department.id, out.ticket.assigned_via) == ("mediation_s02", "redispatch")


def committee_ticket() -> Ticket:
    """Referred to the committee of its street, which accepted it."""
    t = workflow.refer_to_mediation(dispute_ticket(), "housing", DISPUTE, CITY, TZ, T0).ticket
    return workflow.accept(t, "mediation_s01", CITY, T0 + timedelta(hours=1)).ticket


def test_the_mediator_resolves_with_the_outcome_and_the_agreement():
    out = workflow.resolve(
        committee_ticket(), "mediation_s01", "经调解双方达成协议并签字", CITY, T0, mediation=AGREED
    )
    n, [event] = out.ticket, out.publish
    terms = "楼上住户承担维修费800元，7日内修复防水层"
    assert (n.status, n.mediation_outcome, n.mediation_agreement) == (st.RESOLVED, "agreed", terms)
    assert event.mediation == Mediation(outcome="agreed", agreement=terms)
    assert (event.action, event.department.id, event.on_time) == ("resolved", "mediation_s01", True)
    assert present.describe({**event.model_dump(mode="json"), "topic": event.topic}, CITY) == (
        f"办结：和平街道人民调解委员会，调解成功，达成协议（协议：{terms}），经调解双方达成协议并签字"
    )
    # The survey goes out as for any resolution; unsatisfied, it is the committee's again, and the
    # outcome stays in view until the next resolution sets it anew.
    reopened = survey(n, 3, 0, "对方没有按协议赔偿").ticket
    assert (reopened.status, reopened.department.id, reopened.reopens) == (st.ASSIGNED, "mediation_s01", 1)
    assert (reopened.mediation_outcome, reopened.mediation_agreement) == ("agreed", terms)
    told = "已告知双方可向人民法院起诉"
    again = workflow.resolve(
        workflow.accept(reopened, "mediation_s01", CITY, T0).ticket,
        "mediation_s01",
        told,
        CITY,
        T0,
        mediation=Mediation(outcome="not_agreed", agreement=" "),
    )
    assert (again.ticket.mediation_outcome, again.ticket.mediation_agreement) == ("not_agreed", "")
    assert again.publish[0].mediation == Mediation(outcome="not_agreed")
    assert (
        present.describe({**again.publish[0].model_dump(mode="json"), "topic": "ticket.updated"}, CITY)
        == f"办结：和平街道人民调解委员会，调解不成，{told}"
    )


def test_a_dispute_the_list_assigns_to_the_committee_is_mediated_by_it_without_a_referral():
    """邻里纠纷 goes by the responsibility list straight to the committee of the grid's street (a
    grid worker's report too): no bureau holds it first to refer it with a new deadline. The
    committee accepts it, cannot refer it again, and resolves it with the mediation's outcome."""
    t = assigned_ticket(CITY, "safety.disputes", "s03c01g02")
    assert (t.status, t.department.id, t.assigned_via, t.co_departments) == (
        st.ASSIGNED,
        "mediation_s03",
        "rule",
        (),
    )
    accepted = workflow.accept(t, "mediation_s03", CITY, T0 + timedelta(hours=1)).ticket
    with pytest.raises(WorkflowError) as e:
        workflow.refer_to_mediation(accepted, "mediation_s03", DISPUTE, CITY, TZ, T0)
    assert e.value.code == "already_with_committee"
    with pytest.raises(WorkflowError) as e:
        workflow.resolve(accepted, "mediation_s03", "已调解", CITY, T0 + timedelta(hours=2))
    assert e.value.code == "mediation_required"
    out = workflow.resolve(
        accepted, "mediation_s03", "组织双方面对面调解", CITY, T0 + timedelta(hours=2), mediation=AGREED
    )
    terms = "楼上住户承担维修费800元，7日内修复防水层"
    assert (out.ticket.status, out.ticket.mediation_outcome, out.ticket.mediation_agreement) == (
        st.RESOLVED,
        "agreed",
        terms,
    )
    [event] = out.publish
    assert (event.department.id, event.mediation, event.on_time) == (
        "mediation_s03",
        Mediation(outcome="agreed", agreement=terms),
        True,
    )


def test_a_committee_must_say_how_the_mediation_ended_and_no_one_else_may():
    t = committee_ticket()
    cases = [
        (None, "mediation", "mediation_required", "须填写调解结果"),
        (
            Mediation(outcome="agreed", agreement="  "),
            "mediation.agreement",
            "agreement_required",
            "协议内容",
        ),
        (
            Mediation(outcome="not_agreed", agreement="赔偿500元"),
            "mediation.agreement",
            "no_agreement",
            "办理结果说明",
        ),
    ]
    for mediation, field, code, words in cases:
        with pytest.raises(WorkflowError) as e:
            workflow.resolve(t, "mediation_s01", "已调解", CITY, T0, mediation=mediation)
        assert (e.value.code, e.value.kind, e.value.field) == (code, "invalid", field)
        assert words in e.value.message
    other = workflow.accept(assigned_ticket(CITY), "urban_mgmt", CITY, T0).ticket
    with pytest.raises(WorkflowError) as e:
        workflow.resolve(other, "urban_mgmt", "已修复", CITY, T0, mediation=AGREED)
    assert (e.value.code, e.value.kind, e.value.field) == ("not_a_committee", "invalid", "mediation")
    plain = workflow.resolve(other, "urban_mgmt", "已修复", CITY, T0)
    assert (plain.ticket.mediation_outcome, plain.publish[0].mediation) == (None, None)
    # Only a resolution carries a mediation.
    with pytest.raises(ValueError, match="only a resolution"):
        TicketUpdated(
            ticket_no="T", action="accepted", status="accepted", actor="d", on_time=True, mediation=AGREED
        )


def test_meeting_decision_reassigns_and_is_final():
    t = assign(
        CITY, classified(CITY, "city.facility.streetlight", confidence=0.55, second=("utility.power", 0.5))
    ).ticket
    out = workflow.meeting_decided(t, t.meeting_id, "power", "供电线路问题", CITY, TZ, T0 + timedelta(days=1))
    assert (out.ticket.status, out.ticket.department.id, out.ticket.assigned_via) == (
        st.ASSIGNED,
        "power",
        "meeting",
    )
    assert workflow.meeting_decided(out.ticket, t.meeting_id, "power", "", CITY, TZ, T0) is None
    with pytest.raises(WorkflowError, match="联席会议"):
        workflow.return_ticket(out.ticket, "power", "not_ours", "", "x", CITY, TZ, T0 + timedelta(days=1))
    # Nor does the desk move it on its own: the meeting's lead keeps it.
    with pytest.raises(WorkflowError, match="联席会议确定，不能改派") as e:
        workflow.redispatch(out.ticket, "urban_mgmt", "属地有误", CITY, TZ, T0 + timedelta(days=1))
    assert e.value.kind == "conflict"


# --- property: no sequence of actions reaches an illegal state ------------------------------------

DEPTS = ["urban_mgmt", "street_s03", "urban_enforcement", "water", "dispatch_desk", "mediation_s03"]
ACTOR = hs.sampled_from(["owner"] * 4 + DEPTS)  # mostly the ticket's own department, sometimes others
ACTIONS = hs.one_of(
    hs.tuples(hs.just("accept"), ACTOR),
    hs.tuples(hs.just("resolve"), ACTOR, hs.sampled_from([None, "agreed", "not_agreed"])),
    hs.tuples(hs.just("mediate"), ACTOR),
    hs.tuples(
        hs.just("return"),
        ACTOR,
        hs.sampled_from([*workflow.RETURN_REASONS, "bad"]),
        hs.sampled_from(["", "规则有误"]),
    ),
    hs.tuples(hs.just("extend"), ACTOR, hs.integers(1, 10)),
    hs.tuples(hs.just("decide_extension"), hs.booleans(), hs.sampled_from(["", "灯杆库存充足，请按期办结"])),
    hs.tuples(hs.just("dispatch"), hs.sampled_from(DEPTS)),
    hs.tuples(hs.just("redispatch"), hs.sampled_from(DEPTS)),
    hs.tuples(hs.just("survey"), hs.sampled_from([1, 2, 3])),
    hs.tuples(hs.just("meeting"), hs.sampled_from([*DEPTS[:4], "mediation_s03"])),
    hs.tuples(hs.just("wait"), hs.integers(1, 48)),
    hs.tuples(hs.just("urge"), hs.sampled_from(["0231", "0232"])),
    hs.tuples(hs.just("verify"), hs.booleans(), hs.sampled_from(["s03c02g03", "s01c01g01"])),
    hs.tuples(hs.just("place"), hs.sampled_from(["s03c02g03", "s01c01g01", "s09c09g09"])),
    # 申请更正事发网格: the worker of a grid (the ticket's, or another) asks; the desk decides.
    hs.tuples(
        hs.just("ask_place"),
        hs.sampled_from(["s03c02g03", "s01c01g01", "s09c09g09"]),
        hs.sampled_from(["s03c02g03", "s01c01g01"]),
        hs.sampled_from(["", "路灯实际在对面小区门口"]),
    ),
    hs.tuples(hs.just("decide_place"), hs.booleans(), hs.sampled_from(["", "现场照片显示位置无误"])),
    # 并案: the ticket merged into another (in any status), or another merged into it.
    hs.tuples(hs.just("merge"), hs.sampled_from(list(Status)), hs.sampled_from(["", "重复反映同一问题"])),
    hs.tuples(hs.just("take_duplicate")),
    # ... or, merged, the ticket it was merged into is merged into another, which it follows.
    hs.tuples(hs.just("carried")),
)
NEXT = "20261123-000097"  # the main ticket a merged ticket's main ticket is merged into


def step(t, action, now, n):
    kind, *args = action
    args = [t.department.id if a == "owner" else a for a in args]
    match kind:
        case "accept":
            return workflow.accept(t, args[0], CITY, now)
        case "resolve":
            outcome = args[1]  # None: no mediation sent (required of a committee, refused of others)
            terms = "赔偿500元" if outcome == "agreed" else ""
            mediation = Mediation(outcome=outcome, agreement=terms) if outcome else None
            return workflow.resolve(t, args[0], "已办理", CITY, now, mediation=mediation)
        case "mediate":
            return workflow.refer_to_mediation(t, args[0], "邻里纠纷，需调解", CITY, TZ, now)
        case "return":
            return workflow.return_ticket(t, args[0], args[1], "", args[2], CITY, TZ, now)
        case "extend":
            return workflow.request_extension(t, args[0], args[1], "需要时间", CITY, now)
        case "decide_extension":
            return workflow.decide_extension(t, args[0], "dispatch_desk", args[1], CITY, TZ, now)
        case "dispatch":
            return workflow.dispatch(t, args[0], None, "", "dispatch_desk", CITY, TZ, now)
        case "redispatch":
            return workflow.redispatch(t, args[0], "分派有误", CITY, TZ, now)
        case "survey":
            if t.status != st.RESOLVED:
                return None
            return survey(t, args[0], n)
        case "meeting":
            return workflow.meeting_decided(t, t.meeting_id or "", args[0], "", CITY, TZ, now)
        case "urge":
            return workflow.urge(t, args[0], "还是没人来", now)
        case "verify":
            return workflow.verify(t, "W017", args[1], args[0], "现场查看", CITY, TZ, now)
        case "place":
            return workflow.place(t, args[0], "dispatch_desk", CITY, now)
        case "ask_place":
            return workflow.request_place(t, "W017", args[1], args[0], args[2], CITY, now)
        case "decide_place":
            return workflow.decide_place(t, args[0], "dispatch_desk", args[1], CITY, now)
        case "merge":
            main = _in(args[0], ticket_no=MAIN)
            # Its own duplicates, as the API reads them with it: closed, pointing at it.
            carried = {m: _in(st.CLOSED, ticket_no=m, merged_into=t.ticket_no) for m in t.merged}
            return workflow.merge(t, main, MAIN, args[1], "dispatch_desk", now, carried=carried)[0]
        case "take_duplicate":
            dup = _in(st.REVIEW, ticket_no=f"20261123-{n + 100:06d}")
            return workflow.merge(dup, t, t.ticket_no, "重复反映同一问题", "dispatch_desk", now)[1]
        case "carried":
            # The ticket it says it was merged into (any other claims it falsely: refused).
            via = t.merged_into or CARRIER
            carrier = _in(st.REVIEW, ticket_no=via, merged=(t.ticket_no,))
            into = NEXT if via != NEXT else MAIN
            main = _in(st.ACCEPTED, ticket_no=into)
            outcomes = workflow.merge(
                carrier, main, into, "重复反映同一问题", "dispatch_desk", now, carried={t.ticket_no: t}
            )
            return outcomes[2]


def check(t, before):
    assert t.status in STATUS_NAMES
    assert t.department is not None  # never unowned
    if t.merged_into is None:  # a duplicate merged from the desk stays the desk's, closed
        assert (t.status == st.REVIEW) == (t.department.id == "dispatch_desk")
    if t.status == st.ACCEPTED:
        assert t.accepted_at is not None
    if t.status in (st.RESOLVED, st.SURVEYED):
        assert t.resolution_note
        assert t.resolved_at is not None
    if t.status in (st.RESOLVED, st.SURVEYED, st.CLOSED) and t.merged_into is None:
        # A committee's resolution says how the mediation ended (agreed: with the terms); no other.
        committee = CITY.department_by_id[t.department.id].kind == "mediation"
        assert (t.mediation_outcome is not None) == committee
        assert (t.mediation_outcome == "agreed") == bool(t.mediation_agreement)
    if t.assigned_via == "mediation" and t.assigned_via != before.assigned_via:
        # The committee of the ticket's street (s03, unless the desk placed it elsewhere since).
        assert t.grid is not None
        assert t.department.id == f"mediation_{t.grid.street}"
        assert before.assigned_via != "meeting"
    if t.merged_into is not None:  # 并案: closed, from where no department had taken it up
        assert t.status == st.CLOSED
        assert t.merged_into in (MAIN, NEXT)  # merged, then maybe carried along, never elsewhere
        assert before.merged_into is not None or before.status in (st.REVIEW, st.ASSIGNED)
        assert not t.merged  # a main ticket merged into another takes its duplicates along
    elif t.status == st.CLOSED:
        assert t.rating in (1, 2)
    if t.status == st.CLOSED:
        assert t.closed_at is not None
    if t.status == st.MEETING:
        assert t.meeting_id
    if t.extension_request is not None:
        assert t.status == st.ACCEPTED
    if t.place_request is not None:  # waits only where the desk can decide it, for another grid
        assert t.status in ALLOWED_STATUS_CHANGES["decide_place"].sources
        assert t.grid is not None
        assert t.place_request["grid"] in CITY.grids
        assert t.place_request["grid"] != t.grid.grid
        assert len(t.place_request["reason"]) >= workflow.REASON_MIN
    if before.place_request is not None and t.place_request is not None:
        assert t.place_request == before.place_request  # never replaced: decided first
    if t.grid != before.grid:
        assert t.place_request is None  # any placement settles the request
    assert t.returns <= 2
    assert t.reopens <= 2
    assert t.returns >= before.returns
    assert t.reopens >= before.reopens
    assert t.urges >= before.urges
    if t.urges > before.urges:  # an urge moves nothing but its count
        assert (t.urges, t.status) == (before.urges + 1, before.status)
    if t.grid != before.grid and t.assigned_at == before.assigned_at:  # placed: nothing else moves
        assert (t.status, t.department, t.resolve_by) == (before.status, before.department, before.resolve_by)
        assert t.grid is not None
        assert t.grid.grid in CITY.grids
        assert before.status in ALLOWED_STATUS_CHANGES["place"].sources
    if t.verified_at is not None:  # a check is of the last resolution, by the grid's worker
        assert t.verified_by == "W017"
        done = t.status in (st.RESOLVED, st.SURVEYED, st.CLOSED)
        if t.verification == "not_solved":
            assert not done  # back with the department until it resolves it again
        elif not done:
            # Confirmed, then the resident's 不满意 reopened it: the check stays in view until the
            # next resolution (see test_a_grid_worker_confirms_a_resolution_once).
            assert t.reopens >= 1
            assert t.rating == 3 or t.solved is False
    if t.merged_into is None:
        assert t.merged[: len(before.merged)] == before.merged  # duplicates are only ever added
    if len(t.merged) > len(before.merged):  # one more resident waits on it; nothing else moves
        assert (len(t.merged), t.status) == (len(before.merged) + 1, before.status)
        assert before.status in (st.REVIEW, st.ASSIGNED, st.ACCEPTED, st.MEETING)
    if before.status == st.CLOSED:
        # Nothing moves a closed ticket, but a merged one follows its main ticket into another.
        moving = {"merged_into", "applied", "updated_at"}
        assert t.model_dump(exclude=moving) == before.model_dump(exclude=moving)
        assert t == before or before.merged_into not in (None, t.merged_into)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.sampled_from(["city.appearance.garbage", "env.noise"]), hs.lists(ACTIONS, max_size=25))
def test_no_sequence_of_actions_reaches_an_illegal_state(category, actions):
    # Garbage, whose department the place decides; a neighbour's noise, which may be referred to
    # the street's mediation committee (转人民调解 is refused of garbage).
    t = assigned_ticket(CITY, category, "s03c02g03")
    check(t, t)  # the start is legal too, and checked whatever the actions
    now = T0
    for n, action in enumerate(actions):
        if action[0] == "wait":
            now += timedelta(hours=action[1])
            continue
        try:
            out = step(t, action, now, n)
        except WorkflowError as e:
            assert e.message
            assert e.kind in ("invalid", "not_found", "forbidden", "conflict")
            continue
        if out is not None:
            check(out.ticket, t)
            assert all(e.ticket_no == t.ticket_no for e in out.publish)
            t = out.ticket


def test_a_category_listed_as_urgent_is_flagged_urgent():
    sla = CITY.sla.model_copy(update={"urgent_categories": ("housing.elevator",)})
    city = CITY.model_copy(update={"sla": sla})
    t = assigned_ticket(city, "housing.elevator")
    assert t.urgent
    assert t.resolve_by == T0 + timedelta(hours=2)
    assert not assigned_ticket(city, "housing.safety").urgent


def test_resolving_straight_from_assigned_folds_resolved_in_the_record_whatever_the_order():
    """The API's resolve of a ticket not yet accepted takes both steps at one instant; the record
    orders events of one instant by cause, so its row must end resolved, read in any order."""
    from services.records.projection import fold_ticket
    from services.router.views import _resolve

    t = assigned_ticket(CITY)
    out = _resolve("已修复", ())(t, "urban_mgmt", CITY, TZ, T0 + timedelta(hours=1))
    accepted, resolved_event = out.publish
    assert resolved_event.caused_by == accepted.event_id
    assert accepted.occurred_at == resolved_event.occurred_at
    appeal = {"topic": "appeal.received", **c_appeal(t)}
    for order in ([accepted, resolved_event], [resolved_event, accepted]):
        events = [appeal, *({"topic": e.topic, **e.model_dump(mode="json")} for e in order)]
        row = fold_ticket(events, {})
        assert row is not None
        assert row["status"] == "resolved"


def c_appeal(t: Ticket) -> dict:
    """The appeal a ticket came from, as the record stores it."""
    return AppealReceived(
        ticket_no=t.ticket_no,
        channel=t.channel,
        text=t.text,
        received_at=t.received_at,
        occurred_at=t.received_at,
    ).model_dump(mode="json")
