"""Lists a city or the project keeps as YAML (`shared/dictionaries/`, a city's folder), read into the
pydantic model that checks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# libyaml's parser (in PyYAML's wheels) reads the same documents into the same values about six
# times faster than the pure-Python one; every process and every `appeals` command reads the city's
# lists at start, so that is most of a second each. The pure-Python one where libyaml is missing.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(text: str) -> Any:
    """`yaml.safe_load`, through libyaml when PyYAML has it: the same values, the same errors
    (yaml.YAMLError, with the line and column)."""
    return yaml.load(text, Loader=_LOADER)


def load_model(path: Path, model: type[M], what: str) -> M:
    """`path`'s YAML checked as `model`; a ValueError that names the file and, for `what` the file
    holds ("cue lists"), each entry at fault, so whoever edits it knows where to look."""
    try:
        return model.model_validate(read_yaml(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"{path}: invalid {what}:\n  " + "\n  ".join(lines)) from e
