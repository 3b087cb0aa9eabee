"""The whole pipeline on the real broker and Redis, through the running processes:
submit -> classify -> assign -> resolve -> survey SMS -> resident's reply -> closed or reopened."""

from __future__ import annotations

import json
import random
import re
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared import topics
from shared.bus import ends_of, group_id, group_session
from shared.events import AppealReceived, Caller
from tests.conftest import as_department, as_sms_gateway, days_since, eventually, groups_past, local_today

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]

LIGHT = "阳光花园3号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的，老人孩子都容易摔倒，希望尽快修好"


async def submit(api: httpx.AsyncClient, phone: str, text: str = LIGHT, **extra) -> str:
    r = await api.post(
        "/api/v1/appeals", json={"channel": "hotline", "caller_phone": phone, "text": text, **extra}
    )
    assert r.status_code == 201, r.text
    ticket_no = r.json()["ticket_no"]
    assert re.fullmatch(r"\d{8}-\d{6}", ticket_no)
    return ticket_no


async def ticket_when(api: httpx.AsyncClient, no: str, predicate) -> dict:
    async def probe():
        r = await api.get(f"/api/v1/tickets/{no}")
        return r.json() if r.status_code == 200 and predicate(r.json()) else None

    return await eventually(probe)


async def resolve_when_assigned(api: httpx.AsyncClient, redis, no: str) -> None:
    """Once the ticket is assigned, its department resolves it (the survey SMS follows)."""
    ticket = await ticket_when(api, no, lambda t: t["status"] == "assigned")
    r = await api.post(
        f"/api/v1/tickets/{no}/resolve",
        json={"note": "已更换路灯灯泡，恢复照明"},
        headers=await as_department(redis, ticket),
    )
    assert r.status_code == 200, r.text


async def outbox_for(redis, phone: str, kind: str) -> list[dict]:
    return [
        m
        for m in map(json.loads, await redis.lrange("sms:outbox", 0, -1))
        if m["phone"] == phone and m["kind"] == kind
    ]


async def test_appeal_flows_to_a_department_and_closes_on_a_satisfied_reply(api, redis):
    phone = "13812345678"
    no = await submit(api, phone, address="阳光花园3号楼")

    ticket = await ticket_when(api, no, lambda t: t["status"] == "assigned")
    assert ticket["category"]
    assert ticket["grid"]["grid"]
    assert set(ticket["department"]) >= {"id", "name"}
    assert ticket["caller"]["masked_phone"] == "138****5678"
    assert phone not in json.dumps(ticket, ensure_ascii=False)  # departments never see the number
    kinds = [h["topic"] for h in ticket["history"]]
    assert kinds[:3] == ["appeal.received", "appeal.classified", "ticket.assigned"]
    assert ticket["history"][2]["explanation"]  # the router says why

    # The acknowledgement SMS went to the caller (for this ticket: other tests' slips use the number).
    async def acknowledged() -> list[dict]:
        return [m for m in await outbox_for(redis, phone, "ack") if m["ticket_no"] == no]

    assert await eventually(acknowledged)

    r = await api.post(
        f"/api/v1/tickets/{no}/resolve",
        json={"note": "已更换路灯灯泡，恢复照明"},
        headers=await as_department(redis, ticket),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "resolved"

    survey = (await eventually(lambda: outbox_for(redis, phone, "survey")))[0]
    assert no in survey["text"]
    assert "回复1满意" in survey["text"]
    await ticket_when(api, no, lambda t: t["status"] == "surveyed")

    r = await api.post(
        "/api/v1/sms/inbound", json={"phone": phone, "text": "1"}, headers=await as_sms_gateway(redis)
    )
    assert r.status_code == 200
    assert r.json()["ticket_no"] == no
    closed = await ticket_when(api, no, lambda t: t["status"] == "closed")
    assert closed["rating"] == 1
    assert [h["topic"] for h in closed["history"]][-2:] == ["survey.answered", "ticket.updated"]


async def test_a_call_answered_on_the_spot_is_resolved_and_surveyed_without_a_department(api, redis):
    first_day = local_today()  # before the call: the figures' local day may turn meanwhile
    phone = f"139{random.randrange(10**8):08d}"
    answer = "已告知来电人：社保卡补办可携带身份证到任一社保服务网点办理，当场可取"
    r = await api.post(
        "/api/v1/appeals",
        json={
            "caller_phone": phone,
            "text": "来电人咨询社保卡丢了怎么补办，需要带什么材料",
            "direct_answer": answer,
        },
    )
    assert r.status_code == 201, r.text
    assert "当场答复" in r.json()["message"]
    no = r.json()["ticket_no"]
    ticket = await ticket_when(api, no, lambda t: t["status"] in ("resolved", "surveyed"))
    assert ticket["department"]["id"] == "dispatch_desk"
    assert ticket["assigned_via"] == "answered"
    assert ticket["resolution_note"] == answer
    actions = [h.get("action") for h in ticket["history"] if h["topic"] == "ticket.updated"]
    assert actions[:2] == ["accepted", "resolved"]
    survey = (await eventually(lambda: outbox_for(redis, phone, "survey")))[0]
    assert no in survey["text"]
    assert await outbox_for(redis, phone, "ack") == []  # the caller has the answer already

    # The desk's figures count it as answered on the call (直接答复率), the city's by the record too.
    async def counted():
        r = await api.get("/api/v1/stats", params={"group_by": "department", **days_since(first_day)})
        desk = next((g for g in r.json()["groups"] if g["group"] == "dispatch_desk"), None)
        return desk if desk and desk["answered_directly"] >= 1 else None

    desk = await eventually(counted)
    assert 0 < desk["direct_answer_rate"] <= 1
    r = await api.post("/api/v1/appeals", json={"caller_phone": phone, "text": LIGHT, "direct_answer": "好"})
    assert r.status_code == 422
    assert r.json()["field"] == "direct_answer"


async def test_unsatisfied_reply_reopens_the_ticket(api, redis):
    phone = "13900001111"
    no = await submit(
        api,
        phone,
        text="锦绣家园2栋楼下烧烤摊每天晚上吵到凌晨两点，油烟也很大，影响休息",
        address="锦绣家园2栋",
    )
    ticket = await ticket_when(api, no, lambda t: t["status"] in ("assigned", "review"))
    r = await api.post(
        f"/api/v1/tickets/{no}/resolve", json={"note": "已劝离"}, headers=await as_department(redis, ticket)
    )
    assert r.status_code == 200, r.text
    await eventually(lambda: outbox_for(redis, phone, "survey"))
    await ticket_when(api, no, lambda t: t["status"] == "surveyed")
    r = await api.post(
        "/api/v1/sms/inbound",
        json={"phone": phone, "text": "3 根本没解决，今晚还在"},
        headers=await as_sms_gateway(redis),
    )
    assert r.json()["rating"] == 3
    reopened = await ticket_when(api, no, lambda t: t["reopens"] == 1)
    assert reopened["status"] == "assigned"
    assert reopened["history"][-1]["action"] == "reopened"
    assert "今晚还在" in reopened["history"][-1]["note"]


async def test_invalid_appeal_gets_a_clear_422(api):
    r = await api.post(
        "/api/v1/appeals", json={"channel": "hotline", "caller_phone": "12345", "text": "路灯坏了很久了"}
    )
    assert r.status_code == 422
    assert r.json()["field"] == "caller_phone"
    r = await api.post("/api/v1/appeals", json={"channel": "hotline", "text": "坏了"})
    assert r.status_code == 422
    assert r.json()["field"] == "text"
    r = await api.post("/api/v1/appeals", json={"channel": "pigeon", "text": "路灯坏了很久了"})
    assert r.status_code == 422
    assert r.json()["field"] == "channel"


async def test_idempotency_key_returns_the_same_ticket(api):
    body = {"channel": "hotline", "caller_phone": "13700000000", "text": LIGHT}
    headers = {"Idempotency-Key": "op7-call-20261123-001"}
    first = await api.post("/api/v1/appeals", json=body, headers=headers)
    again = await api.post("/api/v1/appeals", json=body, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert first.json()["ticket_no"] == again.json()["ticket_no"]


async def test_illegal_transition_is_refused(api, redis):
    no = await submit(api, f"136{random.randint(0, 99_999_999):08d}")  # a caller of its own
    ticket = await ticket_when(api, no, lambda t: t["status"] in ("assigned", "review"))
    dept = await as_department(redis, ticket)
    assert (
        await api.post(f"/api/v1/tickets/{no}/resolve", json={"note": "修好了"}, headers=dept)
    ).status_code in (200, 409)
    again = await api.post(f"/api/v1/tickets/{no}/accept", headers=dept)
    assert again.status_code == 409
    assert "不能" in again.json()["message"]
    assert (await api.get("/api/v1/tickets/20990101-999999")).status_code == 404


async def test_poison_message_goes_to_the_dead_letter_topic_and_the_pipeline_keeps_going(api, settings):
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    consumer = AIOKafkaConsumer(
        topics.dlq(topics.APPEAL_RECEIVED),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id="test-dlq-reader",
        auto_offset_reset="earliest",
        **group_session(settings),  # joins as soon as the workers do
    )
    await producer.start()
    await consumer.start()
    try:
        # Unique: a poison body is dead-lettered once per session's Redis, whoever sent it first.
        marker = uuid.uuid4().hex
        await producer.send_and_wait(
            topics.APPEAL_RECEIVED, f'{{"ticket_no": "x", "channel": "hotline", "m": "{marker}"'.encode()
        )
        seen: list[dict] = []

        async def ours() -> dict | None:
            # Other tests of the session may have dead-lettered on this topic before: find ours.
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                seen.extend(json.loads(r.value) for r in batch)
            return next((r for r in seen if marker in r["body"]), None)

        record = await eventually(ours)
        assert record["topic"] == topics.APPEAL_RECEIVED
        assert record["error"]
        assert marker in record["body"]
        # ...and appeals after it still flow.
        no = await submit(api, f"135{random.randint(0, 99_999_999):08d}")
        await ticket_when(api, no, lambda t: t["status"] in ("assigned", "review"))
    finally:
        await producer.stop()
        await consumer.stop()


async def test_the_same_event_twice_changes_nothing(api, settings):
    """A consumer restarted before its commit sees events again: nothing happens twice."""
    event = AppealReceived(
        ticket_no="20261123-900001",
        channel="hotline",
        text=LIGHT,
        caller=Caller(caller_id="c-test", masked_phone="138****0000"),
    )
    bootstrap = settings.kafka_bootstrap_servers
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(2):
            sent = await producer.send_and_wait(
                topics.APPEAL_RECEIVED, event.to_bytes(), key=event.ticket_no.encode()
            )
        ticket = await ticket_when(api, event.ticket_no, lambda t: t["status"] in ("assigned", "review"))
        # The duplicate handled by every stage before we look again: the classifier past it, then
        # the router past whatever the classifier published meanwhile.
        received = {TopicPartition(topics.APPEAL_RECEIVED, sent.partition): sent.offset + 1}
        await groups_past(bootstrap, [group_id("classifier", topics.APPEAL_RECEIVED)], received)
        classified = await ends_of(bootstrap, [topics.APPEAL_CLASSIFIED])
        await groups_past(bootstrap, [group_id("router", topics.APPEAL_CLASSIFIED)], classified)
        again = (await api.get(f"/api/v1/tickets/{event.ticket_no}")).json()
        topics_seen = [h["topic"] for h in again["history"]]
        assert topics_seen.count("ticket.assigned") == 1
        assert topics_seen.count("appeal.classified") == 1
        assert again["history"] == ticket["history"] or len(again["history"]) == len(ticket["history"])
    finally:
        await producer.stop()


async def test_every_service_serves_metrics(system):
    async with httpx.AsyncClient() as client:
        for name, port in system.metrics_ports.items():
            r = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert r.status_code == 200, name
        r = await client.get(f"{system.base_url}/metrics/")
        assert "appeals_received_total" in r.text
