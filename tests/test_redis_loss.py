"""Redis goes away for a while and comes back with its data (its append-only file): the workers wait
for it without exiting, without a tight retry loop and without flooding the log, say they are not
ready meanwhile, and an appeal acknowledged before the outage is routed once it is back.

The system runs on a broker, Redis and PostgreSQL of its own, so stopping Redis disturbs no other
test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.embedded import EmbeddedServers, port_open
from shared.store import history_key
from tests.test_broker_loss import (
    MAX_ERROR_LINES_PER_WORKER,
    all_assigned,
    error_lines,
    readiness,
    running_on_servers_of_its_own,
    submit,
    until_readiness,
)

pytestmark = [pytest.mark.integration, pytest.mark.own_system(lane=2)]

OUTAGE_SECONDS = 10
# CPU a waiting worker may use while Redis is away, in seconds of CPU per second: its health checks
# and the broker's fetches, not a batch retried as fast as the loop turns (a whole core, 1.0). On a
# loaded machine the router just started still finishes its start-up in the window: 0.38 was seen.
MAX_CPU_WHILE_WAITING = 0.6


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_redis(servers: EmbeddedServers) -> None:
    (redis,) = [p for p in servers.processes if p.name == "redis"]
    redis.stop()  # SIGTERM: Redis writes its append-only file out before it exits
    servers.processes.remove(redis)


async def test_workers_wait_for_redis_and_route_what_was_acknowledged_before_it_went(tmp_path, data_dir):
    async with running_on_servers_of_its_own(tmp_path, data_dir, servers_data=tmp_path / "data") as (
        servers,
        system,
        _,
        api,
    ):
        before = [await submit(api, f"1360000{i:04d}") for i in range(3)]
        await all_assigned(api, before)

        # Acknowledged and classified, waiting on `appeal.classified` for the router, which comes
        # back while Redis is away: it reads them and cannot write them.
        system.stop("router")
        waiting = [await submit(api, f"1350000{i:04d}") for i in range(5)]
        stop_redis(servers)
        system.start("router")
        workers = list(system.metrics_ports.values())
        await until_readiness(api, workers, 503, timeout=60)

        # The intake refuses new appeals with a reason and a time to come back, not a 500.
        r = await api.post(
            "/api/v1/appeals",
            json={"channel": "hotline", "caller_phone": "13400000001", "text": "建设路5号井盖丢了，很危险"},
        )
        assert r.status_code == 503, r.text
        assert r.headers.get("Retry-After")

        router_pid = system.procs["router"].pid
        await asyncio.sleep(2)  # the router's start-up (its group joins) out of the window
        cpu_before, since = cpu_seconds(router_pid), time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        used = (cpu_seconds(router_pid) - cpu_before) / (time.monotonic() - since)
        assert used < MAX_CPU_WHILE_WAITING, f"the router used {used:.2f} CPU s/s while Redis was away"
        assert system.first_exited() is None
        for port in workers:
            assert await readiness(api, port) == 503

        servers._start_redis()  # the same port and data folder: its data comes back
        assert port_open(servers.redis_port)
        await until_readiness(api, workers, 200, timeout=90)
        await all_assigned(api, waiting)
        after = [await submit(api, f"1330000{i:04d}") for i in range(3)]
        await all_assigned(api, after)
        assert system.first_exited() is None

        # Once each: the batches retried while Redis was away wrote nothing twice.
        redis = Redis.from_url(servers.redis_url)  # a client of the Redis started again
        try:
            for no in waiting:
                history = [json.loads(h) for h in await redis.lrange(history_key(no), 0, -1)]
                assigned = [e for e in history if e["topic"] == "ticket.assigned"]
                assert len(assigned) == 1, f"{no}: ticket.assigned {len(assigned)} times"
        finally:
            await redis.aclose()

    for worker in ("intake", "classifier", "router", "meetings", "notifier", "records", "api"):
        lines = error_lines(tmp_path / "logs" / f"{worker}.log")
        assert len(lines) <= MAX_ERROR_LINES_PER_WORKER, f"{worker}: {len(lines)} lines:\n" + "\n".join(
            lines[:40]
        )
        # A background job (the timer scan, the outbox relay...) runs every few seconds: its
        # traceback is logged when it starts failing, not at every round of the outage.
        tracebacks = Counter(
            m.group(1)
            for line in lines
            if (m := re.search(r"ERROR (.+?): .* failed; (?:trying|retrying)", line))
        )
        assert all(n <= 2 for n in tracebacks.values()), f"{worker}: {tracebacks}"
