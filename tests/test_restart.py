"""Restart loses nothing: Redis and PostgreSQL keep their data across a kill -9, children die with
`appeals up`, a worker that dies is started again, and ticket numbers are never handed out twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from services.launcher import WORKERS, Backoff, Launcher
from shared import topics
from shared.auth import issue_token
from shared.embedded import EmbeddedServers, free_port, port_open
from shared.events import AppealReceived
from shared.privacy import caller_id
from shared.redrive import owed_events, redrive
from shared.store import TicketStore
from tests.conftest import eventually, settings_env
from tests.faults_support import (
    FaultSystem,
    Submissions,
    admin_client,
    check_in_store,
    phone_of,
    read_topics,
    submit_appeals,
    tickets_of,
    wait_for_notifier,
    wait_until_routed,
    when_submitted,
)
from tests.test_pipeline_e2e import submit

pytestmark = [pytest.mark.integration, pytest.mark.own_system(lane=2)]

ROOT = Path(__file__).resolve().parents[1]


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
        # Rewritten once (the part before, as Redis writes a rewrite: uncompressed here), then more
        # appended: both parts are read back after the crash.
        await redis.bgrewriteaof()

        async def rewritten() -> bool:
            info = await redis.info("persistence")
            return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]

        await eventually(rewritten)
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
        config = await redis.config_get("a*") | await redis.config_get("rdbcompression")
        expected = {
            "appendfsync": "always",
            "auto-aof-rewrite-percentage": "400",
            "auto-aof-rewrite-min-size": str(2**30),
            "rdbcompression": "no",
        }
        assert {name: config[name] for name in expected} == expected
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


def test_a_server_that_dies_is_started_again_on_its_port_with_its_data(tmp_path):
    # `appeals up` keeps its servers running as it does its services: Redis comes back with its
    # file, PostgreSQL with its folder, the broker on its port (empty: the workers recover).
    servers = EmbeddedServers(log_dir=tmp_path, data_dir=tmp_path / "data", postgres=True)
    launcher = Launcher(embedded=servers, env={}, log_dir=tmp_path)
    launcher.start_servers()
    try:
        with SyncRedis.from_url(servers.redis_url) as r:
            r.set("kept", "yes")
        with psycopg.connect(servers.database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('yes')")
        for managed in list(servers.processes):
            managed.proc.kill()  # kill -9, as a crash or the kernel's OOM killer would
            managed.proc.wait(10)
        lines: list[str] = []
        clock = [time.monotonic()]
        assert launcher.supervise(now=lambda: clock[0], report=lines.append) == []  # due in 1 s
        assert sorted(launcher.restart_at) == ["kafka", "postgres", "redis"]
        assert "redis exited with code -9" in lines[0]
        # PostgreSQL's own children may hold its shared memory a moment longer: a start refused
        # then is tried again after its backoff, which this clock runs through.
        deadline = time.monotonic() + 60
        while launcher.restart_at and time.monotonic() < deadline:
            clock[0] += 61
            launcher.supervise(now=lambda: clock[0], report=lines.append)
            time.sleep(0.2)
        assert launcher.restarts == {"redis": 1, "kafka": 1, "postgres": 1}, lines
        said = [line.split(" started again")[0] for line in lines if " started again" in line]
        assert said == ["redis", "kafka", "postgres"]  # Redis and the broker first: all need them
        with SyncRedis.from_url(servers.redis_url) as r:
            assert r.get("kept") == b"yes"
        with psycopg.connect(servers.database_url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == ("yes",)
        assert port_open(servers.kafka_port)
        assert all(p.proc.poll() is None for p in servers.processes)
    finally:
        launcher.stop_all()


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


# The whole system killed mid-flow: hotline appeals offered (at most LIMIT), each from a caller of its
# own. The stages are filled by holding processes still (SIGSTOP), not by timing the kill: the
# records worker is held once RECORD_HELD_AT appeals are routed, the router once ROUTER_HELD_AT
# are, the classifier once HELD_EACH more were answered, and the kill comes HELD_EACH answers
# later, with appeals still being submitted. At the kill there are then tickets routed (some of them
# not yet so in the record), classified and waiting for the router, not yet classified, and requests
# in flight, however fast or slow the machine is.
LIMIT = 3000
RECORD_HELD_AT = 100
ROUTER_HELD_AT = 250
HELD_EACH = 350


def whole_system(settings, data: Path, postgres_dir: Path | None, log_dir: Path):
    """Servers on `data` (Redis's append-only file and PostgreSQL's cluster kept there), and the
    settings that point at them; the processes are started apart."""
    servers = EmbeddedServers(
        data_dir=data, postgres=True, postgres_dir=postgres_dir, log_dir=log_dir / "servers"
    ).start()
    return servers, settings.model_copy(
        update={
            "kafka_bootstrap_servers": servers.kafka_bootstrap,
            "redis_url": servers.redis_url,
            "database_url": servers.database_url,
            # One tester sends thousands of appeals from one address.
            "rate_limit_per_ip_per_minute": 0,
            "rate_limit_per_caller_per_hour": 0,
        }
    )


def record_of(database_url: str, nos: list[str]) -> list[tuple[str, str]]:
    """(ticket, status) as the record (PostgreSQL) has them."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT ticket_no, status FROM tickets WHERE ticket_no = ANY(%s)", (nos,)
        ).fetchall()


async def statuses_of(redis: Redis, nos: list[str]) -> dict[str, str]:
    return {no: t["status"] if t else "missing" for no, t in (await tickets_of(redis, nos)).items()}


@pytest.mark.timeout(600)  # two starts of the whole system and every wait bounded on a loaded machine
async def test_the_whole_system_killed_mid_flow_and_started_again_routes_every_appeal_once(
    settings, tmp_path, data_home
):
    """Every process and server killed with -9 while thousands of appeals are at every stage, then
    started again on the same DATA_DIR and driven on as `appeals up` does: every acknowledged
    appeal ends routed with one assignment, no number handed out twice, one acknowledgement SMS
    each and no SMS twice; the token, the contacts and the record survive, numbering goes on."""
    started = time.monotonic()
    data = data_home / "data"
    servers, s = whole_system(settings, data, None, tmp_path / "first")
    system = FaultSystem(s, tmp_path / "first" / "logs")
    submissions = Submissions()
    try:
        system.start_all()
        await asyncio.to_thread(system.ready, WORKERS)
        ready = time.monotonic()
        redis = Redis.from_url(s.redis_url)
        token = await issue_token(redis, "admin")
        stop = asyncio.Event()
        async with await admin_client(system, s) as client:
            flow = asyncio.create_task(submit_appeals(client, submissions, stop, limit=LIMIT, concurrency=32))
            try:

                async def routed(n: int) -> bool:
                    now = await statuses_of(redis, list(submissions.acked))
                    return sum(st != "received" for st in now.values()) >= n

                await eventually(lambda: routed(RECORD_HELD_AT), timeout=300, interval=0.05)
                system.procs["records"].send_signal(signal.SIGSTOP)
                await eventually(lambda: routed(ROUTER_HELD_AT), timeout=300, interval=0.05)
                system.procs["router"].send_signal(signal.SIGSTOP)
                await when_submitted(submissions, submissions.done + HELD_EACH)
                system.procs["classifier"].send_signal(signal.SIGSTOP)
                await when_submitted(submissions, submissions.done + HELD_EACH)
                # Neither the classifier nor the router moves now: what was classified stays so.
                classified = {
                    json.loads(r.value)["ticket_no"]
                    for r in (await read_topics(s.kafka_bootstrap_servers, [topics.APPEAL_CLASSIFIED]))[
                        topics.APPEAL_CLASSIFIED
                    ]
                }
                assert not submissions.finished, "the flow ended before the kill: raise LIMIT"
                for proc in system.procs.values():  # held ones too: SIGKILL ends a stopped process
                    proc.kill()
                kill_nine(servers)
                for proc in system.procs.values():
                    proc.wait(10)
            finally:
                # Every process is dead by now (unless the test failed before the kill): what is in
                # flight can only fail, and retrying each of them in turn took 7-8 s.
                stop.set()
                flow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flow
        await redis.aclose()
    finally:
        for proc in system.procs.values():
            if proc.poll() is None:
                proc.kill()
        kill_nine(servers)
    killed = time.monotonic()
    acked = sorted(submissions.acked)

    servers, s = whole_system(settings, data, servers.postgres_dir, tmp_path / "second")
    system = FaultSystem(s, tmp_path / "second" / "logs")
    redis = Redis.from_url(s.redis_url)
    try:
        # The state at the kill, from Redis's file and PostgreSQL's, before any process starts again.
        at_kill = await statuses_of(redis, acked)
        waiting = {no for no, st in at_kill.items() if st == "received"}
        recorded = dict(await asyncio.to_thread(record_of, s.database_url, acked))
        unrecorded = {no for no, st in at_kill.items() if st != "received" and recorded.get(no) != st}
        stages = {
            "routed": len(at_kill) - len(waiting),
            "routed, not yet so in the record": len(unrecorded),
            "classified, not routed": len(waiting & classified),
            "not classified": len(waiting - classified),
        }
        assert "missing" not in at_kill.values(), "an acknowledged appeal has no ticket after the restart"
        assert all(stages.values()), f"the kill was not mid-flow: {stages}"
        owed = await owed_events(redis)
        assert waiting <= {e.ticket_no for e in owed if isinstance(e, AppealReceived)}

        system.start_all()
        await asyncio.to_thread(system.ready, WORKERS)
        ready_again = time.monotonic()
        # The embedded broker came back empty: drive on what it owed, as `appeals up` does.
        # The workers may have changed a ticket meanwhile (a timer fired): what is owed may grow.
        assert await redrive(s, redis) >= len(owed)
        assert await redrive(s, redis) >= len(owed)  # again: the same events, dropped as repeats
        await wait_until_routed(redis, acked, timeout=300)
        await wait_for_notifier(s.kafka_bootstrap_servers, timeout=300)
        statuses = await check_in_store(redis, submissions)

        async with await admin_client(system, s) as client:
            client.headers["Authorization"] = f"Bearer {token}"  # the token minted before the crash
            after = await submit(client, "13700000001")
            assert after > max(await all_ticket_numbers(redis) - {after})
        assert await redis.exists(f"contact:{caller_id(phone_of(0))}")
        # The record (PostgreSQL) catches up with the store: every acknowledged ticket, as routed.
        final = await statuses_of(redis, acked)

        async def not_recorded() -> list[tuple[str, str]]:
            return sorted(set(final.items()) - set(await asyncio.to_thread(record_of, s.database_url, acked)))

        async def all_recorded() -> bool:
            return not await not_recorded()

        try:
            await eventually(all_recorded, timeout=120, interval=1)
        except AssertionError:
            left = await not_recorded()
            raise AssertionError(f"{len(left)} tickets not in the record as in Redis: {left[:5]}") from None
    finally:
        await redis.aclose()
        system.stop_all()
        servers.stop()
    print(
        f"\n{len(acked)} acknowledged of {submissions.done} offered; at the kill: {stages}; "
        f"after: {dict(statuses)}; start {ready - started:.0f}s, flow {killed - ready:.0f}s, "
        f"start again {ready_again - killed:.0f}s, drive on and check {time.monotonic() - ready_again:.0f}s"
    )


async def all_ticket_numbers(redis: Redis) -> set[str]:
    return {k.decode()[2:] async for k in redis.scan_iter(match="t:????????-??????", count=5000)}
