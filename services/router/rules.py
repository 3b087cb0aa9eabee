"""The responsibility list (权责清单): which department owns a classified appeal. Pure functions.

A rule matches when its category is the appeal's category or one of its ancestors, and its area (if
any) contains the appeal's grid. The most specific rule wins: a narrower area first (grid, then
community, then street, then anywhere), then a deeper category. No rule: the fallback owner, because
unclear jurisdiction must never leave a ticket unowned. Low confidence: the dispatch desk decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from shared.city import City, DepartmentKind, ResponsibilityRule
from shared.events import CategoryScore, GridMatch


@dataclass(frozen=True)
class Routing:
    lead: str
    co: tuple[str, ...]
    via: Literal["rule", "fallback", "dispatch_desk", "answered", "on_spot"]
    rule: str  # the rule, in words
    explanation: str  # why, in Chinese, for the department that receives it
    ambiguous: tuple[str, ...] = ()  # other leads named by equally specific rules
    precedent: str = ""  # the joint meeting whose precedent it follows (`following_precedent`)


def _area_specificity(rule: ResponsibilityRule, grid: GridMatch) -> int | None:
    """3 grid, 2 community, 1 street, 0 anywhere; None when the rule's area does not contain it."""
    if rule.grid is not None:
        return 3 if rule.grid == grid.grid else None
    if rule.community is not None:
        return 2 if rule.community == grid.community else None
    if rule.street is not None:
        return 1 if rule.street == grid.street else None
    return 0


# How the grid was found, in the words of the staff who read the explanation.
GRID_METHODS = {
    "coordinates": "按坐标定位",
    "gazetteer": "按地名定位",
    "model": "按文本推断",
    "reviewer": "人工指定",
    "patrol": "网格员所属网格",
    "desk": "派单中心人工选定",
    "none": "未定位",
}


def located_apart(city: City, grid: GridMatch) -> str:
    """定位与地址不一致, in words with the grids' full names, for the history and the console: where the
    coordinates (or the patrolling worker's grid) put the appeal and where its address does; "" when
    they agree (`GridMatch.address_grid`)."""
    here, there = city.grids.get(grid.grid or ""), city.grids.get(grid.address_grid or "")
    if here is None or there is None or grid.grid == grid.address_grid:
        return ""
    if grid.method == "patrol":
        return f"上报网格与地址不一致：网格员所属{here.full_name}，地址在{there.full_name}"
    return f"定位与地址不一致：定位在{here.full_name}，地址在{there.full_name}"


def describe_rule(city: City, rule: ResponsibilityRule) -> str:
    area = area_name(city, rule)
    where = f"（限{area}）" if area else ""
    return f"{'/'.join(city.category_names(rule.category))}{where} → {city.department_by_id[rule.lead].name}"


def area_name(city: City, rule: ResponsibilityRule) -> str:
    """The area a rule is limited to, by name (a grid, a community or a street): staff read it in
    the explanation and dispute it on a return, and know the areas by name, not by their codes."""
    if rule.grid:
        return grid_name(city, rule.grid)
    for street in city.district.streets:
        if rule.community:
            community = next((c for c in street.communities if c.id == rule.community), None)
            if community is not None:
                return f"{street.name}{community.name}"
        elif street.id == rule.street:
            return street.name
    return rule.community or rule.street or ""


def grid_name(city: City, grid_id: str | None) -> str:
    """The grid as the staff who read an explanation know it: by name, not by its code."""
    info = city.grids.get(grid_id or "")
    return info.grid.name if info else grid_id or "未定位"


def matching_rules(
    city: City, category: str, grid: GridMatch
) -> list[tuple[tuple[int, int], ResponsibilityRule]]:
    """Rules that apply, most specific first, with their (area, category depth) specificity."""
    path = city.category_path[category]
    found = []
    for rule in city.responsibilities.rules:
        if rule.category not in path:
            continue
        area = _area_specificity(rule, grid)
        if area is None:
            continue
        found.append(((area, path.index(rule.category)), rule))
    found.sort(key=lambda x: x[0], reverse=True)
    return found


def answered_on_call(city: City, operator: str | None) -> Routing:
    """An appeal the operator answered on the call: the hotline's desk took it and is done with it,
    whatever the category's owner (the category still counts in the statistics)."""
    who = f"话务员{operator}" if operator else "话务员"
    return Routing(
        lead=city.responsibilities.dispatch_desk,
        co=(),
        via="answered",
        rule="",
        explanation=f"{who}在来电中当场答复，直接办结",
    )


# Closed at first contact: the ticket is resolved when it is assigned, so it joins no meeting.
FIRST_CONTACT = frozenset({"answered", "on_spot"})


def _of_street(city: City, kind: DepartmentKind, grid_id: str | None) -> str | None:
    """The department of `kind` that serves the grid's street, if the city names one."""
    info = city.grids.get(grid_id or "")
    if info is not None:
        for d in city.departments:
            if d.kind == kind and d.street == info.street_id:
                return d.id
    return None


def street_office(city: City, grid_id: str | None) -> str | None:
    """The street office (街道办事处) governing the grid's street, if the city names one."""
    return _of_street(city, "street_office", grid_id)


def mediation_committee(city: City, grid_id: str | None) -> str | None:
    """The street's People's Mediation Committee (街道人民调解委员会) for the grid, if the city names
    one: where a department refers a dispute between parties (转人民调解)."""
    return _of_street(city, "mediation", grid_id)


def handled_on_spot(city: City, grid: GridMatch, worker: str | None) -> Routing:
    """What a grid worker dealt with where it found it (现场处置): the street office the worker's
    grid reports to took it and is done with it (the category still counts in the statistics). A
    grid the city cannot place goes to the desk, which still resolves it: the work was done."""
    who = f"网格员{worker}" if worker else "网格员"
    return Routing(
        lead=street_office(city, grid.grid) or city.responsibilities.dispatch_desk,
        co=(),
        via="on_spot",
        rule="",
        explanation=f"{who}巡查发现并现场处置，直接办结",
    )


def to_the_desk(city: City, explanation: str) -> Routing:
    """The dispatch desk (待人工派单), saying why a person has to place the appeal."""
    return Routing(
        lead=city.responsibilities.dispatch_desk, co=(), via="dispatch_desk", rule="", explanation=explanation
    )


def route(city: City, category: str, grid: GridMatch, confidence: float, threshold: float) -> Routing:
    names = "/".join(city.category_names(category))
    # A place the classifier could not pin to one grid (a road through several, no address) needs a
    # person only where the place decides the department: a manhole is the district's urban
    # management's wherever on 建设路 it is, and waiting at the desk would only delay it.
    unplaced = city.needs_placing(category, grid.grid)
    if confidence < threshold or unplaced:
        why = (
            f"分类置信度{confidence:.2f}低于阈值{threshold:.2f}"
            if confidence < threshold
            else "未能确定所属网格，而本类诉求按地点由不同单位承办"
        )
        return to_the_desk(city, f"{why}，转人工派单（{names}）")
    rules = matching_rules(city, category, grid)
    if not rules:
        owner = city.responsibilities.fallback_owner
        return Routing(
            lead=owner,
            co=(),
            via="fallback",
            rule="",
            explanation=f"权责清单中没有“{names}”的责任单位，由{city.department_by_id[owner].name}兜底承办",
        )
    best_score, best = rules[0]
    ties = tuple(r.lead for score, r in rules[1:] if score == best_score and r.lead != best.lead)
    rule_text = describe_rule(city, best)
    where = (
        f"网格{grid_name(city, grid.grid)}（{GRID_METHODS.get(grid.method, grid.method)}）"
        if grid.grid is not None
        else "未能确定所属网格（按权责清单，本类诉求各处均由同一单位承办）"
    )
    return Routing(
        lead=best.lead,
        co=best.co,
        via="rule",
        rule=rule_text,
        explanation=f"按权责清单“{rule_text}”派单，分类置信度{confidence:.2f}，{where}",
        ambiguous=ties,
    )


def candidates(city: City, category: str, grid: GridMatch) -> list[str]:
    """Departments that could own the appeal, best first: the leads of the matching rules by
    specificity, then the best rule's co-handlers. What a return re-routes down."""
    rules = matching_rules(city, category, grid)
    found = [r.lead for _, r in rules] + [d for d in (rules[0][1].co if rules else ())]
    return list(dict.fromkeys(found))


def responsible(city: City, category: str, grid: GridMatch, dept_id: str) -> ResponsibilityRule | None:
    """The most specific rule that makes `dept_id` the lead for this appeal, if any."""
    return next((r for _, r in matching_rules(city, category, grid) if r.lead == dept_id), None)


def contested(
    city: City, routing: Routing, top: Sequence[CategoryScore], grid: GridMatch, margin: float
) -> tuple[str, ...]:
    """Other departments with a claim as strong as the lead's: equally specific rules naming another
    lead, or a runner-up category within `margin` of the best whose rules name another lead."""
    if routing.via != "rule":
        return ()
    others = list(routing.ambiguous)
    if (
        len(top) >= 2
        and top[0].probability - top[1].probability <= margin
        and top[1].category in city.category_path
    ):
        second = matching_rules(city, top[1].category, grid)
        if second and second[0][1].lead != routing.lead:
            others.append(second[0][1].lead)
    return tuple(dict.fromkeys(d for d in others if d != routing.lead))


class Precedent(BaseModel):
    """A joint meeting's decision as a precedent (先例): the meeting named `lead` for `category` in
    `grid`, so the next appeals of that cluster go to it for `supervision.meeting_precedent_days`
    after `decided_at`, rather than round the same returns again. The router keeps the latest one
    per cluster (`services/router/service.py`, written with the decision)."""

    category: str
    grid: str
    lead: str
    meeting_id: str
    decided_at: datetime

    def until(self, days: float) -> datetime:
        return self.decided_at + timedelta(days=days)


def following_precedent(
    city: City, routing: Routing, category: str, grid: GridMatch, precedent: Precedent | None, now: datetime
) -> Routing | None:
    """The routing a precedent gives a confidently routed appeal (by rule, or the fallback owner) of
    its category in its grid while it lasts: its lead, the explanation naming the meeting and what
    the responsibility list would have said. None when none applies: no precedent, another cluster,
    expired, a lead the city no longer has, or an appeal at the desk (low confidence, a place to
    confirm: a person still reads it) or closed at first contact (never routed by rule)."""
    days = city.sla.supervision.meeting_precedent_days
    if (
        precedent is None
        or routing.via not in ("rule", "fallback")
        or grid.grid is None
        or (precedent.category, precedent.grid) != (category, grid.grid)
        or now >= precedent.until(days)
    ):
        return None
    lead = city.department_by_id.get(precedent.lead)
    if lead is None or lead.kind == "dispatch_desk":
        return None
    listed = city.department_by_id[routing.lead].name
    if routing.lead == lead.id:
        was = "权责清单同样指定该单位"
    elif routing.via == "fallback":
        was = f"权责清单中没有对应规则，原应由{listed}兜底"
    else:
        was = f"按权责清单原应派{listed}"
    where = f"{grid_name(city, grid.grid)}的“{'/'.join(city.category_names(category))}”诉求"
    apart = located_apart(city, grid)
    return Routing(
        lead=lead.id,
        co=routing.co if routing.lead == lead.id else (),
        via="rule",  # the cluster's rule now, for as long as the precedent lasts
        rule=f"联席会议{precedent.meeting_id}决定",
        explanation=f"按联席会议（会议编号{precedent.meeting_id}）确定的主办单位派单：{lead.name}"
        f"（{where}已由联席会议确定主办单位，{was}）" + (f"；{apart}，请核实事发位置" if apart else ""),
        precedent=precedent.meeting_id,
    )


def routing_for(
    city: City,
    category: str,
    grid: GridMatch,
    confidence: float,
    threshold: float,
    top: Sequence[CategoryScore],
    *,
    reviewed: bool = False,
    precedent: Precedent | None = None,
    now: datetime | None = None,
) -> tuple[Routing, tuple[str, ...]]:
    """Who a classified appeal goes to, and the other departments contesting the lead (a joint
    meeting settles those): the rules (`route`), then a near tie of two readings (`contested`),
    which the dispatch desk reads instead when the two are both unlikely (`undecided`). A person's
    correction (`reviewed`) is what the appeal is about, however the model read it. A live
    `precedent` of the appeal's cluster (a joint meeting named its lead, `following_precedent`, as
    of `now`) replaces a confident routing and settles any contest: that is what the meeting was
    for. The router's decision, and the hotline preview's, which must name the department the
    router will."""
    routing = route(city, category, grid, confidence, threshold)
    # The address names another grid than the coordinates (or the patrol): a person confirms the
    # place where it may change who leads it, and for every patrol report (`City.place_disputed`);
    # a reviewer's correction is that person. The rest go by their rule, the history saying it.
    apart = located_apart(city, grid)
    if apart and routing.via in ("rule", "fallback") and not reviewed:
        if city.place_disputed(category, grid.grid, grid.address_grid, grid.method):
            names = "/".join(city.category_names(category))
            return to_the_desk(city, f"{apart}，请核实事发网格后人工派单（{names}）"), ()
        routing = replace(routing, explanation=f"{routing.explanation}；{apart}，请核实事发位置")
    elif apart:  # at the desk for another reason (low confidence): the desk reads this too
        routing = replace(routing, explanation=f"{routing.explanation}；{apart}")
    sup = city.sla.supervision
    others = contested(city, routing, top, grid, sup.ambiguity_margin)
    # Asked only of a contest: most appeals have none, and this is the router's hot path.
    if others and not reviewed and (desk := undecided(city, top, sup.ambiguity_margin, sup.ambiguity_floor)):
        return desk, ()
    if now is not None and (settled := following_precedent(city, routing, category, grid, precedent, now)):
        return settled, ()
    return routing, others


def undecided(city: City, top: Sequence[CategoryScore], margin: float, floor: float) -> Routing | None:
    """The dispatch desk, when the model's two best readings are nearly tied (within `margin`) and
    together less likely than `floor`: it cannot tell what the appeal is about (a vague call), so a
    person reads it, rather than a joint meeting of the departments of two guesses. None otherwise."""
    if len(top) < 2:
        return None
    first, second = top[0], top[1]
    if first.probability - second.probability > margin or first.probability + second.probability >= floor:
        return None
    readings = "、".join(
        f"{'/'.join(city.category_names(c.category))}{c.probability:.0%}"
        for c in (first, second)
        if c.category in city.category_path
    )
    return to_the_desk(city, f"分类难以确定（{readings}），转人工派单")
