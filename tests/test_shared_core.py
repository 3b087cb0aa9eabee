"""The shared core: personal-data helpers, derived event ids, the store's outbox on a real Redis
and broker (an event whose writer died before publishing is published by the relay), and erasure
(an erased ticket stays without personal data whatever is written onto it later)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from datetime import UTC, datetime
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.codec import has_lz4
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, ValidationError

from shared import topics
from shared.bus import (
    BATCH_SUBSCRIBER,
    BATCH_WAIT_MS,
    FETCH_MAX_WAIT_MS,
    EventPublisher,
    batch_subscriber,
    by_event_class,
    compression,
    ensure_topics,
    group_id,
    group_session,
    next_batch,
    parse_batch,
    partition_of,
    read_batch,
    relay_outbox,
)
from shared.events import (
    Answer,
    AppealClassified,
    AppealLocated,
    AppealPhotosAdded,
    AppealReceived,
    Caller,
    DepartmentRef,
    Event,
    Extension,
    GeoPoint,
    GridMatch,
    MeetingConvened,
    MeetingUpdated,
    Part,
    Payload,
    PersonalDataRemoved,
    Place,
    PlaceRequest,
    Returned,
    SurveyAnswered,
    SurveySent,
    TicketAssigned,
    TicketUpdated,
    View,
    derived_id,
    new_id,
)
from shared.privacy import (
    REMOVED,
    InvalidPhone,
    caller_id,
    mask_name,
    mask_phone,
    may_carry_personal_data,
    normalize_phone,
    scrub_event,
    scrub_ticket,
)
from shared.settings import Settings, get_settings
from shared.store import (
    Change,
    Decision,
    Outcome,
    TicketStore,
    _Batch,
    _scrubbed_record,
    event_record,
    history_records,
    record_appeal,
    ticket_json,
    ticket_key,
)
from shared.tickets import Ticket


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13812345678", "13812345678"),
        ("+86 138-1234-5678", "13812345678"),
        ("１３８１２３４５６７８", "13812345678"),
        ("010-62345678", "010-62345678"),
        ("(0755)83456789", "0755-83456789"),
        ("02112345678", "021-12345678"),
    ],
)
def test_phones_are_normalised(raw, expected):
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize("raw", ["12345", "23812345678", "1381234567", "abc", "", "0101234"])
def test_bad_phones_are_refused_in_chinese(raw):
    with pytest.raises(InvalidPhone, match="不是有效的"):
        normalize_phone(raw)


def test_masks_and_caller_ids():
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("010-62345678") == "010-****5678"
    assert mask_name("张三") == "张*"
    assert mask_name("欧阳娜娜") == "欧***"
    assert caller_id("13812345678") == caller_id("13812345678") != caller_id("13812345679")
    assert "13812345678" not in caller_id("13812345678")


def test_the_producers_compress_with_lz4_unless_told_otherwise():
    # lz4 needs cramjam (aiokafka's `lz4` extra): without it a producer refuses to start.
    assert Settings.model_fields["kafka_compression"].default == "lz4"
    assert has_lz4()
    assert compression(Settings(kafka_compression="lz4")) == "lz4"
    assert compression(Settings(kafka_compression="none")) is None
    with pytest.raises(ValidationError):
        Settings(kafka_compression="brotli")


def test_the_producers_batches_take_lz4_s_fast_mode_and_read_back_whole():
    # aiokafka's compiled record builder, which the producer uses, with what shared.bus set: the
    # fast mode leaves these events' batches larger than the high-compression mode would (which
    # finds the longer matches of the repeated JSON and text), and they still read back as written.
    from aiokafka import codec
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords

    text = "号楼前的路灯坏了一周了，晚上很黑"
    values = [
        AppealReceived(ticket_no=f"20261123-{i:06d}", channel="hotline", text=f"{i}{text}").to_bytes()
        for i in range(200)
    ]

    def batch() -> bytes:
        b = DefaultRecordBatchBuilder(
            magic=2, compression_type=3, is_transactional=0, producer_id=-1, producer_epoch=-1,
            base_sequence=-1, batch_size=1 << 20,
        )  # fmt: skip
        for i, v in enumerate(values):
            b.append(i, timestamp=None, key=None, value=v, headers=[])
        return bytes(b.build())

    fast = batch()
    kept = codec.lz4_encode.__defaults__
    codec.lz4_encode.__defaults__ = (9,)
    try:
        high = batch()
    finally:
        codec.lz4_encode.__defaults__ = kept
    assert kept == (0,)
    assert len(fast) > len(high)
    records = MemoryRecords(fast).next_batch()
    assert [r.value for r in records] == values


def test_a_ticket_s_events_go_to_the_partition_its_key_hashes_to():
    # With several partitions, the Java client's choice (murmur2 of the key), which every producer
    # of the ticket's events shares; with one, that one, without hashing. The expected partitions
    # are what aiokafka's default partitioner picks for the same keys.
    from aiokafka.partitioner import DefaultPartitioner, murmur2

    keys = [f"20261123-{i:06d}".encode() for i in range(200)]
    six = [0, 1, 2, 3, 4, 5]
    picked = [partition_of(k, six, six) for k in keys]
    assert picked == [DefaultPartitioner()(k, six, six) for k in keys]
    assert picked == [(murmur2(k) & 0x7FFFFFFF) % 6 for k in keys]
    assert len(set(picked)) == 6
    assert partition_of(keys[0], six, [2]) == picked[0]  # by key, not by who is available
    assert {partition_of(k, [3], [3]) for k in keys} == {3}
    assert partition_of(None, [3], []) == 3


def test_an_event_caused_by_another_has_a_stable_derived_id():
    appeal = AppealReceived(ticket_no="20261123-000001", channel="hotline", text="路灯坏了一周了")
    a = TicketUpdated.caused(appeal, action="accepted", status="accepted", actor="d1", on_time=True)
    b = TicketUpdated.caused(appeal, action="accepted", status="accepted", actor="d1", on_time=True)
    assert a.event_id == b.event_id != appeal.event_id
    assert a.caused_by == appeal.event_id
    assert a.ticket_no == appeal.ticket_no
    assert AppealReceived.model_validate_json(appeal.to_bytes()) == appeal
    # The ids earlier versions derived (uuid5 of the URL namespace): a cause read again after an
    # upgrade still yields the same event, which consumers then drop as a repeat.
    assert a.event_id == uuid.uuid5(uuid.NAMESPACE_URL, f"{appeal.event_id}/TicketUpdated").hex
    for name in ("", "timer/x", "路灯/1", "a" * 200):
        assert derived_id(name) == uuid.uuid5(uuid.NAMESPACE_URL, name).hex
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_an_event_is_serialised_once_and_a_copy_is_serialised_afresh():
    appeal = AppealReceived(ticket_no="20261123-000001", channel="hotline", text="路灯坏了一周了")
    assert appeal.json_bytes is appeal.json_bytes  # made once, for the history and for Kafka
    assert appeal.to_bytes() == appeal.model_dump_json().encode()
    assert "json_bytes" not in appeal.model_dump()
    changed = appeal.model_copy(update={"text": "井盖丢了"})
    assert json.loads(changed.to_bytes())["text"] == "井盖丢了"
    assert AppealReceived.model_validate_json(appeal.to_bytes()) == appeal


def test_a_ticket_update_carries_exactly_the_payload_its_action_names():
    base = {"ticket_no": "20261123-000001", "status": "accepted", "actor": "d1"}
    assert TicketUpdated(action="accepted", on_time=True, **base).on_time is True
    notice = {"stage": "resolve", "stage_name": "办结", "deadline": "2026-11-23T08:00:00Z"}
    assert TicketUpdated(action="escalated", supervision=notice, **base).supervision is not None
    with pytest.raises(ValidationError, match="accepted carries exactly one of"):
        TicketUpdated(action="accepted", **base)  # none
    with pytest.raises(ValidationError, match="accepted carries exactly one of"):
        TicketUpdated(action="accepted", on_time=True, survey_id="s1", **base)  # one too many
    with pytest.raises(ValidationError, match="surveyed carries exactly one of"):
        TicketUpdated(action="surveyed", on_time=True, **base)  # another action's


def test_a_placement_carries_its_place_and_an_update_of_the_version_before_still_parses():
    """事发网格 (version 3): `placed` carries the place, and the event's grid is that place (intake's
    index reads `grid` alone). An update written by version 2 parses as it did, and the views read
    it (a consumer of the older version keeps working)."""
    from services.intake.app import UpdateOf

    base = {"ticket_no": "20261123-000001", "status": "accepted", "actor": "dispatch_desk"}
    place = Place(grid="s02c01g02", community="s02c01", street="s02", was=None)
    placed = TicketUpdated(action="placed", grid="s02c01g02", place=place, **base)
    assert (placed.version, placed.place) == (5, place)
    assert TicketUpdated.from_json(placed.to_bytes()) == placed
    with pytest.raises(ValidationError, match="placed carries exactly one of"):
        TicketUpdated(action="placed", grid="s02c01g02", **base)  # no place
    with pytest.raises(ValidationError, match="accepted carries exactly one of"):
        TicketUpdated(action="accepted", on_time=True, grid="s02c01g02", place=place, **base)
    with pytest.raises(ValidationError, match="carries grid s01c01g01"):
        TicketUpdated(action="placed", grid="s01c01g01", place=place, **base)  # two places
    older = {**base, "action": "accepted", "on_time": True, "version": 2, "event_id": "e2"}
    older |= {"occurred_at": "2026-11-23T02:00:00Z", "grid": "s01c01g01"}
    parsed = TicketUpdated.model_validate_json(json.dumps(older))
    assert (parsed.version, parsed.place, parsed.grid) == (2, None, "s01c01g01")
    view = UpdateOf.from_json(json.dumps(older).encode())
    assert (view.version, view.action, view.grid) == (2, "accepted", "s01c01g01")


def test_a_place_request_carries_its_grid_and_keeps_the_tickets_grid_and_older_views_read_it():
    """申请更正事发网格 (version 4): `place_requested` / `place_refused` carry the grid asked for; the
    event's own grid stays the ticket's (nothing moved). The views of the version before read it."""
    from services.intake.app import UpdateOf
    from services.router.service import Escalation

    base = {"ticket_no": "20261123-000001", "status": "accepted", "actor": "W017", "grid": "s01c01g01"}
    asked = PlaceRequest(grid="s02c01g02", was="s01c01g01", reason="路灯实际在对面小区门口", by="W017")
    for action in ("place_requested", "place_refused"):
        event = TicketUpdated(action=action, place_request=asked, **base)
        assert (event.version, event.grid, event.place_request) == (5, "s01c01g01", asked)
        assert TicketUpdated.from_json(event.to_bytes()) == event
        assert UpdateOf.from_json(event.to_bytes()).grid == "s01c01g01"  # intake's index: no move
        assert Escalation.from_json(event.to_bytes()).meeting is None
        with pytest.raises(ValidationError, match=f"{action} carries exactly one of"):
            TicketUpdated(action=action, **base)


def foreign_or_id(raw: bytes | None) -> str | None:
    """The event id of a message on a topic other tests share; None for the poison messages the
    dead-letter tests leave there."""
    try:
        message = json.loads(raw or b"")
    except ValueError:
        return None
    return message.get("event_id") if isinstance(message, dict) else None


class RecordsByPartition:
    """Stands for aiokafka's consumer: each `getmany` gives the next reply (records by partition)."""

    def __init__(self, *replies: dict[str, list[int]]) -> None:
        self.replies = list(replies)
        self.asked: list[tuple[int, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[str, list[int]]:
        self.asked.append((timeout_ms, max_records))
        return self.replies.pop(0)


async def test_a_batch_consumer_waits_in_the_client_for_records_of_every_partition():
    subscriber = batch_subscriber(KafkaBroker("localhost:9"), ["some.topic"], "svc.some.topic")
    assert subscriber.get_msg.func is next_batch  # not FastStream's, which sleeps after an empty wait
    consumer = RecordsByPartition({}, {"p0": [1, 2], "p1": [3]})
    assert await subscriber.get_msg(consumer) == ()
    assert await subscriber.get_msg(consumer) == (1, 2, 3)
    assert consumer.asked == [(BATCH_WAIT_MS, 500), (BATCH_WAIT_MS, 500)]


async def test_a_lingering_consumer_takes_what_came_until_its_batch_spans_the_linger():
    """Under load a batch spans the linger from the start of the one before, so a ticket's events
    of several stages come together; a first wait that took the linger already adds nothing."""
    subscriber = batch_subscriber(
        KafkaBroker("localhost:9"), ["some.topic"], "records", linger_ms=200, max_records=10
    )
    consumer = RecordsByPartition({"p0": [1]}, {"p0": [2], "p1": [3]}, {"p0": [4]}, {"p1": [5]})
    started = time.monotonic()
    assert await subscriber.get_msg(consumer) == (1,)  # the first batch: nothing to span yet
    assert await subscriber.get_msg(consumer) == (2, 3, 4)  # lingered, then took what was there
    assert time.monotonic() - started >= 0.2
    assert consumer.asked[1:] == [(BATCH_WAIT_MS, 10), (0, 8)]
    await asyncio.sleep(0.25)  # as a fetch held by the broker for lack of records
    assert await subscriber.get_msg(consumer) == (5,)
    assert len(consumer.asked) == 4


async def test_a_mixed_batch_reaches_each_event_classs_handler_in_pipeline_order():
    calls: list[tuple[str, list[str]]] = []

    def recorder(name: str):
        async def handle(events: list) -> None:
            calls.append((name, [e.ticket_no for e in events]))

        return handle

    handle = by_event_class(
        {
            AppealReceived: recorder("received"),
            TicketUpdated: recorder("updated"),
            SurveyAnswered: recorder("answered"),
        }
    )
    base = {"status": "accepted", "actor": "d1", "action": "accepted", "on_time": True}
    batch = [
        (topics.TICKET_UPDATED, TicketUpdated(ticket_no="T2", **base)),
        (topics.APPEAL_RECEIVED, AppealReceived(ticket_no="T1", channel="hotline", text="路灯坏了")),
        (topics.TICKET_UPDATED, TicketUpdated(ticket_no="T3", **base)),
    ]
    await handle(batch)
    assert calls == [("received", ["T1"]), ("updated", ["T2", "T3"])]  # nothing for the survey


def _read_as_parsed(model: type[Event], bodies: list[bytes]) -> tuple[list[dict], list[tuple[bytes, str]]]:
    events, bad = parse_batch(model, bodies)
    return [orjson.loads(e.json_bytes) for e in events], bad


def test_a_batch_read_as_json_objects_keeps_and_refuses_what_parsing_it_does():
    """The records worker reads its events as JSON objects (`read_batch`), checked against their
    models on the object orjson made rather than on the text: the same events pass, each as the
    object the parsed event's JSON is, and the same messages are refused with the same error."""
    t0 = datetime(2026, 11, 23, 8, tzinfo=UTC)
    appeal = AppealReceived(ticket_no="T1", channel="hotline", text="路灯坏了", occurred_at=t0)
    ref = DepartmentRef(id="d1", name="城管委")
    samples: list[Event] = [
        appeal,
        AppealClassified(
            ticket_no="T1",
            appeal=appeal,
            category="c1",
            category_names=("城市管理", "路灯"),
            confidence=0.9,
            top=(),
            grid=GridMatch(grid="g1"),
            model_version="m",
        ),
        AppealLocated(ticket_no="T1", channel="wechat", location=GeoPoint(lng=116.4, lat=39.9)),
        AppealPhotosAdded(ticket_no="T1", channel="wechat", photos=("p1",)),
        TicketAssigned(
            ticket_no="T1",
            department=ref,
            via="rule",
            explanation="责任清单",
            category="c1",
            grid="g1",
            respond_by=t0,
            resolve_by=t0,
        ),
        TicketUpdated(
            ticket_no="T1", action="closed", status="closed", actor="system", answer=Answer(rating=1)
        ),
        SurveySent(ticket_no="T1", survey_id="s1", masked_phone="138****5678", message_id="m1", text="回访"),
        SurveyAnswered(ticket_no="T1", survey_id="s1", rating=None, text="好"),
        PersonalDataRemoved(ticket_no="T1", caller_id="c1"),
    ]
    assert {e.topic for e in samples} == set(topics.EVENT_TYPES)
    for event in samples:
        model, body = topics.EVENT_TYPES[event.topic], event.to_bytes()
        fields = json.loads(body)
        required = next(n for n, f in model.model_fields.items() if f.is_required() and n != "ticket_no")
        variants = [
            body,
            # Not an object's first byte: the event's own JSON is kept, with its defaults.
            b"  " + json.dumps({k: v for k, v in fields.items() if k != "caused_by"}).encode(),
            json.dumps({**fields, "version": str(fields["version"])}).encode(),  # "3": read as 3
            json.dumps({**fields, "occurred_at": 1_790_000_000}).encode(),  # seconds: a time
            json.dumps({k: v for k, v in fields.items() if k != required}).encode(),
            json.dumps({**fields, "ticket_no": 7}).encode(),
            json.dumps({**fields, "unknown": 1}).encode(),
            json.dumps({**fields, "action": "teleported"}).encode(),
            json.dumps([fields]).encode(),
            b'"T1"',
            body[:-1],
            b"",
        ]
        assert read_batch(model, variants) == _read_as_parsed(model, variants), event.topic
        # Each with the bytes it is (what the record stores rather than dumping it again).
        for read in read_batch(model, variants)[0]:
            assert isinstance(read, Payload), event.topic
            assert orjson.loads(read.body) == read, event.topic
    assert len(read_batch(TicketUpdated, [samples[5].to_bytes()])[0]) == 1
    poison = [json.dumps({**json.loads(samples[5].to_bytes()), "answer": None, "on_time": True}).encode()]
    assert read_batch(TicketUpdated, poison)[1] == parse_batch(TicketUpdated, poison)[1] != []
    # NaN: a number to pydantic, no JSON to orjson or to the record. Refused with a reason (before,
    # it raised on every retry of its batch and stopped the records worker there).
    classified = samples[1].to_bytes()
    nan = classified.replace(b'"confidence":0.9', b'"confidence":NaN')
    assert nan != classified
    assert parse_batch(AppealClassified, [nan])[1] == []
    good, bad = read_batch(AppealClassified, [nan, classified])
    assert (len(good), [(b, "NaN" in e) for b, e in bad]) == (1, [(nan, True)])


def test_the_routers_consumers_fetch_as_their_place_in_the_pipeline_asks():
    """The caller's-path consumer waits as the setting says (500 ms on Apache Kafka, see deploy/)
    and takes batches of the most the setting allows; the router's one consumer of the rest reads
    the survey's two topics at the off-path wait, in batches of the default most; the meetings
    worker reads the ticket updates so."""
    from services.router.app import build_app, build_meetings_app

    settings = get_settings().model_copy(
        update={"kafka_callers_path_fetch_wait_ms": 500, "kafka_callers_path_max_records": 1500}
    )
    subscribers = {s.group_id: s for s in build_app(settings).broker.subscribers}
    assert set(subscribers) == {group_id("router", topics.APPEAL_CLASSIFIED), group_id("router")}
    hot = subscribers[group_id("router", topics.APPEAL_CLASSIFIED)]
    assert (hot._connection_args["fetch_max_wait_ms"], hot._connection_args["fetch_min_bytes"]) == (500, 1)
    assert hot.get_msg.keywords["max_records"] == 1500
    rest = subscribers[group_id("router")]
    assert rest._connection_args["fetch_max_wait_ms"] == FETCH_MAX_WAIT_MS
    assert rest.get_msg.keywords["max_records"] == BATCH_SUBSCRIBER["max_records"]
    assert set(rest.topic_names) == {topics.SURVEY_SENT, topics.SURVEY_ANSWERED}
    [meetings] = build_meetings_app(settings).broker.subscribers
    assert (meetings.group_id, set(meetings.topic_names)) == (group_id("meetings"), {topics.TICKET_UPDATED})
    assert meetings._connection_args["fetch_max_wait_ms"] == FETCH_MAX_WAIT_MS


def test_every_consumer_joins_its_group_with_the_session_the_setting_gives():
    """KAFKA_SESSION_TIMEOUT_MS reaches each of a worker's consumers, with a heartbeat every third."""
    from services.router.app import build_app

    settings = get_settings().model_copy(update={"kafka_session_timeout_ms": 6000})
    subscribers = build_app(settings).broker.subscribers
    assert len(subscribers) == 2  # the caller's path's and the rest's
    for sub in subscribers:
        args = sub._connection_args
        assert (args["session_timeout_ms"], args["heartbeat_interval_ms"]) == (6000, 2000), sub.group_id


async def test_outbox_relay_publishes_what_a_crashed_writer_left(settings, redis):
    """Write a change (ticket + history + outbox) but 'crash' before publishing: the relay
    publishes the event, once, and clears the outbox."""
    store = TicketStore(redis)
    # An outbox of its own: the running router's relay (which takes entries older than ten seconds)
    # would otherwise publish this one before the relay under test, and its own writes would pass
    # through the shared outbox while this test looks at it.
    store.OUTBOX = f"outbox:test-{uuid.uuid4().hex}"
    appeal = AppealReceived(ticket_no="20261123-777001", channel="hotline", text="井盖丢了很危险")
    update = TicketUpdated.caused(appeal, action="accepted", status="accepted", actor="d1", on_time=True)

    def decide(ticket: Ticket | None) -> Outcome:
        created = record_appeal(ticket, appeal)
        return Outcome(created.ticket, publish=[update], record=created.record)

    [(_ticket, published)] = await store.apply_many([Change(appeal.ticket_no, decide)])
    assert published == [update]
    assert [h["topic"] for h in await store.history(appeal.ticket_no)] == [
        "appeal.received",
        "ticket.updated",
    ]

    await ensure_topics(settings)
    consumer = AIOKafkaConsumer(
        topics.TICKET_UPDATED,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id="test-outbox",
        auto_offset_reset="earliest",
        **group_session(settings),  # joins as soon as the workers do
    )
    await consumer.start()
    publisher = EventPublisher(settings, client_id="test")
    await publisher.start()
    try:
        assert (
            await relay_outbox(publisher, store, older_than_seconds=60) == 0
        )  # too fresh: writer may be alive
        assert await relay_outbox(publisher, store, older_than_seconds=0) == 1
        assert await store.due_outbox(0) == {}
        ids = []
        deadline = time.monotonic() + 60  # the group's first assignment takes a while on a busy machine
        while update.event_id not in ids and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids += [foreign_or_id(r.value) for r in records]
        assert ids.count(update.event_id) == 1
    finally:
        await consumer.stop()
        await publisher.stop()


async def test_a_batch_of_records_keeps_each_tickets_order_and_partition(settings):
    """`send_many` puts the records of a partition into batches of its own, splitting one that
    outgrows the producer's batch: each ticket's records still arrive in order, in the partition
    that aiokafka's own partitioner (the Java client's hash) gives its key, whoever published it."""
    from shared.bus import read_topics

    name = f"test.batches.{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings.model_copy(update={"kafka_topic_partitions": 3}), [name])
    publisher = EventPublisher(settings, client_id="test-batches")
    await publisher.start()
    try:
        keys = [f"20261123-77{i:04d}".encode() for i in range(12)]
        # 2 KB a record and 600 records: each partition's share outgrows a 256 KB batch.
        records = [(name, b"%s/%04d/" % (keys[i % 12], i) + b"x" * 2000, keys[i % 12]) for i in range(600)]
        pending = await publisher.send_many(records)
        # A lone record goes through `send`, partitioned by aiokafka itself.
        lone = await publisher.send(name, b"%s/lone/" % keys[0], keys[0])
        await asyncio.gather(*pending, lone)
        assert len(pending) > 3  # some partition took more than one batch
        found = (await read_topics(settings.kafka_bootstrap_servers, [name]))[name]
    finally:
        await publisher.stop()
    by_key: dict[bytes, list[tuple[int, bytes]]] = {}
    for r in found:
        by_key.setdefault(r.key, []).append((r.partition, r.value.split(b"/")[1]))
    for i, key in enumerate(keys):
        assert len({p for p, _ in by_key[key]}) == 1  # the lone record's partition too
        lone = [b"lone"] if i == 0 else []
        assert [n for _, n in by_key[key]] == [b"%04d" % j for j in range(i, 600, 12)] + lone
    assert len({p for rows in by_key.values() for p, _ in rows}) > 1  # the keys spread over partitions


async def test_topics_are_created_with_the_configured_retention(settings):
    """Events carry the appeal's text: how long the broker keeps them is set, not left to its default."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    name = f"test.retention.{uuid.uuid4().hex[:8]}"
    assert await ensure_topics(settings.model_copy(update={"kafka_retention_hours": 36}), [name]) == [name]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        [answer] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    finally:
        await admin.close()
    [(_code, _msg, _type, _name, entries)] = answer.resources
    assert {e[0]: e[1] for e in entries}["retention.ms"] == str(36 * 3_600_000)
    # A topic that exists keeps its own retention.
    assert await ensure_topics(settings, [name]) == []


async def test_a_decision_that_declines_writes_nothing(redis):
    store = TicketStore(redis)
    [(ticket, events)] = await store.apply_many([Change("20261123-777002", lambda t: None)])
    assert ticket is None
    assert events == []
    assert await store.get("20261123-777002") is None


async def test_a_batch_that_keeps_conflicting_is_split_so_the_other_tickets_go_through(redis):
    """One ticket that changes under every attempt must not hold up the rest of its batch."""
    from shared.store import ConcurrentUpdate

    class OneBusyTicket(TicketStore):
        async def _apply_batch(self, changes, then=None):
            if len({c.ticket_no for c in changes}) > 1 and any(c.ticket_no.endswith("BUSY") for c in changes):
                raise ConcurrentUpdate("the busy ticket changed again")
            return await super()._apply_batch(changes, then)

    store = OneBusyTicket(redis)
    nos = [f"20261123-8880{i:02d}" for i in range(5)] + ["20261123-BUSY"]
    appeals = {no: AppealReceived(ticket_no=no, channel="hotline", text="楼道灯不亮很久了") for no in nos}
    changes = [Change(no, lambda t, a=appeals[no]: record_appeal(t, a)) for no in nos]
    results = await store.apply_many(changes)
    assert [t.ticket_no for t, _ in results] == nos  # every change answered, in order
    assert all([await store.get(no) for no in nos])


def retitled(title: str) -> Decision:
    def decide(ticket: Ticket | None) -> Outcome | None:
        return None if ticket is None else Outcome(ticket.model_copy(update={"title": title}))

    return decide


async def test_a_follow_on_step_writes_in_the_same_transaction_and_sees_the_first_changes(redis):
    store = TicketStore(redis)
    first, other = "20261123-777101", "20261123-777102"
    await store.create_many(
        [AppealReceived(ticket_no=no, channel="hotline", text="小区门口路灯不亮") for no in (first, other)]
    )
    seen: list[dict[str, Ticket | None]] = []

    async def then(results, read):
        seen.append(await read([first, other]))
        return [Change(other, retitled(f"随{results[0][0].title}"))]

    results = await store.apply_many([Change(first, retitled("路灯"))], then)
    assert [t.title for t, _ in results] == ["路灯", "随路灯"]
    assert seen[0][first].title == "路灯"  # the follow-on reads the ticket as the batch left it
    assert (await store.get(other)).title == "随路灯"


async def test_a_ticket_the_follow_on_step_reads_is_watched_like_the_others(redis):
    """Another writer changing a ticket the follow-on read makes the whole batch try again."""
    store = TicketStore(redis)
    first, other = "20261123-777103", "20261123-777104"
    await store.create_many(
        [AppealReceived(ticket_no=no, channel="hotline", text="楼下施工噪音扰民") for no in (first, other)]
    )
    attempts: list[str] = []

    async def then(results, read):
        title = (await read([other]))[other].title
        attempts.append(title)
        if len(attempts) == 1:  # someone else (the API, a timer) writes it meanwhile
            await TicketStore(redis).apply_many([Change(other, retitled("改过"))])
        return [Change(other, retitled(f"{title}/跟进"))]

    await store.apply_many([Change(first, retitled("施工"))], then)
    assert attempts == ["", "改过"]
    assert (await store.get(other)).title == "改过/跟进"


async def test_facts_go_into_the_histories_of_tickets_that_exist_only(redis):
    store = TicketStore(redis)
    there, gone = "20261123-777105", "20261123-777106"
    await store.create_many([AppealReceived(ticket_no=there, channel="hotline", text="路口积水很深")])
    facts = [
        TicketUpdated(ticket_no=no, action="accepted", status="accepted", actor="d1", on_time=True)
        for no in (there, gone)
    ]
    async with redis.pipeline(transaction=True) as pipe:
        store.record_into(pipe, facts)
        await pipe.execute()
    assert [h["event_id"] for h in await store.history(there)][1:] == [facts[0].event_id]
    assert await redis.exists(f"t:{gone}:h") == 0  # no history without its ticket


# --- erasure: an erased ticket stays scrubbed whatever is written onto it later ------------------

NAME, PHONE = "赵小红", "13812345678"
PHOTO = "0f" * 16  # a photo id, of a photo of the resident's door


def personal_data() -> tuple[str, ...]:
    """What must not survive an erasure: the name and phone typed into the words, the address, the
    coordinates (also the grid's evidence), the masked phone, the salted hash, and the photos (their
    files are deleted; the ids go too)."""
    return (NAME, PHONE, "幸福里", "116.397", mask_phone(PHONE), caller_id(PHONE), PHOTO)


def leaks(text: str) -> list[str]:
    return [p for p in personal_data() if p in text]


def personal_appeal(no: str) -> AppealReceived:
    return AppealReceived(
        ticket_no=no,
        channel="hotline",
        text=f"我叫{NAME}，电话{PHONE}，楼下路灯坏了",
        title="路灯不亮",
        address="幸福里小区5号楼",
        location=GeoPoint(lng=116.397, lat=39.909),
        caller=Caller(caller_id=caller_id(PHONE), masked_phone=mask_phone(PHONE)),
    )


def classified_from(appeal: AppealReceived) -> AppealClassified:
    return AppealClassified(
        ticket_no=appeal.ticket_no,
        appeal=appeal,
        category="city.facility.streetlight",
        category_names=("城市管理", "市政设施", "路灯"),
        confidence=0.9,
        top=(),
        grid=GridMatch(grid="s01c01g01", method="coordinates", confidence=0.99, evidence="116.397,39.909"),
        model_version="test",
    )


def resolved_with_words(appeal: AppealReceived) -> TicketUpdated:
    return TicketUpdated.caused(
        appeal,
        action="resolved",
        status="resolved",
        actor="d1",
        note=f"已电话联系{NAME}（{PHONE}），路灯已修复",
        caller_id=appeal.caller.caller_id,
        on_time=True,
    )


def located(no: str) -> AppealLocated:
    return AppealLocated(
        ticket_no=no, channel="wechat", location=GeoPoint(lng=116.397, lat=39.91), address="幸福里小区北门"
    )


def one_of_each(no: str) -> list[Event]:
    appeal = personal_appeal(no)
    dept = DepartmentRef(id="d1", name="市政市容委")
    return [
        appeal,
        located(no),
        AppealPhotosAdded(ticket_no=no, channel="wechat", photos=(PHOTO,)),
        classified_from(appeal),
        TicketAssigned.caused(
            appeal,
            caller_id=appeal.caller.caller_id,
            department=dept,
            via="rule",
            explanation="按权责清单派单",
            category="city.facility.streetlight",
            grid="s01c01g01",
            respond_by=appeal.occurred_at,
            resolve_by=appeal.occurred_at,
        ),
        resolved_with_words(appeal),
        SurveySent(
            ticket_no=no, survey_id="s1", masked_phone=mask_phone(PHONE), message_id="m1", text=f"{NAME}您好"
        ),
        SurveyAnswered(ticket_no=no, survey_id="s1", rating=1, text=f"满意，我是{NAME}"),
        PersonalDataRemoved(ticket_no=no, caller_id=caller_id(PHONE)),
    ]


def test_a_scrubbed_event_keeps_its_shape_and_loses_the_person():
    events = one_of_each("20261123-777201")
    assert {e.topic for e in events} == set(topics.EVENT_TYPES)  # every class the outbox relay sends
    unparsed = []
    for e in events:
        assert leaks(e.json_bytes.decode()), e.topic  # each sample carries personal data to remove
        scrubbed = scrub_event(e.model_dump(mode="json"))
        assert leaks(json.dumps(scrubbed, ensure_ascii=False)) == [], e.topic
        try:
            topics.EVENT_TYPES[e.topic].model_validate(scrubbed)
        except ValidationError:
            unparsed.append(e.topic)
    # A located event's place is all it carries, and an erasure's notice its caller: blanked, they
    # are no events any more.
    assert unparsed == ["appeal.located", "ticket.personal_data_removed"]


def test_an_event_said_to_carry_no_personal_data_is_its_own_scrubbed_copy():
    """`may_carry_personal_data` may say yes when scrubbing would change nothing, never no when it
    would: an event it clears is written as it is into an erased ticket's history."""
    events: list[Event] = list(one_of_each("20261123-777202"))
    for e in list(events):
        with contextlib.suppress(ValidationError):
            events.append(topics.EVENT_TYPES[e.topic].model_validate(scrub_event(e.model_dump(mode="json"))))
    attached = MeetingUpdated(
        ticket_no="20261123-777202", meeting_id="M1", action="attached", actor="system", tickets=("T2",)
    )
    events += [attached, attached.model_copy(update={"action": "checked_in", "note": "已到"})]
    cleared = []
    for e in events:
        dumped = e.model_dump(mode="json")
        assert may_carry_personal_data(e.__dict__) or scrub_event(dumped) == dumped, e.topic
        if not may_carry_personal_data(e.__dict__):
            cleared.append(e)
    assert attached in cleared
    assert all(may_carry_personal_data(e.__dict__) for e in one_of_each("20261123-777202"))


def test_an_erasure_notice_is_a_registered_event_that_reads_back():
    notice = PersonalDataRemoved(ticket_no="20261123-777210", caller_id=caller_id(PHONE))
    assert topics.EVENT_TYPES[notice.topic] is PersonalDataRemoved
    assert topics.dlq(notice.topic) in topics.ALL_TOPICS  # created by ensure_topics, with its twin
    assert PersonalDataRemoved.from_json(notice.to_bytes()) == notice
    assert set(notice.model_dump()) == {
        "event_id",
        "version",
        "occurred_at",
        "ticket_no",
        "caused_by",
        "caller_id",
    }


async def test_an_erasure_on_request_is_announced_through_the_outbox(redis):
    store = TicketStore(redis)
    store.OUTBOX = f"outbox:test-{uuid.uuid4().hex}"  # the relay below takes only this test's entries
    no, quiet, gone = "20261123-777211", "20261123-777212", "20261123-777213"
    appeal = personal_appeal(no)
    await store.create_many([appeal, personal_appeal(quiet)])
    at = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    cid = caller_id(PHONE)
    assert await store.remove_personal_data(no, at, announce_caller=cid)
    assert await store.remove_personal_data(quiet, at)  # retention's removal: nothing announced
    assert not await store.remove_personal_data(gone, at, announce_caller=cid)  # not in Redis

    history = await store.history(no)
    assert [h["topic"] for h in history] == ["appeal.received", topics.PERSONAL_DATA_REMOVED]
    assert leaks(json.dumps(history[0], ensure_ascii=False)) == []  # the rest is scrubbed first
    notice = history[-1]
    assert notice["caller_id"] == cid
    assert notice["ticket_no"] == no
    assert [h["topic"] for h in await store.history(quiet)] == ["appeal.received"]
    assert await redis.exists(f"t:{gone}:h") == 0
    members = [m.decode() for m in await redis.zrange(store.OUTBOX, 0, -1)]
    assert members == [f"{topics.PERSONAL_DATA_REMOVED}\t{no}\t{notice['event_id']}"]

    broker = Broker()
    # Sent, and not counted: no writer died (the count is what the router warns about).
    assert await relay_outbox(broker, store, older_than_seconds=0) == 0  # type: ignore[arg-type]
    [(topic, body)] = broker.sent
    assert topic == topics.PERSONAL_DATA_REMOVED
    assert PersonalDataRemoved.model_validate(body) == PersonalDataRemoved(
        event_id=notice["event_id"], ticket_no=no, caller_id=cid, occurred_at=at
    )
    assert await redis.zcard(store.OUTBOX) == 0
    # Sent, the notice's copy loses the hash too: nothing in Redis links the ticket to the caller.
    history = await store.history(no)
    assert [h["event_id"] for h in history][-1] == notice["event_id"]
    assert leaks(json.dumps(history, ensure_ascii=False)) == []
    ticket = await store.get(no)
    assert ticket is not None
    assert ticket.personal_data_removed_at == at  # the erasure's mark, not the relay's time


async def test_a_second_erasure_before_the_relay_keeps_the_first_notice(redis, caplog):
    """Two erasures of one ticket a few seconds apart (the same caller erased twice, two requests
    racing): the second scrubs the history again, but not the first's notice, which the outbox
    still holds, so the relay sends it rather than dropping it as unparseable. Then the relay,
    having sent the first, scrubs the history, but not the second's notice, which is not due yet."""
    store = TicketStore(redis)
    store.OUTBOX = f"outbox:test-{uuid.uuid4().hex}"
    no = "20261123-777214"
    await store.create_many([personal_appeal(no)])
    cid = caller_id(PHONE)
    first_at, second_at = (
        datetime(2026, 11, 23, 3, 0, tzinfo=UTC),
        datetime(2026, 11, 23, 3, 0, 5, tzinfo=UTC),
    )
    assert await store.remove_personal_data(no, first_at, announce_caller=cid)
    [first] = [m.decode() for m in await redis.zrange(store.OUTBOX, 0, -1)]
    await redis.zadd(store.OUTBOX, {first: 1.0})  # written long ago: due for the relay
    assert await store.remove_personal_data(no, second_at, announce_caller=cid)

    history = await store.history(no)
    notices = [h for h in history if h["topic"] == topics.PERSONAL_DATA_REMOVED]
    assert [h["caller_id"] for h in notices] == [cid, cid]
    assert leaks(json.dumps(history[0], ensure_ascii=False)) == []

    broker = Broker()
    with caplog.at_level("WARNING", logger="shared.bus"):
        assert await relay_outbox(broker, store, older_than_seconds=10) == 0  # type: ignore[arg-type]
    assert [(topic, body["event_id"], body["caller_id"]) for topic, body in broker.sent] == [
        (topics.PERSONAL_DATA_REMOVED, notices[0]["event_id"], cid)
    ]
    assert "no longer parses" not in caplog.text
    # The first is sent and scrubbed; the second, not due yet, keeps what it must carry.
    assert [
        h.get("caller_id") for h in await store.history(no) if h["topic"] == topics.PERSONAL_DATA_REMOVED
    ] == [
        None,
        cid,
    ]

    assert await relay_outbox(broker, store, older_than_seconds=0) == 0  # type: ignore[arg-type]
    assert [body["event_id"] for _, body in broker.sent[1:]] == [notices[1]["event_id"]]
    assert await redis.zcard(store.OUTBOX) == 0
    assert leaks(json.dumps(await store.history(no), ensure_ascii=False)) == []
    ticket = await store.get(no)
    assert ticket is not None
    assert ticket.personal_data_removed_at == first_at  # the first erasure's mark stays


def test_a_decision_cannot_bring_personal_data_back_onto_an_erased_ticket():
    """As the router does when it sees no ticket: rebuild it from the classified appeal, and record
    the classification, which carries the whole appeal."""
    no = "20261123-777202"
    appeal = personal_appeal(no)
    classified, update = classified_from(appeal), resolved_with_words(appeal)
    removed_at = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    batch = _Batch(pipe=None)
    batch.current[ticket_key(no)] = scrub_ticket(Ticket.from_appeal(appeal), removed_at)

    def decide(ticket: Ticket | None) -> Outcome:
        rebuilt = Ticket.from_appeal(appeal).model_copy(update={"category": classified.category})
        return Outcome(rebuilt, publish=[update], record=[classified])

    [(ticket, published)] = batch.decide([Change(no, decide)])
    assert published == [update]  # on its way already; the relay's copy comes from the history
    assert batch.changed[ticket_key(no)] == ticket
    assert ticket.personal_data_removed_at == removed_at
    assert ticket.category == classified.category  # the statistics stay
    assert ticket.caller == Caller()
    assert leaks(ticket.model_dump_json()) == []
    # Read as the store reads the history: after its first record, the appeal as the erasure left it.
    first = _scrubbed_record(appeal)
    records = history_records([first, *batch.history[ticket_key(no)]])[1:]
    assert [r["event_id"] for r in records] == [classified.event_id, update.event_id]
    assert leaks(json.dumps(records, ensure_ascii=False)) == []
    for r in records:  # still the events they were, for the relay and the record
        topics.EVENT_TYPES[r.pop("topic")].model_validate(r)


def test_a_ticket_not_erased_is_written_as_decided():
    no = "20261123-777203"
    appeal = personal_appeal(no)
    classified = classified_from(appeal)
    batch = _Batch(pipe=None)
    batch.current[ticket_key(no)] = None
    [(ticket, _)] = batch.decide(
        [Change(no, lambda t: Outcome(Ticket.from_appeal(appeal), record=[classified]))]
    )
    assert ticket == Ticket.from_appeal(appeal)
    assert batch.history[ticket_key(no)] == [event_record(classified)]


def test_a_classification_is_kept_without_its_appeal_and_read_back_with_it():
    """The history's first record is the appeal; the classification after it does not repeat it."""
    appeal = personal_appeal("20261123-777204")
    classified = classified_from(appeal)
    stored = [event_record(appeal), event_record(classified)]
    assert b'"appeal"' not in stored[1]
    assert appeal.text.encode() not in stored[1]
    records = history_records(stored)
    assert [r.pop("topic") for r in records] == ["appeal.received", "appeal.classified"]
    assert AppealClassified.model_validate(records[1]) == classified
    assert AppealReceived.model_validate(records[0]) == appeal


def test_a_classification_written_with_its_appeals_own_bytes_reads_as_the_same_event():
    """The classifier puts the appeal's bytes, as its message had them, into the classification;
    the router cuts them off again for the history. Both as pydantic would write them, whatever the
    appeal's words (a text that reads like JSON included), and from a classification of an earlier
    order, where the appeal is not last, too."""
    appeal = personal_appeal("20261123-777206").model_copy(
        update={"text": '门口写着 ,"appeal":{"x":1}} 的牌子'}
    )
    built = classified_from(appeal)
    assert list(AppealClassified.model_fields)[-1] == "appeal"
    assert built.json_bytes == built.__pydantic_serializer__.to_json(built)
    without = orjson.loads(built.__pydantic_serializer__.to_json(built, exclude={"appeal"}))
    # The appeal as another producer wrote it (its keys in another order): kept as it came.
    received = AppealReceived.from_json(orjson.dumps(dict(reversed(orjson.loads(appeal.json_bytes).items()))))
    assert received == appeal
    read = AppealClassified.from_json(built.model_copy(update={"appeal": received}).json_bytes)
    assert read.json_bytes.endswith(b',"appeal":' + received.json_bytes + b"}")
    assert read == built
    assert orjson.loads(read.json_without_appeal()) == without
    # An earlier order: the appeal right after the event's own fields.
    fields = orjson.loads(built.json_bytes)
    first = ("event_id", "version", "occurred_at", "ticket_no", "caused_by", "appeal")
    earlier = {k: fields[k] for k in first} | {k: v for k, v in fields.items() if k not in first}
    old = AppealClassified.from_json(orjson.dumps(earlier))
    assert old == built
    assert orjson.loads(old.json_without_appeal()) == without


def test_a_ticket_is_stored_without_its_defaults_but_always_with_its_status():
    """Raw readers (Lua scripts, the queues' filters) read the status from the stored JSON."""
    ticket = Ticket.from_appeal(personal_appeal("20261123-777205"))
    stored = json.loads(ticket_json(ticket))
    assert stored["status"] == "received"
    assert "closed_at" not in stored
    assert "applied" in stored
    assert len(ticket_json(ticket)) < len(ticket.model_dump_json().encode()) / 2
    assert Ticket.model_validate_json(ticket_json(ticket)) == ticket


class Broker:
    """Stands for the publisher: acknowledges at once and keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    async def send_many(self, records: list[tuple[str, bytes, bytes]]) -> list[asyncio.Future[None]]:
        self.sent += [(topic, json.loads(body)) for topic, body, _ in records]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done]


class PrivateOutbox(TicketStore):
    OUTBOX = "outbox:test-erasure"  # the relay below must not take the running services' entries


async def test_an_erased_tickets_events_left_in_the_outbox_are_relayed_scrubbed(redis):
    store = PrivateOutbox(redis)
    no = "20261123-777204"
    appeal = personal_appeal(no)
    await store.create_many([appeal])
    assert await store.remove_personal_data(no)
    assert not await store.remove_personal_data("20261123-777299")  # not in Redis
    assert leaks(json.dumps(await store.history(no), ensure_ascii=False)) == []
    place, update = located(no), resolved_with_words(appeal)

    def decide(ticket: Ticket | None) -> Outcome:
        assert ticket is not None
        return Outcome(ticket.model_copy(update={"location": place.location}), publish=[place, update])

    await store.apply_many([Change(no, decide)])  # and the writer dies before publishing
    broker = Broker()
    assert await relay_outbox(broker, store, older_than_seconds=0) == 1  # type: ignore[arg-type]
    [(topic, body)] = broker.sent
    assert topic == topics.TICKET_UPDATED
    assert body["event_id"] == update.event_id
    assert body["note"] == REMOVED
    assert body["caller_id"] is None
    assert await store.due_outbox(0) == {}  # the located event, which cannot parse, is not retried
    ticket = await store.get(no)
    assert ticket is not None
    assert ticket.location is None
    assert leaks(json.dumps(await store.history(no), ensure_ascii=False)) == []


# --- erasure: staff wording, which may repeat the resident's name or address, goes too --------------

WORDS = f"已电话联系{NAME}，幸福里5号楼"  # what a department typed, repeating the resident
STAFF = DepartmentRef(id="d1", name="市政市容委")


def staff_wording(no: str) -> list[Event]:
    """Every kind of fact in which staff write words about an appeal, each repeating the resident."""
    due = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    return [
        TicketAssigned(
            ticket_no=no,
            department=STAFF,
            via="operator",
            explanation=f"派单员0231人工派单至市政市容委：{WORDS}",
            category="city.facility.streetlight",
            grid="s01c01g01",
            respond_by=due,
            resolve_by=due,
        ),
        TicketUpdated(
            ticket_no=no,
            action="returned",
            status="assigned",
            actor="d1",
            department=STAFF,
            note=WORDS,
            returned=Returned(reason="not_ours", reason_name="非本单位职责", disputed_rule=WORDS, returns=1),
        ),
        TicketUpdated(
            ticket_no=no,
            action="extension_requested",
            status="accepted",
            actor="d1",
            note=WORDS,
            extension=Extension(days=3, reason=WORDS, old_resolve_by=due),
        ),
        MeetingConvened(
            ticket_no=no,
            meeting_id="m1",
            reason="ambiguous",
            lead_street=DepartmentRef(id="s01", name="阳光街道"),
            summoned=(STAFF,),
            tickets=(no,),
            category="city.facility.streetlight",
            grid="s01c01g01",
            deadline=due,
            explanation=f"多个单位均有责：{WORDS}",
        ),
        MeetingUpdated(
            ticket_no=no, meeting_id="m1", action="decided", actor="s01", department=STAFF, note=WORDS
        ),
    ]


async def test_a_meetings_facts_go_into_an_erased_tickets_history_scrubbed(redis):
    """A meeting writes its facts into its tickets' histories under its own WATCH, not theirs; those
    of an erased ticket go in scrubbed, those of the others as they are."""
    store = TicketStore(redis)
    erased, kept = "20261123-777303", "20261123-777304"
    await store.create_many([personal_appeal(erased), personal_appeal(kept)])
    assert await store.remove_personal_data(erased)
    convened, *_, decided = (e for e in staff_wording(erased) if e.topic.startswith("meeting."))
    facts = [convened, decided, decided.model_copy(update={"ticket_no": kept})]
    async with redis.pipeline(transaction=True) as pipe:
        store.record_into(pipe, facts)
        await pipe.execute()
    history = await store.history(erased)
    assert [h["event_id"] for h in history[1:]] == [convened.event_id, decided.event_id]
    assert leaks(json.dumps(history, ensure_ascii=False)) == []
    assert (history[1]["explanation"], history[2]["note"]) == (REMOVED, REMOVED)
    for h in history[1:]:  # still the facts they were, for the ticket view and the record
        type(convened if h["topic"] == convened.topic else decided).model_validate(
            {k: v for k, v in h.items() if k != "topic"}
        )
    assert (await redis.lrange(f"t:{kept}:h", 1, -1)) == [event_record(facts[2])]


async def test_a_ticket_whose_words_name_the_erasure_mark_takes_facts_as_they_are(redis):
    """The script looks for the mark in the ticket's JSON as text: words that spell it are inside a
    string, their quotes escaped, and do not count."""
    store = TicketStore(redis)
    no = "20261123-777308"
    words = '系统显示"personal_data_removed_at":"2026-11-23"，请核实'
    await store.create_many([AppealReceived(ticket_no=no, channel="hotline", text=words)])
    fact = TicketUpdated(ticket_no=no, action="accepted", status="accepted", actor="d1", on_time=True)
    async with redis.pipeline(transaction=True) as pipe:
        store.record_into(pipe, [fact])
        await pipe.execute()
    assert (await redis.lrange(f"t:{no}:h", 1, -1)) == [event_record(fact)]


async def test_keep_erased_erases_again_only_a_ticket_that_came_back_without_its_mark(redis):
    """And announces it, with the caller id the ticket it finds still carries: intake and the
    notifier may hold keys linking the caller to it that no notice has removed (an appeal that
    reached the record after its caller's erasure, or a first notice lost with the ticket)."""
    store = TicketStore(redis)
    store.OUTBOX = f"outbox:test-{uuid.uuid4().hex}"
    back, marked, gone = "20261123-777305", "20261123-777306", "20261123-777307"
    await store.create_many([personal_appeal(back), personal_appeal(marked)])
    first = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    assert await store.remove_personal_data(marked, first)
    # A record a rewrite of its history would scrub (the note), left as it is if there is none.
    note = TicketUpdated(
        ticket_no=marked, action="accepted", status="accepted", actor="d1", note="原样", on_time=True
    )
    await redis.rpush(f"t:{marked}:h", event_record(note))
    erased_at = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    marks = dict.fromkeys((back, marked, gone), erased_at)
    assert await store.keep_erased(marks) == [back]
    ticket = await store.get(back)
    assert ticket is not None
    assert ticket.personal_data_removed_at == erased_at  # the record's time
    assert leaks(ticket.model_dump_json()) == []
    *scrubbed, notice = await store.history(back)
    assert leaks(json.dumps(scrubbed, ensure_ascii=False)) == []
    assert (notice["topic"], notice["ticket_no"], notice["caller_id"]) == (
        topics.PERSONAL_DATA_REMOVED,
        back,
        caller_id(PHONE),
    )
    assert [m.decode() for m in await redis.zrange(store.OUTBOX, 0, -1)] == [
        f"{topics.PERSONAL_DATA_REMOVED}\t{back}\t{notice['event_id']}"
    ]
    assert (await store.history(marked))[-1]["note"] == "原样"  # nothing done, nothing announced
    assert await redis.exists(f"t:{gone}") == 0  # nothing made up for a ticket Redis does not hold

    broker = Broker()
    assert await relay_outbox(broker, store, older_than_seconds=0) == 0  # type: ignore[arg-type]
    assert [body["event_id"] for _, body in broker.sent] == [notice["event_id"]]
    assert leaks(json.dumps(await store.history(back), ensure_ascii=False)) == []


async def test_is_erased_reads_the_mark(redis):
    store = TicketStore(redis)
    erased, kept = "20261123-777308", "20261123-777309"
    await store.create_many([personal_appeal(erased), personal_appeal(kept)])
    assert await store.remove_personal_data(erased)
    assert await store.is_erased(erased)
    assert not await store.is_erased(kept)
    assert not await store.is_erased("20261123-777398")  # not in Redis


def test_staff_wording_is_removed_and_the_facts_stay():
    for e in staff_wording("20261123-777301"):
        original = e.model_dump(mode="json")
        scrubbed = scrub_event(original)
        assert leaks(json.dumps(scrubbed, ensure_ascii=False)) == [], type(e).__name__
        again = type(e).model_validate(scrubbed)  # still the event it was
        # Only the words changed: the action, the department, the deadlines, the codes stay.
        kept = {
            k: v for k, v in original.items() if k not in ("note", "explanation", "returned", "extension")
        }
        assert {k: scrubbed[k] for k in kept} == kept, type(e).__name__
        if isinstance(again, TicketUpdated) and again.returned is not None:
            assert again.returned.disputed_rule == REMOVED
            assert (again.returned.reason, again.returned.returns) == ("not_ours", 1)
        if isinstance(again, TicketUpdated) and again.extension is not None:
            assert again.extension.reason == REMOVED
            assert again.extension.days == 3


def test_a_pending_extensions_reason_leaves_the_ticket_and_the_request_stays():
    appeal = personal_appeal("20261123-777302")
    ticket = Ticket.from_appeal(appeal).model_copy(
        update={
            "resolution_note": WORDS,
            "extension_request": {"days": 3, "reason": WORDS, "by": "d1", "at": "2026-11-23T03:00:00+00:00"},
        }
    )
    scrubbed = scrub_ticket(ticket, datetime(2026, 11, 23, 4, 0, tzinfo=UTC))
    assert leaks(scrubbed.model_dump_json()) == []
    assert scrubbed.extension_request == {**ticket.extension_request, "reason": REMOVED}
    assert scrubbed.resolution_note == REMOVED


def _leaf_types(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:  # a code from a fixed list: nobody's words
        return []
    if get_origin(annotation) in (Union, UnionType, tuple, list):
        return [t for a in get_args(annotation) if a is not Ellipsis for t in _leaf_types(a)]
    return [annotation]


def _text_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """The dotted paths of every text field of a model and the models inside it (the fields every
    event has, and the appeal a classification carries, which is an appeal's, left out)."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        if (not prefix and name in Event.model_fields) or name == "appeal":
            continue
        for t in _leaf_types(field.annotation):
            if t is str:
                paths.add(prefix + name)
            elif isinstance(t, type) and issubclass(t, BaseModel):
                paths |= _text_paths(t, f"{prefix}{name}.")
    return paths


# Text that is personal data, or may be: blanked by `scrub_event`.
BLANKED = {
    "text", "title", "address", "note", "resolution_note", "explanation", "caller_id", "masked_phone",
    "caller.caller_id", "caller.masked_phone", "grid.evidence", "returned.disputed_rule",
    "extension.reason", "place_request.reason", "photos", "resolution_photos", "direct_answer",
    "verification_note", "verification_photos", "mediation_agreement", "mediation.agreement",
}  # fmt: skip
# Text that is no one's words: ids, the city's names from its configuration, codes, versions.
KEPT = {
    "actor", "applied", "assigned_via", "category", "category_names", "co_departments.id",
    "co_departments.name", "department.id", "department.name", "grid", "grid.community", "grid.grid",
    "grid.street", "lead_street.id", "lead_street.name", "meeting.category", "meeting.grid",
    "grid.address_grid",  # a grid's id, as grid.grid is (定位与地址不一致)
    "meeting.lead_street", "meeting.meeting_id", "meeting.summoned", "meeting_id", "message_id",
    "model_version", "operator_id", "patrol_grid", "returned.reason_name", "returned_by", "reviewed_by",
    "rule", "status",
    "summoned.id", "summoned.name", "supervision.stage_name", "supervision.supervisor", "supervision.to",
    "survey_id", "tickets", "top.category", "top_categories.category",
    "resolution_id", "verified_by", "void_surveys", "verification.survey_id",  # event ids, 工号
    "by",  # the operator who took a survey's answer on the phone (工号)
    "merge.into", "merge.duplicate", "merge.moved", "merge.via", "merged_into", "merged",  # 并案: numbers
    "place.grid", "place.community", "place.street", "place.was",  # 事发网格: areas' ids
    "place_request.grid", "place_request.was", "place_request.by",  # areas' ids, the worker's 工号
}  # fmt: skip


def test_every_text_field_of_the_events_and_the_ticket_is_either_removed_or_kept_on_purpose():
    """A new text field fails here until it is put in one list or the other (and, if personal,
    removed by `scrub_event`)."""
    models = [*topics.EVENT_TYPES.values(), MeetingConvened, MeetingUpdated, Ticket]
    found = set().union(*(_text_paths(m) for m in models))
    assert found == BLANKED | KEPT
    for path in BLANKED:
        *parents, leaf = path.split(".")
        event: dict[str, Any] = {leaf: "赵小红"}
        for parent in reversed(parents):
            event = {parent: event}
        scrubbed: Any = scrub_event(event)
        for key in path.split("."):
            scrubbed = scrubbed.get(key) if isinstance(scrubbed, dict) else None
        assert scrubbed != "赵小红", path


# --- views: what a consumer reads of an event --------------------------------------------------


def _views(base: type) -> list[type]:
    return [v for s in base.__subclasses__() for v in (s, *_views(s))]


def _same_field(view: type[BaseModel], model: type[BaseModel], where: str) -> None:
    """Each of the view's fields is the model's, of the same type and default; a field that is a
    `Part` is a view of the model's field, checked the same way."""
    for name, field in view.model_fields.items():
        here = f"{where}.{name}"
        assert name in model.model_fields, f"{here}: {model.__name__} has no such field"
        theirs = model.model_fields[name]
        if isinstance(field.annotation, type) and issubclass(field.annotation, Part):
            assert isinstance(theirs.annotation, type), f"{here}: {theirs.annotation} is no model"
            assert issubclass(theirs.annotation, BaseModel), f"{here}: {theirs.annotation} is no model"
            _same_field(field.annotation, theirs.annotation, here)
        else:
            assert field.annotation == theirs.annotation, f"{here}: {field.annotation}"
        assert field.is_required() == theirs.is_required(), f"{here}: required differs"
        assert field.default_factory == theirs.default_factory, f"{here}: default differs"
        if not field.is_required():
            assert field.get_default(call_default_factory=False) == theirs.get_default(
                call_default_factory=False
            ), f"{here}: default differs"


def test_every_view_reads_its_events_fields_as_the_event_declares_them() -> None:
    # The views are declared by their consumers: every one that is imported is checked.
    from services.intake.app import CallerOf, PlacedBy, UpdateOf
    from services.notifier.app import Acknowledged
    from services.router.service import Escalation

    views = _views(View)
    assert {CallerOf, UpdateOf, PlacedBy, Acknowledged, Escalation} <= set(views)
    for view in views:
        assert view.topic == view.of.topic
        _same_field(view, view.of, view.__name__)


def test_a_view_reads_its_fields_from_the_whole_event_and_cannot_be_published() -> None:
    from services.intake.app import UpdateOf

    update = TicketUpdated(
        ticket_no="20261202-000001",
        action="closed",
        status="closed",
        actor="system",
        caller_id="c1",
        answer=Answer(rating=3, solved=True),
    )
    view = UpdateOf.from_json(update.json_bytes)
    assert (view.ticket_no, view.action, view.caller_id, view.event_id) == (
        update.ticket_no,
        "closed",
        "c1",
        update.event_id,
    )
    with pytest.raises(ValidationError):  # what it reads is checked as the event checks it
        UpdateOf.from_json(update.json_bytes.replace(b'"closed"', b'"shut"', 1))
    with pytest.raises(TypeError):
        view.to_bytes()


def test_a_grids_place_is_written_one_way(city):
    """Pages, cards, history lines and refusals write a grid's place alike: the street, a slash, the
    grid's name after its community's where it does not say it (not twice where it does)."""
    from shared.city import Grid, GridInfo

    bare = GridInfo(
        grid=Grid(id="g", name="第一网格"),
        community_id="c",
        community_name="东湖社区",
        street_id="s",
        street_name="和平街道",
    )
    assert bare.place == "和平街道/东湖社区第一网格"
    assert bare.model_copy(update={"grid": Grid(id="g", name="东湖社区第一网格")}).place == bare.place
    assert city.place_name("s01c01g01") == "和平街道/和平里社区第一网格"
    assert city.place_name(None) == city.place_name("s99c99g99") == "未定位"


def test_a_schemas_constraints_are_said_in_chinese_and_others_left_to_pydantic():
    from pydantic import Field

    from shared.http import schema_words

    class Form(BaseModel):
        days: int = Field(ge=1, le=30)
        reason: str = Field(min_length=1, max_length=5)
        photos: list[str] = Field(default_factory=list, max_length=2)
        when: datetime | None = None

    def words(**body: Any) -> list[str | None]:
        with pytest.raises(ValidationError) as refused:
            Form.model_validate({"days": 3, "reason": "x", **body})
        return [schema_words(e) for e in refused.value.errors()]

    assert words(days=45) == ["不能大于30"]
    assert words(days=0) == ["不能小于1"]
    assert words(days="三十") == ["须为整数"]
    assert words(reason="太长的一段说明") == ["不能超过5个字"]
    assert words(photos=["a", "b", "c"]) == ["最多2项"]
    assert words(when="昨天") == [None]  # no words here: the API keeps pydantic's message
    with pytest.raises(ValidationError) as refused:
        Form.model_validate({"reason": "x"})
    assert [schema_words(e) for e in refused.value.errors()] == ["必须填写"]
