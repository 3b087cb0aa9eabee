"""Fixtures: a real Kafka-protocol broker (Tansu) and a real Redis for the whole session, a demo
model trained once, and the system itself started as real processes through `appeals run`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.launcher import WORKERS, Launcher
from shared.auth import issue_token
from shared.embedded import EmbeddedServers, free_port
from shared.settings import Settings
from tests.router_factory import session_city

ROOT = Path(__file__).resolve().parents[1]  # the project root (tests run commands from here)


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Iterator[EmbeddedServers]:
    with EmbeddedServers(log_dir=tmp_path_factory.mktemp("servers"), postgres=True) as s:
        yield s


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data dir with a demo model trained once for the whole session."""
    from services.classifier.service import train_demo_model
    from shared.city import load_city

    d = tmp_path_factory.mktemp("data")
    train_demo_model(load_city(), d / "models", per_category=120, seed=7)
    return d


@pytest.fixture(scope="session")
def settings(servers: EmbeddedServers, data_dir: Path, tmp_path_factory) -> Settings:
    return Settings(
        kafka_bootstrap_servers=servers.kafka_bootstrap,
        redis_url=servers.redis_url,
        database_url=servers.database_url,  # the records (PostgreSQL)
        data_dir=data_dir,
        metrics_port_intake=0,
        metrics_port_classifier=0,
        metrics_port_router=0,
        metrics_port_notifier=0,
        metrics_port_records=0,
        timer_scan_seconds=0.5,
        city_config_dir=session_city(
            tmp_path_factory.mktemp("city")
        ),  # issue 5: tiny SLA class, hotspot threshold
        quiet_hours="none",
        sms_daily_cap=1000,  # issue 6: SMS flow at any hour; quiet hours/cap tested apart
        model_check_seconds=0.5,  # issue 4: classifier workers pick up a newly approved model fast
        wechat_token="test-wechat-token",
        open311_api_keys="test-open311-key",  # intake channels (issue 3)
        wechat_encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        wechat_app_id="wx12345hotline",
    )


def settings_env(settings: Settings, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[name.upper()] = str(value)
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


class System(Launcher):
    """The five processes of `appeals up`, on the session's servers, each logging to a file."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.api_port = free_port()
        self.metrics_ports = {w: free_port() for w in WORKERS}
        env = settings_env(
            settings,
            api_port=self.api_port,
            **{f"metrics_port_{w}": p for w, p in self.metrics_ports.items()},
        )
        super().__init__(env=env, log_dir=log_dir)

    def wait_ready(self) -> None:
        self.wait_for_ports([self.api_port, *self.metrics_ports.values()], timeout=90)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@pytest.fixture(scope="session")
def system(settings: Settings, tmp_path_factory) -> Iterator[System]:
    s = System(settings, tmp_path_factory.mktemp("system-logs"))
    s.start_all()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop_all()


@pytest.fixture
async def api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    r = Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def as_dispatch_desk(api, redis) -> None:
    """Reading tickets needs a token: tests that use this read as the dispatch desk (admin)."""
    api.headers["Authorization"] = f"Bearer {await issue_token(redis, 'admin')}"


async def as_department(redis, ticket: dict) -> dict:
    """Headers for the ticket's own department: only it may act on the ticket."""
    return {"Authorization": f"Bearer {await issue_token(redis, 'department', ticket['department']['id'])}"}


async def eventually(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 30, interval: float = 0.1
) -> Any:
    """Poll `probe` until it returns something truthy; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
