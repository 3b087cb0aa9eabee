"""Liveness and readiness of every process, the Kafka client's log rate limit, and the refusal of
demo secrets in production."""

from __future__ import annotations

import asyncio
import logging

import httpx
import psycopg
import pytest
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import AuthenticationError, BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.metrics import KAFKA_CLIENT_ERRORS, LOG_LINES_HELD_BACK, Health
from shared.privacy import UnsafeSettings, check_salt
from shared.runtime import FailureLog, RepeatLimiter
from shared.settings import Settings
from tests.conftest import eventually


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeated_kafka_client_errors_pass_once_per_interval_and_are_all_counted():
    now = [0.0]
    limiter = RepeatLimiter(interval=30, clock=lambda: now[0])
    errors, held = KAFKA_CLIENT_ERRORS._value.get(), LOG_LINES_HELD_BACK._value.get()
    failing = "Unable connect to node with id %s: %s"
    passed = [limiter.filter(record("aiokafka", failing, 1, "refused")) for _ in range(1000)]
    assert passed.count(True) == 1
    assert KAFKA_CLIENT_ERRORS._value.get() - errors == 1000
    assert LOG_LINES_HELD_BACK._value.get() - held == 999

    # Another kind of failure is its own line; so is an unrelated logger's warning, always.
    assert limiter.filter(record("aiokafka.consumer.group_coordinator", "Heartbeat failed"))
    assert all(limiter.filter(record("services.router.app", "no rule for %s", "x")) for _ in range(5))
    assert all(limiter.filter(record("aiokafka", failing, 1, "x", level=logging.INFO)) for _ in range(5))

    now[0] = 31
    line = record("aiokafka", failing, 1, "refused")
    assert limiter.filter(line)
    assert (
        line.getMessage() == "Unable connect to node with id 1: refused [999 more like this in the last 31s]"
    )


def test_a_background_job_failing_on_and_on_logs_a_traceback_once_then_a_line_per_interval(caplog):
    now = [0.0]
    failures = FailureLog(logging.getLogger("timer scan"), "timer scan", interval=30, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="timer scan")
    for _ in range(12):  # a round every 5 s for a minute, Redis away
        failures.failed(ConnectionError("Error 111 connecting to 127.0.0.1:6379"))
        now[0] += 5
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines == [
        ("ERROR", "timer scan failed; trying again", True),
        (
            "ERROR",
            "timer scan still failing (7 times in 30 s): "
            "ConnectionError: Error 111 connecting to 127.0.0.1:6379",
            False,
        ),
    ]

    # Another kind of failure has its traceback at once; working again is said once.
    caplog.clear()
    failures.failed(TimeoutError("Timeout reading from socket"))
    failures.succeeded()
    failures.succeeded()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines == [
        ("ERROR", "timer scan failed; trying again", True),
        ("WARNING", "timer scan works again after 1 failure(s) in 0 s", False),
    ]
    # And the next failure after that is new again: its traceback is logged.
    caplog.clear()
    failures.failed(ConnectionError("refused"))
    assert [r.exc_info is not None for r in caplog.records] == [True]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), "Redis"),
        (BusyLoadingError("Redis is loading the dataset in memory"), "Redis"),
        (psycopg.OperationalError("connection failed: Connection refused"), "PostgreSQL"),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), "PostgreSQL"),
        (KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]"), "the broker"),
    ],
)
def test_a_background_job_says_which_server_is_away_in_one_line_not_a_traceback(caplog, error, said):
    """A server restarting (as `appeals up` restarts one that died) is back within seconds: its
    traceback shows only where the connection was tried. Away an interval later, it is an error."""
    now = [0.0]
    failures = FailureLog(logging.getLogger("model reload"), "model reload", 30, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="model reload")
    for _ in range(7):
        failures.failed(error)
        now[0] += 5
    failures.succeeded()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    kind = type(error).__name__
    assert lines == [
        ("WARNING", f"model reload failed: {said} is not reachable ({kind}: {error}); trying again", False),
        ("ERROR", f"model reload still failing (7 times in 30 s): {kind}: {error}", False),
        ("WARNING", "model reload works again after 7 failure(s) in 35 s", False),
    ]
    # A fault of the code itself still has its traceback.
    caplog.clear()
    failures.failed(KeyError("version"))
    assert [(r.levelname, r.exc_info is not None) for r in caplog.records] == [("ERROR", True)]


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        AuthenticationError("invalid username-password pair"),
    ],
)
def test_an_error_of_a_server_that_answers_keeps_its_traceback(caplog, error):
    """A deadlock, a statement cancelled or a refused password is no server away: what it came from
    is what the traceback shows."""
    failures = FailureLog(logging.getLogger("records retention"), "records retention")
    caplog.set_level(logging.INFO, logger="records retention")
    failures.failed(error)
    assert [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        ("ERROR", "records retention failed; trying again", True)
    ]


def test_one_outage_is_one_warning_whatever_its_errors_say_on_one_line(caplog):
    """Redis restarting refuses connections, then says it is loading: one outage, one warning, and
    the error line after an interval; PostgreSQL's messages run over several lines."""
    now = [0.0]
    failures = FailureLog(logging.getLogger("timer scan"), "timer scan", 30, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="timer scan")
    for error in [RedisConnectionError("refused")] * 3 + [BusyLoadingError("loading")] * 4:
        failures.failed(error)
        now[0] += 5
    failures.succeeded()
    failures.failed(
        psycopg.OperationalError("server closed the connection unexpectedly\n\tThis probably means")
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "timer scan failed: Redis is not reachable (ConnectionError: refused); trying again"),
        ("ERROR", "timer scan still failing (7 times in 30 s): BusyLoadingError: loading"),
        ("WARNING", "timer scan works again after 7 failure(s) in 35 s"),
        (
            "WARNING",
            "timer scan failed: PostgreSQL is not reachable (OperationalError: server closed the "
            "connection unexpectedly This probably means); trying again",
        ),
    ]


def test_health_is_ready_only_when_every_check_passed():
    health = Health()
    assert not health.ready()[0]  # nothing checked yet
    health.set("redis", None)
    health.set("broker", "KafkaConnectionError: refused")
    ok, detail = health.ready()
    assert not ok
    assert detail == {"redis": "ok", "broker": "KafkaConnectionError: refused"}
    health.set("broker", None)
    assert health.ready()[0]
    assert health.alive()[0]


@pytest.mark.parametrize(
    "salt", ["appeals-demo-salt", "replace-with-a-long-random-secret", "0123456789abcdef"]
)
def test_production_refuses_a_demo_placeholder_or_short_salt(salt):
    with pytest.raises(UnsafeSettings, match="CALLER_ID_SALT"):
        check_salt(Settings(appeals_env="production", caller_id_salt=salt))


def test_production_accepts_a_generated_salt_and_development_the_demo_one():
    check_salt(Settings(appeals_env="production", caller_id_salt="9f" * 32))
    check_salt(Settings())  # development: the demo salt is fine


@pytest.mark.integration
async def test_every_process_answers_liveness_and_readiness(system):
    async with httpx.AsyncClient(timeout=10) as client:
        for worker, port in system.metrics_ports.items():
            base = f"http://127.0.0.1:{port}"
            assert (await client.get(f"{base}/healthz")).status_code == 200, worker

            async def ready(base: str = base) -> dict | None:
                r = await client.get(f"{base}/readyz")
                return r.json() if r.status_code == 200 else None

            body = await eventually(ready, timeout=30)
            assert body["redis"] == "ok", worker
            assert body["broker"] == "ok", worker
            assert body["consumer_groups"] == "ok", worker
            metrics = (await client.get(f"{base}/metrics")).text
            assert "process_ready 1.0" in metrics, worker
            assert (await client.get(f"{base}/nothing-here")).status_code == 404
        assert (await client.get(f"{system.base_url}/livez")).status_code == 200
        r = await client.get(f"{system.base_url}/readyz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ok", "redis": "ok", "broker": "ok"}


@pytest.mark.integration
async def test_the_api_keeps_an_idle_connection_longer_than_a_client_does(system):
    """A client (httpx: 5 s idle) must be the one to drop an idle connection: a server dropping it
    at the same moment races the client's next request on it, which then fails as disconnected."""
    host, port = system.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /livez HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
            )
            await reader.readexactly(length)
            await asyncio.sleep(6)  # beyond httpx's keep-alive expiry of 5 s
    finally:
        writer.close()
