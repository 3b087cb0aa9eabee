"""`appeals bench records`: the figures in the README's Records section, on servers of its own.

1. projection: N tickets' events (received, classified, assigned, accepted, resolved, closed) through
   `Records.project`, batch by batch as the worker gets them: events per second;
2. search on N tickets: a department's queue page, filters, full text (trigram), the count;
3. Redis memory while more closed tickets pile up (recorded too), and retention moving them out;
4. restart: how long Redis takes to come back with its append-only file, and PostgreSQL with its data.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from services.records import db
from services.records.query import build
from services.records.retention import Retention
from services.records.service import Records
from shared.city import load_city
from shared.embedded import EmbeddedServers
from shared.events import (
    Answer,
    AppealClassified,
    AppealReceived,
    Caller,
    CategoryScore,
    DepartmentRef,
    Event,
    GridMatch,
    TicketAssigned,
    TicketUpdated,
)
from shared.settings import get_settings
from shared.store import TicketStore, event_record, history_key, ticket_json, ticket_key
from shared.tickets import Status, Ticket

PLACES = ["阳光花园", "幸福里小区", "建设路", "人民公园", "和平街", "锦绣家园", "新华书店", "滨河路"]
PROBLEMS = [
    "路灯坏了",
    "噪音扰民",
    "垃圾没人清运",
    "井盖缺失",
    "占道经营",
    "下水道堵塞",
    "违章停车",
    "楼道堆物",
]


def lifecycle(i: int, day: datetime, city: Any, rng: random.Random) -> list[Event]:
    """One ticket's events, from the appeal to its closing."""
    no = f"{day:%Y%m%d}-{i:06d}"
    grid = rng.choice(list(city.grids))
    leaf = rng.choice(sorted(city.leaf_categories))
    dept = rng.choice(city.departments)
    ref = DepartmentRef(id=dept.id, name=dept.name)
    t0 = day + timedelta(seconds=i % 80_000)
    text = f"{rng.choice(PLACES)}{rng.randint(1, 30)}号楼{rng.choice(PROBLEMS)}，已经{rng.randint(2, 9)}天了"
    phone_tail = f"{i % 10000:04d}"
    appeal = AppealReceived(
        ticket_no=no,
        channel="hotline",
        text=text,
        address=f"{rng.choice(PLACES)}{rng.randint(1, 30)}号楼",
        caller=Caller(caller_id=f"c{i % 50_000}", masked_phone=f"138****{phone_tail}"),
        received_at=t0,
        occurred_at=t0,
    )
    classified = AppealClassified(
        ticket_no=no,
        appeal=appeal,
        category=leaf,
        category_names=city.category_names(leaf),
        confidence=0.9,
        top=(CategoryScore(category=leaf, probability=0.9),),
        grid=GridMatch(grid=grid, method="gazetteer", confidence=1.0),
        model_version="bench",
        occurred_at=t0 + timedelta(seconds=1),
    )
    assigned = TicketAssigned(
        ticket_no=no,
        department=ref,
        via="rule",
        explanation="责任清单",
        category=leaf,
        category_names=city.category_names(leaf),
        grid=grid,
        respond_by=t0 + timedelta(hours=2),
        resolve_by=t0 + timedelta(days=3),
        occurred_at=classified.occurred_at,
        caused_by=classified.event_id,  # as the router's: the classification it answers
    )

    def update(action: str, status: str, minutes: int, **kw: Any) -> TicketUpdated:
        return TicketUpdated(
            ticket_no=no,
            action=action,
            status=status,
            actor=dept.id,
            department=ref,
            occurred_at=t0 + timedelta(minutes=minutes),
            **kw,
        )

    return [
        appeal,
        classified,
        assigned,
        update("accepted", "accepted", 10, on_time=True),
        update("resolved", "resolved", 60, note="已处理", on_time=True),
        update("closed", "closed", 120, answer=Answer(rating=rng.choice([1, 2, 3]), solved=True)),
    ]


async def timed(work: Callable[[], Awaitable[Any]], repeat: int = 20) -> float:
    """Median milliseconds of `repeat` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def run(n: int, redis_closed: int) -> dict[str, Any]:
    settings = get_settings()
    city = load_city(settings.city_config_dir)
    rng = random.Random(7)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = EmbeddedServers(data_dir=Path(tmp), postgres=True, log_dir=Path(tmp) / "logs").start()
        try:
            await db.migrate(servers.database_url)
            pool = db.pool(servers.database_url, max_size=4)
            await pool.open(wait=True)
            records = Records(pool, city)
            day = datetime(2026, 11, 2, tzinfo=UTC)

            # 1. projection, in the worker's batches (500 events of one topic)
            started, events = time.perf_counter(), 0
            for first in range(1, n + 1, 500):
                lives = [lifecycle(i, day, city, rng) for i in range(first, min(first + 500, n + 1))]
                for stage in range(6):
                    batch = [life[stage] for life in lives]
                    await records.project(batch[0].topic, batch)
                    events += len(batch)
            seconds = time.perf_counter() - started
            figures["projection"] = (
                f"{events} events of {n} tickets in {seconds:.0f}s: {events / seconds:,.0f} events/s"
            )
            async with pool.connection() as conn:
                await conn.execute("UPDATE tickets SET status = 'assigned' WHERE ticket_no LIKE %s", ("%7",))
                await conn.commit()
                await conn.set_autocommit(True)
                await conn.execute("VACUUM ANALYZE tickets")
                await conn.set_autocommit(False)

            # 2. search on n tickets, a tenth of them open
            zone = ZoneInfo(settings.timezone)
            dept = city.departments[0].id

            async def page(raw: dict[str, str | None], scope: str | None = None, count: bool = False) -> None:
                s = build(raw, tz=zone, city=city, department_scope=scope, size=50)
                async with pool.connection() as conn:
                    if count:
                        await conn.execute(f"SELECT count(*) FROM tickets WHERE {s.where}", s.params)
                    await (
                        await conn.execute(
                            f"SELECT * FROM tickets WHERE {s.where} ORDER BY {s.order_by} LIMIT 50",
                            s.params,
                        )
                    ).fetchall()

            figures["queue page (a department's open tickets, page 1)"] = (
                f"{await timed(lambda: page({'status': 'assigned,accepted'}, dept)):.1f} ms"
            )
            filters: dict[str, str | None] = {
                "status": "closed",
                "street": city.district.streets[0].id,
                "from": "2026-11-02",
                "to": "2026-11-03",
            }
            figures["filters (status + street + date range) page 1"] = (
                f"{await timed(lambda: page(filters)):.1f} ms"
            )
            figures["full text q=路灯坏了 (trigram) page 1 + count"] = (
                f"{await timed(lambda: page({'q': '路灯坏了'}, count=True), repeat=5):.1f} ms"
            )
            figures["full text q=幸福里小区12号楼 page 1 + count"] = (
                f"{await timed(lambda: page({'q': '幸福里小区12号楼'}, count=True), repeat=5):.1f} ms"
            )
            async with pool.connection() as conn:
                size = await (
                    await conn.execute("SELECT pg_size_pretty(pg_database_size('appeals')) AS s")
                ).fetchone()
            figures["database size"] = size["s"] if size else "?"

            # 3. Redis memory while closed tickets pile up, and retention moving them out. The
            # tickets above were never in Redis: the first run only marks them as out of it. Then
            # each thousand is recorded, as the worker would, and kept in Redis, as the router
            # does; every 20,000 (`REDIS_KEEP_CLOSED_DAYS` passed for all of them) retention runs.
            redis = Redis.from_url(servers.redis_url)
            store = TicketStore(redis)
            retention = Retention(pool, store, settings)
            await retention.run(datetime.now(UTC))
            base = int((await redis.info("memory"))["used_memory"])
            rows = []
            for first in range(n + 1, n + redis_closed + 1, 1000):
                lives = [
                    lifecycle(i, day, city, rng)
                    for i in range(first, min(first + 1000, n + redis_closed + 1))
                ]
                for stage in range(6):
                    await records.project(lives[0][stage].topic, [life[stage] for life in lives])
                async with redis.pipeline(transaction=False) as p:
                    for life in lives:
                        appeal = life[0]
                        assert isinstance(appeal, AppealReceived)
                        ticket = Ticket.from_appeal(appeal).model_copy(
                            update={"status": Status.CLOSED, "closed_at": life[-1].occurred_at}
                        )
                        p.set(ticket_key(ticket.ticket_no), ticket_json(ticket))
                        # As the router keeps a history: each event with its topic.
                        p.rpush(history_key(ticket.ticket_no), *map(event_record, life))
                    await p.execute()
                piled = first + len(lives) - 1 - n
                if piled % 20_000 == 0 or piled == redis_closed:
                    kept = int((await redis.info("memory"))["used_memory"]) - base
                    started = time.perf_counter()
                    left = (await retention.run(datetime.now(UTC)))["left_redis"]
                    took = time.perf_counter() - started
                    # Never below where it started (a little below: Redis's own bookkeeping).
                    after = max(0, int((await redis.info("memory"))["used_memory"]) - base)
                    rows.append(
                        f"{piled:>7} closed so far: {kept / 1e6:6.1f} MB in Redis before retention, "
                        f"{left} moved out in {took:.1f} s, {after / 1e6:5.1f} MB after"
                    )
            figures["redis memory"] = rows
            await redis.aclose()

            # 4. restart with the data on disk
            await pool.close()
            servers.stop()
            started = time.perf_counter()
            again = EmbeddedServers(
                data_dir=Path(tmp),
                postgres=True,
                postgres_dir=servers.postgres_dir,
                log_dir=Path(tmp) / "logs",
            ).start()
            figures["restart (Redis + PostgreSQL with their data, Tansu)"] = (
                f"{time.perf_counter() - started:.1f} s"
            )
            again.stop()
        finally:
            servers.stop()
    return figures


def main(n: int, redis_closed: int) -> None:
    for key, value in asyncio.run(run(n, redis_closed)).items():
        if isinstance(value, list):
            print(f"{key}:")
            for line in value:
                print(f"  {line}")
        else:
            print(f"{key:55s} {value}")
