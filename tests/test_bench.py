"""`appeals bench pipeline` runs and writes its figures (their values are measured, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SESSION_TIMEOUT_MS

pytestmark = pytest.mark.integration

KEYS = {
    "e2e_appeals_per_s",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "offered_per_s",
    "broker_limit_per_s",
    "classifier_per_s_per_core",
    "stages",
    "machine",
}


def test_bench_pipeline_at_a_fixed_rate_writes_the_figures(tmp_path, data_dir):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env["DATA_DIR"] = str(data_dir)
    env["KAFKA_SESSION_TIMEOUT_MS"] = str(SESSION_TIMEOUT_MS)  # its consumers' and workers' joins
    args = ["--rate", "50", "--duration", "3", "--broker-limit-messages", "500", "--json", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "pipeline", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures) >= KEYS, KEYS - set(figures)
    assert figures["offered_per_s"] == 50
    assert figures["appeals"] == 150
    assert set(figures["stages"]) == {"classifier", "router", "delivery"}
    assert sum(figures["assigned_via"].values()) == figures["completed"]
    assert sum(figures["held_for_meeting"].values()) <= figures["completed"]
    assert "latency ms" in run.stdout
