"""Appeal type (诉求/投诉/咨询/求助/建议) and urgency: cue lists from data, combined with the model.

The cue lists live in `shared/dictionaries/cues.yaml`; a city replaces them with a `cues.yaml` in its
configuration folder. A cue is a fact a person can read ("the text says 燃气泄漏"), so it decides; the
model only fills in where no cue matched, and only when it is confident.

Some urgency needs two facts at once: 独居老人 alone is no emergency, nor is 联系不上, but an old
person living alone who cannot be reached is. `urgent_together` holds such cues: lists of words, the
appeal urgent when one sentence holds a word of every list (one sentence, so that 老人孩子出行不便 in
one sentence and 有人摔倒了 in the next make no emergency).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, cast, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
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

# An empty word would match every text: refused on load, as are a combination of fewer than two lists
# (a single list belongs in `urgent`) and an empty list.
Word = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Words = tuple[Word, ...]
Together = Annotated[tuple[Annotated[Words, Field(min_length=1)], ...], Field(min_length=2)]


class Cues(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    types: dict[str, Words]  # in checking order
    urgent: Words
    urgent_together: tuple[Together, ...] = ()  # urgent when one sentence has a word of each list
    follow_up: Words = ()  # a caller asking after an earlier appeal (the hotline's preview)
    _type_res: list[tuple[AppealType, re.Pattern[str] | None]] = PrivateAttr(default_factory=list)
    _urgent_re: re.Pattern[str] | None = PrivateAttr(default=None)
    _together_res: list[list[re.Pattern[str]]] = PrivateAttr(default_factory=list)
    _follow_up_re: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: dict[str, Words]) -> dict[str, Words]:
        unknown = sorted(set(v) - set(TYPES))
        if unknown:
            raise ValueError(f"unknown appeal type(s) {unknown}; allowed: {list(TYPES)}")
        return v

    def model_post_init(self, _: object) -> None:
        # One regex per list: a single C-level scan per appeal instead of a Python loop per cue.
        def pattern(cues: tuple[str, ...]) -> re.Pattern[str] | None:
            return re.compile("|".join(map(re.escape, cues))) if cues else None

        # The keys are checked against AppealType above.
        self._type_res = [(cast(AppealType, k), pattern(c)) for k, c in self.types.items()]
        self._urgent_re = pattern(self.urgent)
        self._together_res = [
            [re.compile("|".join(map(re.escape, words))) for words in c] for c in self.urgent_together
        ]
        self._follow_up_re = pattern(self.follow_up)

    def appeal_type(self, text: str, model_guess: tuple[str, float] | None = None) -> AppealType:
        for kind, cue_re in self._type_res:
            if cue_re is not None and cue_re.search(text):
                return kind
        if model_guess and model_guess[1] >= MODEL_TYPE_MIN:
            return model_guess[0]  # type: ignore[return-value]
        return "诉求"

    def is_urgent(self, text: str, operator_flag: bool = False, model_p: float | None = None) -> bool:
        if operator_flag or self.urgent_cue(text):
            return True
        return model_p is not None and model_p >= MODEL_URGENT_MIN

    def urgent_cue(self, text: str) -> bool:
        """Whether the text holds an urgent cue: a word of `urgent`, or in one sentence a word of every
        list of one of `urgent_together`'s combinations."""
        if self._urgent_re is not None and self._urgent_re.search(text):
            return True
        sentences: list[str] | None = None
        for lists in self._together_res:
            if not all(words.search(text) for words in lists):
                continue  # most texts: no sentence can have them all, and no split is needed
            sentences = sentences if sentences is not None else SENTENCE_END.split(text)
            if any(all(words.search(s) for words in lists) for s in sentences):
                return True
        return False

    def follows_up(self, text: str) -> bool:
        """Whether the caller asks after an appeal they made before."""
        return self._follow_up_re is not None and self._follow_up_re.search(text) is not None


def load_cues(city_config_dir: str | Path | None = None) -> Cues:
    """The city's `cues.yaml` if it has one, else the defaults; clear errors when it is invalid."""
    path = DEFAULT_CUES
    if city_config_dir and (Path(city_config_dir) / "cues.yaml").is_file():
        path = Path(city_config_dir) / "cues.yaml"
    return load_model(path, Cues, "cue lists")
