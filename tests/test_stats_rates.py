"""The three rates and the score from counters, checked against hand-computed values. Pure."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from services.notifier import scoring
from services.notifier.scoring import Weights, fields_for, groups_for, rates
from shared.events import (
    DeadlineNotice,
    DepartmentRef,
    Mediation,
    Merge,
    Place,
    SurveyAnswered,
    TicketAssigned,
    TicketUpdated,
    Urge,
    Verification,
)
from tests.cities import demo_city

W = Weights(basic=0.9, response=0.1, resolution=0.5, satisfaction=0.4)


def test_rates_by_hand():
    # 10 assigned, 8 accepted in time; 5 answered: 2 satisfied, 2 basically, 1 unsatisfied; 3 solved.
    counts = {
        "assigned": 10,
        "responded": 9,
        "responded_on_time": 8,
        "answered": 5,
        "solved": 3,
        "satisfied": 2,
        "basically_satisfied": 2,
        "unsatisfied": 1,
    }
    r = rates(counts, W)
    assert r["response_rate"] == 0.8
    assert r["resolution_rate"] == 0.6
    assert r["satisfaction_rate"] == 0.76  # (2 + 0.9 × 2) / 5
    assert r["score"] == 68.4  # 100 × (0.1×0.8 + 0.5×0.6 + 0.4×0.76) = 8 + 30 + 30.4


def test_no_data_is_none_not_zero_and_the_score_renormalises():
    r = rates({"assigned": 4, "responded_on_time": 3}, W)
    assert r["response_rate"] == 0.75
    assert r["resolution_rate"] is None
    assert r["satisfaction_rate"] is None
    assert rates({}, W)["score"] is None
    # Answers but nothing due yet: the score of the two survey rates, their weights renormalised.
    answered = rates({"due_counted": 4, "answered": 2, "solved": 1, "satisfied": 1, "unsatisfied": 1}, W)
    assert answered["response_rate"] is None
    assert answered["score"] == 50.0  # (0.5 × 0.5 + 0.4 × 0.5) / 0.9


def test_no_survey_answered_is_no_score():
    """A score of the response rate alone (100 for a grid that accepted on time) is not comparable
    with the others', made mostly of what residents said: none, shown —, and not ranked. Counting
    the response alone is the city's own choice when the survey rates weigh nothing."""
    only_response = {"assigned": 3, "due_counted": 3, "due": 3, "due_on_time": 3}
    r = rates(only_response, W)
    assert (r["response_rate"], r["resolution_rate"], r["score"]) == (1.0, None, None)
    assert rates(only_response, Weights(response=1, resolution=0, satisfaction=0))["score"] == 100.0
    # Among the unranked (样本不足): one with a real 90% satisfaction before the one with none.
    nine = {"answered": 2, "solved": 2, "satisfied": 1, "basically_satisfied": 1}
    assert rates(nine, W)["satisfaction_rate"] == 0.95
    rows = [{"group": "a"} | rates(only_response, W), {"group": "b"} | rates(only_response | nine, W)]
    assert [(r["group"], r["ranked"], r["score"]) for r in scoring.rank(rows, 3)] == [
        ("b", False, 98.0),  # 100 × (0.1 + 0.5 + 0.4 × 0.95)
        ("a", False, None),
    ]
    assert [r["ranked"] for r in scoring.rank(rows, 0)] == [True, False]  # even with no minimum


def test_basic_weight_changes_only_the_satisfaction_rate():
    counts = {"answered": 4, "solved": 4, "satisfied": 2, "basically_satisfied": 2}
    assert rates(counts, Weights(basic=1.0))["satisfaction_rate"] == 1.0
    assert rates(counts, Weights(basic=0.5))["satisfaction_rate"] == 0.75


def test_weights_from_settings():
    assert Weights.parse(0.9, "0.1,0.5,0.4") == W
    for bad in ("0.1,0.5", "a,b,c", "-1,1,1", "0,0,0"):
        with pytest.raises(ValueError, match="SCORE_WEIGHTS"):
            Weights.parse(0.9, bad)
    with pytest.raises(ValueError, match="SATISFACTION_BASIC_WEIGHT"):
        Weights.parse(1.5, "1,1,1")


def _assigned(via="rule", first: bool | None = None) -> TicketAssigned:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    return TicketAssigned(
        ticket_no="T",
        department=DepartmentRef(id="d", name="D"),
        via=via,
        explanation="x",
        category="c",
        grid=None,
        respond_by=now,
        resolve_by=now,
        first=first,
    )


def test_the_direct_answer_rate_counts_each_ticket_once_however_often_it_is_sent_on():
    """直接答复率: the calls answered on the spot of the tickets dispatched, each ticket once. A
    ticket returned and sent on, moved by the desk (改派) or sent out again by a joint meeting's
    decision counts again in 派单 (for the department it went to) but not again here."""
    answered, rule = _assigned("answered", first=True), _assigned("rule", first=True)
    sent_on = [_assigned(via, first=False) for via in ("reroute", "redispatch", "meeting")]
    assert fields_for(answered) == ("assigned", "due_counted", "first_assigned", "answered_directly")
    assert fields_for(rule) == ("assigned", "due_counted", "first_assigned")
    assert all(fields_for(e) == ("assigned", "due_counted") for e in sent_on)
    counts: dict[str, int] = {}
    for event in (answered, rule, *sent_on):
        for f in fields_for(event):
            counts[f] = counts.get(f, 0) + 1
    got = rates(counts, W)
    assert (got["assigned"], got["first_assigned"], got["direct_answer_rate"]) == (5, 2, 0.5)
    # Days counted before assignments said which is the first keep the share of all of them.
    before = {"assigned": 5, "answered_directly": 1}
    assert scoring.direct_answer_base(before) == "assigned"
    assert rates(before, W)["direct_answer_rate"] == 0.2
    # An assignment that does not say (an older version's) is no first dispatch to count.
    assert fields_for(_assigned("rule")) == ("assigned", "due_counted")


def test_the_response_rate_counts_the_responses_that_came_due():
    """A ticket still inside its response deadline is not held against its department: the rate is
    of the responses that came due, each counted once, by the deadline's notice or the late step
    that beat it."""
    notice = TicketUpdated(
        ticket_no="T",
        action="overdue",
        status="assigned",
        actor="system",
        supervision=DeadlineNotice(
            stage="respond", stage_name="签收", deadline=datetime(2031, 3, 5, tzinfo=UTC)
        ),
    )
    assert fields_for(notice) == ("due",)
    resolve = notice.model_copy(
        update={"supervision": notice.supervision.model_copy(update={"stage": "resolve"})}
    )
    assert fields_for(resolve) == ()  # a late resolution is not a late response
    warning = notice.model_copy(update={"action": "warning"})
    assert fields_for(warning) == ()
    # 10 assigned this morning: 3 accepted in time, 1 late, 1 not accepted by its deadline, 5 that
    # still have time. 3 of the 5 that came due.
    counts = {
        "assigned": 10,
        "due_counted": 10,
        "responded": 4,
        "responded_on_time": 3,
        "due": 5,
        "due_on_time": 3,
    }
    assert rates(counts, W)["response_rate"] == 0.6
    fresh = {"assigned": 10, "due_counted": 10}
    assert rates(fresh, W)["response_rate"] is None  # nothing due yet: no rate, not 0%
    # Days counted before `due` existed: the measure they were counted for.
    assert rates({"assigned": 10, "responded_on_time": 8}, W)["response_rate"] == 0.8


@pytest.mark.parametrize(
    ("counts", "rate", "measure"),
    [
        # Dispatched the day before the period, accepted in it on time; another overdue in it: the
        # group had no new dispatch, and its rate is 1 on time of the 2 that came due, not 1/0.
        ({"responded": 1, "responded_on_time": 1, "due": 2, "due_on_time": 1}, 0.5, ("due_on_time", "due")),
        ({"due": 1}, 0.0, ("due_on_time", "due")),  # only a missed deadline: 0%, not —
        # A reopened ticket accepted again, on time: no new assignment (a reopening assigns none).
        ({"responded": 1, "responded_on_time": 1, "due": 1, "due_on_time": 1}, 1.0, ("due_on_time", "due")),
        # Late after the overdue notice, which counted it the day before: nothing came due today.
        ({"responded": 1}, None, ("responded_on_time", "assigned")),
        # Only days counted before `due` existed: the old measure, as before.
        ({"assigned": 10, "responded_on_time": 8}, 0.8, ("responded_on_time", "assigned")),
        # Below zero is a move in progress (统计中), not a count: no rate at all for now.
        ({"assigned": 9, "responded_on_time": 8, "due_counted": -1}, None, ("responded_on_time", "assigned")),
    ],
)
def test_the_response_rate_of_a_group_with_responses_due_but_no_dispatch_in_the_period(counts, rate, measure):
    assert scoring.response_measure(counts) == measure
    assert rates(counts, W)["response_rate"] == rate


def test_which_counters_an_event_adds_to():
    assert fields_for(_assigned()) == ("assigned", "due_counted")
    assert fields_for(_assigned("dispatch_desk")) == ()
    # A ticket moved to another department counts again, for it: a return's reroute, the desk's 改派.
    assert (
        fields_for(_assigned("reroute")) == fields_for(_assigned("redispatch")) == ("assigned", "due_counted")
    )
    accepted = TicketUpdated(ticket_no="T", action="accepted", status="accepted", actor="d", on_time=True)
    late = TicketUpdated(ticket_no="T", action="accepted", status="accepted", actor="d", on_time=False)
    assert fields_for(accepted) == ("responded", "responded_on_time", "due", "due_on_time")
    assert fields_for(late) == ("responded", "due")  # late, before the overdue notice went out
    assert fields_for(late.model_copy(update={"marked_overdue": True})) == ("responded",)  # it counted
    urged = TicketUpdated(ticket_no="T", action="urged", status="accepted", actor="0231", urge=Urge(urges=1))
    assert fields_for(urged) == ("urged",)  # 催办件数, in no rate
    # 现场核查: every check counts, one found not solved counts apart too; neither in a rate.
    checked = TicketUpdated(
        ticket_no="T",
        action="verified",
        status="resolved",
        actor="W017",
        verification=Verification(solved=True),
    )
    failed = checked.model_copy(update={"status": "assigned", "verification": Verification(solved=False)})
    assert fields_for(checked) == ("verified",)
    assert fields_for(failed) == ("verified", "verification_failed")
    counts = {"assigned": 4, "responded_on_time": 2, "answered": 2, "solved": 1, "satisfied": 1}
    with_checks = counts | {"verified": 3, "verification_failed": 2}
    assert rates(with_checks, W) == rates(counts, W) | {"verified": 3, "verification_failed": 2}
    # 人民调解: a committee's resolution counts as mediated, an agreement apart too; neither in a rate.
    resolved = TicketUpdated(ticket_no="T", action="resolved", status="resolved", actor="d", on_time=True)
    agreed = resolved.model_copy(update={"mediation": Mediation(outcome="agreed", agreement="赔偿")})
    assert fields_for(resolved) == ()
    assert fields_for(agreed) == ("mediated", "mediation_agreed")
    assert fields_for(resolved.model_copy(update={"mediation": Mediation(outcome="not_agreed")})) == (
        "mediated",
    )
    with_mediation = counts | {"mediated": 2, "mediation_agreed": 1}
    assert rates(with_mediation, W) == rates(counts, W) | {"mediated": 2, "mediation_agreed": 1}

    # 并案: every merged duplicate counts, for whoever held it, in no rate; one a department held and
    # had not accepted yet answers for its response (on time within the deadline), so the merge never
    # lowers the response rate: (r + 1) / a >= r / a. One from the desk's waiting room, nothing else.
    merge = Merge(into="M", duplicate="T")
    merged = TicketUpdated(
        ticket_no="T", action="merged", status="closed", actor="dispatch_desk", merge=merge
    )
    on_time = merged.model_copy(update={"merge": merge.model_copy(update={"response_on_time": True})})
    late = merged.model_copy(update={"merge": merge.model_copy(update={"response_on_time": False})})
    assert fields_for(merged) == ("merged",)
    assert fields_for(on_time) == ("merged", "responded", "responded_on_time", "due", "due_on_time")
    assert fields_for(late) == ("merged", "responded", "due")
    assert fields_for(late.model_copy(update={"marked_overdue": True})) == ("merged", "responded")
    main_side = merged.model_copy(
        update={"ticket_no": "M", "action": "duplicate_merged", "status": "accepted"}
    )
    assert fields_for(main_side) == ()
    # Carried along when its main ticket is merged into another (a chained merge): its own merge
    # counted, for whoever held it; following the main ticket counts for nobody again.
    carried = merged.model_copy(
        update={"action": "remerged", "merge": Merge(into="N", duplicate="T", via="M")}
    )
    assert fields_for(carried) == ()
    for r, a in ((0, 1), (3, 4), (2, 5)):
        before = rates({"assigned": a, "responded_on_time": r}, W)["response_rate"]
        after = rates({"assigned": a, "responded_on_time": r + 1, "merged": 1}, W)["response_rate"]
        assert after >= before
    assert rates(counts | {"merged": 2}, W) == rates(counts, W) | {"merged": 2}

    def answer(**kw) -> SurveyAnswered:
        return SurveyAnswered(ticket_no="T", survey_id="s", text="", **{"rating": None} | kw)

    assert fields_for(answer(rating=2, solved=True)) == ("answered", "basically_satisfied", "solved")
    assert fields_for(answer(rating=1, solved=False)) == ("answered", "satisfied")
    assert fields_for(answer(outcome="comment")) == ()
    assert fields_for(answer(outcome="no_answer")) == ("no_answer",)
    assert fields_for(answer(outcome="opted_out")) == ("skipped",)
    # Ended by the resident's erasure of their personal data: no opt-out, no anonymous appeal, and
    # nothing about the department's work: counted nowhere (nor by the record's `skipped`).
    assert fields_for(answer(outcome="erased")) == ()
    # 电话回访: an answer taken on an operator's call counts as any answer, and apart as by phone.
    assert fields_for(answer(rating=3, solved=False, by="op09")) == (
        "answered",
        "unsatisfied",
        "answered_by_phone",
    )
    assert fields_for(answer(rating=1, solved=True, by="op09")) == (
        "answered",
        "satisfied",
        "solved",
        "answered_by_phone",
    )
    assert fields_for(answer(outcome="no_answer", by="op09")) == ("no_answer",)  # only answers
    assert rates(counts | {"answered_by_phone": 1}, W) == rates(counts, W) | {"answered_by_phone": 1}
    assert set(scoring.FIELDS) >= {"assigned", "no_answer", "skipped"}


def test_an_answer_to_a_survey_whose_resolution_was_sent_back_counts_in_no_rate():
    """现场核查未解决 sent the ticket back, then the resident answered the old survey 满意: the answer
    rates work found not done, so it is neither satisfied nor solved, nor in the denominator; it is
    counted apart (作废回访), and the rates are those without it."""
    voided = SurveyAnswered(ticket_no="T", survey_id="s", text="1", rating=1, solved=True, void=True)
    assert fields_for(voided) == ("answered_void",)
    assert fields_for(voided.model_copy(update={"by": "op09"})) == ("answered_void",)
    assert fields_for(voided.model_copy(update={"void": False})) == ("answered", "satisfied", "solved")
    # Only answers: a void survey's end without one is what it was.
    assert fields_for(voided.model_copy(update={"rating": None, "outcome": "no_answer"})) == ("no_answer",)
    counts = {"assigned": 2, "responded_on_time": 2, "answered": 1, "unsatisfied": 1}
    assert rates(counts | {"answered_void": 1}, W) == rates(counts, W) | {"answered_void": 1}
    assert rates(counts | {"answered_void": 1}, W)["resolution_rate"] == 0.0


def test_a_group_with_too_few_answers_is_listed_after_the_ranked_ones():
    """样本不足: no answers (no score: the response rate alone would be 100) or one 满意 (100) is
    not ranked above a department with answers (96); moving its only survey off its books keeps it
    unranked; among the unranked, by score, those with none last."""
    few = {"assigned": 3, "responded_on_time": 3, "due_counted": 3, "due": 3, "due_on_time": 3}
    one = few | {"answered": 1, "solved": 1, "satisfied": 1}
    many = few | {"answered": 5, "solved": 5, "satisfied": 4, "basically_satisfied": 1}
    rows = [
        {"group": "a"} | rates(few, W),
        {"group": "b"} | rates(one, W),
        {"group": "c"} | rates(many, W),
        {"group": "d"} | rates({}, W),
    ]
    assert [r["score"] for r in rows[:3]] == [None, 100.0, 99.2]
    ranked = scoring.rank(rows, 3)
    assert [(r["group"], r["ranked"]) for r in ranked] == [
        ("c", True),
        ("b", False),
        ("a", False),
        ("d", False),
    ]
    assert [r["group"] for r in scoring.rank(rows, 1)] == ["b", "c", "a", "d"]
    assert [r["ranked"] for r in scoring.rank(rows, 1)] == [True, True, False, False]


def test_groups_map_the_grid_to_its_street():
    city = demo_city()
    g = groups_for(city, "urban_mgmt", "city.facility.streetlight", "s01c01g01")
    assert g == {
        "department": "urban_mgmt",
        "category": "city.facility.streetlight",
        "grid": "s01c01g01",
        "street": "s01",
    }
    assert groups_for(city, None, None, None)["street"] == "unknown"


def _placed(grid: str, was: str | None, at: datetime) -> TicketUpdated:
    return TicketUpdated(
        ticket_no="T",
        action="placed",
        status="accepted",
        actor="desk",
        grid=grid,
        place=Place(grid=grid, was=was),
        occurred_at=at,
    )


def test_a_placement_moves_the_tickets_earlier_counts_to_its_grid_and_street():
    """Each event before the placement that counts, on its own day (Shanghai), out of the grid and
    street it counts in and into the new ones; nothing after the placement, nothing uncounted, no
    department or category."""
    city = demo_city()
    sh = ZoneInfo("Asia/Shanghai")
    monday = datetime(2026, 11, 22, 20, tzinfo=UTC)  # the 23rd in Shanghai
    assigned = _assigned().model_copy(update={"grid": "s01c01g01", "occurred_at": monday})
    accepted = TicketUpdated(
        ticket_no="T",
        action="accepted",
        status="accepted",
        actor="d",
        on_time=True,
        grid="s01c01g01",
        occurred_at=datetime(2026, 11, 24, 3, tzinfo=UTC),
    )
    warning = TicketUpdated(  # counted nowhere
        ticket_no="T",
        action="warning",
        status="assigned",
        actor="system",
        grid="s01c01g01",
        supervision=DeadlineNotice(stage="respond", stage_name="签收", deadline=monday),
    )
    placed = _placed("s02c01g01", "s01c01g01", datetime(2026, 11, 25, 3, tzinfo=UTC))
    later = accepted.model_copy(update={"event_id": "later", "grid": "s02c01g01"})
    history = [assigned, warning, accepted, placed, later]
    moves = scoring.placement_moves(city, placed, history, sh)
    took = {"responded": 1, "responded_on_time": 1, "due": 1, "due_on_time": 1}
    assert moves == {
        ("grid", "s01c01g01", date(2026, 11, 23)): {"assigned": -1, "due_counted": -1},
        ("grid", "s02c01g01", date(2026, 11, 23)): {"assigned": 1, "due_counted": 1},
        ("street", "s01", date(2026, 11, 23)): {"assigned": -1, "due_counted": -1},
        ("street", "s02", date(2026, 11, 23)): {"assigned": 1, "due_counted": 1},
        ("grid", "s01c01g01", date(2026, 11, 24)): {f: -n for f, n in took.items()},
        ("grid", "s02c01g01", date(2026, 11, 24)): took,
        ("street", "s01", date(2026, 11, 24)): {f: -n for f, n in took.items()},
        ("street", "s02", date(2026, 11, 24)): took,
    }
    # In the same street: the street's counts stay where they are.
    nearby = _placed("s01c02g01", "s01c01g01", placed.occurred_at)
    assert {(d, g) for d, g, _ in scoring.placement_moves(city, nearby, [assigned, nearby], sh)} == {
        ("grid", "s01c01g01"),
        ("grid", "s01c02g01"),
    }
    # Routed without a grid (未定位): out of "unknown", the street too.
    lost = assigned.model_copy(update={"grid": None})
    assert scoring.placement_moves(city, placed, [lost, placed], sh) == {
        ("grid", "unknown", date(2026, 11, 23)): {"assigned": -1, "due_counted": -1},
        ("grid", "s02c01g01", date(2026, 11, 23)): {"assigned": 1, "due_counted": 1},
        ("street", "unknown", date(2026, 11, 23)): {"assigned": -1, "due_counted": -1},
        ("street", "s02", date(2026, 11, 23)): {"assigned": 1, "due_counted": 1},
    }


def test_a_second_placement_moves_the_counts_from_where_the_first_one_put_them():
    city = demo_city()
    sh = ZoneInfo("Asia/Shanghai")
    day = datetime(2026, 11, 23, 3, tzinfo=UTC)
    assigned = _assigned().model_copy(update={"grid": "s01c01g01", "occurred_at": day})
    first = _placed("s02c01g01", "s01c01g01", day)
    urged = TicketUpdated(
        ticket_no="T", action="urged", status="assigned", actor="0231", urge=Urge(urges=1), grid="s02c01g01"
    ).model_copy(update={"occurred_at": day})
    second = _placed("s02c01g02", "s02c01g01", day)
    moves = scoring.placement_moves(city, second, [assigned, first, urged, second], sh)
    assert moves == {
        ("grid", "s02c01g01", date(2026, 11, 23)): {"assigned": -1, "due_counted": -1, "urged": -1},
        ("grid", "s02c01g02", date(2026, 11, 23)): {"assigned": 1, "due_counted": 1, "urged": 1},
    }


def test_a_placement_not_in_the_history_or_with_nothing_before_it_moves_nothing():
    city = demo_city()
    sh = ZoneInfo("Asia/Shanghai")
    day = datetime(2026, 11, 23, 3, tzinfo=UTC)
    assigned = _assigned().model_copy(update={"grid": "s01c01g01", "occurred_at": day})
    placed = _placed("s02c01g01", "s01c01g01", day)
    assert scoring.placement_moves(city, placed, [], sh) == {}  # the history is gone
    assert scoring.placement_moves(city, placed, [assigned], sh) == {}  # not in it: nothing known
    assert scoring.placement_moves(city, placed, [placed, assigned], sh) == {}  # after it: counted there
    desk = _assigned("dispatch_desk").model_copy(update={"grid": "s01c01g01"})
    assert scoring.placement_moves(city, placed, [desk, placed], sh) == {}  # counted nowhere
    accepted = TicketUpdated(ticket_no="T", action="accepted", status="accepted", actor="d", on_time=True)
    assert scoring.placement_moves(city, accepted, [assigned, accepted], sh) == {}  # no placement


def _returned_and_dispatched(first: str | None, then: str | None) -> list:
    """A ticket assigned by its rule in grid `first`, urged, its response deadline passed (应响应),
    returned to the desk (属地有误: the desk's waiting room counts nowhere) and dispatched again by
    the desk in grid `then` (人工派单 with 事发网格), each on its own day in Shanghai."""
    day = [datetime(2026, 11, d, 3, tzinfo=UTC) for d in (23, 24, 25, 26)]
    assigned = _assigned().model_copy(update={"grid": first, "occurred_at": day[0]})
    urged = TicketUpdated(
        ticket_no="T", action="urged", status="assigned", actor="0231", urge=Urge(urges=1), grid=first
    ).model_copy(update={"occurred_at": day[1]})
    overdue = TicketUpdated(
        ticket_no="T",
        action="overdue",
        status="assigned",
        actor="system",
        grid=first,
        supervision=DeadlineNotice(stage="respond", stage_name="签收", deadline=day[1]),
        occurred_at=day[1],
    )
    desk = _assigned("dispatch_desk").model_copy(update={"grid": first, "occurred_at": day[2]})
    again = _assigned("operator").model_copy(
        update={"grid": then, "grid_chosen": True, "occurred_at": day[3]}
    )
    return [assigned, urged, overdue, desk, again]


def test_the_desks_dispatch_in_another_grid_moves_the_tickets_earlier_counts_there():
    """退单 then 人工派单 in another grid: an assignment in a grid the desk chose sets the grid the
    ticket counts in (`sets_grid`), so the counts made in the old grid before it move to the new
    one, on their days, as a placement's do; the new assignment counts there itself and is not
    moved. The desk keeping the grid moves nothing."""
    city = demo_city()
    sh = ZoneInfo("Asia/Shanghai")
    history = _returned_and_dispatched("s01c01g01", "s02c01g01")
    again = history[-1]
    assert scoring.sets_grid(again)
    assert not scoring.sets_grid(history[0])  # the first assignment: nothing before it to move
    assert not scoring.sets_grid(history[1])  # an urge carries the grid, and sets nothing
    moves = scoring.placement_moves(city, again, history, sh)
    assert moves == {
        (dim, group, date(2026, 11, day)): {f: sign for f in fields}
        for dim, old, new in (("grid", "s01c01g01", "s02c01g01"), ("street", "s01", "s02"))
        for day, fields in ((23, ("assigned", "due_counted")), (24, ("urged", "due")))
        for group, sign in ((old, -1), (new, 1))
    }
    # Kept in its grid (the desk dispatched it where it was): nothing moves.
    kept = _returned_and_dispatched("s01c01g01", "s01c01g01")
    assert scoring.placement_moves(city, kept[-1], kept, sh) == {}
    # Routed without a grid (未定位), then dispatched by the desk in one: out of "unknown".
    lost = _returned_and_dispatched(None, "s02c01g01")
    assert {(d, g) for d, g, _ in scoring.placement_moves(city, lost[-1], lost, sh)} == {
        ("grid", "unknown"),
        ("grid", "s02c01g01"),
        ("street", "unknown"),
        ("street", "s02"),
    }


def test_a_placement_after_the_desks_dispatch_in_another_grid_moves_the_counts_from_where_they_are():
    """Counts moved by the desk's dispatch into grid B are in B: a later placement in C moves them,
    and the dispatch's own, from B (not from A, where they were made)."""
    city = demo_city()
    sh = ZoneInfo("Asia/Shanghai")
    history = _returned_and_dispatched("s01c01g01", "s02c01g01")
    placed = _placed("s02c01g02", "s02c01g01", datetime(2026, 11, 27, 3, tzinfo=UTC))
    moves = scoring.placement_moves(city, placed, [*history, placed], sh)
    assert {(d, g) for d, g, _ in moves} == {("grid", "s02c01g01"), ("grid", "s02c01g02")}
    assert moves[("grid", "s02c01g01", date(2026, 11, 26))] == {"assigned": -1, "due_counted": -1}
    assert moves[("grid", "s02c01g01", date(2026, 11, 23))] == {"assigned": -1, "due_counted": -1}


def test_a_group_whose_counts_are_in_the_middle_of_a_move_shows_no_rate_and_is_not_ranked():
    """A move made before a count it moves (an earlier event on another topic still to be read)
    leaves the old grid a counter below zero, or a part above its whole (a 满意 answer taken out of
    `answered` before its `solved` came in): 统计中, with no rate and no score rather than a figure
    below 0% or above 100%, and after the ranked groups. Consistent again, it is rated as before."""
    ok = {"assigned": 4, "due_counted": 4, "due": 2, "due_on_time": 1, "answered": 3, "solved": 3}
    ok |= {"satisfied": 2, "unsatisfied": 1}
    assert not scoring.settling({f: ok.get(f, 0) for f in scoring.FIELDS})
    assert rates(ok, W)["settling"] is False
    assert rates(ok, W)["resolution_rate"] == 1.0
    # Moved out before it came: one answer (unsatisfied, not solved) and one due on time.
    ahead = ok | {"answered": 2, "unsatisfied": 0, "due": 1, "due_on_time": 0}
    r = rates(ahead | {"solved": 3}, W)  # solved 3 of 2 answered: 150% were it shown
    assert r["settling"] is True
    assert [r[k] for k in ("response_rate", "resolution_rate", "satisfaction_rate", "score")] == [None] * 4
    assert r["answered"] == 2  # the counters as they are
    below = rates({"assigned": 1, "due_counted": 1, "due": -1, "due_on_time": -1}, W)
    assert below["settling"] is True
    assert below["response_rate"] is None
    assert below["score"] is None
    ranked = scoring.rank(
        [
            {"group": "b", **r},
            {"group": "a", **rates(ok, W)},
            {"group": "c", **rates({"assigned": 1, "answered": 1, "unsatisfied": 1}, W)},
        ],
        min_answers=3,
    )
    # b after the unranked c, whose score (0) rests on too few answers: b has none to show.
    assert [(g["group"], g["ranked"]) for g in ranked] == [("a", True), ("c", False), ("b", False)]
    # The measure before `due` (on time / assigned), over a period cut between an assignment and
    # its acceptance: no rate above 100%.
    assert rates({"assigned": 1, "responded": 2, "responded_on_time": 2}, W)["response_rate"] is None
