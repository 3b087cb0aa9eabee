"""Routing by the responsibility list, deadlines and the working-day calendar: pure, no I/O."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime, timedelta

import pytest
import yaml

from services.router import meetings
from services.router.rules import (
    Precedent,
    answered_on_call,
    candidates,
    contested,
    following_precedent,
    handled_on_spot,
    located_apart,
    mediation_committee,
    responsible,
    route,
    routing_for,
    street_office,
    undecided,
)
from services.router.sla import add_working_days, deadlines, is_workday, sla_class_for
from shared.city import DEMO_CITY_DIR, CityConfigError, ResponsibilityRule, load_city
from shared.events import CategoryScore
from tests.router_factory import T0, TZ, assigned_ticket, grid


@pytest.mark.parametrize(
    ("category", "grid_id", "lead", "co", "via"),
    [
        ("city.facility.streetlight", "s01c01g01", "urban_mgmt", (), "rule"),  # branch rule
        ("city.facility.drainage", "s01c01g01", "water", ("urban_mgmt",), "rule"),  # leaf beats branch
        ("city.appearance.garbage", "s01c01g01", "urban_mgmt", (), "rule"),
        ("city.appearance.garbage", "s03c02g03", "street_s03", ("urban_mgmt",), "rule"),  # grid rule wins
        (
            "city.appearance.street_vending",
            "s02c01g02",
            "street_s02",
            ("urban_enforcement",),
            "rule",
        ),  # street
        ("city.appearance.street_vending", "s01c01g01", "urban_enforcement", (), "rule"),
        ("housing.property.service", "s01c02g02", "property_wanjia", ("housing",), "rule"),  # community
        ("housing.property.service", "s03c01g01", "housing", (), "rule"),
        ("safety.fire", "s03c01g02", "street_s03", ("fire",), "rule"),
        ("safety.fire", "s01c01g01", "fire", (), "rule"),
        ("safety.dogs", "s03c01g02", "police", ("urban_enforcement",), "rule"),  # not fire's street rule
        ("safety.disputes", "s02c02g01", "mediation_s02", (), "rule"),  # the grid's street's committee
        ("safety.disputes", "s03c01g02", "mediation_s03", (), "rule"),
        ("env.noise", "s02c02g01", "environment", ("police", "urban_enforcement"), "rule"),
    ],
)
def test_the_most_specific_rule_wins(city, category, grid_id, lead, co, via):
    r = route(city, category, grid(city, grid_id), 0.9, 0.5)
    assert (r.lead, r.co, r.via) == (lead, co, via)
    assert r.rule
    assert r.rule in r.explanation
    assert "0.90" in r.explanation
    assert city.grids[grid_id].grid.name in r.explanation  # by name: staff read it
    assert re.search(r"s\d\d(c\d\d)?(g\d\d)?", r.explanation) is None  # nor a street's or community's code


def test_low_confidence_goes_to_the_dispatch_desk_and_says_why(city):
    r = route(city, "city.facility.streetlight", grid(city, "s01c01g01"), 0.31, 0.5)
    assert (r.lead, r.via) == ("dispatch_desk", "dispatch_desk")
    assert "0.31" in r.explanation
    assert "0.50" in r.explanation


def test_unknown_grid_goes_to_the_dispatch_desk_where_the_place_decides_the_department(city):
    """Garbage is the street's in one grid (南苑批发市场), street vending the street's in 建设街道:
    without a grid no rule can be chosen, so a person places it. So is a dispute: its street's
    mediation committee takes it."""
    for category in ("city.appearance.garbage", "city.appearance.street_vending", "safety.disputes"):
        assert category in city.placed_categories
        r = route(city, category, grid(city, None), 0.9, 0.5)
        assert (r.lead, r.via) == ("dispatch_desk", "dispatch_desk")
        assert "未能确定所属网格，而本类诉求按地点由不同单位承办" in r.explanation


def test_unknown_grid_is_routed_by_the_rule_where_the_place_decides_nothing(city):
    """A streetlight is the district's urban management's wherever it is: an address on a road
    through several grids does not send it to the desk."""
    assert "city.facility.streetlight" not in city.placed_categories
    r = route(city, "city.facility.streetlight", grid(city, None), 0.9, 0.5)
    assert (r.lead, r.via) == ("urban_mgmt", "rule")
    assert "未能确定所属网格（按权责清单，本类诉求各处均由同一单位承办）" in r.explanation
    # Low confidence still goes to the desk, placed or not.
    assert route(city, "city.facility.streetlight", grid(city, None), 0.3, 0.5).via == "dispatch_desk"


def test_no_rule_falls_back_to_the_district_office(city, tmp_path):
    folder = tmp_path / "city"
    shutil.copytree(DEMO_CITY_DIR, folder)
    resp = yaml.safe_load((folder / "responsibilities.yaml").read_text(encoding="utf-8"))
    resp["rules"] = [r for r in resp["rules"] if not r["category"].startswith("education")]
    (folder / "responsibilities.yaml").write_text(yaml.safe_dump(resp, allow_unicode=True), encoding="utf-8")
    c = load_city(folder)
    r = route(c, "education.school", grid(c, "s01c01g01"), 0.9, 0.5)
    assert (r.lead, r.via) == ("district_office", "fallback")
    assert "兜底" in r.explanation
    # A joint meeting named a lead for the cluster (先例): it takes the fallback's appeals too.
    p = Precedent(
        category="education.school", grid="s01c01g01", lead="police", meeting_id="M1", decided_at=T0
    )
    settled = following_precedent(c, r, "education.school", grid(c, "s01c01g01"), p, T0)
    assert settled is not None
    assert (settled.lead, settled.via) == ("police", "rule")
    assert "权责清单中没有对应规则，原应由" in settled.explanation


def test_equally_specific_rules_are_ambiguous(city):
    # The loader refuses such a list; a city built in code (or an older validator) may still have one.
    rules = (*city.responsibilities.rules, ResponsibilityRule(category="city.greening", lead="urban_mgmt"))
    c = city.model_copy(
        update={"responsibilities": city.responsibilities.model_copy(update={"rules": rules})}
    )
    r = route(c, "city.greening", grid(c, "s01c01g01"), 0.9, 0.5)
    assert r.lead == "landscape"
    assert r.ambiguous == ("urban_mgmt",)
    assert contested(c, r, (), grid(c, "s01c01g01"), 0.1) == ("urban_mgmt",)


def test_close_runner_up_with_another_department_is_contested(city):
    g = grid(city, "s01c01g01")
    r = route(city, "city.facility.streetlight", g, 0.55, 0.5)
    close = (
        CategoryScore(category="city.facility.streetlight", probability=0.55),
        CategoryScore(category="utility.power", probability=0.50),
    )
    far = (close[0], CategoryScore(category="utility.power", probability=0.30))
    same_dept = (close[0], CategoryScore(category="city.facility.road_damage", probability=0.54))
    assert contested(city, r, close, g, 0.1) == ("power",)
    assert contested(city, r, far, g, 0.1) == ()
    assert contested(city, r, same_dept, g, 0.1) == ()


def test_a_near_tie_of_two_unlikely_readings_goes_to_the_desk_not_to_a_meeting(city):
    weak = (
        CategoryScore(category="city.facility.streetlight", probability=0.14),
        CategoryScore(category="utility.power", probability=0.12),
    )
    desk = undecided(city, weak, 0.1, 0.5)
    assert desk is not None
    assert (desk.lead, desk.via) == (city.responsibilities.dispatch_desk, "dispatch_desk")
    assert desk.explanation == "分类难以确定（城市管理/市政设施/路灯故障14%、公共事业/供电12%），转人工派单"
    # Together likely enough (a real contest between two readings), far apart, or one reading: None.
    assert undecided(city, (weak[0], weak[1].model_copy(update={"probability": 0.36})), 0.1, 0.5) is None
    assert undecided(city, (weak[0].model_copy(update={"probability": 0.3}), weak[1]), 0.1, 0.5) is None
    assert undecided(city, weak[:1], 0.1, 0.5) is None
    assert undecided(city, weak, 0.1, 0.26) is None  # the floor is the city's: 0.26 is not below it


def test_the_routing_of_a_classification_is_the_rules_then_a_contest_or_the_desk(city):
    """`routing_for`, which the router and the hotline preview share: a near tie of two unlikely
    readings is the desk's, one of two likely readings a contest, a person's correction neither."""
    g = grid(city, "s01c01g01")
    weak = (
        CategoryScore(category="city.facility.streetlight", probability=0.14),
        CategoryScore(category="utility.power", probability=0.12),
    )
    routing, others = routing_for(city, "city.facility.streetlight", g, 0.14, 0.05, weak)
    assert (routing.via, others) == ("dispatch_desk", ())
    routing, others = routing_for(city, "city.facility.streetlight", g, 0.14, 0.05, weak, reviewed=True)
    assert (routing.via, others) == ("rule", ("power",))
    likely = tuple(s.model_copy(update={"probability": s.probability * 4}) for s in weak)
    routing, others = routing_for(city, "city.facility.streetlight", g, 0.56, 0.05, likely)
    assert (routing.via, others) == ("rule", ("power",))


def test_an_address_in_another_grid_than_the_coordinates_is_confirmed_by_a_person_where_it_matters(city):
    """定位与地址不一致 (`GridMatch.address_grid`): the desk confirms the place of a dispute (its
    street's committee takes it, and the address is in another street) and of any patrol report; a
    streetlight, the district's anywhere, goes out by its rule, the explanation saying it for the
    department to look at both places. A reviewer's correction is the person's confirmation."""
    apart = grid(city, "s01c01g01").model_copy(update={"method": "coordinates", "address_grid": "s02c01g01"})
    said = "定位与地址不一致：定位在和平里社区第一网格，地址在建设社区第一网格"
    assert located_apart(city, apart) == said
    dispute = (CategoryScore(category="safety.disputes", probability=0.95),)
    routing, others = routing_for(city, "safety.disputes", apart, 0.95, 0.5, dispute)
    assert (routing.lead, routing.via, others) == ("dispatch_desk", "dispatch_desk", ())
    assert routing.explanation == f"{said}，请核实事发网格后人工派单（公共安全/邻里纠纷）"
    routing, _ = routing_for(city, "safety.disputes", apart, 0.95, 0.5, dispute, reviewed=True)
    assert (routing.lead, routing.via) == ("mediation_s01", "rule")

    light = (CategoryScore(category="city.facility.streetlight", probability=0.95),)
    routing, _ = routing_for(city, "city.facility.streetlight", apart, 0.95, 0.5, light)
    assert (routing.lead, routing.via) == ("urban_mgmt", "rule")
    assert routing.explanation.endswith(f"；{said}，请核实事发位置")
    # At the desk for its low confidence: the desk reads the disagreement too.
    routing, _ = routing_for(city, "city.facility.streetlight", apart, 0.2, 0.5, light)
    assert routing.via == "dispatch_desk"
    assert routing.explanation.startswith("分类置信度0.20低于阈值0.50")
    assert routing.explanation.endswith(f"；{said}")

    patrol = apart.model_copy(update={"method": "patrol", "address_grid": "s01c01g02"})
    routing, _ = routing_for(city, "city.facility.streetlight", patrol, 0.95, 0.5, light)
    assert routing.via == "dispatch_desk"
    assert routing.explanation.startswith(
        "上报网格与地址不一致：网格员所属和平里社区第一网格，地址在和平里社区第二网格"
    )
    # No disagreement: as before.
    agreed = apart.model_copy(update={"address_grid": None})
    assert located_apart(city, agreed) == ""
    routing, _ = routing_for(city, "safety.disputes", agreed, 0.95, 0.5, dispute)
    assert (routing.lead, routing.via) == ("mediation_s01", "rule")
    assert "不一致" not in routing.explanation


SMOKE = "env.air"  # a barbecue's smoke: the environment bureau's by the responsibility list


def smoke_precedent(**changes) -> Precedent:
    """A joint meeting decided two days before T0 that 城管执法 leads on smoke in s01c01g01."""
    return Precedent(
        category=SMOKE,
        grid="s01c01g01",
        lead="urban_enforcement",
        meeting_id="M0123456789abcde",
        decided_at=T0 - timedelta(days=2),
    ).model_copy(update=changes)


def test_a_joint_meeting_s_lead_takes_the_next_appeals_of_its_cluster_while_the_precedent_lasts(city):
    """先例: once a joint meeting named the lead of a category in a grid, the next confident appeals
    of that cluster go to it instead of the rule's department (which returned such a ticket), the
    explanation naming the meeting and what the list would have said."""
    g = grid(city, "s01c01g01")
    top = (CategoryScore(category=SMOKE, probability=0.9),)
    by_rule, _ = routing_for(city, SMOKE, g, 0.9, 0.5, top)
    assert (by_rule.lead, by_rule.via, by_rule.precedent) == ("environment", "rule", "")
    routing, others = routing_for(city, SMOKE, g, 0.9, 0.5, top, precedent=smoke_precedent(), now=T0)
    assert (routing.lead, routing.via, routing.co, others) == ("urban_enforcement", "rule", (), ())
    assert routing.precedent == "M0123456789abcde"
    assert routing.rule == "联席会议M0123456789abcde决定"
    assert routing.explanation.startswith(
        "按联席会议（会议编号M0123456789abcde）确定的主办单位派单：区城市管理综合行政执法局"
    )
    assert "按权责清单原应派市生态环境局示范区分局" in routing.explanation
    # A reviewer's correction is what the appeal is about: the precedent holds for it too.
    reviewed, _ = routing_for(
        city, SMOKE, g, 0.3, 0.0, top, reviewed=True, precedent=smoke_precedent(), now=T0
    )
    assert reviewed.lead == "urban_enforcement"
    # Until its days are up (supervision.meeting_precedent_days, 30 in the demo city), not after.
    days = city.sla.supervision.meeting_precedent_days
    assert days == 30
    last = T0 - timedelta(days=2) + timedelta(days=days) - timedelta(seconds=1)
    assert routing_for(city, SMOKE, g, 0.9, 0.5, top, precedent=smoke_precedent(), now=last)[0].lead == (
        "urban_enforcement"
    )
    expired = last + timedelta(seconds=1)
    assert routing_for(city, SMOKE, g, 0.9, 0.5, top, precedent=smoke_precedent(), now=expired)[0] == by_rule
    # The same lead as the rule's: the rule's co-handlers stay, and the explanation says both agree.
    same = following_precedent(city, by_rule, SMOKE, g, smoke_precedent(lead="environment"), T0)
    assert same is not None
    assert (same.lead, same.co) == ("environment", by_rule.co)
    assert "权责清单同样指定该单位" in same.explanation


def test_a_precedent_does_not_apply_elsewhere_nor_to_appeals_a_person_or_first_contact_handles(city):
    g = grid(city, "s01c01g01")
    top = (CategoryScore(category=SMOKE, probability=0.9),)
    by_rule, _ = routing_for(city, SMOKE, g, 0.9, 0.5, top)
    p = smoke_precedent()

    def routed(category=SMOKE, where=g, confidence=0.9, precedent=p, now=T0):
        scores = (CategoryScore(category=category, probability=confidence),)
        return routing_for(city, category, where, confidence, 0.5, scores, precedent=precedent, now=now)[0]

    assert routed(where=grid(city, "s01c01g02")).lead == "environment"  # another grid
    assert routed(category="env.noise").lead == "environment"  # another category
    assert routed(where=grid(city, None)).lead == "environment"  # no grid: no cluster
    assert routed(now=None).lead == "environment"  # no clock: no precedent asked
    assert routed(precedent=None) == by_rule
    # Low confidence still waits for a person at the desk.
    desk = routed(confidence=0.3)
    assert (desk.via, desk.precedent) == ("dispatch_desk", "")
    # A lead the city no longer has, or the desk: the rules, as before.
    assert routed(precedent=smoke_precedent(lead="gone")).lead == "environment"
    assert routed(precedent=smoke_precedent(lead=city.responsibilities.dispatch_desk)).lead == "environment"
    # A city with no precedents (meeting_precedent_days: 0).
    sup = city.sla.supervision.model_copy(update={"meeting_precedent_days": 0})
    off = city.model_copy(update={"sla": city.sla.model_copy(update={"supervision": sup})})
    assert routing_for(off, SMOKE, g, 0.9, 0.5, top, precedent=p, now=T0)[0].lead == "environment"
    # Closed at first contact (answered on the call, handled on the spot): never routed by rule.
    for first_contact in (answered_on_call(city, "op1"), handled_on_spot(city, g, "w1")):
        assert following_precedent(city, first_contact, SMOKE, g, p, T0) is None


def test_a_precedent_settles_a_contest_its_meeting_was_convened_for(city):
    """A streetlight or the power line (a close runner-up): contested, a joint meeting each time; once
    one named the lead for the cluster, the next goes to that lead with no meeting. A vague call
    (two unlikely readings) still waits for the desk."""
    g = grid(city, "s01c01g01")
    close = (
        CategoryScore(category="city.facility.streetlight", probability=0.55),
        CategoryScore(category="utility.power", probability=0.50),
    )
    routing, others = routing_for(city, "city.facility.streetlight", g, 0.55, 0.5, close)
    assert others == ("power",)
    p = smoke_precedent(category="city.facility.streetlight", lead="power")
    routing, others = routing_for(city, "city.facility.streetlight", g, 0.55, 0.5, close, precedent=p, now=T0)
    assert (routing.lead, others) == ("power", ())
    weak = tuple(s.model_copy(update={"probability": s.probability / 4}) for s in close)
    routing, _ = routing_for(city, "city.facility.streetlight", g, 0.14, 0.05, weak, precedent=p, now=T0)
    assert routing.via == "dispatch_desk"


def test_a_meeting_sets_its_precedent_as_it_is_decided(city):
    """`meetings.precedent`: a decision with a category and a grid; not a decided meeting written
    again (a later meeting may have set the cluster's since), nor one without a cluster."""
    opened = meetings.Meeting(
        meeting_id="M0123456789abcde",
        reason="returned_twice",
        lead_street="street_s01",
        summoned=["street_s01", "environment", "urban_enforcement"],
        tickets=["20261123-000001"],
        category=SMOKE,
        grid="s01c01g01",
        deadline=T0 + timedelta(days=3),
        convened_at=T0,
    )
    decided = meetings.decide(opened, "urban_enforcement", "dispatch_desk", "城管牵头", city, T0)
    assert meetings.precedent(opened, decided) == smoke_precedent(decided_at=T0)
    assert meetings.precedent(None, decided) == smoke_precedent(decided_at=T0)
    assert meetings.precedent(decided, decided) is None
    assert meetings.precedent(None, opened) is None
    assert meetings.precedent(opened, decided.model_copy(update={"grid": None})) is None


def test_candidates_and_responsibility(city):
    g = grid(city, "s03c02g03")
    assert candidates(city, "city.appearance.garbage", g) == ["street_s03", "urban_mgmt", "urban_enforcement"]
    assert candidates(city, "city.facility.road_damage", grid(city, "s01c01g01")) == ["urban_mgmt"]
    # A committee's return (not a dispute for it) reaches the bureau that guides people's mediation.
    assert candidates(city, "safety.disputes", grid(city, "s02c02g01")) == ["mediation_s02", "justice"]
    assert responsible(city, "city.appearance.garbage", g, "urban_mgmt").lead == "urban_mgmt"
    assert responsible(city, "city.appearance.garbage", g, "water") is None


# --- deadlines -----------------------------------------------------------------------------------


def test_a_grid_s_street_office_and_mediation_committee(city):
    assert (street_office(city, "s03c02g03"), mediation_committee(city, "s03c02g03")) == (
        "street_s03",
        "mediation_s03",
    )
    assert mediation_committee(city, "s01c01g01") == "mediation_s01"
    assert mediation_committee(city, None) is None
    assert mediation_committee(city, "nowhere") is None
    without = city.model_copy(
        update={"departments": tuple(d for d in city.departments if d.id != "mediation_s02")}
    )
    assert mediation_committee(without, "s02c01g01") is None
    assert street_office(without, "s02c01g01") == "street_s02"


def test_sla_classes(city):
    assert sla_class_for(city, "utility.gas", False, department=None) == "utility"
    assert sla_class_for(city, "housing.safety", False, department=None) == "complex"
    assert sla_class_for(city, "city.facility.streetlight", False, department=None) == "general"
    assert sla_class_for(city, "city.facility.streetlight", True, department=None) == "emergency"
    assert sla_class_for(city, "safety.disputes", False, department=None) == "mediation"
    # The holder's kind, where the city gives it a class: a committee's ticket of any category.
    assert sla_class_for(city, "env.noise", False, department=None) == "general"
    assert sla_class_for(city, "env.noise", False, department="mediation_s02") == "mediation"
    assert sla_class_for(city, "env.noise", True, department="mediation_s02") == "emergency"
    assert sla_class_for(city, "utility.gas", False, department="power") == "utility"  # no kind's class
    assert sla_class_for(city, "env.noise", False, department="gone") == "general"  # not configured now


def test_a_dispute_gets_the_time_a_mediation_takes(city):
    """邻里纠纷 goes to the street's mediation committee with people's mediation's own deadline (about
    a month: 20 working days), not the general 7 working days, which would mark it late while the
    committee is still arranging the session; urgent (a fight about to start) is urgent still."""
    t = assigned_ticket(city, "safety.disputes", "s01c01g01")
    assert t.department is not None
    assert t.department.id == "mediation_s01"
    # Monday 2026-11-23 10:00 + 20 working days (no holiday between): Monday 2026-12-21 10:00.
    assert t.resolve_by == datetime(2026, 12, 21, 10, tzinfo=TZ)
    assert t.respond_by == T0 + timedelta(hours=24)
    assert city.sla.classes["mediation"].name == "人民调解"
    urgent = deadlines(city, "safety.disputes", True, T0, TZ, department="mediation_s01")
    assert urgent.sla_class == "emergency"


def test_urgent_categories_from_the_config(tmp_path):
    folder = tmp_path / "city"
    shutil.copytree(DEMO_CITY_DIR, folder)
    sla = yaml.safe_load((folder / "sla.yaml").read_text(encoding="utf-8"))
    sla["urgent_categories"] = ["housing.elevator"]
    (folder / "sla.yaml").write_text(yaml.safe_dump(sla, allow_unicode=True), encoding="utf-8")
    c = load_city(folder)
    assert sla_class_for(c, "housing.elevator", False, department=None) == "emergency"
    sla["urgent_categories"] = ["no.such"]
    (folder / "sla.yaml").write_text(yaml.safe_dump(sla, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CityConfigError, match=r"urgent_categories: unknown category 'no\.such'"):
        load_city(folder)


def test_hour_deadlines_count_clock_time(city):
    start = datetime(2026, 10, 1, 8, tzinfo=UTC)  # a holiday: hours still count
    d = deadlines(city, "utility.water", False, start, TZ, department="water")
    assert d.respond_by == start + timedelta(hours=2)
    assert d.resolve_by == start + timedelta(hours=24)
    e = deadlines(city, "city.facility.streetlight", True, start, TZ, department="urban_mgmt")
    assert e.resolve_by == start + timedelta(hours=2)


@pytest.mark.parametrize(
    ("start", "days", "end"),
    [
        (date(2026, 11, 23), 7, date(2026, 12, 2)),  # Monday + 7 working days skips a weekend
        (date(2026, 9, 30), 1, date(2026, 10, 8)),  # 国庆: 1-7 off
        (date(2026, 9, 30), 2, date(2026, 10, 9)),
        (date(2026, 10, 9), 1, date(2026, 10, 10)),  # Saturday 10-10 is a make-up working day
        (date(2026, 2, 13), 1, date(2026, 2, 14)),  # Saturday 2-14 is worked (春节调休)
        (date(2026, 2, 14), 1, date(2026, 2, 24)),  # then 2-15..2-23 off
    ],
)
def test_working_days_follow_the_holiday_calendar(city, start, days, end):
    at = datetime(start.year, start.month, start.day, 10, tzinfo=TZ)
    got = add_working_days(at, days, city.sla, TZ)
    assert got.date() == end
    assert got.hour == 10
    assert is_workday(got.date(), city.sla)
