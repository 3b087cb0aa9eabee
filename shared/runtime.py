"""What every worker process sets up the same way: settings, broker, Redis, ticket store, city,
metrics endpoint, logging. A service's `app.py` builds one `Runtime` and adds its subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from faststream import FastStream
from faststream.kafka import KafkaBroker
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.bus import (
    EventPublisher,
    ensure_topics,
    make_broker,
    subscribe,
    subscribe_each,
    subscribe_payloads,
    subscribe_topics,
)
from shared.city import City, load_city, warn_if_calendar_runs_out
from shared.events import Event
from shared.metrics import (
    KAFKA_CLIENT_ERRORS,
    LOG_LINES_HELD_BACK,
    TOPICS_RECREATED,
    Health,
    serve_metrics,
)
from shared.privacy import check_salt
from shared.redis_client import connect
from shared.redrive import redrive_once
from shared.settings import Settings, get_settings
from shared.store import TicketStore

E = TypeVar("E", bound=Event)
log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 3.0  # within the probes' own timeout
BROKER_CHECK_TIMEOUT_SECONDS = 10.0  # a worker's round in the background: connect, list, create topics
# One line per kind of Kafka client failure per this many seconds (the rest are counted).
LOG_REPEAT_SECONDS = 30.0
KAFKA_LOGGERS = ("aiokafka", "faststream")


# New objects between two young garbage collections in a running process (see `settle_heap`).
YOUNG_COLLECTION_EVERY = 200_000


def settle_heap() -> None:
    """Set the garbage collector for serving, once a process has built what it needs to start.

    What it built (modules, the events' schemas, the city, a model, the clients) is moved out of
    the collector's sight: every batch's events outlive a young collection, so full collections
    come every few thousand events, and each went through all of it again (80 ms apiece, against
    2 ms frozen, on the records benchmark: 9% of that worker's CPU). Collected first, so that no
    garbage of the start is kept forever.

    Young collections come every YOUNG_COLLECTION_EVERY new objects instead of 700: a batch's events
    and tickets live until the batch is done, so a collection in the middle of one goes through all
    of them, frees next to nothing and moves them on to the older generations, to be gone through
    again there. A collection costs what is alive, which a batch (or a request) bounds, so the
    fewer, the cheaper: the collector took 4.7% of the machine's CPU flat out at 700, 2.5% at
    20,000 and 0.5% at 200,000 (perf), for about 20 MB more at the records worker's peak. Garbage
    in a cycle (most is freed at once, by its count of references) waits longer to be freed."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, 20, 10)


class RepeatLimiter(logging.Filter):
    """Lets one warning or error of the Kafka client through per kind per interval.

    With the broker away, aiokafka and FastStream log every failed connect, fetch and commit: about a
    thousand lines a second across the workers. The kind is the logger and the message template (not
    its arguments), so each failing connection shows once per interval; the next line that passes says
    how many were held back, and kafka_client_errors_total counts them all."""

    def __init__(self, interval: float = LOG_REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(KAFKA_LOGGERS):
            return True
        KAFKA_CLIENT_ERRORS.inc()
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            LOG_LINES_HELD_BACK.inc()
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held and last is not None:
            record.msg = f"{record.getMessage()} [{held} more like this in the last {now - last:.0f}s]"
            record.args = None
        return True


_LIMITER = RepeatLimiter()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiokafka narrates every group join and partition assignment at INFO.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    # httpx logs every request's URL at INFO, and WeChat's API takes its access token and the
    # AppSecret as URL parameters: those must not reach a log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    # aiokafka's records reach the root handlers; FastStream's loggers have their own handlers and do
    # not propagate, so the limiter sits on those loggers too (a logger's filter sees its own records).
    for handler in logging.getLogger().handlers:
        if _LIMITER not in handler.filters:
            handler.addFilter(_LIMITER)
    for name in ("faststream", "faststream.access.kafka"):
        logger = logging.getLogger(name)
        if _LIMITER not in logger.filters:
            logger.addFilter(_LIMITER)


async def readiness(
    checks: dict[str, Callable[[], Awaitable[object]]], *, seconds: float = CHECK_TIMEOUT_SECONDS
) -> dict[str, str | None]:
    """Run each check with a timeout, concurrently: None when it passed, else what went wrong."""

    async def one(probe: Callable[[], Awaitable[object]]) -> str | None:
        try:
            await asyncio.wait_for(probe(), seconds)
        except Exception as e:  # every failure means "not ready"; the next probe asks again
            return f"{type(e).__name__}: {e}"[:200]
        return None

    results = await asyncio.gather(*(one(p) for p in checks.values()))
    return dict(zip(checks, results, strict=True))


@dataclass
class Runtime:
    name: str
    settings: Settings
    broker: KafkaBroker  # the subscribers
    publisher: EventPublisher  # what they publish
    redis: Redis
    store: TicketStore
    city: City
    health: Health = field(default_factory=Health)
    # Run (in the background) after this process found the broker empty and re-created the topics:
    # what the lost topics held is driven on from the store (`shared.redrive`; one process of all
    # those that saw the loss does it, under a Redis lock).
    on_topics_recreated: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    _recovering: set[asyncio.Task] = field(default_factory=set)

    @classmethod
    def create(cls, name: str, settings: Settings | None = None) -> Runtime:
        settings = settings or get_settings()
        check_salt(settings)  # a production worker with a public caller-id salt does not start
        redis = connect(settings.redis_url)
        publisher = EventPublisher(settings, client_id=name)
        publisher.claims = redis  # poison messages: one consumer group dead-letters each
        rt = cls(
            name=name,
            settings=settings,
            broker=make_broker(settings, app_name=name),
            publisher=publisher,
            redis=redis,
            store=TicketStore(redis),
            city=load_city(settings.city_config_dir),
        )
        rt.on_topics_recreated.append(partial(redrive_once, publisher, redis, name))
        return rt

    def subscribe(
        self,
        event: type[E],
        handle: Callable[[list[E]], Awaitable[None]],
        **overrides: Any,
    ) -> None:
        """A consumer on the caller's path: `handle` gets each batch of `event`s from its topic
        (see `shared.bus.subscribe`: poison to the dead-letter topic, batch time measured)."""
        subscribe(self.broker, self.publisher, self.name, event, handle, **overrides)

    def subscribe_topics(
        self,
        models: Mapping[str, type[Event]],
        handle: Callable[[list[tuple[str, Event]]], Awaitable[None]],
        **overrides: Any,
    ) -> None:
        """One consumer for several topics off the caller's path (`shared.bus.subscribe_topics`):
        `handle` gets each batch's events with their topics."""
        subscribe_topics(self.broker, self.publisher, self.name, models, handle, **overrides)

    def subscribe_payloads(
        self,
        models: Mapping[str, type[Event]],
        handle: Callable[[list[tuple[str, dict[str, Any]]]], Awaitable[None]],
        **overrides: Any,
    ) -> None:
        """`subscribe_topics` for a handler of the events' JSON objects, held to their models
        (`shared.bus.subscribe_payloads`)."""
        subscribe_payloads(self.broker, self.publisher, self.name, models, handle, **overrides)

    def subscribe_each(
        self, handlers: Mapping[type[Event], Callable[[list[Any]], Awaitable[None]]], **overrides: Any
    ) -> None:
        """One consumer for the topics of these event classes, off the caller's path; each batch's
        events go to their class's handler (`shared.bus.subscribe_each`)."""
        subscribe_each(self.broker, self.publisher, self.name, handlers, **overrides)

    async def check_broker(self, *, first: bool = False) -> None:
        """The broker answers and has every topic. A broker that restarted empty (the embedded one
        keeps nothing) has none: create them again and make the consumers look, so that they join
        their groups anew and start from the earliest offset of the new, empty topics."""
        created = await ensure_topics(self.settings)
        if created and not first:
            TOPICS_RECREATED.inc(len(created))
            log.warning("%d topics were missing on the broker (restarted empty?): created", len(created))
            for sub in self.broker.subscribers:
                client = getattr(getattr(sub, "consumer", None), "_client", None)
                if client is not None:
                    client.force_metadata_update()
            # Not awaited here: the health check runs this under a short timeout.
            for hook in self.on_topics_recreated:
                task = asyncio.create_task(self._recover(hook))
                self._recovering.add(task)
                task.add_done_callback(self._recovering.discard)

    async def _recover(self, hook: Callable[[], Awaitable[object]]) -> None:
        try:
            await hook()
        except Exception:
            log.exception("driving on from the store after the broker came back empty failed")

    def groups_problem(self) -> str | None:
        """None when every consumer has joined its group, else which have not."""
        waiting = []
        for sub in self.broker.subscribers:
            group = getattr(sub, "group_id", None) or ",".join(getattr(sub, "topic_names", ()))
            consumer: Any = getattr(sub, "consumer", None)
            # aiokafka's group coordinator: a coordinator found and a generation > 0 mean joined.
            coordinator: Any = getattr(consumer, "_coordinator", None)
            if consumer is None:
                waiting.append(f"{group}: not started")
            elif hasattr(coordinator, "generation") and (
                coordinator.coordinator_id is None or coordinator.generation < 0
            ):
                waiting.append(f"{group}: not joined")
        return "; ".join(sorted(waiting)) or None

    async def _check_health(self) -> None:
        checks: dict[str, Callable[[], Awaitable[object]]] = {
            "redis": self.redis.ping,
            "broker": self.check_broker,
        }
        for name, problem in (await readiness(checks, seconds=BROKER_CHECK_TIMEOUT_SECONDS)).items():
            self.health.set(name, problem)
        self.health.set("consumer_groups", self.groups_problem())

    def app(self, *, metrics_port: int | None = None) -> FastStream:
        """The FastStream app: makes sure the topics exist, serves /metrics, /healthz and /readyz,
        watches the broker and Redis, closes Redis at exit."""
        app = FastStream(self.broker)
        tasks: list[asyncio.Task] = []

        async def beat() -> None:
            while True:
                self.health.beat()
                await asyncio.sleep(1)

        async def watch() -> None:
            while True:
                await self._check_health()
                await asyncio.sleep(self.settings.health_check_seconds)

        @app.on_startup
        async def _start() -> None:
            configure_logging(self.settings.log_level)
            warn_if_calendar_runs_out(self.city, self.settings.city_config_dir)  # sla.yaml's next year
            await self.check_broker(first=True)
            await self.publisher.start()

        @app.after_startup
        async def _serving() -> None:
            settle_heap()
            tasks.extend([asyncio.create_task(beat()), asyncio.create_task(watch())])
            # Opened once the subscribers have started: launchers wait for this port as "ready".
            if metrics_port:
                serve_metrics(metrics_port, bind_all=self.settings.metrics_bind_all, health=self.health)

        @app.on_shutdown
        async def _stop_watching() -> None:
            await cancel_all(tasks)

        @app.after_shutdown
        async def _stop() -> None:
            await self.publisher.stop()
            await self.redis.aclose()

        return app


async def cancel_all(tasks: Sequence[asyncio.Task]) -> None:
    """Cancel the background tasks and wait until each has ended (its `finally` run)."""
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def in_background(app: FastStream, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `run` as a task of its own once `app` has started (its consumers do not wait for it);
    cancelled, and waited for, when `app` shuts down."""
    tasks: list[asyncio.Task] = []

    @app.after_startup
    async def _start() -> None:
        tasks.append(asyncio.create_task(run()))

    @app.on_shutdown
    async def _stop() -> None:
        await cancel_all(tasks)


# Errors that say a server is away (stopped, restarting, still reading its data back) rather than
# that the code, the configuration or the load is at fault. Redis's ConnectionError also covers a
# refused password. psycopg raises a bare OperationalError when it cannot connect or the server
# went away, the 08 and 57P classes when the server ends the connection; most other operational
# errors (a deadlock, a cancelled statement, a full disk) are not an absence. The pool's timeout is
# what a job waiting for a connection meets while PostgreSQL is down (an exhausted pool looks the
# same, and still becomes an error line if it lasts).
_POSTGRES_AWAY = ("ConnectionException", "AdminShutdown", "CrashShutdown", "CannotConnectNow")


def _postgres_away(error: BaseException) -> bool:
    # Looked up where loaded: only the processes that use the record import psycopg (and can raise
    # its errors); the others are spared importing it at start (60 ms).
    psycopg, pool = sys.modules.get("psycopg"), sys.modules.get("psycopg_pool")
    if psycopg is None:
        return False
    away = tuple(getattr(psycopg.errors, name) for name in _POSTGRES_AWAY)
    return (
        type(error) is psycopg.OperationalError
        or isinstance(error, away)
        or (pool is not None and isinstance(error, pool.PoolTimeout))
    )


def away_server(error: BaseException) -> str | None:
    """The server `error` says is away, in words for the log; None for any other error."""
    if isinstance(error, RedisConnectionError | RedisTimeoutError) and not isinstance(
        error, AuthenticationError | AuthorizationError
    ):
        return "Redis"
    if _postgres_away(error):
        return "PostgreSQL"
    if isinstance(error, KafkaConnectionError | KafkaTimeoutError):
        return "the broker"
    return None


def _one_line(error: BaseException) -> str:
    """The error's message on one line (libpq's run over several), cut to a length a log reads."""
    return " ".join(str(error).split())[:200]


class FailureLog:
    """How a background job that keeps failing is logged: its first failure with the traceback,
    then, while it goes on failing with the same kind of error, one line per `interval` saying how
    many times, and one line when it works again. A job runs every few seconds; with Redis or
    PostgreSQL away for ten minutes a traceback every round would be hundreds of them, burying what
    came before. A server away (`away_server`) is said in one line at first, as a warning: its
    traceback shows only where the connection was tried, and a server that restarts (`appeals up`
    starts one that died again) is back within seconds; still away an interval later, it is an
    error."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        interval: float = LOG_REPEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.what, self.interval, self.clock = log, what, interval, clock
        # The kind of failure going on: the server away (a restarting Redis refuses, then says it is
        # loading: one outage), or else the error's type.
        self._kind: str | type[Exception] | None = None
        self._since = self._last = 0.0
        self._count = 0

    def failed(self, error: Exception) -> None:
        now = self.clock()
        server = away_server(error)
        kind = server or type(error)
        if kind != self._kind:
            if server is not None:
                self.log.warning(
                    "%s failed: %s is not reachable (%s: %s); trying again",
                    self.what,
                    server,
                    type(error).__name__,
                    _one_line(error),
                )
            else:
                self.log.error("%s failed; trying again", self.what, exc_info=error)
            self._kind, self._since, self._last, self._count = kind, now, now, 1
            return
        self._count += 1
        if now - self._last >= self.interval:
            self.log.error(
                "%s still failing (%d times in %.0f s): %s: %s",
                self.what,
                self._count,
                now - self._since,
                type(error).__name__,
                _one_line(error),
            )
            self._last = now

    def succeeded(self) -> None:
        if self._kind is not None:
            self.log.warning(
                "%s works again after %d failure(s) in %.0f s",
                self.what,
                self._count,
                self.clock() - self._since,
            )
            self._kind = None


def run_at_start(
    app: FastStream, step: Callable[[], Awaitable[object]], what: str, retry_seconds: float = 5.0
) -> None:
    """Run `step` once in the background when `app` has started; an error is logged and it is tried
    again after `retry_seconds`, until it succeeds."""
    failures = FailureLog(logging.getLogger(what), what)

    async def until_done() -> None:
        while True:
            try:
                await step()
                failures.succeeded()
                return
            except Exception as e:
                failures.failed(e)
            await asyncio.sleep(retry_seconds)

    in_background(app, until_done)


def run_periodically(
    app: FastStream, seconds: float, step: Callable[[], Awaitable[object]], what: str
) -> None:
    """Run `step` every `seconds` while `app` runs; an error is logged and the next round retries."""
    failures = FailureLog(logging.getLogger(what), what)

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
                failures.succeeded()
            except Exception as e:
                failures.failed(e)

    in_background(app, loop)
