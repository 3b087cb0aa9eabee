"""Kafka plumbing every service shares: the broker, topic creation, confirmed publishing, dead letters.

Delivery contract (the same on Tansu and on Apache Kafka):
- producers use acks=all; idempotent producers are a setting (Apache Kafka has them, Tansu does not),
  and correctness never depends on them: consumers drop duplicates by `event_id`;
- subscribers take batches of raw bytes and parse them here, so one poison message goes to
  `<topic>.dlq` with its error while the rest of the batch is handled; several consumer groups read
  each topic, and the first group to meet a poison message claims it in Redis, so it is
  dead-lettered once (with the group, partition, offset and error), not once per group;
- offsets are committed after the handler returns; a handler that raises (Redis down, say) is
  nacked, the batch is read again, and idempotent handlers make the repeat harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from itertools import chain
from typing import Any, TypeVar, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import ValidationError
from redis.asyncio import Redis

from shared import topics
from shared.events import Event, Payload, PersonalDataRemoved
from shared.metrics import BATCH_SECONDS, DEAD_LETTERS
from shared.settings import Settings
from shared.store import TicketStore

log = logging.getLogger(__name__)
E = TypeVar("E", bound=Event)

# How long the broker may hold a fetch that found nothing new. The embedded Tansu holds it (nearly)
# the whole time even when a message arrives meanwhile, so this is the latency of a hop that was
# idle; and an idle consumer costs the broker and itself one fetch per wait (19 idle consumers cost
# a quarter of a core at 50 ms, a tenth at 200 ms). So the consumers between a caller's
# acknowledgement and the assignment (the classifier's and the router's) ask every 20 ms (the
# setting KAFKA_CALLERS_PATH_FETCH_WAIT_MS; 500 on Apache Kafka, see `callers_path`), and the
# others (SMS, indexes, records, meetings: nobody waits on them to the half second) every 500 ms:
# at 100 appeals/s that took about a fifth of a core off the broker, the notifier, the intake
# worker, the records worker and PostgreSQL together, against 200 ms. (Apache Kafka answers a held
# fetch once it has `fetch_min_bytes`, so there a long wait costs no latency under load.)
FETCH_MAX_WAIT_MS = 500
# The others also let records gather (up to FETCH_MAX_WAIT_MS) until a fetch brings this many bytes:
# every batch costs a fetch, an offset commit and the handler's round trips whatever its size, and
# at 100 appeals/s they got batches of two to five.
FETCH_MIN_BYTES = 32 * 1024


def callers_path(settings: Settings) -> dict[str, Any]:
    """What the two consumers on the caller's path subscribe with: a fetch answered as soon as there
    is a record (on Apache Kafka; Tansu holds it), asked again after the setting's wait, and
    batches that span at least KAFKA_CALLERS_PATH_LINGER_MS (`next_batch`): every batch costs the
    classifier about 2 ms whatever its size (the model's calls, the produce, the offset commit),
    and at 1,000 appeals/s the batches held a dozen appeals."""
    return {
        "fetch_max_wait_ms": settings.kafka_callers_path_fetch_wait_ms,
        "fetch_min_bytes": 1,
        "linger_ms": settings.kafka_callers_path_linger_ms,
        "max_records": settings.kafka_callers_path_max_records,
    }


def group_session(settings: Settings) -> dict[str, Any]:
    """What every consumer in a group joins with: the session of KAFKA_SESSION_TIMEOUT_MS, and a
    heartbeat every third of it (so that one late heartbeat does not end the session)."""
    timeout = settings.kafka_session_timeout_ms
    return {"session_timeout_ms": timeout, "heartbeat_interval_ms": timeout // 3}


# How long a consumer waits in the client for the next batch before it asks again (it returns as
# soon as records are there).
BATCH_WAIT_MS = 500
# Subscriber defaults for the hot path: batches, commit after success, retry the batch on error.
BATCH_SUBSCRIBER: dict[str, Any] = {
    "batch": True,
    "max_records": 500,
    "batch_timeout_ms": BATCH_WAIT_MS,
    "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
    "fetch_min_bytes": FETCH_MIN_BYTES,
    "auto_offset_reset": "earliest",
    "ack_policy": AckPolicy.NACK_ON_ERROR,
}


def batch_subscriber(broker: KafkaBroker, names: Sequence[str], group: str, **overrides: Any) -> Any:
    """The decorator for a batch handler of the topics `names`, read by one consumer in the consumer
    group `group` (see `group_id`). Replicas of the service join the same groups and share the
    partitions. The handler gets aiokafka's records as they came."""
    options = {"decoder": raw_records, **BATCH_SUBSCRIBER, **overrides}
    linger = options.pop("linger_ms", 0)
    subscriber = broker.subscriber(*names, group_id=group, **options)
    if options["batch"]:
        wait, most = options["batch_timeout_ms"], options["max_records"]
        subscriber.get_msg = partial(next_batch, wait_ms=wait, max_records=most, linger_ms=linger, last=[0.0])
    return subscriber


async def next_batch(
    consumer: AIOKafkaConsumer,
    *,
    wait_ms: int,
    max_records: int,
    linger_ms: int = 0,
    last: list[float] | None = None,
) -> tuple[Any, ...]:
    """The records the consumer has, waiting up to `wait_ms` for the first (the subscriber's loop
    asks again when there were none). FastStream's own loop sleeps `batch_timeout_ms` after every
    empty wait: a record that came in meanwhile waited for the sleep to end, up to 20 ms a hop at the
    default, and an idle consumer woke 25 times a second. Replaces the subscriber's `get_msg`.

    With `linger_ms`, a batch spans at least that long from the start of the one before (`last`
    holds when that was): under load the consumer waits for more rather than take what a fetch of
    a few kilobytes brought; when the records came slowly, the wait for the first was the span."""
    started = time.monotonic()
    batches = await consumer.getmany(timeout_ms=wait_ms, max_records=max_records)
    got = [r for part in batches.values() for r in part]
    if linger_ms and last is not None:
        if got and len(got) < max_records and (rest := last[0] + linger_ms / 1000 - time.monotonic()) > 0:
            await asyncio.sleep(rest)
            more = await consumer.getmany(timeout_ms=0, max_records=max_records - len(got))
            got += chain.from_iterable(more.values())
        last[0] = started
    return tuple(got)


def group_id(service: str, topic: str | None = None) -> str:
    """The consumer group of a service's consumer of `topic` on the caller's path; without a topic,
    of its one consumer of the rest (`subscribe_topics`)."""
    return f"{service}.{topic}" if topic else service


def subscribe(
    broker: KafkaBroker,
    publisher: EventPublisher,
    service: str,
    event: type[E],
    handle: Callable[[list[E]], Awaitable[None]],
    **overrides: Any,
) -> None:
    """Subscribe `handle` to the topic that carries `event`, alone, in a consumer group of its own:
    for a consumer on the caller's path, which nothing else it reads may hold up. The handler gets
    the batch's parsed events; what does not parse goes to the dead-letter topic first, and the
    batch's time is observed under the service's name."""

    async def events(batch: list[tuple[str, Event]]) -> None:
        await handle(cast(list[E], [e for _, e in batch]))  # all parsed as `event`

    _subscribe(
        broker, publisher, service, {event.topic: event}, group_id(service, event.topic), events, **overrides
    )


def subscribe_topics(
    broker: KafkaBroker,
    publisher: EventPublisher,
    service: str,
    models: Mapping[str, type[Event]],
    handle: Callable[[list[tuple[str, Event]]], Awaitable[None]],
    **overrides: Any,
) -> None:
    """Subscribe `handle` to several topics with one consumer, in the consumer group named after the
    service: for what is off the caller's path. Each consumer costs the broker a fetch per wait and
    an offset commit per batch whatever it brings, and an idle one still asks; one consumer for a
    worker's seven topics asks once. The handler gets the batch's events that parsed, each with its
    topic, in the order read per partition; what does not parse goes to its topic's dead-letter
    topic."""
    _subscribe(broker, publisher, service, models, group_id(service), handle, **overrides)


def subscribe_payloads(
    broker: KafkaBroker,
    publisher: EventPublisher,
    service: str,
    models: Mapping[str, type[Event]],
    handle: Callable[[list[tuple[str, dict[str, Any]]]], Awaitable[None]],
    **overrides: Any,
) -> None:
    """`subscribe_topics` for a handler that reads each event as the JSON object it was published
    as, not as its class (the records worker stores and folds the objects): it gets each message's
    object as orjson reads it, with its topic. Every message is still held to its topic's model,
    and what fails goes to the dead-letter topic as with `subscribe_topics` (`_read_indexed`)."""
    _subscribe(broker, publisher, service, models, group_id(service), handle, read=_read_indexed, **overrides)


def _subscribe(
    broker: KafkaBroker,
    publisher: EventPublisher,
    service: str,
    models: Mapping[str, type[Event]],
    group: str,
    handle: Callable[[list[tuple[str, Any]]], Awaitable[None]],
    *,
    read: Reader | None = None,
    **overrides: Any,
) -> None:
    @batch_subscriber(broker, list(models), group, **{**group_session(publisher.settings), **overrides})
    async def consume(records: Any) -> None:  # Any: FastStream passes the records on unvalidated
        started = time.perf_counter()
        by_topic: dict[str, list[ConsumerRecord]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(r)
        parsed: list[tuple[str, Any]] = []
        for topic, part in by_topic.items():
            events = await _read_or_dead_letter(
                read or _parse_indexed,
                publisher,
                models[topic],
                topic,
                [r.value or b"" for r in part],
                service,
                positions=[(r.partition, r.offset, r.timestamp) for r in part],
                group=group,
            )
            parsed += [(topic, e) for e in events]
        await handle(parsed)
        BATCH_SECONDS.labels(consumer=service).observe(time.perf_counter() - started)


def subscribe_each(
    broker: KafkaBroker,
    publisher: EventPublisher,
    service: str,
    handlers: Mapping[type[Event], Callable[[list[Any]], Awaitable[None]]],
    **overrides: Any,
) -> None:
    """`subscribe_topics` with a handler per event class (`by_event_class`). A handler that raises
    has the whole batch read again, so the others see theirs again too: every handler drops what it
    has done."""
    models = {m.topic: m for m in handlers}
    subscribe_topics(broker, publisher, service, models, by_event_class(handlers), **overrides)


def by_event_class(
    handlers: Mapping[type[Event], Callable[[list[Any]], Awaitable[None]]],
) -> Callable[[list[tuple[str, Event]]], Awaitable[None]]:
    """A handler of mixed batches that gives each class's handler its events, in the order read,
    one handler after the other in the order the mapping gives (the pipeline's); a handler with
    nothing in the batch is not called."""

    async def handle(batch: list[tuple[str, Event]]) -> None:
        split: dict[str, list[Event]] = {}
        for topic, event in batch:
            split.setdefault(topic, []).append(event)
        for model, each in handlers.items():
            if events := split.get(model.topic):
                await each(events)

    return handle


async def raw_records(message: Any) -> Any:
    """Decoder that hands the handler aiokafka's records (value, partition, offset, timestamp)."""
    return list(message.raw_message)


class ServiceBroker(KafkaBroker):
    """FastStream's broker, with its subscribers started together.

    FastStream starts them one after the other, and aiokafka's `start` of a group member returns
    only once the group has given it partitions: a join takes a few seconds (the broker's initial
    rebalance delay: on the embedded broker about half of KAFKA_SESSION_TIMEOUT_MS, 5 s by default;
    3 s by default on Apache Kafka), so a worker with five topics took 25 s to start, and again after
    each restart. Each subscriber has a consumer and a group of its own, so their joins do not
    depend on each other."""

    async def start(self) -> None:
        await self.connect()
        await asyncio.gather(*(sub.start() for sub in self.subscribers))
        for pub in self.publishers:
            await pub.start()
        self.running = True


def compression(settings: Settings) -> str | None:
    """The producers' codec (KAFKA_COMPRESSION), as aiokafka names it (None: uncompressed)."""
    return None if settings.kafka_compression == "none" else settings.kafka_compression


# LZ4's fast mode for the producers' batches. aiokafka compresses lz4 at level 9, LZ4's
# high-compression mode, and takes no level from its caller: on a batch of the demo corpus's
# appeals (JSON with Chinese text) that mode ran at 230 MB/s against 3,000 in the fast mode, for a
# batch a tenth smaller. Every event is compressed once, by the process that publishes it, on the
# caller's path; the broker stores the batch as it came (Apache Kafka recompresses only a topic
# whose own compression.type differs), and decompressing costs the same either way. Set through
# the function's default because aiokafka's compiled record builder calls that very function.
LZ4_LEVEL = 0


def _fast_lz4() -> None:
    from aiokafka import codec

    codec.lz4_encode.__defaults__ = (LZ4_LEVEL,)


_fast_lz4()


_BY_KEY = DefaultPartitioner()


def partition_of(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """The partition of a record: aiokafka's own choice (the murmur2 hash of the key, as the Java
    client hashes it, so every producer of a ticket's events agrees), but not worked out for a
    topic of one partition, the embedded default's: the hash is Python, about 2 µs a record, and
    every event a worker publishes took it for nothing."""
    if len(all_partitions) == 1:
        return all_partitions[0]
    return int(_BY_KEY(key, all_partitions, available))


def make_broker(settings: Settings, *, app_name: str, registry: CollectorRegistry = REGISTRY) -> KafkaBroker:
    """The FastStream broker for a service's subscribers (publishing goes through EventPublisher)."""
    return ServiceBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"appeals-{app_name}",
        middlewares=[KafkaPrometheusMiddleware(registry=registry, app_name=app_name)],
        log_level=logging.DEBUG,  # FastStream logs every message at this level: keep it off INFO
    )


class EventPublisher:
    """Publishes events straight through aiokafka, keyed by ticket number so that one ticket's events
    stay in order. FastStream's per-message publish path (middlewares, message objects) costs more
    than a routing decision; consumers stay on FastStream."""

    def __init__(self, settings: Settings, *, client_id: str, linger_ms: int = 2) -> None:
        self.settings = settings
        self.client_id = f"appeals-{client_id}"
        self.linger_ms = linger_ms  # lets concurrent publishes share a request
        self._producer: AIOKafkaProducer | None = None
        # Where consumers claim poison messages, so that one group dead-letters each (None: every
        # group does, as a process without Redis must).
        self.claims: Redis | None = None

    async def start(self) -> None:
        # Created here: aiokafka wants the event loop that will run it.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=self.settings.kafka_enable_idempotence,
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
            compression_type=compression(self.settings),
            partitioner=partition_of,
            client_id=self.client_id,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def check(self) -> None:
        """Raise unless the broker answers a metadata request (readiness of a process that publishes)."""
        if self._producer is None:
            raise RuntimeError("EventPublisher.start() was not called")
        await self._producer.client.fetch_all_metadata()

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
        """Queue one record; the returned future resolves when the broker acknowledged it."""
        if self._producer is None:
            raise RuntimeError("EventPublisher.start() was not called")
        return await self._producer.send(topic, value, key=key)

    async def send_many(self, records: Sequence[tuple[str, bytes, bytes]]) -> list[asyncio.Future]:
        """Queue (topic, value, key) records, in order within each partition; the futures resolve
        when the broker acknowledged them all. The records of one partition go as one batch of
        their own: aiokafka's `send` makes a future and a callback for every record, 13 µs a record
        against 5 for a batch. A record alone in its partition goes through `send`, which joins the
        batch that other callers (the API's requests) may have lingering there; a batch of our own
        would wait for that one to leave first."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("EventPublisher.start() was not called")
        partitions: dict[str, list[int]] = {}
        groups: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        for topic, value, key in records:
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await producer.partitions_for(topic))
            groups.setdefault((topic, partition_of(key, known, known)), []).append((key, value))
        pending: list[asyncio.Future] = []
        for (topic, partition), group in groups.items():
            if len(group) == 1:
                key, value = group[0]
                pending.append(await producer.send(topic, value, key=key, partition=partition))
                continue
            batch = producer.create_batch()
            for key, value in group:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)  # a first record always fits
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        return pending


async def ensure_topics(settings: Settings, names: Iterable[str] = topics.ALL_TOPICS) -> list[str]:
    """Create the topics that do not exist yet (Apache Kafka may have auto-creation off, and a broker
    that restarted empty has none), with the retention of KAFKA_RETENTION_HOURS; a topic that exists
    keeps its own. Returns the names that were missing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        retention = {"retention.ms": str(int(settings.kafka_retention_hours * 3_600_000))}
        missing = [
            NewTopic(
                n, settings.kafka_topic_partitions, settings.kafka_replication_factor, topic_configs=retention
            )
            for n in names
            if n not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created them first
                await admin.create_topics(missing)
    finally:
        await admin.close()
    return [t.name for t in missing]


async def read_topics(bootstrap: str, names: Sequence[str]) -> dict[str, list[ConsumerRecord]]:
    """Every record of the topics from the beginning to (at least) their end when called, in offset
    order per partition, without joining a consumer group (so no group's offsets move). A topic that
    does not exist reads as empty."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: dict[str, list[ConsumerRecord]] = {n: [] for n in names}
    try:
        parts = await _partitions(consumer, names)
        if not parts:
            return out
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        await _read_to(consumer, parts, end, out)
        # Tansu answers a partition's end offset with its last batch's first offset + 1, so the rest
        # of that batch lies beyond it; the high watermark every fetch answer carries is exact.
        await _read_to(consumer, parts, {tp: max(end[tp], consumer.highwater(tp) or 0) for tp in parts}, out)
    finally:
        await consumer.stop()
    return out


async def _partitions(consumer: AIOKafkaConsumer, names: Sequence[str]) -> list[TopicPartition]:
    """Every partition of those of these topics that exist."""
    available = await consumer.topics()
    return [
        TopicPartition(t, p)
        for t in names
        if t in available
        for p in sorted(consumer.partitions_for_topic(t) or ())
    ]


async def ends_of(bootstrap: str, names: Sequence[str]) -> dict[TopicPartition, int]:
    """One past the last record of every partition of these topics (those that exist). Tansu
    answers `end_offsets` with the last batch's first offset + 1, so that last batch is read once
    here: the high watermark a fetch answer carries is exact."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        parts = await _partitions(consumer, names)
        if not parts:
            return {}
        consumer.assign(parts)
        end = await consumer.end_offsets(parts)
        filled = [tp for tp in parts if end[tp] > 0]
        for tp in filled:
            consumer.seek(tp, end[tp] - 1)
        while any(consumer.highwater(tp) is None for tp in filled):
            await consumer.getmany(*filled, timeout_ms=200, max_records=1)
        return {tp: max(end[tp], consumer.highwater(tp) or 0) for tp in parts}
    finally:
        await consumer.stop()


async def _read_to(
    consumer: AIOKafkaConsumer,
    parts: Sequence[TopicPartition],
    end: dict[TopicPartition, int],
    out: dict[str, list[ConsumerRecord]],
) -> None:
    """Read the assigned partitions on until each has reached its offset in `end`."""

    async def behind() -> bool:
        return any([await consumer.position(tp) < end[tp] for tp in parts])

    while await behind():
        for tp, records in (await consumer.getmany(*parts, timeout_ms=500, max_records=5000)).items():
            out[tp.topic].extend(records)


async def publish(publisher: EventPublisher, events: Sequence[Event], topic: str | None = None) -> None:
    """Publish events and wait until the broker has acknowledged every one of them (acks=all).
    Raises if any was not acknowledged."""
    if not events:
        return
    records = [(topic or e.topic, e.to_bytes(), e.ticket_no.encode()) for e in events]
    await asyncio.gather(*await publisher.send_many(records))


def parse_batch(model: type[E], bodies: Sequence[bytes]) -> tuple[list[E], list[tuple[bytes, str]]]:
    """Split raw message bodies into parsed events and (body, error) pairs that could not be parsed."""
    good, bad = _parse_indexed(model, bodies)
    return good, [(body, error) for _, body, error in bad]


def read_batch(
    model: type[Event], bodies: Sequence[bytes]
) -> tuple[list[dict[str, Any]], list[tuple[bytes, str]]]:
    """`parse_batch` for a reader of the JSON objects (`subscribe_payloads`): the bodies that parse
    as `model`, each as orjson reads it, and the (body, error) pairs `parse_batch` gives."""
    good, bad = _read_indexed(model, bodies)
    return good, [(body, error) for _, body, error in bad]


# Reads a batch's bodies as a model: what passed, and (index, body, error) of what did not.
Reader = Callable[[type[Event], Sequence[bytes]], tuple[list[Any], list[tuple[int, bytes, str]]]]


def _parse_indexed(model: type[E], bodies: Sequence[bytes]) -> tuple[list[E], list[tuple[int, bytes, str]]]:
    good: list[E] = []
    bad: list[tuple[int, bytes, str]] = []
    for i, body in enumerate(bodies):
        try:
            good.append(model.from_json(body))
        except ValidationError as e:
            bad.append((i, body, _short_error(e)))
    return good, bad


def _read_indexed(
    model: type[Event], bodies: Sequence[bytes]
) -> tuple[list[dict[str, Any]], list[tuple[int, bytes, str]]]:
    """`_parse_indexed`, but what passes is the body's JSON object as orjson reads it, with the
    body (`Payload`), and the JSON is read once: the model checks orjson's object (pydantic on
    Python objects takes and refuses, for what JSON holds, what it does on the text) and is
    dropped. Parsing the text and reading it again with orjson was over a quarter of the records
    worker's CPU, and the models it kept a batch long caused half its garbage collections, some of
    the whole heap. A body refused here is read again as `_parse_indexed` reads it: the verdict and
    the error's words are every other consumer's (the first group to meet a poison message writes
    them)."""
    check = model.model_validate
    good: list[dict[str, Any]] = []
    bad: list[tuple[int, bytes, str]] = []
    for i, body in enumerate(bodies):
        if body[:1] == b"{":  # else `Event.from_json` kept not the body but the model's own JSON
            try:
                data = orjson.loads(body)
                if type(data) is dict:
                    check(data)
                    good.append(Payload(data, body))
                    continue
            except (orjson.JSONDecodeError, ValidationError):
                pass
        try:
            event = model.from_json(body)
        except ValidationError as e:
            bad.append((i, body, _short_error(e)))
            continue
        try:
            good.append(Payload(orjson.loads(event.json_bytes), event.json_bytes))
        except orjson.JSONDecodeError:
            # An event to pydantic, but not JSON (NaN, Infinity): the record cannot store it, and
            # raising would stop the worker on it at every retry. Dead-lettered, by this group.
            bad.append((i, body, "message: not JSON the record can store (NaN or Infinity)"))
    return good, bad


def _short_error(e: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, err['loc'])) or 'message'}: {err['msg']}" for err in e.errors()[:5]]
    return "; ".join(parts)


# A claim outlives any consumer group's lag; a replayed message gets a new offset (and a new claim).
DEAD_LETTER_CLAIM_SECONDS = 7 * 86400
# (partition, offset, timestamp in ms) of a record, when the subscriber knows it.
Position = tuple[int, int, int]


def dead_letter_key(topic: str, body: bytes, position: Position | None) -> str:
    """What identifies one poison message across consumer groups: its place in the topic (with the
    record's timestamp, since a broker that restarted empty numbers offsets from 0 again), else, for
    subscribers that see only bodies, a hash of the bytes."""
    if position is not None:
        partition, offset, timestamp = position
        return f"{topic}:{partition}:{offset}:{timestamp}"
    return f"{topic}:sha256:{hashlib.sha256(body).hexdigest()}"


def claim_key(key: str) -> str:
    return f"dlq:claim:{key}"


async def dead_letter(
    publisher: EventPublisher,
    topic: str,
    failures: Sequence[tuple[bytes, str]],
    consumer: str,
    *,
    positions: Sequence[Position | None] | None = None,
    group: str | None = None,
) -> None:
    """Send messages that cannot be handled to `<topic>.dlq`, with the cause, the consumer group and
    the offset, and count them. With `publisher.claims` (Redis), only the first group to meet a
    message sends it; the others (and a redelivery to the same group) skip it."""
    if not failures:
        return
    dlq = topics.dlq(topic)
    group = group or group_id(consumer, topic)
    claimed: list[str] = []
    pending = []
    try:
        for i, (body, error) in enumerate(failures):
            position = positions[i] if positions else None
            key = dead_letter_key(topic, body, position)
            if publisher.claims is not None:
                if not await publisher.claims.set(
                    claim_key(key), group, nx=True, ex=DEAD_LETTER_CLAIM_SECONDS
                ):
                    continue  # another group (or an earlier delivery) dead-lettered it
                claimed.append(key)
            record = {
                "topic": topic,
                "partition": position[0] if position else None,
                "offset": position[1] if position else None,
                "consumer": consumer,
                "group": group,
                "error": error,
                "body": body.decode("utf-8", errors="replace"),
            }
            pending.append(
                await publisher.send(dlq, json.dumps(record, ensure_ascii=False).encode(), key.encode())
            )
        await asyncio.gather(*pending)
    except BaseException:
        # Not confirmed: let the next delivery (to this group or another) claim them again.
        if claimed and publisher.claims is not None:
            with contextlib.suppress(Exception):
                await publisher.claims.delete(*(claim_key(k) for k in claimed))
        raise
    if pending:
        DEAD_LETTERS.labels(topic=topic, consumer=consumer).inc(len(pending))
        log.warning("%d message(s) from %s sent to %s: %s", len(pending), topic, dlq, failures[0][1])


async def parse_or_dead_letter(
    publisher: EventPublisher,
    model: type[E],
    topic: str,
    bodies: Sequence[bytes],
    consumer: str,
    *,
    positions: Sequence[Position] | None = None,
    group: str | None = None,
) -> list[E]:
    """Parse a batch; whatever does not parse goes to the dead-letter topic. Returns what parsed."""
    return await _read_or_dead_letter(
        _parse_indexed, publisher, model, topic, bodies, consumer, positions=positions, group=group
    )


async def _read_or_dead_letter(
    read: Reader,
    publisher: EventPublisher,
    model: type[Event],
    topic: str,
    bodies: Sequence[bytes],
    consumer: str,
    *,
    positions: Sequence[Position] | None = None,
    group: str | None = None,
) -> list[Any]:
    good, bad = read(model, bodies)
    if bad:
        await dead_letter(
            publisher,
            topic,
            [(body, error) for _, body, error in bad],
            consumer,
            positions=[positions[i] for i, _, _ in bad] if positions else None,
            group=group,
        )
    return good


async def relay_outbox(publisher: EventPublisher, store: TicketStore, older_than_seconds: float = 10) -> int:
    """Publish outbox events whose writer died before confirming them, and the erasures'
    `PersonalDataRemoved` facts, which are written only to the outbox (the erasure runs in the API
    or the CLI, with no publisher): this relay is their one way out. Returns how many of the first
    (a writer that died is worth a warning; an erasure's notice is the relay's ordinary work)."""
    due = await store.due_outbox(older_than_seconds)
    if not due:
        return 0
    events: list[Event] = []
    for entry, (topic, record) in due.items():
        try:
            events.append(topics.EVENT_TYPES[topic].model_validate(record))
        except ValidationError:
            # A record scrubbed by an erasure keeps its shape, but a located event's place is all
            # it carries and cannot be blanked: dropped, or it would hold up every relay after it.
            # (An erasure notice not sent yet is never scrubbed: `TicketStore.remove_personal_data`
            # keeps it for this relay.)
            log.warning("outbox event %s no longer parses (erased?): not relayed", entry.replace("\t", " "))
    await publish(publisher, events)
    await store.remove_outbox_entries(list(due))
    # An erasure's notice kept the caller's hash in its ticket's history only to be sent: sent, it
    # is scrubbed like the rest of that history (a few erasures, not every relay, pay for this).
    notices = list(dict.fromkeys(e.ticket_no for e in events if isinstance(e, PersonalDataRemoved)))
    for no in notices:
        await store.remove_personal_data(no)
    if notices:
        log.info("published the erasure notices of %d ticket(s)", len(notices))
    return sum(not isinstance(e, PersonalDataRemoved) for e in events)
