"""The demo corpus generator: reproducible, complete, realistic enough to train and benchmark on."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from services.classifier import corpus
from services.classifier.corpus import (
    APPEAL_TYPES,
    ContentError,
    generate,
    load_content,
    read_jsonl,
    write_jsonl,
)
from services.cli import cli
from shared.city import DEMO_CITY_DIR, Category, City

PER_CATEGORY = 60


@pytest.fixture(scope="module")
def records(city: City) -> list[dict]:
    return generate(city, per_category=PER_CATEGORY, seed=0)


def _grid_names(city: City) -> dict[str, set[str]]:
    """Grid id -> every name of a compound, road or landmark in it."""
    out: dict[str, set[str]] = {}
    for gid, info in city.grids.items():
        g = info.grid
        names: set[str] = set()
        for p in (*g.compounds, *g.landmarks):
            names |= {p.name, *p.aliases}
        for r in g.roads:
            names |= {r.name, *r.aliases}
        out[gid] = names
    return out


def test_same_seed_same_records(city: City, records: list[dict]) -> None:
    assert generate(city, per_category=PER_CATEGORY, seed=0) == records


def test_other_seed_other_texts(city: City, records: list[dict]) -> None:
    other = generate(city, per_category=PER_CATEGORY, seed=1)
    seen = {r["text"] for r in records}
    shared = sum(r["text"] in seen for r in other)
    # A test set generated with another seed must not be the training text.
    assert shared / len(other) < 0.02


def test_every_leaf_per_category_times(city: City, records: list[dict]) -> None:
    counts = Counter(r["label"] for r in records)
    assert set(counts) == set(city.leaf_categories)
    assert set(counts.values()) == {PER_CATEGORY}
    assert len(records) == PER_CATEGORY * len(city.leaf_categories)


def test_record_shape(city: City, records: list[dict]) -> None:
    assert records
    for r in records:
        assert set(r) == {"title", "text", "label", "grid", "address", "type", "urgent"}
        assert corpus.MIN_TEXT <= len(r["text"]) <= corpus.MAX_TEXT, r["text"]
        assert corpus.MIN_TITLE <= len(r["title"]) <= corpus.MAX_TITLE, r["title"]
        assert r["label"] in city.leaf_categories
        assert r["grid"] in city.grids
        assert r["type"] in APPEAL_TYPES
        assert isinstance(r["urgent"], bool)
        assert isinstance(r["address"], str)
        assert "{" not in r["text"], r["text"]  # no unfilled template slot
        assert "}" not in r["text"], r["text"]


def test_texts_are_varied(records: list[dict]) -> None:
    texts = [r["text"] for r in records]
    assert len(set(texts)) / len(texts) > 0.98
    lengths = sorted(len(t) for t in texts)
    assert lengths[len(lengths) // 10] < 40  # short complaints...
    assert lengths[-len(lengths) // 50] > 150  # ...and long narratives
    # Many distinct sentences per category, not one template with a place swapped in.
    by_leaf: dict[str, set[str]] = {}
    for r in records:
        by_leaf.setdefault(r["label"], set()).add(r["text"].split("。")[0][-12:])
    assert all(len(v) >= 8 for v in by_leaf.values())


def test_shares(records: list[dict]) -> None:
    n = len(records)
    urgent = sum(r["urgent"] for r in records) / n
    assert 0.03 <= urgent <= 0.08
    no_address = sum(r["address"] == "" for r in records) / n
    assert 0.10 <= no_address <= 0.20
    types = Counter(r["type"] for r in records)
    assert set(types) == set(APPEAL_TYPES)


def test_urgent_records_read_urgent(records: list[dict]) -> None:
    urgent = [r for r in records if r["urgent"]]
    assert urgent
    markers = ("紧急", "马上", "立即", "赶紧", "刚才", "刚刚", "十万火急", "快来人")
    assert all(any(m in r["text"] for m in markers) for r in urgent)
    assert {"utility.gas", "housing.elevator"} <= {r["label"] for r in urgent}


def test_places_come_from_the_records_grid(city: City, records: list[dict]) -> None:
    names = _grid_names(city)
    with_address = [r for r in records if r["address"]]
    hits = sum(any(n in r["text"] for n in names[r["grid"]]) for r in with_address)
    assert hits / len(with_address) > 0.85
    # The address field names a place of the grid too.
    assert all(any(n in r["address"] for n in names[r["grid"]]) for r in with_address)


def test_some_texts_name_no_place(city: City, records: list[dict]) -> None:
    names = _grid_names(city)
    all_names = set().union(*names.values())
    placeless = [r for r in records if not any(n in r["text"] for n in all_names)]
    assert 0.03 < len(placeless) / len(records) < 0.25


def test_road_numbers_lie_in_the_grids_range(city: City, records: list[dict]) -> None:
    checked = 0
    for r in records:
        roads = {x.name: x for x in city.grids[r["grid"]].grid.roads}
        for name, road in roads.items():
            prefix = name
            if r["address"].startswith(prefix) and r["address"].endswith("号"):
                number = int(r["address"][len(prefix) : -1])
                assert road.from_no <= number <= road.to_no, r
                checked += 1
    assert checked > 0, "no record has a road address: the test checked nothing"


def test_noise_is_present(records: list[dict]) -> None:
    texts = [r["text"] for r in records]
    assert any(ch.isdigit() for t in texts for ch in t)  # times, house numbers, phone numbers
    assert sum("电话" in t and any(c.isdigit() for c in t) for t in texts) > 0
    assert sum(t.startswith(("来电人", "市民", "诉求人", "网友")) for t in texts) / len(texts) > 0.1


def test_unknown_categories_get_generic_content(city: City) -> None:
    """A leaf without hand-written content (another city's catalogue) still gets appeals."""
    extra = Category(id="misc.pets", name="宠物扰民", keywords=("遛狗不牵绳", "犬吠", "宠物粪便"))
    # Built anew, not model_copy: the copy would keep the original's cached indexes.
    other = City(
        district=city.district,
        departments=city.departments,
        categories=(*city.categories, extra),
        responsibilities=city.responsibilities,
        sla=city.sla,
    )
    recs = generate(other, per_category=30, seed=3)
    pets = [r for r in recs if r["label"] == "misc.pets"]
    assert len(pets) == 30
    assert all(corpus.MIN_TEXT <= len(r["text"]) <= corpus.MAX_TEXT for r in pets)
    assert sum(any(k in r["text"] for k in extra.keywords) for r in pets) > 15


def test_zero_per_category(city: City) -> None:
    assert generate(city, per_category=0, seed=0) == []


def test_jsonl_round_trip(tmp_path: Path, records: list[dict]) -> None:
    path = tmp_path / "out" / "corpus.jsonl"
    assert write_jsonl(records[:50], path) == 50
    assert read_jsonl(path) == records[:50]
    assert "来" in path.read_text(encoding="utf-8") or "的" in path.read_text(encoding="utf-8")


def test_appeals_corpus_writes_what_generate_gives(tmp_path: Path, city: City) -> None:
    out = tmp_path / "c.jsonl"
    r = CliRunner().invoke(
        cli, ["corpus", "--out", str(out), "--per-category", "3", "--seed", "5", "--city", str(DEMO_CITY_DIR)]
    )
    assert r.exit_code == 0, r.output
    assert f"wrote {3 * len(city.leaf_categories)} appeals" in r.output
    assert read_jsonl(out) == generate(city, per_category=3, seed=5)
    refused = CliRunner().invoke(cli, ["corpus", "--out", str(out), "--per-category", "-1"])
    assert refused.exit_code == 2


# --- the data files --------------------------------------------------------------------------------


def _content_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    shutil.copytree(corpus.CONTENT_DIR, folder)
    return folder


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def test_the_shipped_content_loads_and_has_a_topic_for_every_demo_category(city: City) -> None:
    content = load_content()
    names = {city.category_by_id[leaf].name for leaf in city.leaf_categories}
    assert names <= set(content.topics)
    assert all(t.problems for t in content.topics.values())


def test_content_from_another_folder_is_what_the_generator_says(tmp_path: Path, city: City) -> None:
    folder = _content_copy(tmp_path)
    _edit(folder / "phrases.yaml", lambda d: d.update(closings=["此致敬礼"]))
    recs = generate(city, per_category=20, seed=0, content=load_content(folder))
    assert any(r["text"].endswith("此致敬礼。") for r in recs)
    assert not any("此致敬礼" in r["text"] for r in generate(city, per_category=20, seed=0))


def test_an_unknown_slot_is_refused_with_the_file_and_the_entry(tmp_path: Path) -> None:
    folder = _content_copy(tmp_path)
    _edit(folder / "topics.yaml", lambda d: d["路灯故障"]["problems"].append("{place}的路灯不亮"))
    with pytest.raises(ContentError) as e:
        load_content(folder)
    message = str(e.value)
    assert str(folder / "topics.yaml") in message
    assert "路灯故障.problems[" in message
    assert "{place}" in message


def test_a_slot_where_nothing_fills_it_is_refused(tmp_path: Path) -> None:
    folder = _content_copy(tmp_path)
    _edit(folder / "phrases.yaml", lambda d: d["closings"].append("谢谢{kw}"))
    with pytest.raises(ContentError) as e:
        load_content(folder)
    assert str(folder / "phrases.yaml") in str(e.value)
    assert "closings[" in str(e.value)


def test_an_empty_table_and_a_missing_appeal_type_are_refused(tmp_path: Path) -> None:
    folder = _content_copy(tmp_path)

    def break_tables(d: dict) -> None:
        d["greetings"] = []
        del d["type_openings"]["咨询"]

    _edit(folder / "phrases.yaml", break_tables)
    with pytest.raises(ContentError) as e:
        load_content(folder)
    assert "greetings:" in str(e.value)
    assert "type_openings:" in str(e.value)


def test_a_topic_without_problems_or_with_a_misspelt_field_is_refused(tmp_path: Path) -> None:
    folder = _content_copy(tmp_path)

    def break_topics(d: dict) -> None:
        d["供水"]["problems"] = []
        d["路灯故障"]["impact"] = d["路灯故障"].pop("impacts")

    _edit(folder / "topics.yaml", break_topics)
    with pytest.raises(ContentError) as e:
        load_content(folder)
    assert "供水.problems: a topic needs at least one problem sentence" in str(e.value)
    assert "路灯故障.impact" in str(e.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    folder = _content_copy(tmp_path)
    (folder / "phrases.yaml").unlink()
    with pytest.raises(ContentError, match=r"phrases\.yaml: file missing"):
        load_content(folder)


def test_unclear_appeals_name_no_problem_and_depend_only_on_the_seed() -> None:
    appeals = corpus.unclear(200, seed=3)
    assert appeals == corpus.unclear(200, seed=3)
    assert appeals != corpus.unclear(200, seed=4)
    assert all(set(a) == {"title", "text"} and a["text"].strip("，。") for a in appeals)
    assert all("{" not in a["text"] + a["title"] for a in appeals)  # every slot filled
    content = load_content()
    # No category's own sentence: nothing in them a department could act on.
    problems = {p for t in content.topics.values() for p in t.problems}
    assert not any(p in a["text"] for a in appeals for p in problems if "{" not in p)
    assert len({a["text"] for a in appeals}) > 150
