"""The demo corpus: seeded, reproducible Chinese resident appeals for every leaf category and grid.

It trains the demo classifier and drives benchmarks, so it has to look like real 12345 traffic:
first-person web/app messages and third-person call-taker summaries (来电人反映...), short complaints
and long narratives, place references a resident would use (a compound's colloquial name, a house
number on a road, "the school gate"), and some noise (typos, a second topic, phone numbers, no place
at all). Every appeal is composed from fragments -- opening, problem, duration, impact, previous
attempts, request -- so a few hand-written sentences per category multiply into many texts.

The fragments are data, in `shared/demo_city/corpus/`: `topics.yaml` holds each category's own
sentences, keyed by the leaf category's *name* (道路破损, 供水, ...), not its id, so a city whose
catalogue uses the usual names gets the rich sentences; a leaf without a topic gets generic
sentences built from its name and `keywords`. `phrases.yaml` holds the fragments that fit any
category, the title templates and the noise tables. Both are validated on load.

Pure python, `random.Random(seed)` only: the same seed gives the same records, another seed other
texts (a test set generated with another seed is not the training text). Only the analyst's
commands and the tests use it (`appeals corpus`, `appeals train`); the services never import it.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.city import DEMO_CITY_DIR, City, GridInfo
from shared.yamlfile import read_yaml

CONTENT_DIR = DEMO_CITY_DIR / "corpus"

APPEAL_TYPES = ("诉求", "投诉", "咨询", "求助", "建议")
_TYPE_WEIGHTS = (35, 30, 15, 10, 10)

MIN_TEXT, MAX_TEXT = 15, 400
MIN_TITLE, MAX_TITLE = 6, 25

# Target shares. Urgent appeals only come from categories with urgent content (gas leaks, people
# stuck in lifts, ...), so those categories get a higher rate to reach the overall share.
URGENT_SHARE = 0.05
NO_ADDRESS_SHARE = 0.15
TYPO_SHARE = 0.05
SECOND_TOPIC_SHARE = 0.10
UNCLEAR_APPEALS = 400  # appeals naming no problem that training keeps out of automatic routing

_STYLES, _STYLE_WEIGHTS = ("short", "medium", "long", "narrative"), (25, 45, 20, 10)


# --- content: the data files and their checks ----------------------------------------------------

Phrases = tuple[str, ...]
# Tables the generator draws from: an empty one would fail the draw, so it is refused on load.
NonEmpty = Annotated[tuple[str, ...], Field(min_length=1)]


class Topic(BaseModel):
    """Hand-written fragments of one leaf category. `{p}` in a problem marks where the place goes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    problems: Phrases = ()
    impacts: Phrases = ()
    requests: Phrases = ()
    asks: Phrases = ()  # questions, for 咨询
    urgent: Phrases = ()  # problems that make the appeal urgent
    timely: bool = False  # events happen at a time of day (noise, outages), so "昨晚11点多" fits


class PhraseTables(BaseModel):
    """The fragments that fit any category (phrases.yaml); every table needs an entry to draw."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keyword_problems: NonEmpty
    greetings: NonEmpty
    type_openings: dict[str, Phrases]
    home_openings: NonEmpty
    third_home_openings: NonEmpty
    third_openings: NonEmpty
    urgent_openings: NonEmpty
    vague_places: NonEmpty
    durations: NonEmpty
    urgent_durations: NonEmpty
    times: NonEmpty
    impacts: Annotated[Phrases, Field(min_length=3)]  # a narrative names up to three
    priors: Annotated[Phrases, Field(min_length=3)]  # a narrative mentions up to three
    requests: NonEmpty
    complaint_requests: NonEmpty
    generic_asks: NonEmpty
    suggestions: NonEmpty
    urgent_requests: NonEmpty
    backgrounds: NonEmpty
    feelings: Annotated[Phrases, Field(min_length=2)]  # a narrative voices up to two
    closings: NonEmpty
    second_topic: NonEmpty
    extra: NonEmpty
    extra_places: NonEmpty
    contacts: NonEmpty
    mobile_prefixes: NonEmpty
    surnames: NonEmpty
    compound_spots: NonEmpty
    road_spots: NonEmpty
    landmark_spots: NonEmpty
    title_patterns: NonEmpty
    title_patterns_noplace: NonEmpty
    title_vague: NonEmpty
    title_vague_noplace: NonEmpty
    typos: Annotated[dict[str, str], Field(min_length=1)]
    third_person: Annotated[tuple[tuple[str, str], ...], Field(min_length=1)]
    locatives: NonEmpty
    vague_matters: NonEmpty
    unclear_calls: NonEmpty

    @field_validator("type_openings")
    @classmethod
    def _every_type(cls, v: dict[str, Phrases]) -> dict[str, Phrases]:
        if set(v) != set(APPEAL_TYPES) or not all(v.values()):
            raise ValueError(f"needs a non-empty list for each of {list(APPEAL_TYPES)}, and no other key")
        return v

    @field_validator("typos")
    @classmethod
    def _one_character(cls, v: dict[str, str]) -> dict[str, str]:
        wrong = [f"{a}: {b}" for a, b in v.items() if len(a) != 1 or len(b) != 1]
        if wrong:
            raise ValueError(f"a typo replaces one character by one character, not {wrong}")
        return v

    @field_validator("mobile_prefixes")
    @classmethod
    def _three_digits(cls, v: Phrases) -> Phrases:
        wrong = [p for p in v if not (len(p) == 3 and p.isdigit() and p.startswith("1"))]
        if wrong:
            raise ValueError(f"a mobile prefix is three digits starting with 1, not {wrong}")
        return v

    @field_validator("surnames")
    @classmethod
    def _single_characters(cls, v: Phrases) -> Phrases:
        wrong = [s for s in v if len(s) != 1]
        if wrong:
            raise ValueError(f"surnames are single characters here, not {wrong}")
        return v


# The slots each table may use; the generator fills exactly these (numbers: a count, a month, a
# morning hour, a late-evening hour). A slot anywhere else would reach a text unfilled.
_NUMBERS = frozenset({"n", "m", "h", "h2"})
TOPIC_SLOTS: dict[str, frozenset[str]] = {
    "problems": _NUMBERS | {"p", "kw"},
    "urgent": _NUMBERS | {"p", "kw"},
    "asks": _NUMBERS | {"kw"},
}
PHRASE_SLOTS: dict[str, frozenset[str]] = {
    "keyword_problems": _NUMBERS | {"p", "kw"},
    "home_openings": frozenset({"home"}),
    "third_home_openings": frozenset({"home"}),
    "durations": _NUMBERS,
    "urgent_durations": _NUMBERS,
    "times": _NUMBERS,
    "generic_asks": _NUMBERS | {"kw"},
    "contacts": frozenset({"phone", "surname"}),
    "title_patterns": frozenset({"q", "kw"}),
    "title_patterns_noplace": frozenset({"kw", "name", "type"}),
    "title_vague": frozenset({"q", "type"}),
    "title_vague_noplace": frozenset({"type"}),
}
_SLOT = re.compile(r"\{([^{}]*)\}")


def _slot_problems(entry: str, text: str, allowed: frozenset[str]) -> list[str]:
    unknown = [s for s in _SLOT.findall(text) if s not in allowed]
    problems = []
    if unknown:
        problems.append(
            f"{entry}: unknown slot(s) {', '.join('{' + s + '}' for s in unknown)} in {text!r} "
            f"(allowed here: {', '.join('{' + s + '}' for s in sorted(allowed)) or 'none'})"
        )
    elif "{" in _SLOT.sub("", text) or "}" in _SLOT.sub("", text):
        problems.append(f"{entry}: unmatched brace in {text!r}")
    return problems


@dataclass(frozen=True)
class Content:
    """Everything the generator says, from the data files."""

    topics: dict[str, Topic]
    phrases: PhraseTables


class ContentError(ValueError):
    """A corpus data file is missing or invalid; the message names the file and the entry."""


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ContentError(f"{path}: file missing (the demo corpus needs it)")
    try:
        return read_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ContentError(f"{path}: not valid YAML: {e}") from e


def _invalid(path: Path, lines: list[str]) -> ContentError:
    return ContentError(f"{path}: invalid demo corpus content:\n  " + "\n  ".join(lines))


def _validation_lines(e: ValidationError, prefix: str = "") -> list[str]:
    return [f"{prefix}{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors()]


@lru_cache(maxsize=4)
def load_content(folder: Path = CONTENT_DIR) -> Content:
    """The topics and phrase tables in `folder` (topics.yaml, phrases.yaml), checked: structure,
    tables that cannot be empty, and the slots each table may use. Errors name file and entry."""
    topics_path, phrases_path = folder / "topics.yaml", folder / "phrases.yaml"
    raw_topics = _read_yaml(topics_path)
    if not isinstance(raw_topics, dict):
        raise _invalid(topics_path, ["(top level): a mapping of category name -> topic"])
    topics: dict[str, Topic] = {}
    lines: list[str] = []
    for name, raw in raw_topics.items():
        try:
            topic = Topic.model_validate(raw)
        except ValidationError as e:
            lines += _validation_lines(e, f"{name}.")
            continue
        if not topic.problems:
            lines.append(f"{name}.problems: a topic needs at least one problem sentence")
        for table, allowed in TOPIC_SLOTS.items():
            for i, text in enumerate(getattr(topic, table)):
                lines += _slot_problems(f"{name}.{table}[{i}]", text, allowed)
        for table in ("impacts", "requests"):
            for i, text in enumerate(getattr(topic, table)):
                lines += _slot_problems(f"{name}.{table}[{i}]", text, frozenset())
        topics[str(name)] = topic
    if lines:
        raise _invalid(topics_path, lines)
    try:
        phrases = PhraseTables.model_validate(_read_yaml(phrases_path))
    except ValidationError as e:
        raise _invalid(phrases_path, _validation_lines(e)) from e
    for table in PhraseTables.model_fields:
        value = getattr(phrases, table)
        if table == "type_openings":
            texts = [(f"{table}.{k}[{i}]", t) for k, v in value.items() for i, t in enumerate(v)]
        elif table == "typos":
            texts = [(f"{table}.{k}", t) for k, t in value.items()]
        elif table == "third_person":
            texts = [(f"{table}[{i}]", t) for i, pair in enumerate(value) for t in pair]
        else:
            texts = [(f"{table}[{i}]", t) for i, t in enumerate(value)]
        for entry, text in texts:
            lines += _slot_problems(entry, text, PHRASE_SLOTS.get(table, frozenset()))
    if lines:
        raise _invalid(phrases_path, lines)
    return Content(topics, phrases)


_NO_TOPIC = Topic()


# --- places --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    text: str  # as written in the appeal, e.g. "阳光小区5号楼2单元门口"
    address: str  # as typed into the address field
    home: str  # for "我家住在{home}"
    short: str  # for titles, e.g. "阳光小区"


def _building(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return f"{rng.randint(1, 30)}号楼"
    if r < 0.6:
        return f"{rng.randint(1, 30)}号楼{rng.randint(1, 6)}单元"
    if r < 0.75:
        return f"{rng.randint(1, 30)}号楼{rng.randint(1, 6)}单元{rng.randint(1, 18)}0{rng.randint(1, 4)}室"
    return f"{rng.randint(1, 30)}栋"


def _pick_name(rng: random.Random, name: str, aliases: Sequence[str], p_alias: float = 0.4) -> str:
    return rng.choice(aliases) if aliases and rng.random() < p_alias else name


class _Generator:
    def __init__(self, city: City, seed: int, content: Content) -> None:
        self.city = city
        self.rng = random.Random(seed)
        self.ph = content.phrases
        locatives = "|".join(map(re.escape, self.ph.locatives))
        self.double_locative = re.compile(f"({locatives})(?:附近|门口)")
        self.grids: tuple[GridInfo, ...] = tuple(city.grids.values())
        self.district = city.district.name
        # Names that several places share (幸福里 in two streets): mention the street or community
        # with them more often, as residents do when asked "哪个幸福里?".
        counts = Counter(
            n
            for g in self.grids
            for p in (*g.grid.compounds, *g.grid.landmarks)
            for n in {p.name, *p.aliases}
        )
        self.shared_names = frozenset(n for n, k in counts.items() if k > 1)
        # Residents name their compound most often, then a road and house number, then a landmark.
        self.place_kinds = {
            g.grid.id: ("compound",) * 5 * bool(g.grid.compounds)
            + ("road",) * 3 * bool(g.grid.roads)
            + ("landmark",) * 2 * bool(g.grid.landmarks)
            for g in self.grids
        }
        self.topics: dict[str, Topic] = {}
        self.keywords: dict[str, tuple[str, ...]] = {}
        for leaf in city.leaf_categories:
            cat = city.category_by_id[leaf]
            self.keywords[leaf] = cat.keywords or (cat.name,)
            self.topics[leaf] = content.topics.get(cat.name, _NO_TOPIC)
        urgent_leaves = sum(1 for t in self.topics.values() if t.urgent)
        # Per-record urgent rate in categories that can be urgent, so the overall share is URGENT_SHARE.
        self.urgent_rate = min(0.5, URGENT_SHARE * len(self.topics) / urgent_leaves) if urgent_leaves else 0.0
        self.urgent_share = self.urgent_rate * urgent_leaves / max(1, len(self.topics))

    # --- places ---

    def place(self, gi: GridInfo) -> _Place | None:
        rng, g = self.rng, gi.grid
        kinds = self.place_kinds[g.id]
        if not kinds:
            return None
        kind = rng.choice(kinds)
        if kind == "compound":
            c = rng.choice(g.compounds)
            name = _pick_name(rng, c.name, c.aliases)
            building = _building(rng) if rng.random() < 0.55 else ""
            spot = rng.choice(self.ph.compound_spots)
            text = name + (building or spot)
            place = _Place(text, c.name + building, name + building, name)
        elif kind == "road":
            r = rng.choice(g.roads)
            lo = max(r.from_no, 1)
            # Residents quote plausible numbers, not 99999 on an open-ended segment.
            no = rng.randint(lo, max(lo, min(r.to_no, r.from_no + 300)))
            name = _pick_name(rng, r.name, r.aliases, 0.3)
            others = [o for o in g.roads if o.name != r.name]
            if others and rng.random() < 0.2:
                text = f"{name}和{rng.choice(others).name}交叉口"
                return _Place(text, text, text + "附近", name)
            text = f"{name}{no}号" + rng.choice(self.ph.road_spots)
            place = _Place(text, f"{r.name}{no}号", f"{name}{no}号", name)
        else:
            lm = rng.choice(g.landmarks)
            name = _pick_name(rng, lm.name, lm.aliases)
            text = name + rng.choice(self.ph.landmark_spots)
            place = _Place(text, lm.name, name + "附近", name)
        # Sometimes the street / community is named too; always more likely with a shared name.
        p_area = 0.6 if place.short in self.shared_names else 0.15
        if rng.random() < p_area:
            area = rng.choice((gi.street_name, gi.community_name, gi.street_name + gi.community_name))
            place = _Place(area + place.text, gi.street_name + place.address, area + place.home, place.short)
        if rng.random() < 0.25:  # some residents type the district too
            place = _Place(place.text, self.district + place.address, place.home, place.short)
        return place

    # --- fragments ---

    def _fill(self, s: str, p: str, kw: str = "") -> str:
        s = s.replace("{p}", p).replace("{kw}", kw)
        if "{" in s:  # numbers: only draw when needed (this is the hot path)
            for slot, lo, hi in (("{n}", 2, 9), ("{m}", 1, 12), ("{h}", 5, 9), ("{h2}", 9, 12)):
                if slot in s:
                    s = s.replace(slot, str(self.rng.randint(lo, hi)))
        return s

    def _phone(self) -> str:
        ph = self.ph
        rng = self.rng
        digits = rng.choice(ph.mobile_prefixes) + "".join(rng.choice("0123456789") for _ in range(8))
        if rng.random() < 0.3:  # masked, as web forms show it
            digits = digits[:3] + "****" + digits[7:]
        return digits

    def problem(self, leaf: str, urgent: bool) -> str:
        ph = self.ph
        topic, rng = self.topics[leaf], self.rng
        if urgent:
            return rng.choice(topic.urgent)
        if topic.problems and rng.random() < 0.8:
            return rng.choice(topic.problems)
        return rng.choice(ph.keyword_problems)

    # --- one record ---

    def record(self, leaf: str) -> dict:
        ph = self.ph
        rng = self.rng
        topic = self.topics[leaf]
        cat = self.city.category_by_id[leaf]
        keywords = self.keywords[leaf]
        kw = rng.choice(keywords)
        gi = rng.choice(self.grids)
        urgent = bool(topic.urgent) and rng.random() < self.urgent_rate
        kind = rng.choice(("求助", "诉求")) if urgent else rng.choices(APPEAL_TYPES, _TYPE_WEIGHTS)[0]
        third = rng.random() < 0.25  # a call-taker's summary rather than the resident's own words

        # Where: an address field (~85%), and a place in the text for most of those.
        place = self.place(gi)
        has_address = place is not None and rng.random() >= NO_ADDRESS_SHARE
        in_text = rng.random() < 0.93 if has_address else place is not None and rng.random() < 0.4
        address = place.address if has_address and place else ""
        spot = place.text if in_text and place else rng.choice(ph.vague_places)

        template = self.problem(leaf, urgent)
        problem = self._fill(template, spot, kw)
        opening = ""
        if in_text and place and place.text not in problem:
            # The problem sentence has no slot for the place: say where one lives instead.
            opening = rng.choice(ph.third_home_openings if third else ph.home_openings).replace(
                "{home}", place.home
            )
        if topic.timely and not urgent and template in topic.problems and rng.random() < 0.25:
            problem = self._fill(rng.choice(ph.times), "") + "，" + problem

        # short: a line or two; medium: + duration / impact; long: + a second problem and previous
        # attempts; narrative: the resident's whole story (background, several problems, feelings).
        style = "short" if urgent and rng.random() < 0.5 else rng.choices(_STYLES, _STYLE_WEIGHTS)[0]
        long = style in ("long", "narrative")
        sentences: list[list[str]] = []
        if style == "narrative" and not urgent:
            sentences.append([rng.choice(ph.backgrounds)])
            if rng.random() < 0.5:
                problem = "具体情况是这样的：" + problem
        first = [problem]
        if urgent or (style != "short" and rng.random() < 0.6):
            durations = ph.urgent_durations if urgent else ph.durations
            first.append(self._fill(rng.choice(durations), ""))
        sentences.append(first)
        if long and not urgent:
            n_extra = rng.randint(2, 3) if style == "narrative" else 1
            pool = [t for t in topic.problems or ph.keyword_problems if t != template]
            for extra in rng.sample(pool, min(n_extra, len(pool))):
                extra = self._fill(extra, rng.choice(ph.extra_places), rng.choice(keywords))
                sentences.append([rng.choice(ph.extra) + "，" + extra])
        if urgent:
            pass  # no history, no feelings: someone reporting a gas leak says what and where
        elif (style != "short" and rng.random() < 0.6) or style == "narrative":
            if style == "narrative":
                sentences.append(rng.sample(topic.impacts + ph.impacts, rng.randint(2, 3)))
            else:  # mostly the category's own impacts; the generic ones fit anything
                sentences.append(
                    [rng.choice(topic.impacts if topic.impacts and rng.random() < 0.7 else ph.impacts)]
                )
        if not urgent and (long or (style == "medium" and rng.random() < 0.2)):
            n_prior = rng.randint(1, 3) if style == "narrative" else 1
            sentences.extend([x] for x in rng.sample(ph.priors, n_prior))
        if style == "narrative" and not urgent:
            sentences.extend([x] for x in rng.sample(ph.feelings, rng.randint(1, 2)))
        if not urgent and rng.random() < SECOND_TOPIC_SHARE / (1 - self.urgent_share):
            sentences.append([rng.choice(ph.second_topic) + "，" + self.other_problem(leaf)])
        if rng.random() < 0.07:
            contact = rng.choice(ph.contacts).replace("{surname}", rng.choice(ph.surnames))
            sentences.append([contact.replace("{phone}", self._phone())])
        request = self.request(topic, kind, urgent, kw, third)
        if request:
            sentences.append([request])
        if not third and rng.random() < 0.25:
            sentences.append([rng.choice(ph.closings)])

        body = "".join(_sentence(s) for s in sentences)
        if third:
            body = self.third_person(body)
            head = rng.choice(ph.third_openings) + rng.choice(("：", "，"))
            text = head + (opening + "，" if opening else "") + body
        else:
            head = ""
            if urgent:
                head = rng.choice(ph.urgent_openings)
            elif rng.random() < 0.6:
                head = rng.choice(ph.greetings + ph.type_openings[kind])
            if head and head[-1] not in "，！":
                head += rng.choice(("，", "，", "。", "！")) if opening or rng.random() < 0.5 else "，"
            text = head + (opening + "，" if opening else "") + body

        text = self.fit(self.double_locative.sub(r"\1", text))
        if rng.random() < TYPO_SHARE:
            text = self.typo(text)
        return {
            "title": self.title(cat.name, kw, kind, urgent, place if in_text else None),
            "text": text,
            "label": leaf,
            "grid": gi.grid.id,
            "address": address,
            "type": kind,
            "urgent": urgent,
        }

    def other_problem(self, leaf: str) -> str:
        """A problem sentence of another category, about no particular place (mixed-topic noise)."""
        ph = self.ph
        others = [x for x in self.city.leaf_categories if x != leaf] or [leaf]
        other = self.rng.choice(others)
        return self._fill(
            self.problem(other, False),
            self.rng.choice(ph.vague_places),
            self.rng.choice(self.keywords[other]),
        )

    def request(self, topic: Topic, kind: str, urgent: bool, kw: str, third: bool) -> str:
        ph = self.ph
        rng = self.rng
        if urgent:
            req = rng.choice(ph.urgent_requests)
        elif kind == "咨询":
            req = self._fill(rng.choice(topic.asks + ph.generic_asks), "", kw)
        elif kind == "建议":
            req = rng.choice(ph.suggestions + topic.requests)
        elif kind == "投诉":
            req = rng.choice(ph.complaint_requests + topic.requests + ph.requests)
        else:
            req = rng.choice(topic.requests + ph.requests)
        if not third:
            return req
        # A call-taker's summary: 来电人咨询/建议/希望 + the request without its own lead word.
        if "给我" in req:  # "处理完请给我回个电话"
            return "来电人要求处理后回电告知结果"
        if kind == "咨询" and not urgent:
            return "来电人咨询" + req.removeprefix("请问").removeprefix("想问一下").rstrip("？")
        if kind == "建议" and req.startswith("建议"):
            return "来电人" + req
        for lead in ("希望", "要求", "请", "麻烦"):
            req = req.removeprefix(lead)
        return rng.choice(("来电人希望", "来电人要求", "诉求人希望")) + req.rstrip("！")

    def title(self, name: str, kw: str, kind: str, urgent: bool, place: _Place | None) -> str:
        ph = self.ph
        rng = self.rng
        if rng.random() < 0.15:
            patterns = ph.title_vague if place else ph.title_vague_noplace
            title = rng.choice(patterns).replace("{q}", place.short if place else "").replace("{type}", kind)
        elif place and rng.random() < 0.6:
            title = rng.choice(ph.title_patterns).replace("{q}", place.short).replace("{kw}", kw)
        else:
            title = rng.choice(ph.title_patterns_noplace)
            title = title.replace("{kw}", kw).replace("{name}", name).replace("{type}", kind)
        if len(title) < MIN_TITLE:  # a short keyword: "反映井盖问题" rather than "井盖"
            title = f"反映{kw}问题" if len(kw) > 1 else f"反映{name}问题"
        if urgent:
            title = "紧急：" + title
        if len(title) > MAX_TITLE:
            title = f"{'紧急：' * urgent}{name}{kind}"
        return title.ljust(MIN_TITLE, "！")[:MAX_TITLE]

    # --- noise and length ---

    def third_person(self, s: str) -> str:
        for a, b in self.ph.third_person:
            s = s.replace(a, b)
        return s

    def fit(self, text: str) -> str:
        """Keep the text within MIN_TEXT..MAX_TEXT characters."""
        while len(text) < MIN_TEXT:
            text += self.rng.choice(self.ph.requests) + "。"
        if len(text) > MAX_TEXT:
            # Cut at the last full sentence that fits.
            cut = max(text.rfind(p, 0, MAX_TEXT) for p in "。！？")
            text = text[: cut + 1] if cut >= MIN_TEXT else text[:MAX_TEXT]
        return text

    def typo(self, text: str) -> str:
        typos = self.ph.typos
        spots = [i for i, ch in enumerate(text) if ch in typos]
        if not spots:
            return text
        i = self.rng.choice(spots)
        return text[:i] + typos[text[i]] + text[i + 1 :]


def _sentence(clauses: list[str]) -> str:
    s = "，".join(c.strip("，。") for c in clauses if c)
    return s if s[-1:] in ("？", "！", "。") else s + "。"


# --- API -----------------------------------------------------------------------------------------


def generate(
    city: City, per_category: int = 200, seed: int = 0, content: Content | None = None
) -> list[dict]:
    """`per_category` appeals for every leaf category of `city`, in random (seeded) order, composed
    from `content` (default: the data files in shared/demo_city/corpus/).

    Records: title, text, label (leaf id), grid (grid id), address ("" for ~15%), type (诉求/投诉/
    咨询/求助/建议) and urgent. Deterministic for a seed; another seed gives other texts.
    """
    gen = _Generator(city, seed, content or load_content())
    records = [gen.record(leaf) for leaf in city.leaf_categories for _ in range(per_category)]
    gen.rng.shuffle(records)
    return records


def unclear(n: int = UNCLEAR_APPEALS, seed: int = 0, content: Content | None = None) -> list[dict]:
    """`n` appeals that name no problem (records with `title` and `text`, no label), composed from the
    fragments that fit any category: a greeting or an opening, perhaps a vague place and "the matter"
    there, how long it has lasted, its impact, what was tried before, a request; or one of the calls
    with nothing to register (`unclear_calls`). Training keeps these out of automatic routing.
    Deterministic for a seed."""
    ph = (content or load_content()).phrases
    rng = random.Random(seed)

    def fill(s: str) -> str:
        for slot, lo, hi in (("{n}", 2, 9), ("{m}", 1, 12), ("{h}", 5, 9), ("{h2}", 9, 12)):
            s = s.replace(slot, str(rng.randint(lo, hi)))
        return s

    records = []
    for _ in range(n):
        kind = rng.choices(APPEAL_TYPES, _TYPE_WEIGHTS)[0]
        if rng.random() < 0.15:
            parts = [rng.choice(ph.unclear_calls)]
        else:
            parts = [rng.choice(ph.greetings + ph.type_openings[kind])] if rng.random() < 0.8 else []
            if rng.random() < 0.5:
                parts.append(rng.choice(ph.vague_places) + rng.choice(ph.vague_matters))
            for table, share in ((ph.durations, 0.5), (ph.impacts, 0.4), (ph.priors, 0.4)):
                if rng.random() < share:
                    parts.append(fill(rng.choice(table)))
            parts.append(rng.choice(ph.requests + ph.complaint_requests))
            if rng.random() < 0.3:
                parts.append(rng.choice(ph.closings))
        title = rng.choice(ph.title_vague_noplace).replace("{type}", kind) if rng.random() < 0.5 else ""
        records.append({"title": title, "text": "，".join(parts) + "。"})
    return records


def write_jsonl(records: Iterable[dict], path: str | Path) -> int:
    """Write one JSON object per line (UTF-8, Chinese unescaped); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
