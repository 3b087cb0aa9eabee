"""Live updates for open console pages: one Kafka consumer in the API process, started when the
first page subscribes and stopped when the last one leaves, fans the topics' events out to the
pages' server-sent-event streams.

The consumer has no group (nothing to commit, nothing to rebalance) and starts at the end of each
topic: a page wants to hear what happens from now on; what happened before is in what it loaded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer

from shared import topics
from shared.settings import Settings

log = logging.getLogger(__name__)

# What moves a figure or a queue on the console's pages.
LIVE_TOPICS = (
    topics.TICKET_ASSIGNED,
    topics.TICKET_UPDATED,
    topics.SURVEY_ANSWERED,
    topics.APPEAL_CLASSIFIED,  # only those sent to the dispatch desk (needs_review) are passed on
)
QUEUE_SIZE = 100  # per page; a page that stops reading loses the oldest news, not the process memory


class LiveFeed:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pages: set[asyncio.Queue[dict]] = set()
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # the consumer has its partitions and reads from the end

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict]]:
        queue: asyncio.Queue[dict] = asyncio.Queue(QUEUE_SIZE)
        self._pages.add(queue)
        if self._task is None or self._task.done():
            self.ready.clear()
            self._task = asyncio.create_task(self._consume())
        try:
            yield queue
        finally:
            self._pages.discard(queue)
            if not self._pages and self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
                self._task = None

    def _fan_out(self, news: dict) -> None:
        for queue in list(self._pages):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(news)

    async def _consume(self) -> None:
        while self._pages:
            consumer = AIOKafkaConsumer(
                *LIVE_TOPICS,
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                client_id="api-console-live",
                group_id=None,
                auto_offset_reset="latest",
                enable_auto_commit=False,
            )
            try:
                await consumer.start()
                await consumer.seek_to_end()
                for tp in consumer.assignment():
                    await consumer.position(tp)  # resolve "the end" now, before we say we are ready
                self.ready.set()
                async for record in consumer:
                    try:
                        body = json.loads(record.value or b"{}")
                    except ValueError:
                        continue
                    if record.topic == topics.APPEAL_CLASSIFIED and not body.get("needs_review"):
                        continue
                    self._fan_out(
                        {
                            "topic": record.topic,
                            "ticket_no": body.get("ticket_no"),
                            "action": body.get("action"),
                            # Who holds the ticket after the event (`ticket.*` carry it): a
                            # department's page hears of its own tickets without asking the API.
                            "department": (body.get("department") or {}).get("id"),
                        }
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("live feed: the broker could not be read; retrying", exc_info=True)
                await asyncio.sleep(2)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
