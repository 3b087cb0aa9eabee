"""Fixtures: a real Kafka-protocol broker (Tansu) and a real Redis for the whole session, a demo
model trained once, and the system itself started as real processes through `appeals run`.

A test that uses any of the server fixtures (INTEGRATION_FIXTURES, directly or through another fixture)
is marked `integration` here at collection, so `pytest -m "not integration"` starts nothing. A test
left unmarked that still tries to start a server or reach Redis or the broker fails at once with
what to do (see `pytest_runtest_protocol` below)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from redis.asyncio import Redis

from services.launcher import WORKERS, Launcher, external_servers_configured
from services.records import db
from shared import embedded
from shared.auth import issue_token
from shared.city import City, load_city
from shared.embedded import EmbeddedServers, free_port
from shared.settings import Settings
from tests.browser_support import browser, page  # noqa: F401 - fixtures of every test module
from tests.cities import demo_city, system_city_dir

ROOT = Path(__file__).resolve().parents[1]  # the project root (tests run commands from here)

# Fixtures that start or reach the broker, Redis or the services, and `data_dir`, which trains the
# demo model (tens of seconds): any test whose fixture closure holds one is an integration test.
INTEGRATION_FIXTURES = frozenset(
    {"servers", "settings", "system", "api", "redis", "as_dispatch_desk", "data_dir"}
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_configure(config: pytest.Config) -> None:
    # `make test` runs the integration tests in two processes (pytest-xdist): each draws the ports of
    # the servers it starts from a share of the range of its own.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        embedded.PORT_SHARE = (int(worker[2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        # The tests that start whole systems of their own and load the machine (kill -9 under load,
        # replicas, the broker lost, a restart) run one after another in their lane, so that no more
        # than two run at once; the two lanes hold about the same time, one for each process.
        own = item.get_closest_marker("own_system")
        if own is not None:
            item.add_marker(pytest.mark.xdist_group(f"own_system_{own.kwargs.get('lane', 1)}"))


def _refuse(what: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{what} in a test not marked integration: use one of the fixtures"
            f" ({', '.join(sorted(INTEGRATION_FIXTURES))}), which marks the test, or mark it integration"
        )

    return refuse


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Outside integration tests, starting the servers or the services and connecting to Redis or
    Kafka fail, so the fast group cannot come to need them without anyone noticing."""
    if item.get_closest_marker("integration") is not None:
        return (yield)
    import aiokafka.client
    import redis.asyncio.connection
    import redis.connection

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EmbeddedServers, "start", _refuse("starting the embedded broker and Redis"))
        mp.setattr(Launcher, "start", _refuse("starting a service"))
        mp.setattr(redis.asyncio.connection.AbstractConnection, "connect", _refuse("connecting to Redis"))
        mp.setattr(redis.connection.AbstractConnection, "connect", _refuse("connecting to Redis"))
        mp.setattr(aiokafka.client.AIOKafkaClient, "bootstrap", _refuse("connecting to the broker"))
        return (yield)


@pytest.fixture(scope="session")
def city() -> City:
    """The demo city as shipped, loaded once for the session."""
    return demo_city()


@pytest.fixture(scope="session")
def city_dir(tmp_path_factory) -> Path:
    """The folder of the city the started system reads: the demo city with test deadlines."""
    return system_city_dir(tmp_path_factory.mktemp("city"))


@pytest.fixture(scope="session")
def system_city(city_dir: Path) -> City:
    return load_city(city_dir)


@dataclass(frozen=True)
class ExternalServers:
    """Servers someone else runs (a deployment's Apache Kafka, Redis and PostgreSQL), named by the
    environment: the same suite then runs against them instead of the embedded ones."""

    kafka_bootstrap: str
    redis_url: str
    database_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Iterator[EmbeddedServers | ExternalServers]:
    if external_servers_configured() and os.environ.get("DATABASE_URL"):
        yield ExternalServers(
            os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["REDIS_URL"], os.environ["DATABASE_URL"]
        )
        return
    with EmbeddedServers(log_dir=tmp_path_factory.mktemp("servers"), postgres=True) as s:
        yield s


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data dir with a demo model trained once for the whole session: under pytest-xdist, by the
    first process that needs it, into the run's folder the processes share (about ten seconds of a
    core each, at the start when both are busy); each process gets a copy, its systems approving
    models there."""
    from services.classifier.analyst import train_demo_model

    d = tmp_path_factory.mktemp("data")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        train_demo_model(demo_city(), d / "models", per_category=120, seed=7)
        return d
    trained = tmp_path_factory.getbasetemp().parent / "demo-models"  # this run's, not an earlier one's
    with open(f"{trained}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not trained.is_dir():
            train_demo_model(demo_city(), trained.with_suffix(".part"), per_category=120, seed=7)
            trained.with_suffix(".part").rename(trained)
    shutil.copytree(trained, d / "models")
    return d


# The consumers' session on the tests' brokers (KAFKA_SESSION_TIMEOUT_MS). On Tansu a join takes
# about half of it and a worker started after a kill -9 waits about all of it for the dead member to
# leave its groups: at the default 10 s, 5 s each start and 18 s each restart; at 3 s, 2 s and 2-7 s.
# Heartbeats go every second, so a worker's loop held up for three seconds still keeps its session.
SESSION_TIMEOUT_MS = 3000
# How often the tests' consumers on the caller's path ask the broker (KAFKA_CALLERS_PATH_FETCH_WAIT_MS)
# on the tests' Tansu, which holds a fetch for the whole wait. At the default 20 ms an idle system
# costs about a third of a core (its broker a quarter), and the suite keeps two of them up beside the
# tests' own systems: at 100 ms the integration tests took 10:00 instead of 11:24, and 13.5 minutes of
# CPU instead of 16.4. A hop may wait up to 100 ms more; no test depends on its latency.
CALLERS_PATH_FETCH_WAIT_MS = 100
# One photo's limit on the tests' system (PHOTO_MAX_BYTES): over a phone's photo (tests send one of
# 5 MB), under the default (15 MB), whose oversized file took the browser test 5 s to hand to
# Chromium and send up to the API.
PHOTO_MAX_BYTES = 6 * 1024 * 1024


@pytest.fixture(scope="session")
def settings(servers: EmbeddedServers, data_dir: Path, city_dir: Path) -> Settings:
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
        city_config_dir=city_dir,
        quiet_hours="none",  # SMS flow at any hour; quiet hours and the cap are tested apart
        sms_daily_cap=1000,
        model_check_seconds=0.5,  # classifier workers pick up a newly approved model fast
        kafka_session_timeout_ms=SESSION_TIMEOUT_MS,
        kafka_callers_path_fetch_wait_ms=CALLERS_PATH_FETCH_WAIT_MS,
        wechat_token="test-wechat-token",
        open311_api_keys="test-open311-key",
        wechat_encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        wechat_app_id="wx12345hotline",
        # The console's public page, as a city names it: the answer to 查询 in WeChat links each
        # ticket there (the tests open the link's path and query on the test system).
        wechat_template_url="https://12345.example.cn/console/lookup",
        # WeChat's media hosts, and this machine: the tests serve image messages' pictures here.
        wechat_media_hosts="mmbiz.qpic.cn,mmbiz.qlogo.cn,127.0.0.1",
        # Open311's media_url tests serve photos from this machine under the name `localhost`, the
        # one internal host allowed; the same server as 127.0.0.1 stays refused (loopback).
        open311_media_allowed_hosts="localhost",
        open311_media_timeout_seconds=2,  # the test of a server that never answers waits this long
        photo_max_bytes=PHOTO_MAX_BYTES,
    )


def settings_env(settings: Settings, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[name.upper()] = str(value)
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


class System(Launcher):
    """The processes of `appeals up`, on the session's servers, each logging to a file."""

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
async def pool(settings: Settings) -> AsyncIterator[db.Pool]:
    """A connection pool to the record (PostgreSQL), its schema migrated."""
    await db.migrate(settings.database_url)
    p = db.pool(settings.database_url)
    await p.open(wait=True)
    yield p
    await p.close()


@pytest.fixture
async def as_dispatch_desk(api, redis) -> None:
    """Reading tickets needs a token: tests that use this read as the dispatch desk (admin)."""
    api.headers["Authorization"] = f"Bearer {await issue_token(redis, 'admin')}"


async def as_department(redis, ticket: dict) -> dict:
    """Headers for the ticket's own department: only it may act on the ticket."""
    return {"Authorization": f"Bearer {await issue_token(redis, 'department', ticket['department']['id'])}"}


async def as_sms_gateway(redis) -> dict:
    """Headers for the SMS provider's gateway: a resident's SMS comes through nothing else."""
    return {"Authorization": f"Bearer {await issue_token(redis, 'sms_gateway')}"}


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


async def groups_past(bootstrap: str, groups: Sequence[str], ends: Mapping[Any, int]) -> None:
    """Wait until every consumer group in `groups` has committed `ends` (TopicPartition -> one past
    the last record it must have handled) on each partition: the records were handled, not only
    read, since the consumers commit after their handler."""
    from aiokafka import AIOKafkaConsumer

    # A consumer that names the group but subscribes to nothing reads its commits without joining it.
    readers = [
        AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=g, enable_auto_commit=False) for g in groups
    ]
    for reader in readers:
        await reader.start()
    try:

        async def past() -> bool:
            for reader in readers:
                for tp, end in ends.items():
                    if end == 0:  # nothing there to handle: no group commits on an empty partition
                        continue
                    committed = await reader.committed(tp)
                    if committed is None or committed < end:
                        return False
            return True

        await eventually(past, timeout=60, interval=0.5)
    finally:
        for reader in readers:
            await reader.stop()


def local_today(timezone: str = "Asia/Shanghai") -> date:
    """The city's date now. Its day starts at local midnight (16:00 UTC in Asia/Shanghai), which a
    test may cross: one that counts "today" takes the day before it acts, and reads `days_since` it."""
    return datetime.now(ZoneInfo(timezone)).date()


def days_since(first: date, timezone: str = "Asia/Shanghai") -> dict[str, str]:
    """A /stats period from `first` (the city's date when the test began, before it acted) to the
    city's date now: what the test did is counted on one of these days, midnight crossed or not."""
    return {"from": first.isoformat(), "to": local_today(timezone).isoformat()}
