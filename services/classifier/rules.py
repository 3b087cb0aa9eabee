"""Appeal type (诉求/投诉/咨询/求助/建议) and urgency: cue lists from data, combined with the model.

The cue lists live in `shared/dictionaries/cues.yaml`; a city replaces them with a `cues.yaml` in its
configuration folder. A cue is a fact a person can read ("the text says 燃气泄漏"), so it decides; the
model only fills in where no cue matched, and only when it is confident.

Some urgency needs two facts at once: 独居老人 alone is no emergency, nor is 联系不上, but an old
person living alone who cannot be reached is. `urgent_together` holds such cues: lists of words, the
appeal urgent when one sentence holds a word of every list (one sentence, so that 老人孩子出行不便 in
one sentence and 有人摔倒了 in the next make no emergency).

A cue word can also be said of a risk or a plan rather than of what is happening: 存在火灾隐患, 万一着火,
明天整个小区停水. The `calm` words say so, and a cue they cover does not count (see `Calm`); an appeal
whose only cues are covered is not urgent, and the model does not overrule that (the text was read).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import Annotated, cast, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from shared.events import AppealType
from shared.yamlfile import load_model

DEFAULT_CUES = Path(__file__).resolve().parents[2] / "shared" / "dictionaries" / "cues.yaml"
TYPES: tuple[str, ...] = get_args(AppealType)
# The model's type or urgency guess counts only above these probabilities (without a cue).
MODEL_TYPE_MIN = 0.7
MODEL_URGENT_MIN = 0.8
# What `urgent_together` counts as one sentence: up to a full stop, a question or exclamation mark, a
# semicolon or a line break (commas do not end it: 独居老人敲门没人应，电话也打不通 is one).
SENTENCE_END = re.compile(r"[。！？!?；;\n]")
# What a `calm` word reaches: its clause, up to a comma or a sentence end (or the space between an
# appeal's title and its text). Not 、 (火灾、触电等隐患) nor a colon (通知：下周二整栋楼停电).
CLAUSE_END = re.compile(r"[，,；;。！？!?\s]")
# A `calm.after` word covers a cue it follows by at most this many characters (火灾的隐患, 火灾等安全隐患).
AFTER_GAP = 3

# An empty word would match every text: refused on load, as are a combination of fewer than two lists
# (a single list belongs in `urgent`) and an empty list.
Word = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Words = tuple[Word, ...]
Together = Annotated[tuple[Annotated[Words, Field(min_length=1)], ...], Field(min_length=2)]


class Calm(BaseModel):
    """Words that say a cue is not an emergency happening now. In one clause (up to a comma):

    - `before`: a what-if or a plan; covers every cue after it in the clause (万一着火, 明天整个小区停水,
      通知说下周二整栋楼停电), up to a `now` word;
    - `after`: a risk; covers the cue just before it, at most AFTER_GAP characters away (火灾隐患);
    - `now`: a word that it is happening all the same (但是, 现在, 已经) ends what a `before` word covers,
      and a calm word inside one does not count (没有提前通知 holds 通知).

    A cue before a `before` word, or in another clause, stays urgent: 整栋楼停水了，通知说明天才修好."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    before: Words = ()
    after: Words = ()
    now: Words = ()


def _union(words: Iterable[str]) -> re.Pattern[str]:
    """One regex for a list: a single C-level scan per text instead of a Python loop per word."""
    return re.compile("|".join(map(re.escape, words)))


def _alternation(words: Iterable[str]) -> re.Pattern[str] | None:
    """`_union` of a list that may be empty (None: nothing to find)."""
    words = list(words)
    return _union(words) if words else None


class _Patterns:
    """`Cues`' lists compiled (`Cues.patterns`)."""

    __slots__ = ("calm", "follow_up", "together", "together_first", "types", "urgent")

    def __init__(self, cues: Cues) -> None:
        # The keys are checked against AppealType on load.
        self.types = [(cast(AppealType, k), _alternation(c)) for k, c in cues.types.items()]
        self.urgent = _alternation(cues.urgent)
        self.together = [[_union(words) for words in c] for c in cues.urgent_together]
        # Found only if some combination's first list has a word in the text (a match of the union
        # is a match of one of its words, wherever the others overlap it).
        self.together_first = _alternation(dict.fromkeys(w for c in cues.urgent_together for w in c[0]))
        self.follow_up = _alternation(cues.follow_up)
        # One scan finds every calm word; `now` first, so that 没有提前通知 is one, not 通知.
        calm = cues.calm
        groups = [
            f"(?P<{name}>{'|'.join(map(re.escape, words))})"
            for name, words in (("now", calm.now), ("before", calm.before), ("after", calm.after))
            if words
        ]
        self.calm = re.compile("|".join(groups)) if calm.before or calm.after else None


class Cues(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    types: dict[str, Words]  # in checking order
    urgent: Words
    urgent_together: tuple[Together, ...] = ()  # urgent when one sentence has a word of each list
    follow_up: Words = ()  # a caller asking after an earlier appeal (the hotline's preview)
    calm: Calm = Calm()  # words that say a cue is a risk or a plan, not an emergency now

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: dict[str, Words]) -> dict[str, Words]:
        unknown = sorted(set(v) - set(TYPES))
        if unknown:
            raise ValueError(f"unknown appeal type(s) {unknown}; allowed: {list(TYPES)}")
        return v

    @field_validator("calm")
    @classmethod
    def _calm_words_hold_no_cue(cls, v: Calm, info: ValidationInfo) -> Calm:
        """A calm word holding a cue word (火灾隐患 holds 火灾) covers nothing: a cue is covered only by
        a word before or after it, never by one it is part of. Say the calm part alone (隐患)."""
        cues = set(info.data.get("urgent", ())) | {
            w for c in info.data.get("urgent_together", ()) for words in c for w in words
        }
        for where in ("before", "after"):
            for i, word in enumerate(getattr(v, where)):
                held = sorted(c for c in cues if c in word)
                if held:
                    raise ValueError(
                        f"calm.{where}.{i} {word!r} holds the urgent cue(s) {held}, so it covers no "
                        "cue: list only the calm part of it"
                    )
        return v

    @cached_property
    def patterns(self) -> _Patterns:
        """The lists compiled, once. Not pydantic private attributes: reading one of those goes
        through `BaseModel.__getattr__` and a failed descriptor lookup, 1.6 µs a read, several reads
        an appeal; a cached property is read from the instance's dict."""
        return _Patterns(self)

    def appeal_type(self, text: str, model_guess: tuple[str, float] | None = None) -> AppealType:
        for kind, cue_re in self.patterns.types:
            if cue_re is not None and cue_re.search(text):
                return kind
        if model_guess and model_guess[1] >= MODEL_TYPE_MIN:
            return model_guess[0]  # type: ignore[return-value]
        return "诉求"

    def is_urgent(self, text: str, operator_flag: bool = False, model_p: float | None = None) -> bool:
        if operator_flag:
            return True
        cue = self.urgent_cue_found(text)
        if cue is not None:
            return cue  # a cue decides, and so does one the calm words cover
        return model_p is not None and model_p >= MODEL_URGENT_MIN

    def urgent_cue(self, text: str) -> bool:
        """Whether the text holds an urgent cue that no calm word covers."""
        return self.urgent_cue_found(text) is True

    def urgent_cue_found(self, text: str) -> bool | None:
        """True when the text holds an urgent cue: a word of `urgent`, or in one sentence a word of
        every list of one of `urgent_together`'s combinations, none of them covered by a `calm` word;
        False when it holds cues but the calm words cover them all (万一着火, 明天整个小区停水); None
        when it holds none."""
        p = self.patterns
        found = False
        calmed: Callable[[int, int], bool] | None = None  # looked for once a cue is found: most have none
        if p.urgent is not None:
            for m in p.urgent.finditer(text):
                calmed = calmed if found else self._calm_cover(text)
                found = True
                if calmed is None or not calmed(m.start(), m.end()):
                    return True
        sentences: list[tuple[int, int]] | None = None
        # No word of any combination's first list, no combination (most texts): one scan, not two a
        # combination.
        together = p.together if p.together_first is not None and p.together_first.search(text) else ()
        for lists in together:
            if not all(words.search(text) for words in lists):
                continue  # most texts: no sentence can have them all, and no split is needed
            if sentences is None:
                ends = [m.start() for m in SENTENCE_END.finditer(text)] + [len(text)]
                sentences = list(zip([0] + [e + 1 for e in ends[:-1]], ends, strict=True))
            for start, end in sentences:
                if not all(words.search(text, start, end) for words in lists):
                    continue
                calmed = calmed if found else self._calm_cover(text)
                found = True
                if calmed is None or all(
                    any(not calmed(m.start(), m.end()) for m in words.finditer(text, start, end))
                    for words in lists
                ):
                    return True
        return False if found else None

    def _calm_cover(self, text: str) -> Callable[[int, int], bool] | None:
        """Whether a cue at text[start:end] is covered by a calm word (see `Calm`); None when the text
        has no calm word (most texts: every cue counts)."""
        calm_re = self.patterns.calm
        if calm_re is None:
            return None
        words = list(calm_re.finditer(text))
        if not any(m.lastgroup != "now" for m in words):
            return None
        clause_ends = [m.start() for m in CLAUSE_END.finditer(text)]
        nows = [m.start() for m in words if m.lastgroup == "now"]
        covered: list[tuple[int, int]] = []  # what `before` words cover: to the clause's end or a `now`
        afters: list[int] = []
        for m in words:
            if m.lastgroup == "before":
                stop = min(
                    [e for e in clause_ends if e >= m.end()] + [n for n in nows if n >= m.end()] + [len(text)]
                )
                covered.append((m.end(), stop))
            elif m.lastgroup == "after":
                afters.append(m.start())

        def calmed(start: int, end: int) -> bool:
            return any(a <= start < b for a, b in covered) or any(
                0 <= p - end <= AFTER_GAP and CLAUSE_END.search(text, end, p) is None for p in afters
            )

        return calmed

    def follows_up(self, text: str) -> bool:
        """Whether the caller asks after an appeal they made before."""
        follow_up = self.patterns.follow_up
        return follow_up is not None and follow_up.search(text) is not None


def load_cues(city_config_dir: str | Path | None = None) -> Cues:
    """The city's `cues.yaml` if it has one, else the defaults; clear errors when it is invalid."""
    path = DEFAULT_CUES
    if city_config_dir and (Path(city_config_dir) / "cues.yaml").is_file():
        path = Path(city_config_dir) / "cues.yaml"
    return load_model(path, Cues, "cue lists")
