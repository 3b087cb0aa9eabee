"""Lists a city or the project keeps as YAML (`shared/dictionaries/`, a city's folder), read into the
pydantic model that checks them."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_model(path: Path, model: type[M], what: str) -> M:
    """`path`'s YAML checked as `model`; a ValueError that names the file and, for `what` the file
    holds ("cue lists"), each entry at fault, so whoever edits it knows where to look."""
    try:
        return model.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"{path}: invalid {what}:\n  " + "\n  ".join(lines)) from e
