"""`appeals bench pipeline`: latency at a fixed offered load, sustained throughput, and the broker's
own limit, everything on this machine.

It publishes `appeal.received` events as intake does (callers whose contacts are stored, so the
notifier sends acknowledgements), either at a fixed rate (`--rate R --duration S`) or as fast as the
broker takes them (`--rate 0 --n N`), and follows each appeal to `ticket.assigned`:

  ack         the broker acknowledged `appeal.received` (when intake would answer the caller)
  classifier  ack -> the classifier's `appeal.classified` record (its producer timestamp)
  router      `appeal.classified` -> the router's `ticket.assigned` record
  delivery    `ticket.assigned` produced -> read by a consumer (this benchmark)
  e2e         ack -> `ticket.assigned` read
  by fifth    the e2e p50 of each fifth of the appeals, in the order acknowledged: whether the
              queue grew over the run

What counts as assigned is the router's first `ticket.assigned` for the appeal, whatever it names:
the department of the responsibility list (`via` rule or fallback) or the dispatch desk (low
confidence: a person routes it). The router may then hold the ticket for a joint meeting (a
hotspot: N appeals of one category in one grid; or two departments with an equal claim): it is
counted at its assignment, and the holds are reported beside it (how many, why, and how long after
the assignment the `escalated` update was read), as are the `via` counts. A hotspot holds the
tickets already assigned in its cluster when the Nth arrives: for them the hold comes seconds (in
this benchmark) or days after their assignment, and is no part of their latency.

Then the same number of hops and message sizes go through the same broker with relays that do
nothing but read and forward (separate processes, like the workers): the broker and client limit, of
which the pipeline's throughput is printed as a fraction. Latency at a rate the system sustains
measures the system; at a rate above it, a queue.

With `--rounds K` the same run is made K times on the same servers and workers, and the figures are
the last round's: the first round pays for starting cold (PostgreSQL's shared buffers and every
heap written for the first time, a new WAL file every 16 MB), which a deployment that has been
running has paid already. Each round prints the state it found the machine in (`fresh_page_us`,
`python_loop_ms`): on a virtual machine both change from one hour to the next.

With `--via-api` the appeals go in as a hotline operator's would: `POST /api/v1/appeals` to the API
(started here with its rate limits off, or the one at API_HOST:API_PORT with external servers), a
given number at a time. "ack" is then the API's answer (it answers once the broker has the appeal),
a stage `api` is added (request sent -> answer), and the API's CPU is counted with the others. The
HTTP client is this process: on one machine it takes CPU the system would otherwise have."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import mmap
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from services.classifier import corpus
from services.launcher import WORKERS, Launcher, external_servers_configured
from shared import topics
from shared.auth import issue
from shared.bus import compression, ensure_topics, group_session, partition_of
from shared.city import load_city
from shared.embedded import EmbeddedServers, free_port
from shared.events import AppealReceived, Caller
from shared.privacy import caller_id, mask_phone
from shared.runtime import settle_heap
from shared.settings import Settings, get_settings

WARMUP_APPEALS = 300  # model loaded, groups joined, caches warm before anything is measured
HOLD_DRAIN_SECONDS = 3  # after the last assignment, how long the holds that follow it are read
RELAY_HOPS = (topics.APPEAL_RECEIVED, topics.APPEAL_CLASSIFIED, topics.TICKET_ASSIGNED)
PIPELINE_ORDER = {t: i for i, t in enumerate((*RELAY_HOPS, topics.TICKET_UPDATED))}


@dataclass
class Trace:
    """One appeal's way through the pipeline, in wall-clock seconds (record timestamps are wall-clock)."""

    sent: float | None = None  # --via-api: the request went out
    received: float | None = None  # --via-api: the API's `appeal.received` record
    acked: float | None = None
    classified: float | None = None
    assigned: float | None = None
    read: float | None = None
    via: str = ""  # how the router assigned it (rule, fallback, dispatch_desk)
    held: float | None = None  # its `escalated` update to a joint meeting read, if there was one
    hold_reason: str = ""  # the meeting's reason (hotspot, ambiguous)


@dataclass
class Run:
    traces: dict[str, Trace] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in RELAY_HOPS})
    first_ack: float = float("inf")
    last_read: float = 0.0
    # --via-api: the API numbers the appeals, so a trace starts at whichever comes first, its answer
    # or its first event (read before the answer was handled).
    open: bool = False


def run_pipeline_bench(
    *,
    n: int,
    callers: int,
    rate: float = 0,
    duration: float = 30,
    replicas: int = 1,
    json_path: Path | None = None,
    broker_limit: bool = True,
    broker_limit_messages: int = 0,
    via_api: bool = False,
    concurrency: int = 32,
    wait_for_record: bool = False,
    rounds: int = 1,
) -> dict[str, Any]:
    """`rounds` > 1: the run again on the same servers and workers, one round after the other;
    the figures are the last round's, with each round's main figures under `rounds`. The first
    round finds the servers just started, the later ones servers that have been running (the
    shared buffers and the heaps written once already, PostgreSQL's old WAL files recycled after
    its first checkpoint), as a deployment's are."""
    launcher = None
    if external_servers_configured():
        settings = get_settings()
    else:
        from services.classifier.analyst import ensure_model

        # The servers' and workers' own output goes to files, so the terminal shows the figures.
        logs = Path(tempfile.mkdtemp(prefix="appeals-bench-logs-"))
        # Redis with its append-only file, fsynced before each reply, as `appeals up` runs it.
        servers = EmbeddedServers(postgres=True, log_dir=logs, redis_append_only=True)
        # A partition for each replica of a group, or a replica would sit idle: every process
        # started (workers and API), and this one, create the topics with as many.
        partitions = max(replicas, get_settings().kafka_topic_partitions)
        launcher = Launcher(
            embedded=servers, env={**os.environ, "KAFKA_TOPIC_PARTITIONS": str(partitions)}, log_dir=logs
        )
        print(f"logs of the servers and workers: {logs}")
        launcher.start_servers()
        settings = get_settings().model_copy(
            update={
                "kafka_bootstrap_servers": servers.kafka_bootstrap,
                "redis_url": servers.redis_url,
                "database_url": servers.database_url,
                "kafka_topic_partitions": partitions,
            }
        )
        ensure_model(load_city(settings.city_config_dir), settings.model_dir)  # before the workers race to
        print(f"starting the {len(WORKERS)} workers, {replicas} of each ...")
        ports = []
        for worker in WORKERS:
            for i in range(replicas):
                port = free_port()
                launcher.start(worker, **{f"METRICS_PORT_{worker.upper()}": str(port)})
                launcher.procs[f"{worker}#{i}"] = launcher.procs.pop(worker)
                ports.append(port)
        if via_api:
            settings = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port()})
            # A benchmark's callers and its one address would be over the limits at once.
            launcher.start(
                "api",
                API_HOST=settings.api_host,
                API_PORT=str(settings.api_port),
                RATE_LIMIT_PER_IP_PER_MINUTE="0",
                RATE_LIMIT_PER_CALLER_PER_HOUR="0",
            )
            ports.append(settings.api_port)
        launcher.wait_for_ports(ports)
    try:
        done: list[dict[str, Any]] = []
        for i in range(rounds):
            if rounds > 1:
                print(f"round {i + 1} of {rounds}")
            figures = asyncio.run(
                _bench(
                    settings,
                    launcher,
                    n=n,
                    callers=callers,
                    rate=rate,
                    duration=duration,
                    replicas=replicas,
                    via_api=via_api,
                    concurrency=concurrency,
                    wait_for_record=wait_for_record,
                )
            )
            done.append(figures)
            if i < rounds - 1:
                _print(figures)  # the last round's after the broker's limit
        if rounds > 1:
            figures["rounds"] = [
                {k: f[k] for k in ROUND_KEYS} | {k: f["machine"][k] for k in STATE_KEYS} for f in done
            ]
        if broker_limit:
            count = figures["completed"] or n
            figures["broker_limit_per_s"] = round(
                _broker_limit(
                    settings,
                    count=broker_limit_messages or max(10_000, min(count, 30_000)),
                    sizes=figures.pop("_sizes"),
                    replicas=replicas,
                )
            )
            figures["fraction_of_broker_limit"] = round(
                figures["e2e_appeals_per_s"] / figures["broker_limit_per_s"], 3
            )
        figures.pop("_sizes", None)
    finally:
        if launcher is not None:
            launcher.stop_all()
    _print(figures)
    if json_path is not None:
        json_path.write_text(json.dumps(figures, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {json_path}")
    return figures


def _cpu_seconds(launcher: Launcher | None) -> dict[str, float]:
    """User + system CPU seconds so far of each process the benchmark started and of everything it
    started in turn (Linux /proc), summed over a service's replicas. The tree matters for
    PostgreSQL: its work is done in backends, children of the postmaster."""
    if launcher is None:
        return {}
    procs = {name: p.pid for name, p in launcher.procs.items()}
    if launcher.embedded is not None:
        procs.update({p.name: p.proc.pid for p in launcher.embedded.processes})
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for name, root in procs.items():
        seconds, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            seconds += stats[pid][1] if pid in stats else 0.0
            todo.extend(children.get(pid, ()))
        service = name.split("#")[0]
        out[service] = out.get(service, 0.0) + seconds
    return out


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and of its children it has reaped)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # fields[1] is ppid; 11-14 utime, stime, cutime, cstime
        out[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / ticks)
    return out


def _appeals(settings: Settings, count: int, run: str, phones: Sequence[str]) -> list[AppealReceived]:
    city = load_city(settings.city_config_dir)
    per_category = max(1, count // len(city.leaf_categories) + 1)
    records = corpus.generate(city, per_category=per_category, seed=2026)
    out = []
    for i in range(count):
        r = records[i % len(records)]
        phone = phones[i % len(phones)]
        out.append(
            AppealReceived(
                ticket_no=f"B{run}-{i:06d}",
                channel="hotline",
                title=r["title"],
                text=r["text"],
                address=r["address"],
                caller=Caller(caller_id=caller_id(phone), masked_phone=mask_phone(phone)),
                received_at=datetime.now(UTC),
            )
        )
    return out


async def _bench(
    settings: Settings,
    launcher: Launcher | None,
    *,
    n: int,
    callers: int,
    rate: float,
    duration: float,
    replicas: int,
    via_api: bool = False,
    concurrency: int = 32,
    wait_for_record: bool = False,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6].upper()
    phones = [f"139{i:08d}" for i in range(callers)]
    await ensure_topics(settings)
    redis = Redis.from_url(settings.redis_url)
    token = ""
    if via_api:  # the API stores each caller's contact itself
        token, _ = await issue(redis, "operator", operator="bench", ttl_seconds=3600, actor="cli:bench")
    else:
        async with redis.pipeline(transaction=False) as p:
            for phone in phones:
                p.hset(f"contact:{caller_id(phone)}", mapping={"phone": phone})
            await p.execute()
    await redis.aclose()

    consumer = AIOKafkaConsumer(
        *([topics.APPEAL_RECEIVED] if via_api else []),
        topics.APPEAL_CLASSIFIED,
        topics.TICKET_ASSIGNED,
        topics.TICKET_UPDATED,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"bench-{run_id}",
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_callers_path_fetch_wait_ms,  # as the workers read
        **group_session(settings),  # and join
    )
    await consumer.start()
    while not consumer.assignment():  # join the group before publishing, so nothing is missed
        await consumer.getmany(timeout_ms=200)
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(  # as intake's (the API's `EventPublisher`)
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        linger_ms=settings.kafka_api_linger_ms,
        max_batch_size=256 * 1024,
        compression_type=compression(settings),
        partitioner=partition_of,
    )
    await producer.start()
    # One client per request out at once, each with one connection: httpx's pool looks through all
    # its connections for every request, which with dozens of them took most of this process's CPU.
    clients: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    for _ in range(concurrency if via_api else 0):
        clients.put_nowait(
            httpx.AsyncClient(
                base_url=f"http://{settings.api_host}:{settings.api_port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
                limits=httpx.Limits(max_connections=1),
            )
        )
    send: Sender = partial(_post, clients, phones) if via_api else partial(_publish, producer)
    try:
        warmup = min(WARMUP_APPEALS, max(50, round(rate * 3))) if rate else WARMUP_APPEALS
        print(f"warming up with {warmup} appeals ...")
        warm = _appeals(settings, warmup, f"W{run_id}", phones)
        await _drive(
            send, consumer, warm, rate=min(rate or 200, 200), run=Run(open=via_api), wait_seconds=120
        )

        count = round(rate * duration) if rate else n
        appeals = _appeals(settings, count, run_id, phones)
        if not via_api:
            # Each appeal's JSON made now rather than while the rate is kept: the benchmark stands
            # in for the API, which makes it, and making it was a tenth of this process's CPU.
            for a in appeals:
                a.to_bytes()
        # As a worker does: what the run holds throughout, the appeals to send among it, out of the
        # collector's sight, and young collections seldom. This process takes its CPU from the
        # same two cores as the system it measures.
        settle_heap()
        offered = f"{rate:,.0f}/s for {duration:g}s" if rate else "as fast as the broker takes them"
        print(f"publishing {count} appeals ({offered}) ...")
        fresh, speed = fresh_page_us(), python_loop_ms()
        redis_before = await _redis_state(settings)
        cpu_before, own_before = _cpu_seconds(launcher), time.process_time()
        run = Run(open=via_api)
        published_in = await _drive(
            send, consumer, appeals, rate=rate, run=run, wait_seconds=max(120, duration * 4)
        )
        behind = await _record_behind(settings, run) if wait_for_record else None
        cpu_after, own_after = _cpu_seconds(launcher), time.process_time()
        redis_after = await _redis_state(settings)
    finally:
        while not clients.empty():
            await clients.get_nowait().aclose()
        await producer.stop()
        await consumer.stop()
    figures = _figures(run, count, rate, published_in, replicas, cpu_before, cpu_after)
    figures["record_behind_s"] = behind
    # Not in the figures' total (the system's CPU), but on the same cores: what measuring costs.
    figures["bench_cpu_us_per_appeal"] = round((own_after - own_before) / max(1, figures["completed"]) * 1e6)
    figures["machine"] |= {"fresh_page_us": fresh, "python_loop_ms": speed}
    figures["redis"] = _redis_growth(redis_before, redis_after, figures["completed"])
    return figures


async def _redis_state(settings: Settings) -> dict[str, int]:
    """What Redis holds and has written to its append-only file, and how often it rewrote the file."""
    redis = Redis.from_url(settings.redis_url)
    try:
        info = {**await redis.info("memory"), **await redis.info("persistence")}
    finally:
        await redis.aclose()
    return {
        "used_memory": int(info["used_memory"]),
        "aof_enabled": int(info.get("aof_enabled", 0)),
        "aof_current_size": int(info.get("aof_current_size", 0)),
        "aof_rewrites": int(info.get("aof_rewrites", 0)),
    }


def _redis_growth(before: dict[str, int], after: dict[str, int], appeals: int) -> dict[str, Any]:
    """Redis's memory and append-only file, grown by the run, per appeal (everything the run made:
    tickets, histories, SMS states, indexes). A rewrite of the file during the run starts it anew
    from the data: what was appended is then not known, and left out (None)."""
    n = max(1, appeals)
    rewrites = after["aof_rewrites"] - before["aof_rewrites"]
    appended = after["aof_current_size"] - before["aof_current_size"]
    return {
        "memory_bytes_per_appeal": round((after["used_memory"] - before["used_memory"]) / n),
        "aof_bytes_per_appeal": round(appended / n) if after["aof_enabled"] and not rewrites else None,
        "aof_rewrites": rewrites,
    }


async def _record_behind(settings: Settings, run: Run, give_up_after: float = 600) -> float | None:
    """Seconds from the last assignment read until the record (PostgreSQL) holds the assignment of
    every appeal assigned (the records worker reads on its own, behind in a flood); None if it did
    not within `give_up_after` seconds. The CPU figures then count the record's whole work, not
    what it had done by the last assignment."""
    missing = {no for no, t in run.traces.items() if t.assigned is not None}
    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        while time.monotonic() - started < give_up_after:
            # Only those not seen yet: asking for all of them five times a second cost PostgreSQL,
            # which the figures count, up to a twentieth of its CPU.
            cur = await conn.execute(
                "SELECT ticket_no FROM tickets WHERE ticket_no = ANY(%s) AND assigned_at IS NOT NULL",
                (sorted(missing),),
            )
            missing.difference_update(no for (no,) in await cur.fetchall())
            if not missing:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
    return None


# Sends one appeal (with its index in the run) and gives what completes when it is acknowledged,
# having recorded that in its trace.
Sender = Callable[[AppealReceived, int, Run], Awaitable["asyncio.Future[Any]"]]


async def _drive(
    send: Sender,
    consumer: AIOKafkaConsumer,
    appeals: list[AppealReceived],
    *,
    rate: float,
    run: Run,
    wait_seconds: float,
) -> float:
    """Send `appeals` (at `rate` a second, or flat out when 0) while reading what comes back;
    returns the seconds sending took. Waits for every assignment or `timeout`."""
    if not run.open:
        for a in appeals:
            run.traces[a.ticket_no] = Trace()
    reader = asyncio.create_task(_read(consumer, run, len(appeals)))
    try:
        started = time.perf_counter()
        pending: list[asyncio.Future[Any]] = []
        tick = 0.005
        for i, appeal in enumerate(appeals):
            if rate:
                due = started + i / rate
                ahead = due - time.perf_counter()
                if ahead > tick:
                    await asyncio.sleep(ahead)
            pending.append(await send(appeal, i, run))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        published = time.perf_counter() - started
        with contextlib.suppress(TimeoutError):  # what is missing then is reported as missing
            await asyncio.wait_for(reader, wait_seconds)
        return published
    finally:
        # Interrupted (Ctrl-C cancels the run), the reader stops with it, before its consumer does.
        reader.cancel()


async def _publish(
    producer: AIOKafkaProducer, appeal: AppealReceived, _: int, run: Run
) -> asyncio.Future[Any]:
    """As intake does: `appeal.received` to the broker, acknowledged when the broker has it."""
    body = appeal.to_bytes()
    run.sizes[topics.APPEAL_RECEIVED].append(len(body))
    fut = await producer.send(topics.APPEAL_RECEIVED, body, key=appeal.ticket_no.encode())
    fut.add_done_callback(lambda f, no=appeal.ticket_no: _acked(run, no, f))
    return fut


async def _post(
    clients: asyncio.Queue[httpx.AsyncClient],
    phones: Sequence[str],
    appeal: AppealReceived,
    i: int,
    run: Run,
) -> asyncio.Future[Any]:
    return asyncio.ensure_future(_post_one(clients, phones[i % len(phones)], appeal, run))


async def _post_one(
    clients: asyncio.Queue[httpx.AsyncClient], phone: str, appeal: AppealReceived, run: Run
) -> None:
    """As a hotline operator does: `POST /api/v1/appeals`, acknowledged by the API's answer (the
    ticket number). As many requests are out at once as there are clients."""
    body = {
        "channel": "hotline",
        "caller_phone": phone,
        "title": appeal.title,
        "text": appeal.text,
        "address": appeal.address,
    }
    client = await clients.get()
    try:
        sent = time.time()
        response = await client.post("/api/v1/appeals", json=body)
    finally:
        clients.put_nowait(client)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"the API refused an appeal: {response.status_code} {response.text[:200]}")
    now = time.time()
    trace = run.traces.setdefault(response.json()["ticket_no"], Trace())
    trace.sent, trace.acked = sent, now
    run.first_ack = min(run.first_ack, now)


def _acked(run: Run, ticket_no: str, fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        now = time.time()
        run.traces[ticket_no].acked = now
        run.first_ack = min(run.first_ack, now)


async def _read(consumer: AIOKafkaConsumer, run: Run, expected: int) -> None:
    """Read until every appeal is assigned, then a little longer for the holds that follow."""
    done = 0
    drain_until = float("inf")
    while done < expected or time.time() < drain_until:
        batches = await consumer.getmany(timeout_ms=200, max_records=5000)
        now = time.time()
        # In the pipeline's order: one batch may hold an appeal's classification and assignment.
        for tp, records in sorted(batches.items(), key=lambda b: PIPELINE_ORDER[b[0].topic]):
            for rec in records:
                # The key is the ticket's number (every producer's); a body is parsed only where
                # this run needs a field of it. This process shares the cores it measures, and the
                # classifications it read whole were most of its own CPU.
                no = rec.key.decode() if rec.key else orjson.loads(rec.value).get("ticket_no", "")
                trace = run.traces.get(no)
                if trace is None:
                    if not run.open or tp.topic == topics.TICKET_UPDATED:
                        continue
                    # --via-api: an appeal of this run whose answer is not handled yet. (Updates may
                    # be of tickets from before: the holds of a hotspot's older tickets.)
                    trace = run.traces[no] = Trace()
                if tp.topic == topics.APPEAL_RECEIVED:
                    trace.received = rec.timestamp / 1000
                    run.sizes[topics.APPEAL_RECEIVED].append(len(rec.value))
                elif tp.topic == topics.APPEAL_CLASSIFIED:
                    if trace.classified is None:
                        trace.classified = rec.timestamp / 1000
                        run.sizes[topics.APPEAL_CLASSIFIED].append(len(rec.value))
                elif tp.topic == topics.TICKET_UPDATED:
                    if trace.held is None:
                        value = orjson.loads(rec.value)
                        if value.get("action") == "escalated" and (meeting := value.get("meeting")):
                            trace.held, trace.hold_reason = now, meeting.get("reason", "")
                elif trace.assigned is None:
                    via = orjson.loads(rec.value).get("via", "")
                    trace.assigned, trace.read, trace.via = rec.timestamp / 1000, now, via
                    run.sizes[topics.TICKET_ASSIGNED].append(len(rec.value))
                    run.last_read = max(run.last_read, now)
                    done += 1
        if done >= expected and drain_until == float("inf"):
            drain_until = time.time() + HOLD_DRAIN_SECONDS


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    values = sorted(values)

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0)}


def _figures(
    run: Run,
    count: int,
    rate: float,
    published_in: float,
    replicas: int,
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
) -> dict[str, Any]:
    done = [t for t in run.traces.values() if t.read is not None and t.acked is not None]
    e2e = [t.read - t.acked for t in done]  # type: ignore[operator]
    stages = {
        # From the broker's record: through the API its answer may reach us after the classification.
        "classifier": [t.classified - (t.received or t.acked) for t in done if t.classified],  # type: ignore[operator]
        "router": [t.assigned - t.classified for t in done if t.classified],  # type: ignore[operator]
        "delivery": [t.read - t.assigned for t in done],  # type: ignore[operator]
    }
    if sent := [t for t in done if t.sent is not None]:  # --via-api: request -> the API's answer
        stages = {"api": [t.acked - t.sent for t in sent], **stages}  # type: ignore[operator]
    # The latency of the appeals acknowledged in each fifth of the run, in that order: a queue that
    # grows from one fifth to the next says the pipeline did not keep up with the offered rate,
    # which the throughput (the assignments over the time from the first acknowledgement to the
    # last read, that last queue's wait included) does not tell apart from a short queue kept.
    timed = sorted((t.acked, t.read) for t in done if t.acked is not None and t.read is not None)
    in_order = [read - acked for acked, read in timed]
    fifths = [in_order[len(in_order) * i // 5 : len(in_order) * (i + 1) // 5] for i in range(5)]
    held = [t for t in done if t.held is not None]
    # Read on another topic: a hold written with the assignment may be read just before it.
    holds = [max(0.0, t.held - t.read) for t in held]  # type: ignore[operator]
    span = run.last_read - run.first_ack if done else float("nan")
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    e2e_pct = _percentiles(e2e)
    figures: dict[str, Any] = {
        "offered_per_s": round(rate, 1) if rate else round(count / published_in, 1),
        "fixed_rate": bool(rate),
        "appeals": count,
        "completed": len(done),
        "missing": count - len(done),
        "e2e_appeals_per_s": round(len(done) / span, 1) if done else 0.0,
        "e2e_p50_ms": e2e_pct["p50_ms"],
        "e2e_p95_ms": e2e_pct["p95_ms"],
        "e2e_p99_ms": e2e_pct["p99_ms"],
        "e2e_max_ms": e2e_pct["max_ms"],
        "e2e_mean_ms": round(statistics.fmean(e2e) * 1000, 1) if e2e else None,
        "e2e_p50_ms_by_fifth": [_percentiles(part)["p50_ms"] for part in fifths if part],
        "stages": {name: _percentiles(values) for name, values in stages.items()},
        "assigned_via": dict(Counter(t.via for t in done).most_common()),
        "held_for_meeting": dict(Counter(t.hold_reason for t in held).most_common()),
        "held_after_assignment": _percentiles(holds),
        "replicas": replicas,
        "cpu_us_per_appeal": {name: round(s / max(1, len(done)) * 1e6) for name, s in sorted(cpu.items())},
        "classifier_per_s_per_core": round(len(done) / cpu["classifier"]) if cpu.get("classifier") else None,
        "machine": _machine(),
        "_sizes": {topic: round(statistics.fmean(s)) if s else 600 for topic, s in run.sizes.items()},
    }
    return figures


# Each round's figures kept under `rounds`, with the machine's state before it.
ROUND_KEYS = (
    "e2e_appeals_per_s",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "cpu_us_per_appeal",
    "bench_cpu_us_per_appeal",
    "record_behind_s",
)
STATE_KEYS = ("fresh_page_us", "python_loop_ms")


def fresh_page_us(megabytes: int = 16) -> float:
    """Microseconds this process takes to write to each page of `megabytes` of memory it has just
    been given: what every process of the pipeline pays for the memory it grows into (Redis's data,
    PostgreSQL's files in the page cache, the broker's batches, the workers' heaps).

    On a machine whose memory is all its own that is well under a microsecond. On a virtual machine
    whose host backs the guest's memory only when it is first written and takes back what the guest
    frees (a Firecracker VM with free page reporting: `page_reporting` in `dmesg`), it is 15 to 30 µs
    on memory not written lately and 2 to 3 on memory written a moment ago, and that changes from
    one run to the next. Printed with the figures so that runs are compared in the same state.

    It is a hint, not a measure of the run: it writes the memory a machine hands out first, often
    what the run before had just freed, and the run grows into hundreds of megabytes more. It is
    small so that the memory it leaves behind (which the run then finds written already) is worth
    at most a tenth of a second of CPU."""
    size, page = megabytes << 20, mmap.PAGESIZE
    with mmap.mmap(-1, size) as memory:
        started = time.perf_counter()
        for offset in range(0, size, page):
            memory[offset] = 1
        took = time.perf_counter() - started
    return round(took / (size // page) * 1e6, 1)


def python_loop_ms(n: int = 1_000_000) -> float:
    """Milliseconds for a fixed loop of Python additions (the best of three): how fast this
    machine's CPU runs Python right now, which on a shared virtual machine changes by a third from
    one hour to the next. Printed with the figures, beside `fresh_page_us`."""
    best = float("inf")
    for _ in range(3):
        started, total = time.perf_counter(), 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def _machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


# --- the broker and client limit --------------------------------------------------------------


def _broker_limit(settings: Settings, *, count: int, sizes: dict[str, int], replicas: int) -> float:
    """Messages a second through the pipeline's hops (received -> classified -> assigned, each hop
    a consumer group in its own process that forwards a message of the next stage's size), with
    handlers that do nothing. The pipeline cannot beat this on the same broker and clients."""
    run = uuid.uuid4().hex[:6]
    hops = [f"bench.{run}.{i}" for i in range(len(RELAY_HOPS))] + [f"bench.{run}.end"]
    asyncio.run(ensure_topics(settings, hops))
    ctx = multiprocessing.get_context("spawn")
    # Hop i forwards what stage i+1 publishes: classified after received, assigned after classified.
    out_sizes = [sizes[t] for t in RELAY_HOPS[1:]] + [sizes[RELAY_HOPS[-1]]]
    relays = [
        ctx.Process(
            target=_relay_main,
            args=(
                settings.kafka_bootstrap_servers,
                src,
                dst,
                out_sizes[i],
                settings.kafka_callers_path_fetch_wait_ms,
                group_session(settings),
            ),
            daemon=True,
        )
        for i, (src, dst) in enumerate(itertools.pairwise(hops))
        for _ in range(replicas)
    ]
    for r in relays:
        r.start()
    try:
        print(f"broker limit: {count} messages through {len(RELAY_HOPS)} no-op hops ...")
        return asyncio.run(_push_and_count(settings, hops[0], hops[-1], count, sizes[RELAY_HOPS[0]]))
    finally:
        for r in relays:
            r.terminate()
            r.join(5)
        asyncio.run(_delete_topics(settings, hops))


async def _push_and_count(settings: Settings, first: str, last: str, count: int, size: int) -> float:
    consumer = AIOKafkaConsumer(
        last,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{last}.reader",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.kafka_callers_path_fetch_wait_ms,
        **group_session(settings),
    )
    await consumer.start()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=2, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        await _wait_for_relays(producer, consumer, first)
        payload = b"x" * size
        # The rate at which messages leave the last hop (read while publishing): the fill time of
        # the hops (one message's latency) is not throughput.
        started = time.perf_counter()
        reader = asyncio.create_task(_count_out(consumer, count))
        pending = []
        for i in range(count):
            pending.append(await producer.send(first, payload, key=str(i).encode()))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return out_rate(*await asyncio.wait_for(reader, 300), started=started)
    finally:
        await producer.stop()
        await consumer.stop()


def out_rate(seen: int, first: int, first_out: float, last_out: float, *, started: float) -> float:
    """Messages a second out of the last hop: those after the first batch over the time from it to
    the last (the first batch's own messages came out before the clock could start). A few hundred
    messages may come out in two batches microseconds apart, which would make that millions a second:
    then, and when everything came in one batch, it is all of them over the time since publishing
    began, fill time included."""
    if seen > first and last_out - first_out >= (last_out - started) / 2:
        return (seen - first) / (last_out - first_out)
    return seen / (last_out - started) if last_out > started else 0.0


async def _count_out(consumer: AIOKafkaConsumer, count: int) -> tuple[int, int, float, float]:
    """(messages out, of them in the first batch, when the first batch came, when the last did)."""
    seen, first, first_out, last_out = 0, 0, 0.0, 0.0
    while seen < count:
        batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
        if out := sum(1 for records in batches.values() for r in records if r.value != b"ping"):
            last_out = time.perf_counter()
            if not first_out:
                first_out, first = last_out, out
            seen += out
    return seen, first, first_out, last_out


async def _wait_for_relays(producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, first: str) -> None:
    """Send pings until one comes out at the end: every relay has joined its group."""
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        await producer.send_and_wait(first, b"ping")
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            if records:
                return
    raise RuntimeError("the no-op relays did not start within 120 s")


def _relay_main(bootstrap: str, src: str, dst: str, size: int, wait_ms: int, session: dict[str, Any]) -> None:
    asyncio.run(_relay(bootstrap, src, dst, size, wait_ms, session))


async def _relay(
    bootstrap: str, src: str, dst: str, size: int, wait_ms: int, session: dict[str, Any]
) -> None:
    """Read batches from `src` and forward each message as `size` bytes to `dst`, committing after
    the sends are acknowledged: the workers' consume-publish-commit cycle without their work."""
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=f"{src}.relay",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
        **session,  # as the workers join
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=256 * 1024
    )
    await consumer.start()
    await producer.start()
    payload = b"y" * size
    while True:
        batches = await consumer.getmany(timeout_ms=20, max_records=500)
        pending = [
            await producer.send(dst, r.value if r.value == b"ping" else payload, key=r.key)
            for records in batches.values()
            for r in records
        ]
        if pending:
            await asyncio.gather(*pending)
            await consumer.commit()


async def _delete_topics(settings: Settings, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics(names)
    except Exception as e:  # a broker without topic deletion keeps a few small topics
        print(f"(could not delete the benchmark's relay topics: {e})", file=sys.stderr)
    finally:
        await admin.close()


def _print(f: dict[str, Any]) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    m = f["machine"]
    lines = [
        "",
        f"pipeline benchmark ({m['cpus']} CPUs, {m['cpu_model'] or 'unknown CPU'}; broker, Redis, "
        f"PostgreSQL, {f['replicas']}x{len(WORKERS)} workers"
        + (", the API" if "api" in f["stages"] else "")
        + " and this process on one machine)",
        f"  offered            {f['offered_per_s']:,.0f} appeals/s{'' if f['fixed_rate'] else ' (flat out)'}",
        f"  appeals            {f['appeals']}   assigned {f['completed']}"
        + (f"  (MISSING {f['missing']})" if f["missing"] else ""),
        f"  throughput         {f['e2e_appeals_per_s']:,.0f} appeals/s end to end",
        f"  latency ms         p50 {ms(f['e2e_p50_ms'])}   p95 {ms(f['e2e_p95_ms'])}   "
        f"p99 {ms(f['e2e_p99_ms'])}   max {ms(f['e2e_max_ms'])}   "
        + ("(the API's answer" if "api" in f["stages"] else "(ack")
        + " -> ticket.assigned read)",
    ]
    for stage, s in f["stages"].items():
        lines.append(f"    {stage:16s} p50 {ms(s['p50_ms'])}   p95 {ms(s['p95_ms'])}   p99 {ms(s['p99_ms'])}")
    if len(f["e2e_p50_ms_by_fifth"]) == 5:
        lines.append(
            "    by fifth         p50 "
            + ", ".join(ms(v) for v in f["e2e_p50_ms_by_fifth"])
            + "   (appeals acknowledged in each fifth of the run: level when the rate was kept up)"
        )
    lines.append("  assigned via       " + ", ".join(f"{v} {n}" for v, n in f["assigned_via"].items()))
    if f["held_for_meeting"]:
        h = f["held_after_assignment"]
        lines.append(
            "  then held          "
            + ", ".join(f"{reason} {n}" for reason, n in f["held_for_meeting"].items())
            + f"   (read after the assignment: p50 {ms(h['p50_ms'])}   p99 {ms(h['p99_ms'])})"
        )
    if "broker_limit_per_s" in f:
        lines.append(
            f"  broker limit       {f['broker_limit_per_s']:,.0f} messages/s through the same hops, no-op "
            f"handlers (the pipeline: {f['fraction_of_broker_limit']:.0%} of it)"
        )
    if f.get("record_behind_s") is not None:
        lines.append(
            f"  record             every assignment recorded {f['record_behind_s']:.1f} s after the "
            "last was read"
        )
    if f["cpu_us_per_appeal"]:
        lines.append(
            "  CPU per appeal     "
            + "   ".join(f"{name} {us:,}µs" for name, us in f["cpu_us_per_appeal"].items())
            + f"   (all together {sum(f['cpu_us_per_appeal'].values()):,}µs; this process "
            f"{f.get('bench_cpu_us_per_appeal', 0):,}µs more)"
        )
        lines.append(f"  classifier         {f['classifier_per_s_per_core'] or '-'} appeals/s per core")
    if (r := f.get("redis")) is not None:
        written = (
            f"{r['aof_bytes_per_appeal'] / 1000:,.2f} KB"
            if r["aof_bytes_per_appeal"] is not None
            else "- (the file was rewritten during the run)"
            if r["aof_rewrites"]
            else "- (no append-only file)"
        )
        lines.append(
            f"  Redis              {r['memory_bytes_per_appeal'] / 1000:,.2f} KB more held, {written} "
            "appended to its file, an appeal"
        )
    if (fresh := m.get("fresh_page_us")) is not None:
        lines.append(
            f"  machine            {fresh} µs to write each page of memory just given (`fresh_page_us`), "
            f"{m['python_loop_ms']} ms for a fixed Python loop (`python_loop_ms`), before the run"
        )
    print("\n".join(lines))
