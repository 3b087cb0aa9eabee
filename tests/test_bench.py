"""`appeals bench pipeline` runs and writes its figures (their values are measured, never asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import CALLERS_PATH_FETCH_WAIT_MS, ROOT, SESSION_TIMEOUT_MS

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


def appeals_cli(data_dir, *args: str, **env: str) -> str:
    """`appeals ARGS` with servers of its own (no external ones) and `env`: what it printed."""
    whole = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    whole |= {"DATA_DIR": str(data_dir), **env}
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=whole,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def bench(data_dir, *args: str) -> tuple[dict, str]:
    """`appeals bench pipeline ARGS` on servers of its own: its figures (JSON) and what it printed."""
    out = data_dir / "bench.json"
    printed = appeals_cli(
        data_dir,
        *("bench", "pipeline", *args, "--json", str(out)),
        KAFKA_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),  # its consumers' and workers' joins
        KAFKA_CALLERS_PATH_FETCH_WAIT_MS=str(CALLERS_PATH_FETCH_WAIT_MS),  # as the other systems
    )
    return json.loads(out.read_text()), printed


def test_bench_pipeline_at_a_fixed_rate_writes_the_figures(data_dir):
    figures, printed = bench(
        data_dir,
        *("--rate", "50", "--duration", "3", "--broker-limit-messages", "500", "--wait-for-record"),
        *("--rounds", "2"),
    )
    assert set(figures) >= KEYS, KEYS - set(figures)
    # Two rounds on the same servers and workers: both printed, each one's figures kept.
    assert printed.count("latency ms") == 2
    assert [r["e2e_appeals_per_s"] > 0 for r in figures["rounds"]] == [True, True]
    assert figures["rounds"][-1]["e2e_p99_ms"] == figures["e2e_p99_ms"]
    assert figures["rounds"][0]["fresh_page_us"] > 0
    # The CPU counted until the record held every assignment (it did, or the figure would be None).
    assert figures["record_behind_s"] is not None
    assert "every assignment recorded" in printed
    assert figures["offered_per_s"] == 50
    assert figures["appeals"] == 150
    assert set(figures["stages"]) == {"classifier", "router", "delivery"}
    assert sum(figures["assigned_via"].values()) == figures["completed"]
    assert sum(figures["held_for_meeting"].values()) <= figures["completed"]
    assert "latency ms" in printed
    # Whether the queue grew: the latency of each fifth of the appeals, in the order acknowledged.
    assert len(figures["e2e_p50_ms_by_fifth"]) == 5
    assert min(figures["e2e_p50_ms_by_fifth"]) <= figures["e2e_p50_ms"] <= max(figures["e2e_p50_ms_by_fifth"])
    assert "by fifth" in printed
    # The state the run found the machine in, and all the CPU of an appeal together.
    assert figures["machine"]["fresh_page_us"] > 0
    assert figures["machine"]["python_loop_ms"] > 0
    assert "fresh_page_us" in printed
    assert "all together" in printed
    # What measuring cost this process, apart from the system's total.
    assert figures["bench_cpu_us_per_appeal"] > 0
    assert "this process" in printed
    # What the run left in Redis and appended to its file, an appeal (its tickets, histories, SMS).
    assert figures["redis"]["memory_bytes_per_appeal"] > 0
    assert figures["redis"]["aof_bytes_per_appeal"] > 1000
    assert "appended to its file" in printed


def test_bench_pipeline_via_the_api_submits_as_operators_do(data_dir):
    """Through `POST /api/v1/appeals`: every appeal numbered by the API is followed to its
    assignment, the API's answer is a stage of its own, and the API's CPU is counted."""
    figures, printed = bench(data_dir, "--via-api", "--rate", "30", "--duration", "3", "--no-broker-limit")
    assert figures["appeals"] == 90
    assert figures["completed"] == 90, figures
    assert list(figures["stages"]) == ["api", "classifier", "router", "delivery"]
    assert figures["stages"]["api"]["p50_ms"] > 0
    assert "api" in figures["cpu_us_per_appeal"]
    assert "broker_limit_per_s" not in figures
    assert figures["record_behind_s"] is None  # not asked for
    assert "the API's answer -> ticket.assigned read" in printed


def test_bench_records_projects_searches_and_moves_closed_tickets_out_of_redis(data_dir):
    """The closed tickets it piles into Redis are histories as the router writes them, which the
    retention job copies into the record before it removes them: all of them move out, and Redis
    gives their memory back. Only they count: the N tickets before them were never in Redis."""
    printed = appeals_cli(data_dir, "bench", "records", "--n", "600", "--redis-closed", "600")
    assert "3600 events of 600 tickets" in printed
    piled = re.search(
        r"600 closed so far: +([\d.]+) MB .*, 600 moved out in [\d.]+ s, +([\d.]+) MB after", printed
    )
    assert piled, printed
    assert float(piled[2]) < float(piled[1]) / 2, printed
    for line in ("queue page", "full text", "database size", "restart"):
        assert line in printed


def test_bench_notifier_without_redis_url_starts_a_redis_of_its_own(data_dir):
    figures = json.loads(appeals_cli(data_dir, "bench", "notifier", "--n", "300").splitlines()[-1])
    assert figures["messages"] == 300
    assert figures["acks_sent"] == 300
