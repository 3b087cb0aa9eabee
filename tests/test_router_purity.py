"""The router's decisions import no I/O client: checked in a fresh interpreter, so what other tests
imported cannot hide an import."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

PURE = [
    "services.router.workflow",
    "services.router.rules",
    "services.router.sla",
    "services.router.timers",
    "services.router.meetings",
    "shared.decisions",
]
IO = ("redis", "aiokafka", "faststream", "httpx", "fastapi", "shared.store")

PROBE = f"""
import importlib, sys
for name in {PURE!r}:
    importlib.import_module(name)
print("\\n".join(m for m in sys.modules if m in {IO!r} or m.split(".")[0] in {IO!r}))
"""


def test_pure_router_modules_import_no_io_client():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == []
