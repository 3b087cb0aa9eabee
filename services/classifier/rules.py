"""Appeal type (诉求/投诉/咨询/求助/建议) and urgency: cue lists from data, combined with the model.

The cue lists live in `shared/dictionaries/cues.yaml`; a city replaces them with a `cues.yaml` in its
configuration folder. A cue is a fact a person can read ("the text says 燃气泄漏"), so it decides; the
model only fills in where no cue matched, and only when it is confident.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast, get_args

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator

from shared.events import AppealType

DEFAULT_CUES = Path(__file__).resolve().parents[2] / "shared" / "dictionaries" / "cues.yaml"
TYPES: tuple[str, ...] = get_args(AppealType)
# The model's type or urgency guess counts only above these probabilities (without a cue).
MODEL_TYPE_MIN = 0.7
MODEL_URGENT_MIN = 0.8


class Cues(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    types: dict[str, tuple[str, ...]]  # in checking order
    urgent: tuple[str, ...]
    follow_up: tuple[str, ...] = ()  # a caller asking after an earlier appeal (the hotline's preview)
    _type_res: list[tuple[AppealType, re.Pattern[str] | None]] = PrivateAttr(default_factory=list)
    _urgent_re: re.Pattern[str] | None = PrivateAttr(default=None)
    _follow_up_re: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
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
        self._follow_up_re = pattern(self.follow_up)

    def appeal_type(self, text: str, model_guess: tuple[str, float] | None = None) -> AppealType:
        for kind, cue_re in self._type_res:
            if cue_re is not None and cue_re.search(text):
                return kind
        if model_guess and model_guess[1] >= MODEL_TYPE_MIN:
            return model_guess[0]  # type: ignore[return-value]
        return "诉求"

    def is_urgent(self, text: str, operator_flag: bool = False, model_p: float | None = None) -> bool:
        if operator_flag or (self._urgent_re is not None and self._urgent_re.search(text)):
            return True
        return model_p is not None and model_p >= MODEL_URGENT_MIN

    def follows_up(self, text: str) -> bool:
        """Whether the caller asks after an appeal they made before."""
        return self._follow_up_re is not None and self._follow_up_re.search(text) is not None


def load_cues(city_config_dir: str | Path | None = None) -> Cues:
    """The city's `cues.yaml` if it has one, else the defaults; clear errors when it is invalid."""
    path = DEFAULT_CUES
    if city_config_dir and (Path(city_config_dir) / "cues.yaml").is_file():
        path = Path(city_config_dir) / "cues.yaml"
    try:
        return Cues.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"{path}: invalid cue lists:\n  " + "\n  ".join(lines)) from e
