"""Personal data stays in the contact record: after a full flow (appeal with a name, assignment,
acknowledgement SMS, resolution, survey, the resident's reply), no log line of any process and no
event on any topic carries the raw phone number or the name."""

from __future__ import annotations

import json

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import topics
from tests.conftest import as_department, eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]

PHONE = "13766554433"
NAME = "欧阳秀英"
TEXT = "阳光花园3号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的，老人孩子都容易摔倒，希望尽快修好"


def forms(phone: str) -> list[str]:
    """The ways a phone number can be written down: as given and with the country code."""
    return [
        phone,
        f"86{phone}",
        f"{phone[:3]}-{phone[3:7]}-{phone[7:]}",
        f"{phone[:3]} {phone[3:7]} {phone[7:]}",
    ]


async def every_event(settings) -> list[tuple[str, bytes]]:
    """Every record on every topic (dead letters included), from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        existing = await consumer.topics()
        parts = [
            TopicPartition(t, p)
            for t in topics.ALL_TOPICS
            if t in existing
            for p in consumer.partitions_for_topic(t) or ()
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: list[tuple[str, bytes]] = []
        remaining = {tp for tp in parts if end[tp] > 0}
        while remaining:
            for tp, records in (await consumer.getmany(*remaining, timeout_ms=1000)).items():
                out += [(tp.topic, r.value or b"") for r in records if r.offset < end[tp]]
                if records and records[-1].offset >= end[tp] - 1:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def test_no_raw_phone_or_name_in_any_log_or_event(api, redis, settings, system):
    r = await api.post(
        "/api/v1/appeals",
        json={
            "channel": "hotline",
            "caller_phone": PHONE,
            "caller_name": NAME,
            "text": TEXT,
            "address": "阳光花园3号楼",
        },
    )
    assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]

    async def ticket_in(*statuses: str) -> dict | None:
        t = (await api.get(f"/api/v1/tickets/{no}")).json()
        return t if t.get("status") in statuses else None

    async def sms(kind: str) -> list[dict]:
        return [
            m
            for m in map(json.loads, await redis.lrange("sms:outbox", 0, -1))
            if m["phone"] == PHONE and m["kind"] == kind
        ]

    ticket = await eventually(lambda: ticket_in("assigned"))
    assert await eventually(lambda: sms("ack"))
    r = await api.post(
        f"/api/v1/tickets/{no}/resolve",
        json={"note": "已维修电梯"},
        headers=await as_department(redis, ticket),
    )
    assert r.status_code == 200, r.text
    assert await eventually(lambda: sms("survey"))
    await eventually(lambda: ticket_in("surveyed"))
    r = await api.post("/api/v1/sms/inbound", json={"phone": PHONE, "text": "1 满意"})
    assert r.status_code == 200, r.text
    await eventually(lambda: ticket_in("closed"))

    # The contact record holds them (the notifier needs the number); nothing else may.
    secrets = [*forms(PHONE), NAME]
    events = await every_event(settings)
    assert any(no.encode() in value for _, value in events), "the flow's events were read"
    leaks = [(t, v[:200]) for t, v in events for s in secrets if s.encode() in v]
    assert not leaks, leaks

    logs = sorted(system.log_dir.glob("*.log"))
    assert {p.stem for p in logs} >= {"api", "intake", "classifier", "router", "notifier"}
    for path in logs:
        text = path.read_text(errors="replace")
        found = [s for s in secrets if s in text]
        assert not found, f"{path.name} has {found}"
