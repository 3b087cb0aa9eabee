"""The broker is lost and comes back empty (the embedded Tansu keeps nothing): the workers recover
by themselves, while it is away they say so (not ready) without flooding the log, and the appeals
acknowledged before the loss that the lost topics still held are driven on from the store.

The system runs on its own broker and Redis here, so stopping the broker disturbs no other test."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from shared.auth import issue_token
from shared.embedded import EmbeddedServers, port_open
from shared.settings import Settings
from shared.store import history_key
from tests.conftest import CALLERS_PATH_FETCH_WAIT_MS, SESSION_TIMEOUT_MS, System, eventually

pytestmark = [pytest.mark.integration, pytest.mark.own_system(lane=1)]

LIGHT = "阳光花园3号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的，希望尽快修好"
OUTAGE_SECONDS = 20
# Lines at WARNING or above that a worker may write for the whole outage and recovery. Unlimited,
# the Kafka client wrote about a thousand a second.
MAX_ERROR_LINES_PER_WORKER = 60


async def submit(api: httpx.AsyncClient, phone: str) -> str:
    """Submit one appeal, retrying while the API's producer reconnects (503 with Retry-After)."""

    async def attempt() -> str | None:
        r = await api.post(
            "/api/v1/appeals", json={"channel": "hotline", "caller_phone": phone, "text": LIGHT}
        )
        return r.json()["ticket_no"] if r.status_code == 201 else None

    return await eventually(attempt, timeout=90, interval=1)


async def all_assigned(api: httpx.AsyncClient, numbers: list[str]) -> None:
    async def probe() -> bool:
        for no in numbers:
            r = await api.get(f"/api/v1/tickets/{no}")
            # Past "received": classified and routed (five alike in one grid may convene a meeting).
            if r.status_code != 200 or r.json()["status"] == "received":
                return False
        return True

    await eventually(probe, timeout=120, interval=0.5)


async def readiness(client: httpx.AsyncClient, port: int) -> int:
    try:
        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code
    except httpx.HTTPError:
        return 0


async def until_readiness(
    client: httpx.AsyncClient, ports: Iterable[int], status: int, timeout: float
) -> None:
    for port in ports:

        async def probe(port: int = port) -> bool:
            return await readiness(client, port) == status

        await eventually(probe, timeout=timeout, interval=0.5)


def error_lines(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if re.search(r"\b(WARNING|ERROR)\b", line)
    ]


def restart_broker_empty(servers: EmbeddedServers) -> None:
    (kafka,) = [p for p in servers.processes if p.name == "kafka"]
    kafka.stop()
    servers.processes.remove(kafka)


@asynccontextmanager
async def running_on_servers_of_its_own(
    tmp_path: Path, data_dir: Path, servers_data: Path | None = None
) -> AsyncIterator[tuple[EmbeddedServers, System, Redis, httpx.AsyncClient]]:
    """The whole system, ready, on a broker, Redis and PostgreSQL of its own (so that a test may take
    them away; with `servers_data`, Redis and PostgreSQL keep their data there across a restart),
    with a Redis client and an admin's API client; its logs in `tmp_path / "logs"`."""
    with EmbeddedServers(log_dir=tmp_path / "servers", postgres=True, data_dir=servers_data) as servers:
        settings = Settings(
            kafka_bootstrap_servers=servers.kafka_bootstrap,
            redis_url=servers.redis_url,
            database_url=servers.database_url,
            data_dir=data_dir,
            quiet_hours="none",
            sms_daily_cap=1000,
            kafka_session_timeout_ms=SESSION_TIMEOUT_MS,
            kafka_callers_path_fetch_wait_ms=CALLERS_PATH_FETCH_WAIT_MS,
            # A server lost, or back, is noticed at a worker's next check: within a second.
            health_check_seconds=1,
        )
        system = System(settings, tmp_path / "logs")
        system.start_all()
        redis = Redis.from_url(settings.redis_url)
        try:
            system.wait_ready()
            token = await issue_token(redis, "admin")
            async with httpx.AsyncClient(
                base_url=system.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
            ) as api:
                yield servers, system, redis, api
        finally:
            await redis.aclose()
            system.stop_all()


async def test_workers_recover_when_the_broker_comes_back_empty(tmp_path, data_dir):
    async with running_on_servers_of_its_own(tmp_path, data_dir) as (servers, system, redis, api):
        before = [await submit(api, f"1380000{i:04d}") for i in range(5)]
        await all_assigned(api, before)
        for port in system.metrics_ports.values():
            assert await readiness(api, port) == 200

        # Acknowledged just before the loss and not yet classified: with the classifier
        # stopped, these wait on `appeal.received`, which the broker takes with it.
        system.stop("classifier")
        stalled = [await submit(api, f"1370000{i:04d}") for i in range(5)]
        for no in stalled:
            assert (await api.get(f"/api/v1/tickets/{no}")).json()["status"] == "received"
        running = [p for w, p in system.metrics_ports.items() if w != "classifier"]

        restart_broker_empty(servers)
        lost_at = time.monotonic()
        # While the broker is away every worker says it is not ready, and none exits.
        await until_readiness(api, running, 503, timeout=30)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - lost_at)))
        assert system.first_exited() is None

        servers._start_kafka()  # a new, empty broker on the same port
        assert port_open(servers.kafka_port)
        # A worker re-creates the topics and re-drives the stalled appeals from the store
        # before the classifier comes back (its own start finds the topics there).
        await until_readiness(api, running, 200, timeout=90)
        system.start("classifier")
        await until_readiness(api, system.metrics_ports.values(), 200, timeout=90)
        await all_assigned(api, stalled)

        after = [await submit(api, f"1390000{i:04d}") for i in range(5)]
        await all_assigned(api, after)
        assert system.first_exited() is None
        # Driven on exactly once: one assignment each, however many workers saw the loss.
        for no in stalled:
            history = [json.loads(h) for h in await redis.lrange(history_key(no), 0, -1)]
            assigned = [e for e in history if e["topic"] == "ticket.assigned"]
            assert len(assigned) == 1, f"{no}: ticket.assigned {len(assigned)} times"

    for worker in ("intake", "classifier", "router", "notifier"):
        lines = error_lines(tmp_path / "logs" / f"{worker}.log")
        assert len(lines) <= MAX_ERROR_LINES_PER_WORKER, f"{worker}: {len(lines)} lines:\n" + "\n".join(
            lines[:40]
        )
