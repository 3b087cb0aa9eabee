"""Deadline timers and joint-meeting / hotspot logic: pure, no I/O."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from services.router import meetings, timers, workflow
from services.router.meetings import MeetingError
from services.router.timers import Timer
from shared import tickets as st
from shared.events import Caller, TicketAssigned
from tests.cities import demo_city
from tests.router_factory import T0, TZ, assign, assigned_ticket, classified, garbage_hotspot

CITY = demo_city()
SUP = CITY.sla.supervision


def by_kind(ts):
    return {(t.stage, t.kind): t for t in ts}


def test_an_assigned_ticket_gets_warning_overdue_and_escalation_timers():
    t = assigned_ticket(CITY)  # general: respond 24 h, resolve 7 working days
    ts = by_kind(timers.timers_for(t, SUP))
    assert set(ts) == {
        ("respond", "warning"),
        ("respond", "overdue"),
        ("resolve", "warning"),
        ("resolve", "overdue"),
        ("resolve", "escalated"),
    }
    assert ts["respond", "warning"].due == T0 + timedelta(hours=24 * 0.8)
    assert ts["respond", "overdue"].due == t.respond_by
    window = t.resolve_by - T0
    assert ts["resolve", "escalated"].due == T0 + window * 1.5
    # Accepted: the respond clock stopped; resolved: every clock stopped.
    accepted = workflow.accept(t, "urban_mgmt", CITY, T0).ticket
    assert {k for k in by_kind(timers.timers_for(accepted, SUP))} == {
        ("resolve", "warning"),
        ("resolve", "overdue"),
        ("resolve", "escalated"),
    }
    done = workflow.resolve(accepted, "urban_mgmt", "好了", CITY, T0).ticket
    assert timers.timers_for(done, SUP) == []


def test_a_ticket_accepted_late_is_overdue_again_only_when_its_resolution_is():
    t = assigned_ticket(CITY)
    ts = by_kind(timers.timers_for(t, SUP))
    late = timers.fire(t, ts["respond", "overdue"], CITY, TZ).ticket
    assert late.overdue
    out = workflow.accept(late, "urban_mgmt", CITY, t.respond_by + timedelta(hours=1))
    [event] = out.publish
    assert (event.on_time, event.marked_overdue) == (False, True)  # the late response is counted
    assert not out.ticket.overdue  # the deadline that runs now, the resolution's, has not passed
    again = timers.fire(out.ticket, ts["resolve", "overdue"], CITY, TZ).ticket
    assert again.overdue
    # Accepted only once the resolution was due too: overdue still.
    assert workflow.accept(late, "urban_mgmt", CITY, t.resolve_by + timedelta(hours=1)).ticket.overdue


def test_a_ticket_waiting_for_manual_dispatch_has_the_desks_clock():
    c = classified(CITY, "city.facility.streetlight", confidence=0.3)  # too unsure: the dispatch desk
    t = assign(CITY, c).ticket
    assert t.status == st.REVIEW
    ts = by_kind(timers.timers_for(t, SUP))
    hours = timedelta(hours=SUP.dispatch_hours)
    assert set(ts) == {("dispatch", "warning"), ("dispatch", "overdue")}
    assert ts["dispatch", "overdue"].due == T0 + hours
    assert ts["dispatch", "warning"].due == T0 + hours * 0.8
    late = timers.fire(t, ts["dispatch", "overdue"], CITY, TZ)
    [event] = late.publish
    assert late.ticket.overdue
    assert "派单时限" in event.note
    assert "派单中心" in event.note
    assert event.supervision.supervisor == CITY.responsibilities.dispatch_desk
    # The desk dispatches: the department starts with its own clocks and no overdue mark of the desk's.
    out = workflow.dispatch(late.ticket, "urban_mgmt", None, "", "op1", CITY, TZ, T0 + hours * 2).ticket
    assert not out.overdue
    assert ("dispatch", "overdue") not in by_kind(timers.timers_for(out, SUP))
    assert timers.fire(out, ts["dispatch", "overdue"], CITY, TZ) is None
    # ... and so does a reviewer's correction of the classification.
    corrected = assign(
        CITY,
        classified(CITY, "city.facility.streetlight", reviewed_by="desk", at=T0 + hours * 2),
        late.ticket,
    ).ticket
    assert corrected.status == st.ASSIGNED
    assert not corrected.overdue


def test_a_ticket_held_for_a_joint_meeting_is_overdue_when_the_meeting_misses_its_deadline():
    # Top two categories close and for different departments: a meeting, 3 working days to decide.
    t = assign(
        CITY, classified(CITY, "city.facility.streetlight", confidence=0.55, second=("utility.power", 0.5))
    ).ticket
    assert t.status == st.MEETING
    assert t.meeting_by == T0 + timedelta(days=3)
    ts = by_kind(timers.timers_for(t, SUP))
    assert set(ts) == {("meeting", "overdue")}
    assert ts["meeting", "overdue"].due == t.meeting_by
    late = timers.fire(t, ts["meeting", "overdue"], CITY, TZ)
    [event] = late.publish
    assert late.ticket.overdue
    assert t.meeting_id in event.note
    assert "联席会议决定时限" in event.note
    assert event.supervision.supervisor == CITY.responsibilities.dispatch_desk
    decided = workflow.meeting_decided(late.ticket, t.meeting_id, "power", "", CITY, TZ, t.meeting_by).ticket
    assert not decided.overdue
    assert decided.meeting_by is None
    assert timers.fire(decided, ts["meeting", "overdue"], CITY, TZ) is None
    assert ("meeting", "overdue") not in by_kind(timers.timers_for(decided, SUP))


def test_a_patrol_report_nobody_can_rate_has_a_check_clock_and_its_overdue_goes_to_the_street():
    patrol = assigned_ticket(CITY).model_copy(
        update={"channel": "patrol", "caller": Caller(), "operator_id": "W017"}
    )
    done_at = T0 + timedelta(hours=3)
    accepted = workflow.accept(patrol, "urban_mgmt", CITY, done_at).ticket
    t = workflow.resolve(accepted, "urban_mgmt", "井盖已更换", CITY, done_at).ticket
    ts = by_kind(timers.timers_for(t, SUP))
    hours = timedelta(hours=SUP.check_hours)
    assert set(ts) == {("check", "warning"), ("check", "overdue")}
    assert ts["check", "overdue"].due == done_at + hours
    assert ts["check", "warning"].due == done_at + hours * SUP.warning_ratio
    late = timers.fire(t, ts["check", "overdue"], CITY, TZ)
    assert late is not None
    [event] = late.publish
    assert (late.ticket.status, late.ticket.overdue) == (st.RESOLVED, True)
    assert "现场核查时限" in event.note
    # The department is done: the grid's street office directs its grid workers.
    assert event.supervision.supervisor == "street_s01"
    # Checked, the clock stops (the check closes it), and a timer left over fires nothing.
    checked = workflow.verify(late.ticket, "W017", "s01c01g01", True, "", CITY, TZ, done_at + hours * 2)
    assert checked.ticket.status == st.CLOSED
    assert timers.timers_for(checked.ticket, SUP) == []
    assert timers.fire(checked.ticket, ts["check", "overdue"], CITY, TZ) is None
    # A resident's phone: the survey closes it, so there is no check clock; nor for what the
    # worker dealt with on the spot.
    with_caller = workflow.resolve(
        workflow.accept(assigned_ticket(CITY), "urban_mgmt", CITY, T0).ticket, "urban_mgmt", "好了", CITY, T0
    ).ticket
    assert timers.timers_for(with_caller, SUP) == []
    assert timers.timers_for(t.model_copy(update={"assigned_via": "on_spot"}), SUP) == []


def test_member_round_trip():
    t = assigned_ticket(CITY)
    every = timers.timers_for(t, SUP)
    assert every
    for timer in every:
        again = Timer.parse(timer.member, timer.due.timestamp())
        assert again == timer


def test_overdue_marks_the_ticket_and_names_the_supervisor_once():
    t = assigned_ticket(CITY)
    overdue = by_kind(timers.timers_for(t, SUP))["respond", "overdue"]
    out = timers.fire(t, overdue, CITY, TZ)
    [e] = out.publish
    assert out.ticket.overdue
    assert e.action == "overdue"
    assert e.supervision.supervisor == "urban_mgmt"
    assert "督办" in e.note
    assert e.status == st.ASSIGNED
    assert timers.fire(out.ticket, overdue, CITY, TZ) is None  # fired once, whoever fires it again
    assert timers.fire(t, overdue, CITY, TZ).publish[0].event_id == e.event_id  # same id on any replica


def test_escalation_goes_to_the_fallback_owner():
    t = assigned_ticket(CITY)
    esc = by_kind(timers.timers_for(t, SUP))["resolve", "escalated"]
    out = timers.fire(t, esc, CITY, TZ)
    assert out.ticket.escalated
    assert out.publish[0].supervision.to == "district_office"


def test_stale_timers_fire_nothing():
    t = assigned_ticket(CITY)
    ts = by_kind(timers.timers_for(t, SUP))
    accepted = workflow.accept(t, "urban_mgmt", CITY, T0).ticket
    assert timers.fire(accepted, ts["respond", "overdue"], CITY, TZ) is None  # accepted in time
    asked = workflow.request_extension(accepted, "urban_mgmt", 5, "等材料", CITY, T0).ticket
    extended = workflow.decide_extension(asked, True, "dispatch_desk", "", CITY, TZ, T0).ticket
    assert timers.fire(extended, ts["resolve", "overdue"], CITY, TZ) is None  # the deadline moved
    new = by_kind(timers.timers_for(extended, SUP))["resolve", "overdue"]
    assert new.deadline == extended.resolve_by
    assert timers.fire(extended, new, CITY, TZ) is not None
    assert timers.fire(None, new, CITY, TZ) is None


def test_approved_extension_lifts_the_overdue_mark():
    t = workflow.accept(assigned_ticket(CITY), "urban_mgmt", CITY, T0).ticket
    late = timers.fire(t, by_kind(timers.timers_for(t, SUP))["resolve", "overdue"], CITY, TZ).ticket
    asked = workflow.request_extension(late, "urban_mgmt", 5, "等材料", CITY, late.resolve_by).ticket
    ok = workflow.decide_extension(
        asked, True, "dispatch_desk", "", CITY, TZ, late.resolve_by + timedelta(hours=1)
    )
    assert not ok.ticket.overdue


# --- meetings ------------------------------------------------------------------------------------


def spec(reason="hotspot", grid="s03c02g03", summoned=("urban_mgmt",)):
    return meetings.spec(
        CITY,
        mid="M1",
        reason=reason,
        grid=grid,
        category="city.appearance.garbage",
        summoned=summoned,
        now=T0,
        tz=TZ,
    )


def test_the_street_office_of_the_grid_leads():
    assert meetings.lead_street_office(CITY, "s03c02g03") == "street_s03"
    assert meetings.lead_street_office(CITY, "s01c01g01") == "street_s01"
    assert meetings.lead_street_office(CITY, None) == "district_office"
    s = spec(summoned=("urban_mgmt", "nonexistent", "urban_mgmt"))
    assert s.summoned == ("street_s03", "urban_mgmt")
    assert s.deadline.astimezone(TZ).date().isoformat() == "2026-11-26"  # 3 working days


def test_merge_opens_once_and_attaches_later_tickets():
    m, added = meetings.merge(None, spec(), ["a", "b"], T0)
    assert added == ["a", "b"]
    assert m.status == "open"
    assert m.lead_street == "street_s03"
    same, none = meetings.merge(m, spec(), ["a"], T0)
    assert none == []
    assert same is m
    more, added = meetings.merge(m, spec(summoned=("water",)), ["b", "c"], T0)
    assert added == ["c"]
    assert more.tickets == ["a", "b", "c"]
    assert "water" in more.summoned


def test_check_in_and_decide():
    m, _ = meetings.merge(None, spec(), ["a"], T0)
    with pytest.raises(MeetingError) as e:
        meetings.check_in(m, "water", T0)
    assert e.value.kind == "forbidden"
    m = meetings.check_in(m, "urban_mgmt", T0)
    assert meetings.check_in(m, "urban_mgmt", T0 + timedelta(hours=1)) is m  # checking in twice: no change
    with pytest.raises(MeetingError):
        meetings.decide(m, "water", "dispatch_desk", "", CITY, T0)  # not summoned
    with pytest.raises(MeetingError):
        meetings.decide(m, "dispatch_desk", "dispatch_desk", "", CITY, T0)
    with pytest.raises(MeetingError, match="请选择主办单位") as none:
        meetings.decide(m, " ", "dispatch_desk", "", CITY, T0)  # none chosen: said so, not as an id
    assert (none.value.code, none.value.field) == ("lead_required", "lead")
    d = meetings.decide(m, "urban_mgmt", "dispatch_desk", "城管委牵头清运", CITY, T0)
    assert (d.status, d.lead) == ("decided", "urban_mgmt")
    with pytest.raises(MeetingError, match="已作出决定"):
        meetings.decide(d, "street_s03", "dispatch_desk", "", CITY, T0)
    with pytest.raises(MeetingError):
        meetings.check_in(d, "street_s03", T0)


def test_an_open_meeting_is_listed_by_its_deadline_and_a_decided_one_by_its_decision():
    m, _ = meetings.merge(None, spec(), ["a"], T0)
    assert meetings.listed_as(m) == ("open", m.deadline.timestamp())
    later = T0 + timedelta(days=40)  # decided long after its deadline: listed from its decision
    d = meetings.decide(m, "urban_mgmt", "dispatch_desk", "", CITY, later)
    assert meetings.listed_as(d) == ("decided", later.timestamp())
    # Listed for DECIDED_LISTED_DAYS after the decision, however old the meeting.
    assert meetings.listed_since(later.timestamp() + 29 * 86400) < later.timestamp()
    assert meetings.listed_since(later.timestamp() + 31 * 86400) > later.timestamp()


def test_a_meeting_taking_more_tickets_keeps_its_place_on_the_lists():
    """Most writes of a hotspot's meeting only attach tickets: the lists are left alone then, and
    rewritten when the meeting is convened, summons another department, is attended or decided."""
    m, _ = meetings.merge(None, spec(), ["a"], T0)
    assert meetings.listing(None) != meetings.listing(m)  # convened
    more, added = meetings.merge(m, spec(), ["b", "c"], T0)
    assert added == ["b", "c"]
    assert meetings.listing(more) == meetings.listing(m)
    wider, _ = meetings.merge(m, spec(summoned=("water",)), ["d"], T0)
    assert meetings.listing(wider) != meetings.listing(m)
    attended = meetings.check_in(m, "street_s03", T0)
    assert meetings.listing(attended) != meetings.listing(m)
    decided = meetings.decide(m, "urban_mgmt", "dispatch_desk", "", CITY, T0)
    assert meetings.listing(decided) != meetings.listing(m)


@pytest.mark.parametrize(
    ("open_count", "decided_count", "page", "size", "spans"),
    [
        (3, 4, 1, 20, ((0, 3), (0, 4))),  # all on one page: the open ones, then the decided ones
        (25, 4, 1, 20, ((0, 20), (0, 0))),
        (25, 4, 2, 20, ((20, 25), (0, 4))),  # the page where the open ones end
        (20, 30, 2, 20, ((20, 20), (0, 20))),  # the open ones filled page 1 exactly
        (20, 30, 3, 20, ((20, 20), (20, 30))),
        (5, 5, 4, 20, ((5, 5), (5, 5))),  # past the end: nothing
        (0, 0, 1, 20, ((0, 0), (0, 0))),
    ],
)
def test_a_page_of_meetings_takes_the_open_ones_then_the_decided_ones(
    open_count, decided_count, page, size, spans
):
    opened, decided = meetings.page_spans(open_count, decided_count, page, size)
    assert ((opened.start, opened.stop), (decided.start, decided.stop)) == spans


@settings(max_examples=200, deadline=None)
@given(hs.integers(0, 60), hs.integers(0, 60), hs.integers(1, 5))
def test_the_pages_of_meetings_show_each_meeting_once_in_order(open_count, decided_count, size):
    listed = [("open", i) for i in range(open_count)] + [("decided", i) for i in range(decided_count)]
    shown = []
    for page in range(1, (open_count + decided_count) // size + 3):
        opened, decided = meetings.page_spans(open_count, decided_count, page, size)
        assert len(opened) + len(decided) <= size
        shown += [("open", i) for i in opened] + [("decided", i) for i in decided]
    assert shown == listed


@pytest.mark.parametrize(
    ("ages_days", "count", "window", "hot"),
    [
        ([0, 1, 2, 3, 4], 5, 7, True),  # 5 in 7 days
        ([0, 1, 2, 3], 5, 7, False),  # only 4
        ([0, 1, 2, 3, 8], 5, 7, False),  # one is older than the window
        ([0.1] * 6, 5, 7, True),
        ([0, 6.9, 6.95, 1, 2], 5, 7, True),
        ([0, 1], 2, 0.5, False),
    ],
)
def test_hot_clusters(ages_days, count, window, hot):
    now = 1_800_000_000.0
    members = [(f"t{i}", now - a * 86400) for i, a in enumerate(ages_days)]
    got = meetings.hot_clusters({("c", "g"): members, ("c", "h"): members[:1]}, now, window, count)
    assert (("c", "g") in got) == hot
    assert ("c", "h") not in got
    if hot:
        inside = [m for m in members if m[1] >= now - window * 86400]
        assert got["c", "g"] == [no for no, _ in sorted(inside, key=lambda m: m[1])]  # oldest first


def test_a_hold_written_with_its_assignment_names_it():
    """A reader that gets the hold before the assignment knows the assignment is on its way."""
    assigned = assign(CITY, classified(CITY, "city.appearance.garbage", "s03c02g03"))
    t, spec = assigned.ticket, garbage_hotspot(CITY)
    cause = next(e for e in assigned.publish if isinstance(e, TicketAssigned))
    [hold] = workflow.hold_for_meeting(t, spec, T0 + timedelta(seconds=1), cause=cause).publish
    assert hold.caused_by == cause.event_id
    assert hold.occurred_at == T0 + timedelta(seconds=1)  # the hold's time, not the assignment's
    # The same assignment gives the same hold: consumers take a repeat for the one event it is.
    assert workflow.hold_for_meeting(t, spec, T0 + timedelta(seconds=1), cause=cause).publish[0].event_id == (
        hold.event_id
    )


def test_hold_for_meeting_only_moves_open_tickets():
    t = assigned_ticket(CITY, "city.appearance.garbage", "s03c02g03")
    spec = garbage_hotspot(CITY)
    held = workflow.hold_for_meeting(t, spec, T0)
    assert held.ticket.status == st.MEETING
    assert held.ticket.meeting_id == "M1"
    assert held.ticket.meeting_by == spec.deadline
    assert held.publish[0].meeting == spec
    assert held.publish[0].caused_by is None
    assert held.publish[0].occurred_at == T0
    assert workflow.hold_for_meeting(held.ticket, spec, T0) is None
    done = workflow.resolve(
        workflow.accept(t, "street_s03", CITY, T0).ticket, "street_s03", "好", CITY, T0
    ).ticket
    assert workflow.hold_for_meeting(done, spec, T0) is None


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(order=hs.permutations(range(10)), accept_at=hs.none() | hs.integers(0, 9))
def test_every_timer_fires_at_most_once_whatever_the_order(order, accept_at):
    """Replicas may see the timers in any order, twice over; the ticket records each at most once,
    and a ticket accepted meanwhile records no respond-stage timer after its acceptance. Overdue is
    what a timer fired since the acceptance says: accepted (at T0, before its resolution is due),
    a ticket is no longer overdue for its response."""
    t = assigned_ticket(CITY)
    all_timers = timers.timers_for(t, SUP) * 2
    fired: list[tuple[str, str]] = []
    since_accepted: list[str] = []
    accepted_step = None
    for step, i in enumerate(order):
        if step == accept_at and t.status == st.ASSIGNED:
            t, accepted_step = workflow.accept(t, "urban_mgmt", CITY, T0).ticket, step
            since_accepted = []
        out = timers.fire(t, all_timers[i], CITY, TZ)
        if out is not None:
            t = out.ticket
            fired.append((all_timers[i].stage, all_timers[i].kind))
            since_accepted.append(all_timers[i].kind)
            assert accepted_step is None or all_timers[i].stage == "resolve"
    assert len(fired) == len(set(fired))
    assert t.overdue == ("overdue" in since_accepted)
    assert t.escalated == (("resolve", "escalated") in fired)


@settings(max_examples=200, deadline=None)
@given(ages=hs.lists(hs.floats(0, 20), max_size=30), count=hs.integers(2, 8), window=hs.floats(0.5, 10))
def test_a_cluster_is_hot_exactly_when_enough_appeals_fall_in_the_window(ages, count, window):
    now = 1_800_000_000.0
    members = [(f"t{i}", now - a * 86400) for i, a in enumerate(ages)]
    hot = meetings.hot_clusters({("c", "g"): members}, now, window, count)
    # On the timestamps, as the code compares them: at 1.8e9 s a float has no room for an age a
    # hair over the window (0.5000000000000001 days), and the age must not be compared apart.
    inside = [ts for _, ts in members if now - window * 86400 <= ts]
    assert (("c", "g") in hot) == (len(inside) >= count)
