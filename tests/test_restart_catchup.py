"""The whole system killed while the notifier was held, then started again on the same DATA_DIR:
the embedded broker kept nothing, so the notifier's unread events (the appeals of tickets already
routed, a resolution) exist only in the tickets' histories. The re-drive that `appeals up` runs
after the start publishes them again: each caller is acknowledged once, the resolved ticket's
survey goes out once (and the router applies its `survey.sent`), and a caller acknowledged before
the kill is not acknowledged again, however often the re-drive runs."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from shared.auth import issue_token
from shared.embedded import EmbeddedServers
from shared.redrive import redrive
from shared.settings import Settings
from tests.conftest import System, as_department, eventually
from tests.faults_support import caught_up, consumer_groups, sms_outbox, tickets_of
from tests.test_pipeline_e2e import submit

pytestmark = [pytest.mark.integration, pytest.mark.own_system(lane=1)]

PROCESSES = ("api", "intake", "classifier", "router", "notifier")
EARLY, ROUTED, RESOLVED = "13600000001", "13600000002", "13600000003"


def start(settings: Settings, data: Path, log_dir: Path) -> tuple[EmbeddedServers, Settings, System]:
    """Servers on `data` (Redis's append-only file there) and the system's processes on them."""
    servers = EmbeddedServers(data_dir=data, log_dir=log_dir / "servers").start()
    s = settings.model_copy(
        update={"kafka_bootstrap_servers": servers.kafka_bootstrap, "redis_url": servers.redis_url}
    )
    system = System(s, log_dir / "logs")
    system.start_all(PROCESSES)
    system.wait_for_ports([system.api_port, *(system.metrics_ports[w] for w in PROCESSES[1:])], timeout=120)
    return servers, s, system


def kill_all(servers: EmbeddedServers, system: System) -> None:
    """kill -9 of every process and server: no shutdown, no final flush (a stopped one dies too)."""
    for proc in system.procs.values():
        proc.kill()
        proc.wait(10)
    for p in servers.processes:
        p.proc.kill()
        p.proc.wait(10)
    servers.processes.clear()


async def sent(redis: Redis, phone: str, kind: str) -> int:
    return sum(1 for m in await sms_outbox(redis) if m["phone"] == phone and m["kind"] == kind)


async def status_of(redis: Redis, no: str) -> str | None:
    ticket = (await tickets_of(redis, [no]))[no]
    return ticket["status"] if ticket else None


async def until_status(redis: Redis, no: str, wanted: set[str], timeout: float = 60) -> str:
    async def probe() -> str | None:
        status = await status_of(redis, no)
        return status if status in wanted else None

    return await eventually(probe, timeout=timeout, interval=0.2)


@pytest.mark.timeout(300)
async def test_the_notifiers_unread_events_are_driven_on_once_after_the_whole_system_is_killed(
    settings, tmp_path
):
    data = tmp_path / "data"
    servers, s, system = start(settings, data, tmp_path / "first")
    try:
        redis = Redis.from_url(s.redis_url)
        headers = {"Authorization": f"Bearer {await issue_token(redis, 'admin')}"}
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30, headers=headers) as api:
            early = await submit(api, EARLY, address="阳光花园3号楼")
            await eventually(lambda: sent(redis, EARLY, "ack"), timeout=60, interval=0.2)
            await until_status(redis, early, {"assigned", "review", "meeting"})

            system.procs["notifier"].send_signal(signal.SIGSTOP)  # reads nothing more until the kill
            routed = await submit(api, ROUTED, address="阳光花园3号楼")
            resolved = await submit(api, RESOLVED, address="阳光花园3号楼")
            await until_status(redis, routed, {"assigned", "review", "meeting"})
            await until_status(redis, resolved, {"assigned"})
            ticket = (await tickets_of(redis, [resolved]))[resolved]
            assert ticket is not None
            r = await api.post(
                f"/api/v1/tickets/{resolved}/resolve",
                json={"note": "已更换路灯灯泡，恢复照明"},
                headers=await as_department(redis, ticket),
            )
            assert r.status_code == 200, r.text
        # What the notifier had not read: two appeals and a resolution, none of them answered yet.
        assert await status_of(redis, resolved) == "resolved"
        assert await sent(redis, ROUTED, "ack") == 0
        assert await sent(redis, RESOLVED, "ack") == 0
        assert await sent(redis, RESOLVED, "survey") == 0
        await redis.aclose()
    finally:
        kill_all(servers, system)

    servers, s, system = start(settings, data, tmp_path / "second")
    redis = Redis.from_url(s.redis_url)
    try:
        # The broker came back empty: drive on what it owed, as `appeals up` does after the start.
        assert await redrive(s, redis) > 0

        async def all_sent() -> bool:
            return (
                await sent(redis, ROUTED, "ack") >= 1
                and await sent(redis, RESOLVED, "ack") >= 1
                and await sent(redis, RESOLVED, "survey") >= 1
            )

        await eventually(all_sent, timeout=90, interval=0.5)
        # The notifier published the survey's `survey.sent` again; the router applied it.
        assert await until_status(redis, resolved, {"surveyed"}) == "surveyed"
        assert await redrive(s, redis) > 0  # again: every event a repeat, each dropped
        await eventually(
            lambda: caught_up(s.kafka_bootstrap_servers, consumer_groups("notifier")), timeout=90, interval=1
        )

        assert await sent(redis, EARLY, "ack") == 1
        assert await sent(redis, ROUTED, "ack") == 1
        assert await sent(redis, RESOLVED, "ack") == 1
        assert await sent(redis, RESOLVED, "survey") == 1
    finally:
        await redis.aclose()
        system.stop_all()
        servers.stop()
