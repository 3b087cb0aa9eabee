"""What every worker process sets up the same way: settings, broker, Redis, ticket store, city,
metrics endpoint, logging. A service's `app.py` builds one `Runtime` and adds its subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from faststream import FastStream
from faststream.kafka import KafkaBroker
from redis.asyncio import Redis

from shared.bus import EventPublisher, ensure_topics, make_broker, subscribe
from shared.city import City, load_city
from shared.events import Event
from shared.metrics import serve_metrics
from shared.privacy import check_salt
from shared.redis_client import connect
from shared.settings import Settings, get_settings
from shared.store import TicketStore

E = TypeVar("E", bound=Event)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiokafka narrates every group join and partition assignment at INFO.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))


@dataclass
class Runtime:
    name: str
    settings: Settings
    broker: KafkaBroker  # the subscribers
    publisher: EventPublisher  # what they publish
    redis: Redis
    store: TicketStore
    city: City

    @classmethod
    def create(cls, name: str, settings: Settings | None = None) -> Runtime:
        settings = settings or get_settings()
        check_salt(settings)  # a production worker with a public caller-id salt does not start
        redis = connect(settings.redis_url)
        return cls(
            name=name,
            settings=settings,
            broker=make_broker(settings, app_name=name),
            publisher=EventPublisher(settings, client_id=name),
            redis=redis,
            store=TicketStore(redis),
            city=load_city(settings.city_config_dir),
        )

    def subscribe(
        self,
        event: type[E],
        handle: Callable[[list[E]], Awaitable[None]],
        *,
        topic: str | None = None,
        **overrides: Any,
    ) -> None:
        """Every worker's one way to consume: `handle` gets each batch of `event`s from its topic
        (see `shared.bus.subscribe`: poison to the dead-letter topic, batch time measured)."""
        subscribe(self.broker, self.publisher, self.name, event, handle, topic=topic, **overrides)

    def app(self, *, metrics_port: int | None = None) -> FastStream:
        """The FastStream app: makes sure the topics exist, serves /metrics, closes Redis at exit."""
        app = FastStream(self.broker)

        @app.on_startup
        async def _start() -> None:
            configure_logging(self.settings.log_level)
            await ensure_topics(self.settings)
            await self.publisher.start()

        @app.after_startup
        async def _serving() -> None:
            # Opened once the subscribers have started: launchers wait for this port as "ready".
            if metrics_port:
                serve_metrics(metrics_port, bind_all=self.settings.metrics_bind_all)

        @app.after_shutdown
        async def _stop() -> None:
            await self.publisher.stop()
            await self.redis.aclose()

        return app


def run_periodically(
    app: FastStream, seconds: float, step: Callable[[], Awaitable[object]], what: str
) -> None:
    """Run `step` every `seconds` while `app` runs; an error is logged and the next round retries."""
    log = logging.getLogger(what)
    tasks: list[asyncio.Task] = []

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception:
                log.exception("%s failed; retrying on the next round", what)

    @app.after_startup
    async def _start() -> None:
        tasks.append(asyncio.create_task(loop()))

    @app.on_shutdown
    async def _stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
