"""Personal data: a full flow (a hotline appeal with the caller's phone and name, the department's
resolution, the survey SMS and the resident's reply) on a system of its own, logging at DEBUG; then
no log line of any process (the services and the broker and Redis) and no event on any topic
(dead-letter topics included) may hold the raw phone number or the caller's name.

The appeal's text holds a neighbour's name and phone and an ID number as an operator would type
them, and the resident's reply a third phone: intake and the notifier mask personal data typed into
free text (`shared.privacy.mask_personal_data`), so none of them may appear either, and the answer
to the operator says that the text was masked. The text holds neither the caller's phone nor the name, so
that finding either can only mean the system copied it from the fields made for them
(`caller_phone`, `caller_name`)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.asyncio import Redis

from services.launcher import WORKERS
from shared import topics
from shared.auth import issue_token
from tests.conftest import eventually
from tests.faults_support import (
    admin_client,
    caught_up,
    consumer_groups,
    isolated_system,
    read_topics,
    sms_outbox,
)

pytestmark = [pytest.mark.integration, pytest.mark.own_system(lane=2)]

PHONE = "13591827364"
TYPED_PHONE = "135 9182 7364"  # as the operator typed it; stored as PHONE
NAME = "司马清源"
# Typed into the words: a neighbour's name and phone (spaced as spoken) and the caller's ID number.
IN_TEXT_NAME, IN_TEXT_PHONE, IN_TEXT_ID = "刘建国", "13924681357", "330106198706140036"
TEXT = (
    "阳光花园3号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的，老人孩子都容易摔倒，希望尽快修好。"
    f"楼下邻居{IN_TEXT_NAME}师傅也反映过，电话139 2468 1357；我的身份证号{IN_TEXT_ID}"
)
IN_REPLY_PHONE = "18765432109"
REPLY = "1 修好了，谢谢，有事打187-6543-2109"
# What must not appear anywhere: the number (and its last eight digits: the mask shows four), the
# typed form, and the name as it is and as JSON escapes it; the numbers in the words, as typed and
# as digits, and the parts their masks hide (an ID's birth date).
SECRETS = (
    *(PHONE, PHONE[-8:], TYPED_PHONE, NAME, json.dumps(NAME)[1:-1]),
    *(IN_TEXT_NAME, json.dumps(IN_TEXT_NAME)[1:-1]),
    *(IN_TEXT_PHONE, IN_TEXT_PHONE[-8:], "2468 1357", IN_TEXT_ID, IN_TEXT_ID[6:14]),
    *(IN_REPLY_PHONE, IN_REPLY_PHONE[-8:], "6543-2109"),
)
MASKED = "135****7364"
SERVICES = ("intake", "classifier", "router", "notifier")


async def everything_consumed(bootstrap: str) -> bool:
    """Every consumer group of the services has committed up to the end of every partition of
    every topic it reads."""
    return await caught_up(bootstrap, consumer_groups(*SERVICES))


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


async def test_no_phone_or_name_in_any_log_line_or_event(settings, tmp_path):
    started = time.monotonic()
    with isolated_system(settings, tmp_path, log_level="DEBUG") as (system, s):
        system.start_all()
        await asyncio.to_thread(system.ready, WORKERS)
        redis = Redis.from_url(s.redis_url)
        try:
            async with await admin_client(system, s) as api:

                async def ticket(no: str, *statuses: str) -> dict | None:
                    r = await api.get(f"/api/v1/tickets/{no}")
                    return r.json() if r.status_code == 200 and r.json()["status"] in statuses else None

                async def sms(kind: str) -> list[dict]:
                    return [m for m in await sms_outbox(redis) if m["phone"] == PHONE and m["kind"] == kind]

                r = await api.post(
                    "/api/v1/appeals",
                    json={
                        "channel": "hotline",
                        "caller_phone": TYPED_PHONE,
                        "caller_name": NAME,
                        "text": TEXT,
                        "address": "阳光花园3号楼",
                    },
                )
                assert r.status_code == 201, r.text
                no = r.json()["ticket_no"]
                # The operator is told that the words were masked, not left to find them changed.
                assert r.json()["masked"] == ["text"]
                assert (
                    "已对诉求内容中的个人信息（电话、证件号、银行卡号、姓名）脱敏显示" in r.json()["message"]
                )
                assigned = await eventually(lambda: ticket(no, "assigned"), timeout=120)
                department = await issue_token(redis, "department", assigned["department"]["id"])
                r = await api.post(
                    f"/api/v1/tickets/{no}/resolve",
                    json={"note": "已更换路灯灯泡，恢复照明"},
                    headers={"Authorization": f"Bearer {department}"},
                )
                assert r.status_code == 200, r.text
                await eventually(lambda: sms("survey"), timeout=120)
                await eventually(lambda: ticket(no, "surveyed"), timeout=120)
                gateway = await issue_token(redis, "sms_gateway")  # a resident's SMS comes only through it
                r = await api.post(
                    "/api/v1/sms/inbound",
                    json={"phone": f"+86{PHONE}", "text": REPLY},
                    headers={"Authorization": f"Bearer {gateway}"},
                )
                assert r.status_code == 200, r.text
                await eventually(lambda: ticket(no, "closed"), timeout=120)
                # The flow did use the phone: the resident had the acknowledgement and the survey.
                assert await sms("ack")
        finally:
            await redis.aclose()
        await eventually(lambda: everything_consumed(s.kafka_bootstrap_servers), timeout=120, interval=1)
        system.stop_all()  # their last lines (shutdown) written too

        flowed = await read_topics(s.kafka_bootstrap_servers, topics.ALL_TOPICS)
        events = [
            (t, r.offset, r.value.decode("utf-8", errors="replace")) for t, rs in flowed.items() for r in rs
        ]
        for topic in (
            topics.APPEAL_RECEIVED,
            topics.TICKET_ASSIGNED,
            topics.SURVEY_SENT,
            topics.SURVEY_ANSWERED,
        ):
            assert flowed[topic], f"nothing on {topic}: the flow did not go through it"
        assert any(MASKED in value for _, _, value in events), "no event carries the caller, even masked"
        # The typed numbers did flow, masked: in the appeal and in the resident's answer.
        assert any("刘**师傅" in v and "139****1357" in v and "330106********0036" in v for _, _, v in events)
        assert any("187****2109" in value for _, _, value in events), "the reply's words never flowed"
        found = [(t, offset, leaks(value)) for t, offset, value in events if leaks(value)]
        assert not found, f"personal data in events: {found[:5]}"

        logs = sorted([*system.log_files(), *(tmp_path / "servers").glob("*.log")])
        assert {p.stem for p in logs} >= {*SERVICES, "api"}
        lines = [(p.name, line) for p in logs for line in p.read_text(errors="replace").splitlines()]
        assert any(MASKED in line for _, line in lines), "no log line names the caller, even masked"
        found_lines = [(name, line[:200], leaks(line)) for name, line in lines if leaks(line)]
        assert not found_lines, f"personal data in logs: {found_lines[:5]}"
    print(f"\n{len(events)} events, {len(lines)} log lines searched; {time.monotonic() - started:.0f}s")
