"""What the fault tests share: a system on servers of its own (so that killing its processes, and
reading its topics from the beginning, concerns nothing but the test), a steady stream of hotline
appeals, and the checks that every acknowledged appeal was routed exactly once."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from shared import bus, topics
from shared.auth import issue_token
from shared.embedded import EmbeddedServers, free_port
from shared.settings import Settings
from shared.store import TicketStore
from tests.conftest import System, eventually

CONSUMERS = ("classifier", "router", "notifier")
# Appeals flow from before the first kill until EVERY more have been answered after the last one,
# EVERY between kills, at most LIMIT in all. Kills wait for answers rather than the clock, so each
# one meets appeals in flight however slow the machine is, and what bounds a test is its kills (and
# restarts), not the count.
LIMIT = 5000
EVERY = 100

# Appeals of several categories and places, so that routing, review and hotspot meetings all occur.
# The texts carry no phone and no name: those travel only in the fields made for them.
TEXTS = (
    "阳光花园{n}号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的，希望尽快修好",
    "锦绣家园{n}栋楼下烧烤摊每天晚上吵到凌晨两点，油烟也很大，影响休息",
    "幸福里小区{n}号楼电梯坏了三天了，老人上下楼很困难",
    "建设路{n}号附近的下水道井盖丢了，很危险，请尽快处理",
    "和平街{n}号门前垃圾堆了好几天没人清运，气味很大",
    "东风小区{n}号楼楼道里堆满杂物，存在消防隐患",
    "人民路{n}号路口红绿灯不亮，车辆行人都很混乱",
    "新华小区{n}号楼自来水发黄有异味，已经两天了",
)


class FaultSystem(System):
    """The system's processes on servers of their own, with replicas and kill -9 of a process.

    Processes are known by a key: the worker's name for the first replica, `name#2` for a second.
    Every process this class starts is a child of the test; only those are ever signalled."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        super().__init__(settings, log_dir)
        self.replica_ports: dict[str, int] = {}

    @staticmethod
    def worker(key: str) -> str:
        return key.split("#", 1)[0]

    def port_of(self, key: str) -> int:
        return self.replica_ports.get(key) or self.metrics_ports[self.worker(key)]

    def start_process(self, key: str) -> subprocess.Popen:
        """Start (or start again) the process `key`; a second replica gets a metrics port of its own,
        which is also how it is seen to be ready. Its output goes to `<worker>.log` with the others'."""
        name = self.worker(key)
        if key == name:
            return self.start(name)
        first = self.procs.get(name)  # `start` files the new process under the worker's name
        port = self.replica_ports.setdefault(key, free_port())
        proc = self.start(name, **{f"METRICS_PORT_{name.upper()}": str(port)})
        self.procs[key] = proc
        if first is not None:
            self.procs[name] = first
        else:
            del self.procs[name]
        return proc

    def start_replicas(self, replicas: int) -> list[str]:
        """api, intake, and `replicas` processes of each consumer. Returns the consumers' keys."""
        self.start_all(("api", "intake"))
        keys = [name if r == 1 else f"{name}#{r}" for name in CONSUMERS for r in range(1, replicas + 1)]
        for key in keys:
            self.start_process(key)
        return keys

    def kill9(self, key: str) -> int:
        """SIGKILL the process `key` (one this test started) and reap it. Returns its pid."""
        proc = self.procs[key]
        proc.kill()
        proc.wait(10)
        return proc.pid

    def restart(self, key: str, timeout: float = 300) -> None:
        self.start_process(key)
        self.wait_for_ports([self.port_of(key)], timeout=timeout)

    def ready(self, keys: Sequence[str]) -> None:
        self.wait_for_ports([self.api_port, *(self.port_of(k) for k in keys)], timeout=300)

    def log_files(self) -> list[Path]:
        assert self.log_dir is not None
        return sorted(self.log_dir.glob("*.log"))


@contextmanager
def isolated_system(
    base: Settings, tmp_path: Path, **overrides: Any
) -> Iterator[tuple[FaultSystem, Settings]]:
    """A broker, a Redis and the system's processes for one test; all stopped at the end."""
    with EmbeddedServers(log_dir=tmp_path / "servers") as servers:
        settings = base.model_copy(
            update={
                "kafka_bootstrap_servers": servers.kafka_bootstrap,
                "redis_url": servers.redis_url,
                # One tester sends thousands of appeals from one address and many callers.
                "rate_limit_per_ip_per_minute": 0,
                "rate_limit_per_caller_per_hour": 0,
                **overrides,
            }
        )
        system = FaultSystem(settings, tmp_path / "logs")
        try:
            yield system, settings
        finally:
            system.stop_all()


def phone_of(i: int) -> str:
    return f"139{i:08d}"


@dataclass
class Submissions:
    """What the intake answered: ticket number -> the caller's phone, for every 201 (or the 200 of a
    retry with the same Idempotency-Key, which names the ticket the first attempt created)."""

    acked: dict[str, str] = field(default_factory=dict)
    failed: Counter[str] = field(default_factory=Counter)
    clashes: list[str] = field(default_factory=list)  # ticket numbers given to two appeals
    done: int = 0  # answered or given up
    finished: bool = False  # the flow has ended


async def submit_appeals(
    client: httpx.AsyncClient,
    submissions: Submissions,
    stop: asyncio.Event,
    *,
    limit: int,
    concurrency: int = 16,
    attempts: int = 5,
) -> None:
    """Submit hotline appeals, each from a caller of its own, `concurrency` at a time, until `stop`
    is set or `limit` were sent. An answer that is not an acknowledgement (503 while the broker is
    slow, a timeout) is retried with the same Idempotency-Key; what never is acknowledged is counted
    in `failed`."""
    numbers = iter(range(limit))

    async def one(i: int) -> None:
        body = {
            "channel": "hotline",
            "caller_phone": phone_of(i),
            "text": TEXTS[i % len(TEXTS)].format(n=i % 37 + 1),
        }
        headers = {"Idempotency-Key": f"faults-{i}"}
        last = ""
        for attempt in range(attempts):
            try:
                r = await client.post("/api/v1/appeals", json=body, headers=headers)
            except httpx.TransportError as e:
                last = type(e).__name__
            else:
                if r.status_code in (200, 201):
                    no = r.json()["ticket_no"]
                    if submissions.acked.setdefault(no, phone_of(i)) != phone_of(i):
                        submissions.clashes.append(no)
                    return
                last = f"HTTP {r.status_code}"
                if r.status_code not in (429, 503):
                    break
            await asyncio.sleep(0.5 * (attempt + 1))
        submissions.failed[last] += 1

    async def worker() -> None:
        for i in numbers:
            if stop.is_set():
                return
            try:
                await one(i)
            finally:
                submissions.done += 1

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        submissions.finished = True


async def flow_while(
    client: httpx.AsyncClient,
    faults: Callable[[Submissions], Awaitable[None]],
    *,
    limit: int,
    after: int,
) -> Submissions:
    """Submit appeals while `faults` runs and `after` more once it is over (so that the last fault
    meets new work too), up to `limit` in all. Returns what the intake answered."""
    submissions = Submissions()
    stop = asyncio.Event()
    flow = asyncio.create_task(submit_appeals(client, submissions, stop, limit=limit))
    try:
        await faults(submissions)
        await when_submitted(submissions, submissions.done + after)
    finally:
        stop.set()
        await flow
    return submissions


async def admin_client(system: FaultSystem, settings: Settings) -> httpx.AsyncClient:
    redis = Redis.from_url(settings.redis_url)
    try:
        token = await issue_token(redis, "admin")
    finally:
        await redis.aclose()
    return httpx.AsyncClient(
        base_url=system.base_url,
        timeout=60,
        headers={"Authorization": f"Bearer {token}"},
        limits=httpx.Limits(max_connections=64),
    )


async def when_submitted(submissions: Submissions, done: int) -> None:
    """Wait until `done` submissions have been answered (or the flow has ended)."""

    async def probe() -> bool:
        return submissions.done >= done or submissions.finished

    await eventually(probe, timeout=600, interval=0.05)


async def kill_in_turn(
    system: FaultSystem, keys: Sequence[str], submissions: Submissions, *, every: int, restart: bool
) -> list[tuple[str, int, int]]:
    """kill -9 the processes `keys` one after the other, each after `every` more appeals were
    answered; with `restart`, start each again and wait until it is up before the next kill.
    Returns (process, pid, appeals answered at the kill) per kill."""
    killed = []
    for key in keys:
        await when_submitted(submissions, submissions.done + every)
        killed.append((key, system.kill9(key), submissions.done))
        if restart:
            await asyncio.to_thread(system.restart, key)
    return killed


# --- reading what happened ------------------------------------------------------------------------


async def read_topics(bootstrap: str, names: Sequence[str]) -> dict[str, list[ConsumerRecord]]:
    """Every record of the topics so far; a broker that stops answering fails the test in two minutes."""
    async with asyncio.timeout(120):
        return await bus.read_topics(bootstrap, names)


async def group_size(bootstrap: str, group: str) -> int:
    """How many members the consumer group has (Tansu does not report their assignments)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return sum(len(described[5]) for response in responses for described in response.groups)


async def tickets_of(redis: Redis, nos: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    found: dict[str, dict[str, Any] | None] = {}
    for i in range(0, len(nos), 500):
        chunk = nos[i : i + 500]
        for no, raw in zip(chunk, await redis.mget([f"t:{n}" for n in chunk]), strict=True):
            found[no] = json.loads(raw) if raw else None
    return found


async def histories_of(redis: Redis, nos: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for i in range(0, len(nos), 500):
        chunk = nos[i : i + 500]
        async with redis.pipeline(transaction=False) as p:
            for n in chunk:
                p.lrange(f"t:{n}:h", 0, -1)
            replies = await p.execute()
        for n, records in zip(chunk, replies, strict=True):
            found[n] = [json.loads(r) for r in records]
    return found


async def all_tickets(redis: Redis) -> list[dict[str, Any]]:
    keys = [k async for k in redis.scan_iter(match="t:*", count=1000) if not k.endswith(b":h")]
    out = []
    for i in range(0, len(keys), 500):
        out += [json.loads(r) for r in await redis.mget(keys[i : i + 500]) if r]
    return out


async def sms_outbox(redis: Redis) -> list[dict[str, Any]]:
    return [json.loads(m) for m in await redis.lrange("sms:outbox", 0, -1)]


# --- the checks -----------------------------------------------------------------------------------


async def wait_until_routed(redis: Redis, nos: Sequence[str], timeout: float) -> None:
    """Every ticket has left `received` (the router has decided it)."""

    async def waiting() -> list[str]:
        tickets = await tickets_of(redis, nos)
        return [n for n, t in tickets.items() if t is None or t["status"] == "received"]

    async def probe() -> bool:
        return not await waiting()

    try:
        await eventually(probe, timeout=timeout, interval=1)
    except AssertionError:
        left = await waiting()
        raise AssertionError(f"{len(left)} of {len(nos)} tickets never routed, e.g. {left[:5]}") from None


async def wait_until_published(redis: Redis, nos: Sequence[str], timeout: float) -> None:
    """The outbox owes no event of these tickets. A router killed between writing a decision to
    Redis and publishing its event leaves the event there, for a router's relay to publish once it
    is ten seconds old: until then the topic lacks it, and a check of the topic must wait (the
    survivor of the scale-out test takes the dead router's work over within seconds)."""
    wanted = set(nos)

    async def owed() -> list[str]:
        entries = [m.decode() for m in await redis.zrange(TicketStore.OUTBOX, 0, -1)]
        return [m.replace("\t", " ") for m in entries if m.split("\t")[1] in wanted]

    async def none_owed() -> bool:
        return not await owed()

    try:
        await eventually(none_owed, timeout=timeout, interval=0.5)
    except AssertionError:
        left = await owed()
        raise AssertionError(f"{len(left)} events never relayed from the outbox, e.g. {left[:5]}") from None


async def caught_up(bootstrap: str, groups: dict[str, Sequence[str]]) -> bool:
    """Each consumer group (group -> the topics it reads) has committed to the end of every
    partition: all that was published so far has been handled by a process that lived to say so."""
    ends = await bus.ends_of(bootstrap, sorted({t for names in groups.values() for t in names}))
    for group, names in groups.items():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            for tp in (tp for tp in ends if tp.topic in names):
                committed = await consumer.committed(tp)
                if ends[tp] and (committed is None or committed < ends[tp]):
                    return False
        finally:
            await consumer.stop()
    return True


def consumer_groups(*services: str) -> dict[str, list[str]]:
    """The consumer groups these services' workers join, each with the topics it reads, as the
    workers' apps are wired (built, not started)."""
    groups: dict[str, list[str]] = {}
    for name in services:
        app = importlib.import_module(f"services.{name}.app").build_app()
        for sub in app.broker.subscribers:
            groups[sub.group_id] = list(sub.topic_names)
    return groups


async def wait_for_notifier(bootstrap: str, timeout: float) -> None:
    """The notifier has handled every appeal (so each acknowledgement SMS is sent)."""
    groups = consumer_groups("notifier")
    await eventually(lambda: caught_up(bootstrap, groups), timeout=timeout, interval=1)


async def claims_of(redis: Redis, appeal_ids: dict[str, str]) -> dict[str, str]:
    """What the notifier's claim of each ticket's acknowledgement says (ticket -> its appeal.received
    event id): the message id once done, "sending:..." while a send is under way or was cut short,
    "none" when the notifier never claimed it. For the message of a failing check."""
    out: dict[str, str] = {}
    for no, event_id in appeal_ids.items():
        claim = await redis.get(f"sms:done:{event_id}:ack")
        text = claim.decode() if isinstance(claim, bytes) else claim
        out[no] = "none" if text is None else text[:80]
    return out


@dataclass
class Report:
    """Figures for the test's output: how much was repeated on the way (and dropped as repeats)."""

    acked: int
    ticket_assigned_records: int
    distinct_assignments: int
    statuses: Counter[str]


async def settle_and_check(settings: Settings, submissions: Submissions) -> Report:
    """Once the flow is over: every appeal was acknowledged, the router has decided every ticket
    and published what it decided, the notifier has caught up, then `check_exactly_once`."""
    assert not submissions.failed, f"appeals never acknowledged: {submissions.failed}"
    redis = Redis.from_url(settings.redis_url)
    try:
        await wait_until_routed(redis, sorted(submissions.acked), timeout=600)
        await wait_until_published(redis, sorted(submissions.acked), timeout=120)
        await wait_for_notifier(settings.kafka_bootstrap_servers, timeout=300)
        return await check_exactly_once(redis, settings.kafka_bootstrap_servers, submissions)
    finally:
        await redis.aclose()


async def check_exactly_once(redis: Redis, bootstrap: str, submissions: Submissions) -> Report:
    """Every acknowledged appeal was routed exactly once: what the store says (`check_in_store`),
    and one ticket.assigned event id per ticket on the topic, where an event relayed again after a
    crash may appear twice with the same id."""
    nos = sorted(submissions.acked)
    statuses = await check_in_store(redis, submissions)
    records = (await read_topics(bootstrap, [topics.TICKET_ASSIGNED]))[topics.TICKET_ASSIGNED]
    ids: dict[str, set[str]] = defaultdict(set)
    for r in records:
        event = json.loads(r.value)
        ids[event["ticket_no"]].add(event["event_id"])
    several = {no: ids[no] for no in nos if len(ids[no]) != 1}
    assert not several, f"tickets without exactly one ticket.assigned event: {list(several.items())[:3]}"
    return Report(
        acked=len(nos),
        ticket_assigned_records=sum(
            1 for r in records if json.loads(r.value)["ticket_no"] in submissions.acked
        ),
        distinct_assignments=sum(len(ids[no]) for no in nos),
        statuses=statuses,
    )


async def check_in_store(redis: Redis, submissions: Submissions) -> Counter[str]:
    """What Redis says of every acknowledged appeal: no ticket number given to two appeals, one
    ticket per caller, one appeal.received and one ticket.assigned in each ticket's history, a
    status the assignment explains, no SMS of any kind twice for one ticket, and the
    acknowledgement SMS for every one (each appeal here has a phone, and the tests' settings send
    at any hour and cap nothing they send). Returns the count of each status."""
    nos = sorted(submissions.acked)
    assert not submissions.clashes, f"ticket numbers given to two appeals: {submissions.clashes[:5]}"

    # One ticket per caller (each appeal came from a caller of its own): no appeal became two.
    per_caller: dict[str, list[str]] = defaultdict(list)
    for t in await all_tickets(redis):
        per_caller[t["caller"]["masked_phone"] + "|" + str(t["caller"]["caller_id"])].append(t["ticket_no"])
    doubled = {c: ns for c, ns in per_caller.items() if len(ns) > 1}
    assert not doubled, f"callers with more than one ticket: {list(doubled.items())[:3]}"

    tickets = await tickets_of(redis, nos)
    histories = await histories_of(redis, nos)
    statuses: Counter[str] = Counter()
    appeal_ids: dict[str, str] = {}
    for no in nos:
        ticket = tickets[no]
        assert ticket is not None, f"acknowledged {no} has no ticket"
        statuses[ticket["status"]] += 1
        history = histories[no]
        received = [h for h in history if h["topic"] == topics.APPEAL_RECEIVED]
        assigned = [h for h in history if h["topic"] == topics.TICKET_ASSIGNED]
        assert len(received) == 1, f"{no}: appeal.received {len(received)} times in its history"
        appeal_ids[no] = received[0]["event_id"]
        assert len(assigned) == 1, f"{no}: ticket.assigned {len(assigned)} times in its history"
        via = assigned[0]["via"]
        if ticket["status"] == "assigned":
            assert via != "dispatch_desk", f"{no}: assigned, but routed to the dispatch desk"
        elif ticket["status"] == "review":
            assert via == "dispatch_desk", f"{no}: in review, but routed by {via}"
        else:
            assert ticket["status"] == "meeting", f"{no}: status {ticket['status']}"
            assert ticket["meeting_id"], f"{no}: held for a meeting that has no id"

    sent = [m for m in await sms_outbox(redis) if m["ticket_no"] in tickets]
    sms = Counter((m["ticket_no"], m["kind"]) for m in sent)
    repeated = {k: n for k, n in sms.items() if n > 1}
    assert not repeated, f"SMS sent more than once: {list(repeated.items())[:5]}"
    # Every caller had the acknowledgement, kills of the notifier between its claim and the gateway
    # included: the redelivered event sends the recorded message again (same id, taken once).
    without = {no: appeal_ids[no] for no in nos if sms[(no, "ack")] == 0}
    claims = await claims_of(redis, dict(list(without.items())[:5]))
    assert not without, f"{len(without)} callers never had the acknowledgement; their claims: {claims}"
    astray = [
        m["ticket_no"] for m in sent if m["kind"] == "ack" and m["phone"] != submissions.acked[m["ticket_no"]]
    ]
    assert not astray, f"acknowledgements sent to another phone than the caller's: {astray[:5]}"
    return statuses
