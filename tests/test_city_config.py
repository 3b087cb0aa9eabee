"""The city configuration: the demo city is complete, and broken configurations fail clearly.

Every broken case copies the demo folder to a tmp dir, breaks one thing, and checks that the error
names the file and the entry an analyst has to fix.
"""

from __future__ import annotations

import itertools
import shutil
from datetime import date
from pathlib import Path

import pytest
import yaml

from shared.city import DEMO_CITY_DIR, City, CityConfigError, load_city


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A private, editable copy of the demo city."""
    dst = tmp_path / "city"
    shutil.copytree(DEMO_CITY_DIR, dst)
    return dst


def _read(folder: Path, name: str):
    return yaml.safe_load((folder / name).read_text(encoding="utf-8"))


def _write(folder: Path, name: str, data) -> None:
    (folder / name).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


# --- the demo city -------------------------------------------------------------------------------


def test_demo_city_counts(city: City) -> None:
    d = city.district
    assert d.id
    assert d.name
    assert d.city
    assert len(d.streets) >= 3
    assert sum(len(s.communities) for s in d.streets) == 8
    assert len(city.grids) == 24
    assert all(len(s.communities) >= 1 for s in d.streets)
    assert all(len(c.grids) == 3 for s in d.streets for c in s.communities)
    assert len(city.departments) >= 15
    assert len(city.leaf_categories) >= 20


def test_default_folder_is_the_demo_city(city: City) -> None:
    assert load_city(DEMO_CITY_DIR) == city


def test_demo_grids_have_places_and_polygons(city: City) -> None:
    assert len(city.grids) > 1
    for gid, info in city.grids.items():
        g = info.grid
        assert 2 <= len(g.compounds) <= 4, gid
        assert 1 <= len(g.roads) <= 3, gid
        assert 1 <= len(g.landmarks) <= 3, gid
        assert len(g.polygon) >= 3, gid
        for lng, lat in g.polygon:  # [lng, lat], not swapped
            assert 116.30 <= lng <= 116.42, gid
            assert 39.90 <= lat <= 39.98, gid


def test_demo_grids_tile_without_overlap(city: City) -> None:
    """The demo polygons are axis-aligned rectangles: no two may overlap (touching is fine)."""
    boxes = {}
    for gid, info in city.grids.items():
        xs = [p[0] for p in info.grid.polygon]
        ys = [p[1] for p in info.grid.polygon]
        boxes[gid] = (min(xs), min(ys), max(xs), max(ys))
    ids = sorted(boxes)
    assert len(ids) > 1
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            ax0, ay0, ax1, ay1 = boxes[a]
            bx0, by0, bx1, by1 = boxes[b]
            overlap_x = min(ax1, bx1) - max(ax0, bx0)
            overlap_y = min(ay1, by1) - max(ay0, by0)
            assert overlap_x <= 1e-9 or overlap_y <= 1e-9, (a, b)


def test_demo_has_ambiguities_to_resolve(city: City) -> None:
    # A road split between grids by house number, so the road name alone is ambiguous...
    roads: dict[str, set[str]] = {}
    for gid, info in city.grids.items():
        for r in info.grid.roads:
            roads.setdefault(r.name, set()).add(gid)
    assert sum(len(g) > 1 for g in roads.values()) >= 3
    # ...and colloquial compound names shared across streets.
    streets_by_alias: dict[str, set[str]] = {}
    for info in city.grids.values():
        for c in info.grid.compounds:
            for a in c.aliases:
                streets_by_alias.setdefault(a, set()).add(info.street_id)
    assert "幸福里" in streets_by_alias
    assert len(streets_by_alias["幸福里"]) == 2
    # Split road segments of one road never overlap.
    for name in roads:
        segs = sorted(
            (r.from_no, r.to_no) for info in city.grids.values() for r in info.grid.roads if r.name == name
        )
        for (_, hi), (lo, _) in itertools.pairwise(segs):
            assert hi < lo, name


def test_demo_departments(city: City) -> None:
    kinds = {d.kind for d in city.departments}
    assert {"district_office", "dispatch_desk", "street_office", "property", "utility"} <= kinds
    street_offices = {d.street for d in city.departments if d.kind == "street_office"}
    assert street_offices == {s.id for s in city.district.streets}
    # One People's Mediation Committee per street, where its departments refer disputes.
    committees = [d.street for d in city.departments if d.kind == "mediation"]
    assert sorted(committees) == sorted(s.id for s in city.district.streets)
    assert all(d.phone for d in city.departments)


def test_demo_categories_have_keywords(city: City) -> None:
    for leaf in city.leaf_categories:
        assert 6 <= len(city.category_by_id[leaf].keywords) <= 15, leaf
    assert city.category_names("city.facility.road_damage") == ("城市管理", "市政设施", "道路破损")


def test_every_leaf_has_an_owner(city: City) -> None:
    """Each leaf has a city-wide rule on itself or an ancestor: nothing relies on the fallback."""
    r = city.responsibilities
    assert r.fallback_owner == "district_office"
    assert r.dispatch_desk == "dispatch_desk"
    citywide = {
        rule.category
        for rule in r.rules
        if rule.street is None and rule.community is None and rule.grid is None
    }
    for leaf in city.leaf_categories:
        assert citywide & set(city.category_path[leaf]), leaf


def test_demo_rules_are_unambiguous_and_varied(city: City) -> None:
    keys = [(r.category, r.street, r.community, r.grid) for r in city.responsibilities.rules]
    assert len(keys) == len(set(keys)), "two rules with the same category and area"
    assert any(r.co for r in city.responsibilities.rules)
    assert any(r.street or r.community or r.grid for r in city.responsibilities.rules)


def test_demo_sla(city: City) -> None:
    s = city.sla
    assert s.default_class == "general"
    assert s.urgent_class == "emergency"
    assert s.classes["emergency"].resolve_hours == 2
    assert s.classes["complex"].resolve_days == 15
    assert s.categories["safety.disputes"] == "mediation"  # 人民调解: about a month
    assert s.classes["mediation"].resolve_days == 20
    assert s.department_kinds == {"mediation": "mediation"}  # a committee's every ticket, too
    assert date(2026, 2, 17) in s.holidays  # 春节
    assert date(2026, 10, 1) in s.holidays
    assert all(d.weekday() >= 5 for d in s.workdays), "make-up working days fall on weekends"
    assert not set(s.holidays) & set(s.workdays)
    assert s.ranking.min_answers == 3  # fewer answered surveys: 样本不足, not ranked


# --- broken configurations -----------------------------------------------------------------------


def _error(folder: Path) -> str:
    with pytest.raises(CityConfigError) as e:
        load_city(folder)
    return str(e.value)


def test_unknown_department_in_rule(folder: Path) -> None:
    data = _read(folder, "responsibilities.yaml")
    data["rules"][2]["lead"] = "no_such_dept"
    _write(folder, "responsibilities.yaml", data)
    msg = _error(folder)
    assert "responsibilities.yaml" in msg
    assert f"rule 3 ({data['rules'][2]['category']})" in msg
    assert "no_such_dept" in msg


def test_unknown_co_department_and_area(folder: Path) -> None:
    data = _read(folder, "responsibilities.yaml")
    data["rules"][0]["co"] = ["ghost_bureau"]
    data["rules"][0]["street"] = "s99"
    _write(folder, "responsibilities.yaml", data)
    msg = _error(folder)
    assert "rule 1" in msg
    assert "ghost_bureau" in msg
    assert "s99" in msg


def test_duplicate_grid_id(folder: Path) -> None:
    data = _read(folder, "areas.yaml")
    grids = data["streets"][1]["communities"][0]["grids"]
    grids[1]["id"] = grids[0]["id"]
    _write(folder, "areas.yaml", data)
    msg = _error(folder)
    assert "areas.yaml" in msg
    assert "grids" in msg
    assert repr(grids[0]["id"]) in msg


def test_missing_file(folder: Path) -> None:
    (folder / "sla.yaml").unlink()
    msg = _error(folder)
    assert "sla.yaml" in msg
    assert "missing" in msg


def test_bad_yaml(folder: Path) -> None:
    (folder / "departments.yaml").write_text("- id: x\n  name: [unclosed\n", encoding="utf-8")
    msg = _error(folder)
    assert "departments.yaml" in msg
    assert "not valid YAML" in msg


@pytest.mark.parametrize("change", ["both", "neither"])
def test_sla_class_needs_exactly_one_resolve_field(folder: Path, change: str) -> None:
    data = _read(folder, "sla.yaml")
    cls = data["classes"]["general"]
    if change == "both":
        cls["resolve_hours"] = 48
    else:
        del cls["resolve_days"]
    _write(folder, "sla.yaml", data)
    msg = _error(folder)
    assert "sla.yaml" in msg
    assert "classes.general" in msg
    assert "exactly one of resolve_hours, resolve_days" in msg


@pytest.mark.parametrize("days", [-1, 400, "a month"])
def test_a_meeting_precedent_lasts_a_sensible_number_of_days(folder: Path, days) -> None:
    """`supervision.meeting_precedent_days`: how long a joint meeting's lead takes its cluster's
    next appeals (0 turns precedents off), refused on load beyond a year or when not a number."""
    data = _read(folder, "sla.yaml")
    assert data["supervision"]["meeting_precedent_days"] == 30
    data["supervision"]["meeting_precedent_days"] = days
    _write(folder, "sla.yaml", data)
    msg = _error(folder)
    assert "sla.yaml" in msg
    assert "meeting_precedent_days" in msg


def test_sla_unknown_class_and_category(folder: Path) -> None:
    data = _read(folder, "sla.yaml")
    data["urgent_class"] = "panic"
    data["categories"]["no.such.category"] = "general"
    _write(folder, "sla.yaml", data)
    msg = _error(folder)
    assert "sla.yaml urgent_class" in msg
    assert "'panic'" in msg
    assert "no.such.category" in msg


def test_sla_department_kinds_name_a_known_kind_and_a_class_not_the_urgent_one(folder: Path) -> None:
    data = _read(folder, "sla.yaml")
    data["department_kinds"] = {"mediation": "arbitration", "court": "general", "utility": "emergency"}
    _write(folder, "sla.yaml", data)
    msg = _error(folder)
    assert "sla.yaml department_kinds mediation: unknown class 'arbitration'" in msg
    assert "sla.yaml department_kinds: unknown department kind 'court' (one of district_office," in msg
    assert "sla.yaml department_kinds utility: 'emergency' is the urgent class" in msg


@pytest.mark.parametrize("value", [0, "few"])
def test_the_ranking_needs_at_least_one_answer(folder: Path, value: object) -> None:
    data = _read(folder, "sla.yaml")
    data["ranking"]["min_answers"] = value
    _write(folder, "sla.yaml", data)
    msg = _error(folder)
    assert "sla.yaml" in msg
    assert "ranking.min_answers" in msg


def test_department_with_unknown_street(folder: Path) -> None:
    data = _read(folder, "departments.yaml")
    office = next(d for d in data if d["kind"] == "street_office")
    office["street"] = "s42"
    _write(folder, "departments.yaml", data)
    msg = _error(folder)
    assert f"departments.yaml {office['id']}" in msg
    assert "s42" in msg


def test_a_mediation_committee_serves_one_street_and_a_street_has_one(folder: Path) -> None:
    data = _read(folder, "departments.yaml")
    committee = next(d for d in data if d["kind"] == "mediation")
    del committee["street"]
    data.append({"id": "mediation_extra", "name": "另一调解委员会", "kind": "mediation", "street": "s02"})
    _write(folder, "departments.yaml", data)
    msg = _error(folder)
    assert f"departments.yaml {committee['id']}: a mediation department needs `street`" in msg
    assert "departments.yaml mediation_extra: street s02 has a mediation committee already" in msg


def test_the_categories_referred_to_mediation_are_the_citys_and_checked_on_load(folder: Path) -> None:
    """`mediation` on a category says whether an appeal of it may be referred to the street's
    mediation committee (转人民调解): a yes or no, checked; a city with committees and no category
    to refer to them is told so on load (every referral would be refused)."""
    city = load_city(folder)
    assert [city.mediable(c) for c in ("safety.disputes", "housing.property.fee")] == [True, True]
    assert [city.mediable(c) for c in ("city.facility.streetlight", None)] == [False, False]
    data = _read(folder, "categories.yaml")

    def unsay(cats: list[dict]) -> None:
        for c in cats:
            c.pop("mediation", None)
            unsay(c.get("children", []))

    unsay(data)
    _write(folder, "categories.yaml", data)
    assert "no category says `mediation: true`" in _error(folder)
    data[0]["mediation"] = "perhaps"
    _write(folder, "categories.yaml", data)
    assert "categories.yaml 0.mediation" in _error(folder)


def test_unknown_field_is_rejected(folder: Path) -> None:
    """A typo in a key (e.g. `leed`) must not be silently ignored."""
    data = _read(folder, "responsibilities.yaml")
    data["rules"][0]["leed"] = data["rules"][0].pop("lead")
    _write(folder, "responsibilities.yaml", data)
    msg = _error(folder)
    assert "responsibilities.yaml" in msg
    assert "leed" in msg


def test_two_rules_for_the_same_category_and_area(folder: Path) -> None:
    data = _read(folder, "responsibilities.yaml")
    data["rules"].append(dict(data["rules"][0], lead="district_office"))
    _write(folder, "responsibilities.yaml", data)
    msg = _error(folder)
    assert f"rule {len(data['rules'])}" in msg
    assert "same category and area as rule 1" in msg


def test_rule_area_must_nest(folder: Path) -> None:
    data = _read(folder, "responsibilities.yaml")
    data["rules"].append(
        {
            "category": data["rules"][0]["category"],
            "street": "s01",
            "community": "s02c01",
            "lead": data["rules"][0]["lead"],
        }
    )
    _write(folder, "responsibilities.yaml", data)
    assert "community s02c01 is not in street s01" in _error(folder)


def test_calendar_conflicts_are_named(folder: Path) -> None:
    data = _read(folder, "sla.yaml")
    data["workdays"] = [*data.get("workdays", []), date(2026, 10, 1), date(2026, 11, 24)]
    _write(folder, "sla.yaml", data)
    msg = _error(folder)
    assert "2026-10-01 is listed both as a holiday" in msg
    assert "2026-11-24 is a weekday already" in msg
    assert msg.count("\n") >= 2, "one problem per line"


def test_unquoted_numbers_in_yaml_are_text(folder: Path) -> None:
    data = _read(folder, "departments.yaml")
    text = (folder / "departments.yaml").read_text(encoding="utf-8")
    phone = next(d["phone"] for d in data if d.get("phone", "").startswith("1"))
    (folder / "departments.yaml").write_text(text.replace(f'"{phone}"', phone), encoding="utf-8")
    assert any(d.phone == phone for d in load_city(folder).departments)


def test_a_supervisors_mobile_must_be_a_mobile(folder: Path) -> None:
    data = _read(folder, "departments.yaml")
    data[0]["supervisor_mobile"] = "010-68010001"  # a desk line cannot receive the 督办 SMS
    _write(folder, "departments.yaml", data)
    msg = _error(folder)
    assert "departments.yaml" in msg
    assert "supervisor_mobile" in msg
    assert "手机号" in msg


def test_a_calendar_that_ends_soon_is_logged_once_per_process(folder: Path, caplog) -> None:
    """sla.yaml's holidays stop at the end of a year: within 60 days of it the services say so when
    they start, once per process, and go on counting deadlines by weekends past it."""
    from shared.city import warn_if_calendar_runs_out

    data = _read(folder, "sla.yaml")
    data["holidays"] = [d.replace(year=2031) for d in data["holidays"]]  # 2031's, whatever the demo lists
    data["workdays"] = []  # (make-up days fall on weekends: 2026's would not in 2031)
    _write(folder, "sla.yaml", data)
    city = load_city(folder)
    assert city.sla.calendar_ends == date(2031, 12, 31)
    where = str(folder)
    with caplog.at_level("WARNING", logger="shared.city"):
        assert not warn_if_calendar_runs_out(city, where, today=date(2031, 10, 1))  # 91 days left
        assert warn_if_calendar_runs_out(city, where, today=date(2031, 11, 15))
        assert not warn_if_calendar_runs_out(city, where, today=date(2031, 11, 16))  # once
    [record] = caplog.records
    assert "工作日历只到2031-12-31：请在sla.yaml中补充2032年的节假日和调休安排" in record.getMessage()
    assert "deadlines past 2031-12-31 count weekends only" in record.getMessage()
