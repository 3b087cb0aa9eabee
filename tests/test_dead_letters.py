"""A poison message is dead-lettered once, not once per consumer group that reads its topic, with the
group, the error and the offset; `appeals dlq list` shows it and `appeals dlq replay` re-drives it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from services.dlq import read_dead_letters
from shared import topics
from shared.bus import dead_letter, ends_of, group_id
from tests.conftest import ROOT, eventually, groups_past, settings_env

pytestmark = pytest.mark.integration

TOPIC = topics.TICKET_UPDATED  # read by several services, each in its own group
# Each reads it with its one consumer of what is off the caller's path (the records worker: of all).
READERS = tuple(group_id(s) for s in ("intake", "meetings", "notifier", "records"))


async def all_groups_past(settings, partition: int, offset: int) -> None:
    """Wait until every group that reads TOPIC has committed past `offset` on `partition`."""
    await groups_past(
        settings.kafka_bootstrap_servers, READERS, {TopicPartition(TOPIC, partition): offset + 1}
    )


async def letters_with(settings, marker: str):
    return [d for d in await read_dead_letters(settings, [topics.dlq(TOPIC)]) if marker in str(d.record)]


def appeals(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "dlq", *args],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_poison_message_is_dead_lettered_once_and_can_be_replayed(system, settings):
    marker = f"POISON-{uuid.uuid4().hex[:8]}"
    poison = json.dumps({"ticket_no": marker, "action": "teleported"}).encode()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(TOPIC, poison, key=marker.encode())
    finally:
        await producer.stop()
    await all_groups_past(settings, sent.partition, sent.offset)

    (letter,) = await letters_with(settings, marker)
    assert letter.record["topic"] == TOPIC
    assert (letter.record["partition"], letter.record["offset"]) in (
        (sent.partition, sent.offset),
        (None, None),
    )
    assert letter.record["group"] in READERS
    assert letter.record["error"]
    assert json.loads(letter.record["body"]) == json.loads(poison)

    listed = appeals(settings, "list", "--topic", TOPIC, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines() if marker in line]
    assert [r["ref"] for r in rows] == [letter.ref]
    assert rows[0]["replayed"] is False

    replayed = appeals(settings, "replay", TOPIC, "--ref", letter.ref)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout
    # Still poison (nothing was fixed): the copy is dead-lettered once more, once.
    letters = await eventually(lambda: _at_least(letters_with(settings, marker), 2), timeout=60)
    await asyncio.sleep(2)  # the other groups reach it too
    assert len(await letters_with(settings, marker)) == len(letters) == 2

    again = appeals(settings, "replay", TOPIC, "--ref", letter.ref)
    assert "replayed 0, skipped 1" in again.stdout


async def _at_least(found, n: int):
    letters = await found
    return letters if len(letters) >= n else None


async def test_a_redelivered_poison_message_is_not_dead_lettered_twice(system, settings):
    """The claim also covers the same group meeting the message again (a batch retried)."""
    from redis.asyncio import Redis

    from shared.bus import EventPublisher

    marker = f"POISON-{uuid.uuid4().hex[:8]}"
    publisher = EventPublisher(settings, client_id="test-dlq")
    publisher.claims = Redis.from_url(settings.redis_url)
    await publisher.start()
    try:
        for _ in range(3):
            await dead_letter(
                publisher, TOPIC, [(marker.encode(), "broken")], "tester", positions=[(0, 10**9, 1)]
            )
    finally:
        await publisher.stop()
        await publisher.claims.aclose()
    letters = await eventually(lambda: letters_with(settings, marker), timeout=30)
    assert len(letters) == 1
    assert letters[0].record["group"] == group_id("tester", TOPIC)
    assert letters[0].record["offset"] == 10**9


async def test_every_dead_letter_of_a_batch_is_listed(system, settings):
    """Tansu reports a partition's end offset as the first offset of its last batch + 1: a reader
    that stopped there would miss the rest of that batch."""
    marker = f"POISON-{uuid.uuid4().hex[:8]}"
    # One key and a linger: the ten records travel as one batch, the partition's last.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=200)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topics.dlq(TOPIC),
                json.dumps({"topic": TOPIC, "error": "broken", "body": f"{marker}-{i}"}).encode(),
                key=marker.encode(),
            )
            for i in range(10)
        ]
        offsets = [m.offset for m in await asyncio.gather(*sent)]
    finally:
        await producer.stop()
    assert offsets == list(range(offsets[0], offsets[0] + 10))
    letters = await letters_with(settings, marker)
    assert sorted(d.record["body"] for d in letters) == sorted(f"{marker}-{i}" for i in range(10))


async def test_the_end_of_a_partition_is_past_its_last_batch(system, settings):
    """What the fault tests compare a group's committed offset with: if the end were one batch
    early, a group would look caught up while that batch was still to be handled."""
    topic = topics.dlq(TOPIC)
    marker = f"END-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=200)
    await producer.start()
    try:
        sent = [await producer.send(topic, f"{marker}-{i}".encode(), key=marker.encode()) for i in range(10)]
        last = (await asyncio.gather(*sent))[-1]
    finally:
        await producer.stop()
    ends = await ends_of(settings.kafka_bootstrap_servers, [topic])
    assert ends[TopicPartition(topic, last.partition)] >= last.offset + 1


async def test_a_dead_letter_of_a_ticket_erased_since_is_replayed_without_the_personal_data(
    system, settings, redis
):
    marker = f"POISON-{uuid.uuid4().hex[:8]}"
    words = "我叫郑秀英，住幸福里小区5号楼"
    poison = json.dumps({"ticket_no": marker, "action": "teleported", "note": words}, ensure_ascii=False)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(TOPIC, poison.encode(), key=marker.encode())
    finally:
        await producer.stop()
    await all_groups_past(settings, sent.partition, sent.offset)
    (letter,) = await letters_with(settings, marker)
    assert words in letter.record["body"]
    # The resident's data is erased while the message waits in the dead-letter topic.
    await redis.set(f"t:{marker}", json.dumps({"personal_data_removed_at": "2026-12-01T06:00:00Z"}))

    replayed = appeals(settings, "replay", TOPIC, "--ref", letter.ref)
    assert replayed.returncode == 0, replayed.stderr
    assert "1 without the personal data erased since" in replayed.stdout
    # Still poison: its replayed copy comes back to the dead-letter topic, as it was published.
    letters = await eventually(lambda: _at_least(letters_with(settings, marker), 2), timeout=60)
    (copy_letter,) = [d for d in letters if d.ref != letter.ref]  # (listed by partition, not by time)
    copy = json.loads(copy_letter.record["body"])
    assert copy["ticket_no"] == marker
    assert copy["action"] == "teleported"
    assert words not in json.dumps(copy, ensure_ascii=False)
