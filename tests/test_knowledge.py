"""The hotline's knowledge base: the city's file validated on load, the answers that fit a call,
and both through the API (the search, and the operator's preview)."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from services.intake.knowledge import KnowledgeBase
from shared import knowledge as rules
from shared.auth import issue_token
from shared.city import DEMO_CITY_DIR, CityConfigError, KnowledgeEntry, load_city
from shared.errors import DomainError
from tests.cities import demo_city


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    city = demo_city()
    return KnowledgeBase(city.knowledge, city)


@pytest.mark.parametrize(
    ("call", "entry"),
    [
        ("来电人反映社保卡丢了，想问怎么补办", "kb-social-card-replace"),
        ("家里厨房有很浓的煤气味，怎么办", "kb-gas-emergency"),
        ("楼上装修周末一大早就开始电钻", "kb-noise-hours"),
        ("孩子明年上一年级需要什么手续", "kb-school-enrollment"),
    ],
)
def test_a_question_finds_its_answer_in_the_callers_words(kb: KnowledgeBase, call: str, entry: str) -> None:
    assert [s.entry.id for s in kb.search(call)][:1] == [entry]


def test_a_problem_to_send_out_finds_no_answer(kb: KnowledgeBase) -> None:
    assert kb.search("阳光花园3号楼门口的路灯坏了一个多星期") == []
    assert kb.search("   ") == []


def test_the_suggested_category_ranks_its_answers_higher(kb: KnowledgeBase) -> None:
    text = "暖气不热"
    plain = {s.entry.id: s.score for s in kb.search(text, k=10)}
    ranked = {s.entry.id: s.score for s in kb.search(text, category="utility.heating", k=10)}
    assert ranked["kb-heating-season"] > plain["kb-heating-season"]


def test_a_city_without_a_knowledge_base_loads_and_suggests_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "city"
    shutil.copytree(DEMO_CITY_DIR, folder)
    (folder / "knowledge.yaml").unlink()
    city = load_city(folder)
    assert city.knowledge == ()
    assert KnowledgeBase(city.knowledge, city).search("社保卡丢了怎么补办") == []


def test_a_broken_entry_is_named_with_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "city"
    shutil.copytree(DEMO_CITY_DIR, folder)
    entries = yaml.safe_load((folder / "knowledge.yaml").read_text(encoding="utf-8"))
    entries[1]["category"] = "no.such.category"
    entries[2]["id"] = entries[0]["id"]
    (folder / "knowledge.yaml").write_text(yaml.safe_dump(entries, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CityConfigError) as e:
        load_city(folder)
    assert f"knowledge.yaml {entries[1]['id']}: unknown category 'no.such.category'" in str(e.value)
    assert f"knowledge.yaml: id {entries[0]['id']!r} is used twice" in str(e.value)


async def test_the_operator_gets_answers_from_the_search_and_the_preview(api, redis) -> None:
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0231')}"}
    r = await api.get("/api/v1/knowledge", params={"q": "社保卡丢了怎么补办"}, headers=operator)
    assert r.status_code == 200, r.text
    first = r.json()["answers"][0]
    assert first["id"] == "kb-social-card-replace"
    assert first["department"] == "区人力资源和社会保障局"
    assert "挂失" in first["answer"]
    r = await api.post(
        "/api/v1/appeals/preview",
        json={"caller_phone": "13800001111", "text": "来电人咨询家里闻到煤气味该怎么办"},
        headers=operator,
    )
    assert r.status_code == 200, r.text
    assert [a["id"] for a in r.json()["answers"]][:1] == ["kb-gas-emergency"]
    assert (await api.get("/api/v1/knowledge", params={"q": "社保"})).status_code == 401


# --- the rules of the base kept in the system (shared/knowledge.py) --------------------------------

TODAY = date(2026, 12, 1)
ENTRY = KnowledgeEntry(
    id="kb-x",
    question="社保卡怎么补办？",
    answer="带身份证到社保网点补办。",
    department="hrss",
    reviewed=TODAY,
)


def raw(**changes: object) -> dict[str, object]:
    return {
        "question": "社保卡怎么补办？",
        "answer": "带身份证到社保网点补办。",
        "department": "hrss",
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "field", "code"),
    [
        ({"question": " "}, "question", "question_required"),
        ({"question": "问" * (rules.QUESTION_MAX + 1)}, "question", "question_too_long"),
        ({"answer": "好的"}, "answer", "answer_required"),
        ({"answer": "答" * (rules.ANSWER_MAX + 1)}, "answer", "answer_too_long"),
        ({"category": "no.such"}, "category", "unknown_category"),
        ({"department": ""}, "department", "department_required"),
        ({"department": "nobody"}, "department", "unknown_department"),
        ({"keywords": [f"词{i}" for i in range(rules.KEYWORDS_MAX + 1)]}, "keywords", "too_many_keywords"),
        ({"keywords": ["长" * (rules.KEYWORD_MAX + 1)]}, "keywords", "keyword_too_long"),
        ({"keywords": [1, 2]}, "keywords", "invalid_field"),
        ({"question": 12}, "question", "invalid_field"),
    ],
)
def test_an_entry_is_refused_with_the_field_at_fault(changes: dict, field: str, code: str) -> None:
    with pytest.raises(DomainError) as e:
        rules.checked_entry(demo_city(), "kb-x", raw(**changes), reviewed=TODAY)
    assert (e.value.kind, e.value.field, e.value.code) == ("invalid", field, code)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in e.value.message)


def test_every_field_at_fault_is_named_at_once_and_each_in_the_apis_problems() -> None:
    from shared.http import domain_error

    changes = {
        "question": " ",
        "answer": "好的",
        "keywords": ["长" * (rules.KEYWORD_MAX + 1)],
        "department": "",
    }
    with pytest.raises(DomainError) as e:
        rules.checked_entry(demo_city(), "kb-x", raw(**changes), reviewed=TODAY)
    faults = [e.value, *e.value.also]
    assert [f.field for f in faults] == ["question", "answer", "keywords", "department"]
    body = json.loads(domain_error(e.value).body)
    assert (body["field"], body["error"]) == ("question", "question_required")
    assert [p["field"] for p in body["problems"]] == ["question", "answer", "keywords", "department"]
    assert body["problems"][1]["message"] == faults[1].message
    # One field at fault: the error alone, as every other refusal.
    with pytest.raises(DomainError) as one:
        rules.checked_entry(demo_city(), "kb-x", raw(answer="好的"), reviewed=TODAY)
    assert "problems" not in json.loads(domain_error(one.value).body)


def test_an_entry_is_tidied_as_it_is_checked() -> None:
    entry = rules.checked_entry(
        demo_city(),
        "kb-x",
        raw(
            question="  社保卡\n怎么补办？ ",
            category="labor.social_insurance",
            keywords="社保卡，补卡、挂失 补卡",
        ),
        reviewed=TODAY,
    )
    assert entry.question == "社保卡 怎么补办？"
    assert entry.keywords == ("社保卡", "补卡", "挂失")
    assert entry.category == "labor.social_insurance"
    assert entry.reviewed == TODAY


@pytest.mark.parametrize(
    ("given", "ok"), [(None, True), ("", True), ("kb-heating-2027", True), ("KB X", False), ("a", False)]
)
def test_a_new_entrys_id_is_checked(given: str | None, ok: bool) -> None:
    if ok:
        assert rules.checked_id(given) == (given or None)
    else:
        with pytest.raises(DomainError) as e:
            rules.checked_id(given)
        assert e.value.field == "id"


def test_a_retirement_needs_a_reason() -> None:
    assert rules.checked_reason("  政策已调整 ") == "政策已调整"
    for bad in ("", "   ", None, "因" * (rules.REASON_MAX + 1)):
        with pytest.raises(DomainError) as e:
            rules.checked_reason(bad)
        assert e.value.field == "reason"


@pytest.mark.parametrize(
    ("reviewed", "due"),
    [
        (None, True),  # never confirmed
        (TODAY, False),
        (TODAY - timedelta(days=180), False),  # on the last day of its period
        (TODAY - timedelta(days=181), True),
    ],
)
def test_an_answer_not_confirmed_within_the_review_period_is_due(reviewed: date | None, due: bool) -> None:
    assert rules.review_due(reviewed, TODAY, 180) is due
    # The list's filter (reviewed before the cutoff) and the mark agree.
    cutoff = rules.review_cutoff(TODAY, 180)
    assert (reviewed is None or reviewed < cutoff) is due


def test_the_review_period_is_a_validated_city_setting(tmp_path: Path) -> None:
    assert demo_city().sla.supervision.knowledge_review_days == 180
    folder = tmp_path / "city"
    shutil.copytree(DEMO_CITY_DIR, folder)
    sla = yaml.safe_load((folder / "sla.yaml").read_text(encoding="utf-8"))
    sla["supervision"]["knowledge_review_days"] = 0
    (folder / "sla.yaml").write_text(yaml.safe_dump(sla, allow_unicode=True), encoding="utf-8")
    with pytest.raises(CityConfigError, match="knowledge_review_days"):
        load_city(folder)


def test_the_search_marks_an_answer_due_for_a_review() -> None:
    city = demo_city()
    old = ENTRY.model_copy(update={"id": "kb-old", "reviewed": TODAY - timedelta(days=400)})
    base = KnowledgeBase([ENTRY, old], city)
    views = {v["id"]: v for v in (base.view(s, TODAY) for s in base.search("社保卡怎么补办", k=5))}
    assert views["kb-x"]["review_due"] is False
    assert views["kb-old"]["review_due"] is True


def test_who_may_do_what() -> None:
    mine, other = ("department", "hrss"), ("department", "education")
    assert rules.may_read("operator")
    assert rules.may_read("department")
    assert rules.may_read("admin")
    assert not rules.may_read("grid_worker")
    assert not rules.may_read("sms_gateway")
    assert rules.may_add("admin")
    assert not rules.may_add("department")
    assert not rules.may_add("operator")
    assert rules.may_retire("admin")
    assert not rules.may_retire("department")
    for may in (rules.may_edit, rules.may_confirm):
        assert may("admin", None, ENTRY)
        assert may(*mine, ENTRY)
        assert not may(*other, ENTRY)
        assert not may("operator", None, ENTRY)


def test_an_edit_by_the_owning_department_is_its_review() -> None:
    old = ENTRY.model_copy(update={"reviewed": date(2025, 1, 1)})
    by_owner = rules.edited(
        demo_city(), old, {"answer": "新的答复内容。"}, role="department", department="hrss", today=TODAY
    )
    assert (by_owner.answer, by_owner.reviewed, by_owner.question) == ("新的答复内容。", TODAY, old.question)
    by_desk = rules.edited(
        demo_city(), old, {"answer": "新的答复内容。"}, role="admin", department=None, today=TODAY
    )
    assert by_desk.reviewed == date(2025, 1, 1)  # the desk is not the owner: still to be confirmed
    moved = rules.edited(
        demo_city(), old, {"department": "education"}, role="admin", department=None, today=TODAY
    )
    assert moved.department == "education"


@pytest.mark.parametrize(
    ("role", "department", "changes", "field"),
    [
        ("department", "education", {"answer": "别人的答复。"}, None),  # not its own entry
        ("department", "hrss", {"department": "education"}, "department"),  # gives it away: the desk's call
        ("operator", None, {"answer": "话务员改答复。"}, None),
    ],
)
def test_an_edit_not_allowed_is_refused(
    role: str, department: str | None, changes: dict, field: str | None
) -> None:
    with pytest.raises(DomainError) as e:
        rules.edited(demo_city(), ENTRY, changes, role=role, department=department, today=TODAY)
    assert (e.value.kind, e.value.field) == ("forbidden", field)


def test_control_characters_are_dropped_before_they_reach_the_database() -> None:
    entry = rules.checked_entry(
        demo_city(), "kb-x", raw(question="社保卡\x00怎么补办？", keywords=["补\x00卡"]), reviewed=TODAY
    )
    assert (entry.question, entry.keywords) == ("社保卡怎么补办？", ("补卡",))
    assert rules.checked_reason("政策\x00调整") == "政策调整"


# --- browsing by category ---------------------------------------------------------------------------


def test_a_category_filter_takes_a_branch_with_everything_under_it() -> None:
    city = demo_city()
    for blank in (None, "", "  "):
        assert rules.category_filter(city, blank) is None
    assert rules.category_filter(city, "city.facility.streetlight") == {"city.facility.streetlight"}
    assert rules.category_filter(city, " city.greening ") == {"city.greening"}
    assert rules.category_filter(city, "city.facility") == {
        "city.facility",
        "city.facility.road_damage",
        "city.facility.streetlight",
        "city.facility.manhole",
        "city.facility.drainage",
    }
    city_branch = rules.category_filter(city, "city")
    assert city_branch is not None
    assert {"city", "city.facility.streetlight", "city.appearance.garbage", "city.greening"} <= city_branch
    assert {c for c in city_branch if not c.startswith("city")} == set()
    assert len(city_branch) == 11


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("no.such", "city.facility.streetlight"),  # what an id looks like
        ("cit", "city.facility.streetlight"),  # a prefix of an id is not a category
        ("路灯故障", "编号是 city.facility.streetlight"),  # its name: told its id
        ("城市管理/市政设施/路灯故障", "编号是 city.facility.streetlight"),
    ],
)
def test_a_category_the_city_does_not_have_is_refused_saying_what_to_give(given: str, hint: str) -> None:
    with pytest.raises(DomainError) as e:
        rules.category_filter(demo_city(), given)
    assert (e.value.kind, e.value.field, e.value.code) == ("invalid", "category", "unknown_category")
    assert hint in e.value.message
    assert "分类" in e.value.message


def test_a_search_narrowed_to_a_category_answers_from_it_alone() -> None:
    city = demo_city()
    loose = ENTRY.model_copy(update={"id": "kb-loose", "question": "停水停电了找谁？", "category": None})
    base = KnowledgeBase([*city.knowledge, loose], city)
    call = "停水停电了什么时候恢复"

    def found(category: str | None) -> set[str]:
        return {s.entry.id for s in base.search(call, within=rules.category_filter(city, category), k=10)}

    assert {"kb-water-outage", "kb-power-outage", "kb-loose"} <= found(None)
    assert found("utility.water") == {"kb-water-outage"}
    assert found("utility") == {"kb-water-outage", "kb-power-outage"}  # a branch: its leaves' entries
    assert found("labor") == set()  # nothing of it fits: no answer from another category
