"""The records worker (the fifth worker, `appeals run records`): projects every ticket event into
PostgreSQL, and runs the retention jobs.

A separate worker rather than part of the router: the router's batches stay as fast as Redis, a
slow or absent database holds up only the record, and the record can be rebuilt or replayed
without touching routing. While PostgreSQL is down a batch waits (retrying) and is then handed
back to Kafka unacknowledged; it is read again, so the projection catches up when the server
returns and the rest of the system never notices. On start, and when the broker came back empty,
it catches up with Redis's ticket histories: the embedded broker keeps nothing across a restart, so
events it held that this worker had not read yet are only there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import psycopg
from faststream import FastStream
from psycopg_pool import PoolTimeout

from services.records import db
from services.records.retention import Retention
from services.records.service import Records
from shared import events as ev
from shared import topics
from shared.photo_store import PhotoStore
from shared.runtime import Runtime, run_periodically
from shared.settings import Settings

NAME = "records"
E = TypeVar("E", bound=ev.Event)
T = TypeVar("T")
log = logging.getLogger(NAME)

RETRY_FOR_SECONDS = 30  # then the batch goes back to Kafka unacknowledged and is read again
UNAVAILABLE = (psycopg.OperationalError, PoolTimeout)
COUNTER_CHECK_SECONDS = 5
# The most events a batch (one transaction) holds: a bound on the worker's memory, above what a
# batch brings on the embedded default. A batch is what the client has fetched by the end of the
# linger (RECORDS_LINGER_MS), at most one fetch of each partition (`max_partition_fetch_bytes`):
# a second's events at 1,000 appeals a second (about 4,000), up to about 11,000 flat out. A batch
# cut at a most is cut topic by topic (the client hands out one partition's records, then the
# next's), not at a moment: with 2,000, at 1,000 appeals a second, the router's assignment and the
# hotspot hold it wrote with it came in different batches for three tickets in four, each a second
# write of the row; flat out, with 8,000, still for three in four.
RECORDS_BATCH = 20_000
HELD_CHECK_SECONDS = 1  # how often the rows held back past RECORDS_HOLD_SECONDS are written
RECOVER_AFTER_SECONDS = 30  # how long a worker with rows held back may be silent before it counts as gone


def build_app(settings: Settings | None = None) -> FastStream:
    rt = Runtime.create(NAME, settings)
    app = rt.app(metrics_port=rt.settings.metrics_port_records)
    # Its backends run as low as it does (the launcher lowers it: off the caller's path).
    pool = db.pool(rt.settings.database_url, backends_follow=True)
    hold = rt.settings.records_hold_seconds
    records = Records(
        pool, rt.city, rt.store, PhotoStore.from_settings(rt.settings, rt.redis), hold_seconds=hold
    )
    tz = ZoneInfo(rt.settings.timezone)

    # One consumer for every topic, one transaction per batch: no two batches of this worker wait
    # for each other's locks on the same ticket (with a consumer per topic they did, about a quarter
    # of PostgreSQL's statement time flat out), and a ticket's events of several topics that arrive
    # together (an assignment and its hold, when the worker keeps up) are one write of its row.
    # The events as the JSON objects they came in (checked against their classes, dead-lettered as
    # any consumer's): the record stores and folds those, and needs no models.
    async def project(batch: list[tuple[str, dict[str, Any]]]) -> None:
        for topic, p in batch:
            p["topic"] = topic  # set, not merged into a new dict: one dict per event, not two
        payloads = [p for _, p in batch]
        await until_available(lambda: records.project_payloads(payloads), what=f"{len(batch)} events")

    rt.subscribe_payloads(
        topics.EVENT_TYPES, project, linger_ms=rt.settings.records_linger_ms, max_records=RECORDS_BATCH
    )

    @app.on_startup
    async def _open() -> None:
        await db.migrate(rt.settings.database_url)
        await pool.open()
        each, backends = await records.lock_table()
        if (advice := lock_table_advice(each, backends, RECORDS_BATCH + records.hold_most)) is not None:
            log.warning(advice)
        raised = await records.raise_counters(rt.store, datetime.now(tz).date())
        if raised:
            log.info("ticket counters kept above the record's highest numbers: %s", raised)

    @app.after_shutdown
    async def _close() -> None:
        # The consumer has stopped: the rows held back are written now, or (PostgreSQL away) left
        # to `recover_held` by the mark this worker leaves.
        try:
            await records.write_held(everything=True)
            await records.forget_held()
        except UNAVAILABLE as e:
            log.warning("PostgreSQL unavailable (%s); held-back rows left to the next start", str(e)[:200])
        await pool.close()

    async def catch_up(give_up_after: float = RETRY_FOR_SECONDS) -> None:
        # What the broker held for this worker and lost (the embedded one keeps nothing across a
        # restart) is still in Redis's ticket histories: the record takes it from there.
        if behind := await until_available(
            lambda: records.catch_up_with_store(rt.store),
            what="catching up with the store",
            give_up_after=give_up_after,
        ):
            log.info("the record caught up with the store on %d ticket(s)", behind)

    rt.on_topics_recreated.append(catch_up)  # the broker came back empty while we run
    on_start: list[asyncio.Task] = []

    @app.after_startup
    async def _catch_up_on_start() -> None:
        # In the background (consuming starts meanwhile), and for as long as PostgreSQL is away:
        # nothing else would bring those events in.
        on_start.append(
            asyncio.create_task(logged(partial(catch_up, math.inf), "catching up with the store failed"))
        )

    @app.on_shutdown
    async def _stop_catching_up() -> None:
        for task in on_start:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def keep_counters_above_the_record() -> None:
        # Not only at start: a Redis that restarts empty while we run must not number from 1 again.
        await records.raise_counters(rt.store, datetime.now(tz).date())

    run_periodically(app, COUNTER_CHECK_SECONDS, keep_counters_above_the_record, "records counters")
    if hold > 0:
        run_periodically(app, HELD_CHECK_SECONDS, records.write_held, "records held-back rows")
    # Every worker, holding back or not, folds what one that crashed held back: a worker holding
    # rows writes its mark every HELD_CHECK_SECONDS, so one silent for this long is gone.
    stale_after = hold + RECOVER_AFTER_SECONDS
    run_periodically(
        app,
        RECOVER_AFTER_SECONDS,
        lambda: records.recover_held(stale_after),
        "records held by a stopped worker",
    )
    retention = Retention(pool, rt.store, rt.settings)
    run_periodically(app, rt.settings.retention_scan_seconds, retention.run, "records retention")
    return app


def lock_table_advice(each: int, backends: int, most: int) -> str | None:
    """What to tell an operator whose PostgreSQL's lock table (`each` locks for each of `backends`)
    is smaller than the most locks a batch may take (`most`: one a ticket, a batch's events and
    the held-back ones), or None when it is large enough. Such a batch fails with "out of shared
    memory" and is retried until the tickets held back are written and it fits: in a two-minute
    flood on the default table (12,800 locks), for up to ten seconds at a time."""
    if (size := each * backends) >= most:
        return None
    needed = -(-most // backends)  # rounded up
    return (
        f"PostgreSQL's lock table holds {size:,} locks and a batch in a flood may take up to "
        f"{most:,} (one a ticket); such a batch fails with 'out of shared memory' until it fits. "
        f"Set max_locks_per_transaction to at least {needed} (it is {each})."
    )


async def until_available(
    work: Callable[[], Awaitable[T]], *, what: str, give_up_after: float = RETRY_FOR_SECONDS
) -> T:
    """Run `work`, retrying while PostgreSQL is unreachable; past `give_up_after` the error goes
    up (the batch is read again later)."""
    deadline = time.monotonic() + give_up_after
    delay = 0.2
    while True:
        try:
            return await work()
        except UNAVAILABLE as e:
            if time.monotonic() > deadline:
                raise
            log.warning("PostgreSQL unavailable (%s); %s wait", str(e).strip()[:200], what)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


async def logged(work: Callable[[], Awaitable[object]], failure: str) -> None:
    try:
        await work()
    except Exception:
        log.exception(failure)
