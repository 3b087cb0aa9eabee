"""The hotline's knowledge base: the city's file validated on load, the answers that fit a call,
and both through the API (the search, and the operator's preview)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from services.intake.knowledge import KnowledgeBase
from shared.auth import issue_token
from shared.city import DEMO_CITY_DIR, CityConfigError, load_city
from tests.cities import demo_city


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase(demo_city())


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
    assert KnowledgeBase(city).search("社保卡丢了怎么补办") == []


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
