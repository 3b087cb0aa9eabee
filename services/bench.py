"""`appeals bench pipeline`: how many appeals a second the pipeline sustains, everything on this
machine. It publishes N `appeal.received` events (as intake does, with callers whose contacts are
stored, so the notifier sends acknowledgements) as fast as the broker takes them, and waits for every
`ticket.assigned`. Throughput is N over the time from the first publish to the last assignment;
latency is from each appeal's receipt to its assignment reaching the benchmark's consumer."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from services.classifier import corpus
from services.launcher import WORKERS, Launcher, external_servers_configured
from shared import topics
from shared.bus import ensure_topics
from shared.city import load_city
from shared.embedded import EmbeddedServers, free_port
from shared.events import AppealReceived, Caller, TicketAssigned
from shared.privacy import caller_id, mask_phone
from shared.settings import Settings, get_settings


def run_pipeline_bench(*, n: int, callers: int) -> None:
    launcher = None
    if external_servers_configured():
        settings = get_settings()
    else:
        from services.classifier.service import load_or_train

        servers = EmbeddedServers(postgres=True)
        launcher = Launcher(embedded=servers)
        launcher.start_servers()
        ports = {f"METRICS_PORT_{w.upper()}": str(free_port()) for w in WORKERS}
        launcher.base_env.update(ports)
        settings = get_settings().model_copy(
            update={"kafka_bootstrap_servers": servers.kafka_bootstrap, "redis_url": servers.redis_url}
        )
        load_or_train(load_city(settings.city_config_dir), settings.model_dir)  # before the workers race to
        print("starting the four workers ...")
        launcher.start_all(WORKERS)
        launcher.wait_for_ports(int(p) for p in ports.values())
    try:
        before = _cpu_seconds(launcher)
        asyncio.run(_bench(settings, n=n, callers=callers))
        if launcher is not None:
            after = _cpu_seconds(launcher)
            print(
                "  CPU per appeal     "
                + "   ".join(
                    f"{name} {(after[name] - before.get(name, 0)) / n * 1e6:,.0f}µs" for name in after
                )
            )
    finally:
        if launcher is not None:
            launcher.stop_all()


def _cpu_seconds(launcher: Launcher | None) -> dict[str, float]:
    """User + system CPU seconds so far of each process the benchmark started (Linux /proc)."""
    if launcher is None:
        return {}
    procs = {name: p.pid for name, p in launcher.procs.items()}
    if launcher.embedded is not None:
        procs.update({p.name: p.proc.pid for p in launcher.embedded.processes})
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in procs.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


async def _bench(settings: Settings, *, n: int, callers: int) -> None:
    city = load_city(settings.city_config_dir)
    records = corpus.generate(city, per_category=max(1, n // len(city.leaf_categories) + 1), seed=2026)[:n]
    run = uuid.uuid4().hex[:6].upper()
    phones = [f"139{i:08d}" for i in range(callers)]
    await ensure_topics(settings)

    redis = Redis.from_url(settings.redis_url)
    async with redis.pipeline(transaction=False) as p:
        for phone in phones:
            p.hset(f"contact:{caller_id(phone)}", mapping={"phone": phone})
        await p.execute()
    await redis.aclose()

    consumer = AIOKafkaConsumer(
        topics.APPEAL_CLASSIFIED,
        topics.TICKET_ASSIGNED,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"bench-{run}",
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    while not consumer.assignment():  # join the group before publishing, so nothing is missed
        await consumer.getmany(timeout_ms=200)
    await consumer.seek_to_end()

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    print(f"publishing {n} appeals (run {run}) ...")
    started = time.perf_counter()
    received_at: dict[str, float] = {}
    chunk = []
    for i, r in enumerate(records):
        phone = phones[i % callers]
        event = AppealReceived(
            ticket_no=f"B{run}-{i:06d}",
            channel="hotline",
            title=r["title"],
            text=r["text"],
            address=r["address"],
            caller=Caller(caller_id=caller_id(phone), masked_phone=mask_phone(phone)),
            received_at=datetime.now(UTC),
        )
        received_at[event.ticket_no] = time.perf_counter()
        chunk.append(
            await producer.send(topics.APPEAL_RECEIVED, event.to_bytes(), key=event.ticket_no.encode())
        )
        if len(chunk) >= 2000:
            await asyncio.gather(*chunk)
            chunk.clear()
    await asyncio.gather(*chunk)
    published = time.perf_counter() - started
    print(f"published in {published:.1f}s ({n / published:,.0f}/s); waiting for assignments ...")

    latencies: list[float] = []
    classified = 0
    classified_done = float("nan")
    deadline = time.perf_counter() + max(120, n / 200)
    while len(latencies) < n and time.perf_counter() < deadline:
        batches = await consumer.getmany(timeout_ms=500, max_records=5000)
        now = time.perf_counter()
        for tp, records_ in batches.items():
            if tp.topic == topics.APPEAL_CLASSIFIED:
                classified += len(records_)
                if classified >= n and classified_done != classified_done:  # first time: NaN != NaN
                    classified_done = now - started
                continue
            for rec in records_:
                no = TicketAssigned.model_validate_json(rec.value).ticket_no
                if no in received_at:
                    latencies.append(now - received_at.pop(no))
    elapsed = time.perf_counter() - started
    await producer.stop()
    await consumer.stop()

    done = len(latencies)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(done - 1, int(q * done))] * 1000 if done else float("nan")

    print(f"""
pipeline benchmark ({os.cpu_count()} CPUs; broker, Redis, 4 workers and this process on one machine)
  appeals            {n}   assigned {done}{"" if done == n else f"  (MISSING {n - done})"}
  throughput         {done / elapsed:,.0f} appeals/s end to end ({elapsed:.1f}s)
  classifier stage   all {n} classified after {classified_done:.1f}s ({n / classified_done:,.0f}/s)
  latency ms         p50 {pct(0.5):,.0f}   p95 {pct(0.95):,.0f}   p99 {pct(0.99):,.0f}   max {pct(1.0):,.0f}
  mean latency       {statistics.fmean(latencies) * 1000 if done else float("nan"):,.0f} ms""")
