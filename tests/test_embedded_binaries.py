"""The embedded servers as started: the broker's binary on a fresh machine (the processes that first
need it at once, the two test processes of `make test`, `appeals up`'s, each get a copy they can
start), and the environment the embedded PostgreSQL runs with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis

from shared import embedded
from shared.embedded import POSTGRES_MALLOC, EmbeddedServers, postgres_env, redis_answer, redis_server_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]

# Resolve the binary, as `EmbeddedServers` does, and start it; on a loaded machine, where copying
# the binary out takes a second. Prints "copied" when this process made the copy.
START = """
import shutil, subprocess, sys, time
from shared.embedded import tansu_binary
copy = shutil.copyfileobj
def slow_copy(*args, **kwargs):
    time.sleep(1)
    copy(*args, **kwargs)
    print("copied")
shutil.copyfileobj = slow_copy
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
sys.exit(subprocess.run([tansu_binary(), "--help"], capture_output=True).returncode)
"""


def test_the_processes_that_first_need_the_broker_at_once_make_one_copy_and_each_can_start_it(
    tmp_path: Path,
) -> None:
    # Concurrent copies are renamed into place one over the other, each some time after the
    # process before made its copy executable: a process that starts the binary in between gets
    # Permission denied (the two test processes of `make test` did, on a fresh machine).
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}  # no copy in this home yet
    env.pop("CALF_TANSU_BIN", None)
    at = time.time() + 3  # once every process has started; a tenth of a second apart
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", START, str(at + 0.1 * i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    copied = [p.communicate(timeout=120)[0].split() for p in starts]
    assert [p.returncode for p in starts] == [0, 0, 0, 0]
    assert sum(c == ["copied"] for c in copied) == 1, copied
    (binary,) = (tmp_path / ".calfkit" / "bin").iterdir()
    assert os.access(binary, os.X_OK)


def test_the_embedded_postgresql_keeps_the_memory_malloc_would_hand_back_and_the_callers_values_win(servers):
    assert postgres_env({"PATH": "/bin"}) == {**POSTGRES_MALLOC, "PATH": "/bin"}
    assert postgres_env({"MALLOC_TRIM_THRESHOLD_": "0"})["MALLOC_TRIM_THRESHOLD_"] == "0"
    if not isinstance(servers, EmbeddedServers):
        pytest.skip("PostgreSQL runs elsewhere: its environment is its own")
    [pg] = [p for p in servers.processes if p.name == "postgres"]
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pg.proc.pid}/environ").read_text().split("\0")
        if "=" in item
    )
    for name, value in POSTGRES_MALLOC.items():
        assert environ[name] == os.environ.get(name, value)


def test_a_redis_without_a_data_folder_can_keep_its_append_only_file_in_a_throwaway_one(tmp_path):
    # What the benchmark starts: Redis as `appeals up` runs it, its file gone with the servers.
    servers = EmbeddedServers(log_dir=tmp_path, redis_append_only=True).start()
    try:
        with Redis.from_url(servers.redis_url, decode_responses=True) as redis:
            config = redis.config_get("append*") | redis.config_get("dir")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "always"
        folder = Path(config["dir"])
        assert folder.is_dir()
        assert not folder.is_relative_to(tmp_path)
    finally:
        servers.stop()
    assert not folder.exists()
    assert any(tmp_path.iterdir())  # the logs stay


def test_the_embedded_redis_counts_as_started_once_it_has_read_its_data_back(tmp_path, monkeypatch, caplog):
    # Redis opens its port at once and answers -LOADING while it reads its file back; what starts
    # next (`appeals up`'s model check, the services) failed its first command.
    data, logs = tmp_path / "data", tmp_path / "logs"
    servers = EmbeddedServers(log_dir=logs, data_dir=data).start()
    try:
        with Redis.from_url(servers.redis_url) as redis, redis.pipeline(transaction=False) as p:
            for i in range(3000):
                p.set(f"k{i}", "x")
            p.execute()
    finally:
        servers.stop()
    # The same file read back slowly: Redis's debugging option pauses after each key it loads.
    slow = tmp_path / "slow-redis-server"
    slow.write_text(f'#!/bin/sh\nexec {redis_server_binary()} "$@" --key-load-delay 1000\n')
    slow.chmod(0o755)
    monkeypatch.setattr(embedded, "redis_server_binary", lambda: str(slow))
    servers = EmbeddedServers(log_dir=logs, data_dir=data)
    try:
        with caplog.at_level("WARNING", logger="appeals.embedded"):
            servers.start()
        assert redis_answer(servers.redis_port) == b"+PONG"
        assert "reading its data back" in caplog.text  # it was loading when its port opened
        with Redis.from_url(servers.redis_url) as redis:
            assert redis.dbsize() == 3000
    finally:
        servers.stop()


def test_the_launcher_runs_redis_and_the_broker_higher_where_it_may(tmp_path):
    # Every stage waits on them; PostgreSQL, started as another user, is left as it is.
    from services.launcher import Launcher
    from tests.test_launcher_units import may_raise_priority

    may_raise = may_raise_priority()
    servers = EmbeddedServers(log_dir=tmp_path)
    Launcher(embedded=servers, env={}, waited_on_raise=3).start_servers()
    try:
        assert {m.name for m in servers.processes} == {"redis", "kafka"}
        for managed in servers.processes:
            group = Path(f"/proc/{managed.proc.pid}/autogroup")
            stat = Path(f"/proc/{managed.proc.pid}/stat").read_text()
            nice = int(stat.rsplit(")", 1)[1].split()[16])  # the 19th field, after the name
            expected = max(-20, os.nice(0) - 3) if may_raise else os.nice(0)
            assert nice == expected, managed.name
            if group.exists() and may_raise:
                assert group.read_text().split()[-1] == str(expected), managed.name
    finally:
        servers.stop()
