"""The benchmark's arithmetic, apart from any broker (its runs are in tests/test_bench.py)."""

from __future__ import annotations

import pytest

from services.bench import _redis_growth, fresh_page_us, out_rate, python_loop_ms


def test_the_broker_limit_counts_what_came_after_the_first_batch_over_the_time_since_it():
    # Published at 0.0; 100 out at 1.0, then 900 more until 2.0: 900 over the second between.
    assert out_rate(1000, 100, 1.0, 2.0, started=0.0) == pytest.approx(900)


def test_two_batches_microseconds_apart_are_not_millions_a_second():
    # 500 messages, the first one alone and the rest 43 µs later, all after 0.3 s of filling the
    # hops: over the time since publishing began, not 499 over 43 µs.
    assert out_rate(500, 1, 1.0, 1.000043, started=0.7) == pytest.approx(500 / 0.300043)


def test_everything_in_one_batch_is_counted_from_the_start_of_publishing():
    assert out_rate(500, 500, 1.0, 1.0, started=0.5) == pytest.approx(1000)
    assert out_rate(0, 0, 0.0, 0.0, started=0.5) == 0.0


def test_the_cost_of_fresh_memory_is_timed_per_page_written():
    # A page costs from a fraction of a microsecond (memory of the machine's own) to about 30 (a
    # host that backs a guest's memory on first write); a figure outside that is a wrong division.
    assert 0.01 < fresh_page_us(8) < 1000


def test_the_speed_of_python_is_timed_on_a_fixed_loop():
    # A million additions: tens of milliseconds on any machine this runs on, never zero.
    assert 1 < python_loop_ms() < 10_000


def state(memory: int, aof: int, rewrites: int = 0, enabled: int = 1) -> dict[str, int]:
    return {"used_memory": memory, "aof_enabled": enabled, "aof_current_size": aof, "aof_rewrites": rewrites}


def test_redis_growth_is_counted_per_appeal_and_left_out_when_the_file_was_rewritten():
    before = state(1_000_000, 5_000_000)
    assert _redis_growth(before, state(11_000_000, 14_500_000), 1000) == {
        "memory_bytes_per_appeal": 10_000,
        "aof_bytes_per_appeal": 9_500,
        "aof_rewrites": 0,
    }
    # Rewritten: the file starts anew from the data, so what was appended is not known.
    rewritten = _redis_growth(before, state(11_000_000, 3_000_000, rewrites=1), 1000)
    assert rewritten["aof_bytes_per_appeal"] is None
    assert rewritten["aof_rewrites"] == 1
    # A Redis without the file (an external one may run so).
    without = _redis_growth(state(0, 0, enabled=0), state(10_000, 0, enabled=0), 1)
    assert without["aof_bytes_per_appeal"] is None
