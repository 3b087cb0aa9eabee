"""Restart loses nothing: Redis and PostgreSQL keep their data across a kill -9, children die with
`appeals up`, a worker that dies is started again, and ticket numbers are never handed out twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import psycopg
import pytest
from redis.asyncio import Redis

from services.launcher import ALL_PROCESSES, WORKERS, Backoff, Launcher
from shared.auth import issue_token
from shared.embedded import EmbeddedServers, free_port, port_open
from shared.privacy import caller_id
from shared.redrive import redrive, stalled_appeals
from shared.store import TicketStore
from tests.conftest import settings_env
from tests.test_pipeline_e2e import submit, ticket_when

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
ROUTED = {"assigned", "meeting"}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by init) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if pid_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.fixture
def data_home() -> Iterator[Path]:
    """A DATA_DIR the unprivileged PostgreSQL user can reach (pytest's folders are 0700: the
    cluster would move to /var/lib/appeals and outlive the test)."""
    d = Path(tempfile.mkdtemp(prefix="appeals-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_backoff_doubles_on_quick_failures_and_resets_after_a_healthy_run():
    b = Backoff(first=1, ceiling=8, stable=60)
    assert [b.delay_after(2) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert b.delay_after(600) == 1  # it had run for ten minutes: healthy, the series starts again


def kill_nine(servers: EmbeddedServers) -> None:
    for p in servers.processes:
        p.proc.kill()
        p.proc.wait(10)
    servers.processes.clear()


async def test_redis_and_postgres_keep_their_data_across_a_kill_9(tmp_path, data_home):
    data = data_home / "data"

    first = EmbeddedServers(data_dir=data, postgres=True, log_dir=tmp_path / "logs").start()
    try:
        redis = Redis.from_url(first.redis_url)
        await redis.set("t:20260101-000001", json.dumps({"ticket_no": "20260101-000001"}))
        await redis.hset("contact:abc", mapping={"phone": "13812345678"})
        await redis.zadd("timers", {"t1": 1.0})
        await redis.aclose()
        with psycopg.connect(first.database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        kill_nine(first)  # no shutdown, no final fsync: as a crash
        second = EmbeddedServers(
            data_dir=data, postgres=True, postgres_dir=first.postgres_dir, log_dir=tmp_path / "logs"
        ).start()
    finally:
        first.stop()
    try:
        redis = Redis.from_url(second.redis_url)
        assert await redis.get("t:20260101-000001")
        assert await redis.hget("contact:abc", "phone") == b"13812345678"
        assert await redis.zscore("timers", "t1") == 1.0
        await redis.aclose()
        with psycopg.connect(second.database_url) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]
    finally:
        second.stop()


PARENT = """
import sys, time
from services.launcher import Launcher
from shared.embedded import EmbeddedServers
servers = EmbeddedServers(log_dir=__import__("pathlib").Path(sys.argv[1]))
launcher = Launcher(embedded=servers, log_dir=servers.log_dir)
launcher.start_servers()
launcher.start("notifier")
print(" ".join(str(p.proc.pid) for p in servers.processes), launcher.procs["notifier"].pid, flush=True)
time.sleep(600)
"""


def test_children_die_when_appeals_up_is_killed(tmp_path, settings):
    env = settings_env(settings, metrics_port_notifier=0)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3  # Redis, the broker, a worker
        assert all(pid_alive(p) for p in pids)
        parent.kill()  # kill -9: no chance to stop anything itself
        parent.wait(10)
        assert wait_gone(pids) == []
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_worker_that_dies_is_started_again_and_the_others_keep_running(settings, tmp_path):
    ports = {"router": free_port(), "notifier": free_port()}
    # Servers of its own: in the session's groups, each start and the kill would make the session's
    # workers wait for a rebalance (and this test for the dead member's session to time out).
    own = EmbeddedServers(log_dir=tmp_path / "servers").start()
    launcher = Launcher(
        env=settings_env(
            settings,
            kafka_bootstrap_servers=own.kafka_bootstrap,
            redis_url=own.redis_url,
            metrics_port_router=ports["router"],
            metrics_port_notifier=ports["notifier"],
        ),
        log_dir=tmp_path,
    )
    try:
        launcher.start_all(["router", "notifier"])
        launcher.wait_for_ports(ports.values())
        notifier = launcher.procs["notifier"].pid
        launcher.procs["router"].kill()
        launcher.procs["router"].wait(10)
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not launcher.restarts.get("router") and time.monotonic() < deadline:
            launcher.supervise(report=lines.append)
            time.sleep(0.2)
        assert launcher.restarts == {"router": 1}
        assert "router exited with code -9" in lines[0]
        assert launcher.procs["notifier"].pid == notifier
        assert launcher.procs["notifier"].poll() is None
        launcher.wait_for_ports(ports.values())
        assert port_open(ports["router"])
    finally:
        launcher.stop_all()
        own.stop()


async def test_numbers_are_never_handed_out_twice_when_the_counter_is_lost(redis):
    store = TicketStore(redis)
    day = date(2031, 5, 17)  # a day no other test numbers on
    await redis.delete("seq:20310517")
    first = await store.next_ticket_nos(day, 3)
    for no in first:
        await redis.set(f"t:{no}", "{}")
    await redis.delete("seq:20310517")  # Redis lost the counter, kept the tickets
    again = await store.next_ticket_no(day)
    assert again == "20310517-000004"
    # The database has seen a higher number than Redis holds (Redis lost everything).
    await store.raise_counter(day, 900)
    assert await store.next_ticket_no(day) == "20310517-000901"
    await store.raise_counter(day, 5)  # a lower floor never moves the counter back
    assert await store.next_ticket_no(day) == "20310517-000902"
    await redis.delete("seq:20310517", *[f"t:{no}" for no in first])


async def test_the_whole_system_killed_and_started_again_keeps_tickets_tokens_and_numbers(
    settings, tmp_path, data_home
):
    """Every process and server killed with -9 mid-flow, then started again on the same DATA_DIR: the
    acknowledged tickets, the contacts, the token and the record are all there, numbers go on."""
    data = data_home / "data"

    def settings_for(servers: EmbeddedServers):
        return settings.model_copy(
            update={"kafka_bootstrap_servers": servers.kafka_bootstrap, "redis_url": servers.redis_url}
        )

    def system() -> tuple[EmbeddedServers, Launcher, int]:
        servers = EmbeddedServers(data_dir=data, postgres=True, log_dir=tmp_path / "servers").start()
        api_port = free_port()
        ports = {f"metrics_port_{w}": free_port() for w in WORKERS}
        env = settings_env(
            settings,
            kafka_bootstrap_servers=servers.kafka_bootstrap,
            redis_url=servers.redis_url,
            database_url=servers.database_url,
            api_port=api_port,
            **ports,
        )
        launcher = Launcher(env=env, log_dir=tmp_path / "logs")
        launcher.start_all(ALL_PROCESSES)
        launcher.wait_for_ports([api_port, *ports.values()], timeout=120)
        return servers, launcher, api_port

    servers, launcher, port = system()
    try:
        redis = Redis.from_url(servers.redis_url)
        token = await issue_token(redis, "admin")
        await redis.aclose()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            api.headers["Authorization"] = f"Bearer {token}"
            settled = [await submit(api, f"1381234{i:04d}") for i in range(10)]
            # Assigned, or held for a joint meeting (ten alike make a hotspot in the test city).
            before: dict[str, str] = {}
            for no in settled:
                before[no] = (await ticket_when(api, no, lambda t: t["status"] in ROUTED))["status"]
            in_flight = [await submit(api, f"1391234{i:04d}") for i in range(20)]
    finally:
        for proc in launcher.procs.values():
            proc.kill()
        kill_nine(servers)
    servers, launcher, port = system()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            api.headers["Authorization"] = f"Bearer {token}"  # the token survived
            for no in settled:
                # Still routed; assigned may have become meeting: the appeals in flight, alike,
                # can have made a hotspot that called the settled ones to a joint meeting.
                status = (await api.get(f"/api/v1/tickets/{no}")).json()["status"]
                assert status in ROUTED, f"{no} was {before[no]}, now {status}"
            # The embedded broker lost its topics: what was acknowledged and not yet classified is
            # driven on, as `appeals up` does, and every acknowledged appeal is routed, once.
            redis = Redis.from_url(servers.redis_url)
            stalled = [a.ticket_no for a in await stalled_appeals(redis)]
            assert set(stalled) <= set(in_flight)
            assert await redrive(settings_for(servers), redis) == len(stalled)
            assert await redrive(settings_for(servers), redis) <= len(stalled)  # again: still once each
            await redis.aclose()
            for no in in_flight:
                ticket = await ticket_when(api, no, lambda t: t["status"] in ROUTED)
                assert [h["topic"] for h in ticket["history"]].count("ticket.assigned") == 1
            after = await submit(api, "13700000001")
            assert after > max(settled + in_flight)
        redis = Redis.from_url(servers.redis_url)
        assert await redis.exists(f"contact:{caller_id('13812340000')}")
        await redis.aclose()
        with psycopg.connect(servers.database_url) as conn:
            recorded = conn.execute("SELECT count(*) FROM tickets WHERE ticket_no = ANY(%s)", (settled,))
            assert recorded.fetchone() == (len(settled),)
    finally:
        launcher.stop_all()
        servers.stop()
