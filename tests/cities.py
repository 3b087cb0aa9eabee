"""The cities the tests use, each built once per session.

`demo_city()` is the demo city as shipped (City is frozen, so every test can share one). Pure tests
take it as the `city` fixture (tests/conftest.py) or, where a module needs it at import time, call
`demo_city()`; both are the same object. `system_city_dir` is the folder the started system reads:
the demo city with test-only changes, written once by the session fixture `city_dir`.
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import yaml

from shared.city import DEMO_CITY_DIR, City, load_city

TINY_CATEGORY = "education.tutoring"
TINY_RESPOND_HOURS = 3 / 3600  # 3 s to accept
TINY_RESOLVE_HOURS = 6 / 3600  # 6 s to resolve; escalation at 9 s
# One session's tests submit the same street-light appeal a hundred times and more, in one grid:
# below this, tickets they wait to see assigned would be held for a joint meeting instead.
HOTSPOT_COUNT = 400


@cache
def demo_city() -> City:
    return load_city()


def system_city_dir(folder: Path) -> Path:
    """The demo city with two test-only changes in sla.yaml: a `tiny` deadline class (seconds) for
    TINY_CATEGORY, so timers fire within a test, and a hotspot threshold high enough that tests
    repeating the same appeal never form a hotspot by chance."""
    shutil.copytree(DEMO_CITY_DIR, folder, dirs_exist_ok=True)
    path = folder / "sla.yaml"
    sla = yaml.safe_load(path.read_text(encoding="utf-8"))
    sla["classes"]["tiny"] = {
        "name": "测试",
        "respond_hours": TINY_RESPOND_HOURS,
        "resolve_hours": TINY_RESOLVE_HOURS,
    }
    sla["categories"][TINY_CATEGORY] = "tiny"
    sla["supervision"].update(hotspot_count=HOTSPOT_COUNT, hotspot_window_days=1)
    path.write_text(yaml.safe_dump(sla, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder
