"""The HTTP SMS gateway against a real HTTP server on loopback that fails the ways providers fail:
5xx then success, a 4xx refusal, timeouts, dropped connections. And the notifier over it: a provider
outage longer than the gateway's retries holds the message for a later scan, it is not lost."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.notifier.gateway import HttpSmsGateway, Message, PermanentSmsError, TransientSmsError
from services.notifier.policy import Policy, QuietHours
from services.notifier.service import Notifier
from services.notifier.texts import load_texts
from shared.events import AppealReceived
from shared.store import TicketStore
from tests.loopback import QuietHandler, serving


class Provider:
    """A scripted SMS provider: each request takes the next behaviour ("ok", 500, 400, "slow", "drop")."""

    def __init__(self) -> None:
        self.script: list = []
        self.requests: list[dict] = []
        provider = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                provider.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                step = provider.script.pop(0) if provider.script else "ok"
                if step == "drop":
                    self.connection.close()
                    return
                if step == "slow":
                    time.sleep(1.0)
                    step = "ok"
                status = 200 if step == "ok" else step
                payload = json.dumps(
                    {"id": f"p-{len(provider.requests)}"} if status == 200 else {"error": "x"}
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

        self.handler = Handler


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    with serving(p.handler) as server:
        p.url = f"http://127.0.0.1:{server.server_port}/sms/send"
        yield p


def gateway(provider: Provider, delays: list[float], attempts: int = 4) -> HttpSmsGateway:
    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    return HttpSmsGateway(provider.url, "secret", attempts=attempts, base_delay=0.2, timeout=0.3, sleep=sleep)


MESSAGE = Message("13812345678", "【12345】您的诉求已受理，工单号20261123-000001", "ack", "20261123-000001")


async def test_server_errors_are_retried_with_exponential_backoff(provider):
    provider.script = [500, 503, "ok"]
    delays: list[float] = []
    gw = gateway(provider, delays)
    assert await gw.send(MESSAGE) == "p-3"
    assert len(provider.requests) == 3
    assert provider.requests[0]["auth"] == "Bearer secret"
    assert provider.requests[0]["body"] == {
        "phone": MESSAGE.to,
        "text": MESSAGE.text,
        "client_ref": MESSAGE.message_id,
    }
    assert len(delays) == 2
    assert 0.16 <= delays[0] <= 0.2
    assert 0.32 <= delays[1] <= 0.4
    await gw.aclose()


async def test_a_refusal_is_permanent_and_not_retried(provider):
    provider.script = [400]
    gw = gateway(provider, [])
    with pytest.raises(PermanentSmsError, match="HTTP 400"):
        await gw.send(MESSAGE)
    assert len(provider.requests) == 1
    await gw.aclose()


async def test_timeouts_and_dropped_connections_are_transient(provider):
    provider.script = ["slow", "drop", "ok"]
    gw = gateway(provider, [])
    assert await gw.send(MESSAGE) == "p-3"
    assert len(provider.requests) == 3
    await gw.aclose()


async def test_rate_limiting_is_retried(provider):
    provider.script = [429, "ok"]
    gw = gateway(provider, [])
    assert await gw.send(MESSAGE) == "p-2"
    await gw.aclose()


async def test_giving_up_after_the_attempts(provider):
    provider.script = [500] * 10
    delays: list[float] = []
    gw = gateway(provider, delays, attempts=3)
    with pytest.raises(TransientSmsError, match="after 3 attempts"):
        await gw.send(MESSAGE)
    assert len(provider.requests) == 3
    assert len(delays) == 2
    await gw.aclose()


def test_backoff_is_capped():
    gw = HttpSmsGateway("http://127.0.0.1:1/x", base_delay=1, max_delay=5)
    assert all(gw.backoff(n) <= 5 for n in range(1, 30))
    assert gw.backoff(3) >= 3.2  # 4 s minus at most 20 % jitter
    with pytest.raises(ValueError, match="SMS_GATEWAY_URL"):
        HttpSmsGateway("provider.example/send")


@pytest.mark.integration
async def test_the_notifier_keeps_what_the_provider_could_not_take(provider, redis):
    """Outage beyond the retries: the message waits in the job queue and goes out on a later scan;
    a refused message is marked failed; receipts update the state."""
    sh = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 11, 23, 12, 0, tzinfo=sh)

    async def no_publish(events) -> None:
        raise AssertionError("nothing to publish here")

    notifier = Notifier(
        TicketStore(redis),
        gateway(provider, [], attempts=2),
        no_publish,
        texts=load_texts(),
        policy=Policy(QuietHours.parse("none"), 5, sh),
        clock=lambda: now,
        jobs_key=f"test:due:{uuid.uuid4().hex}",
    )
    provider.script = [500, 500]
    appeal = AppealReceived(ticket_no="20261123-000401", channel="hotline", text="路灯坏了")
    assert await notifier.acknowledge(appeal, appeal.ticket_no, "13812340001") == "retrying"
    message_id = provider.requests[0]["body"]["client_ref"]
    assert (await notifier.states.get(message_id))["state"] == "retrying"
    assert await notifier.scan(now + timedelta(minutes=1)) == 0
    assert await notifier.scan(now + timedelta(minutes=5)) == 1  # the provider is back
    assert len(provider.requests) == 3
    assert provider.requests[2]["body"]["client_ref"] == message_id
    assert (await notifier.states.get(message_id))["provider_id"] == "p-3"
    assert await notifier.states.receipt(message_id, delivered=True)
    assert (await notifier.states.get(message_id))["state"] == "delivered"
    assert not await notifier.states.receipt("no-such-message", delivered=True)

    provider.script = [400]
    refused = AppealReceived(ticket_no="20261123-000402", channel="hotline", text="路灯坏了")
    assert await notifier.acknowledge(refused, refused.ticket_no, "13812340002") == "failed"
    failed_id = provider.requests[-1]["body"]["client_ref"]
    assert (await notifier.states.get(failed_id))["state"] == "failed"
    await notifier.gateway.aclose()
