"""After a restart on the embedded broker (which keeps nothing, `appeals up` calls `redrive`), or
when a running worker finds the broker came back empty (`Runtime.check_broker` calls
`redrive_once`), publish again, from the tickets' Redis histories, what the lost topics may still
have owed a consumer (`owed_events`):

  - every ticket still `received` (acknowledged to the resident, not yet classified and assigned):
    its `appeal.received`, however old;
  - every ticket changed within `REDRIVE_WINDOW` before the newest change in the store: the events of
    its history that travel on a topic and occurred in that window (a closed ticket's
    `appeal.received` left out: its caller must not join the open-ticket index again). So the
    notifier still acknowledges an appeal the classifier and router had handled, sends the
    progress SMS and the survey of a resolved ticket, and the router applies the survey events it
    had not: read again, a resolution makes the notifier give its survey's `survey.sent` (or why
    none was asked) and, once closed, the event that closed it, both as first published.

The bound is the window, measured from the store's newest change rather than the clock, so a system
that was down for a weekend still re-drives what was in flight when it stopped: a consumer lags
seconds behind, minutes when it is restarted; a day is far more, and a large city's day of changed
tickets is some hundreds of thousands of events, not the millions of its whole store. A consumer
lagging more than the window at the loss misses what is older.

Exactly once: every event keeps its id, and every consumer drops what it already handled (the
notifier's SMS are claimed per event and kind, its counters per event; the router and the records
worker keep the ids they applied; the intake indexes are sets). Events caused by an event carry
ids derived from it, so the classifier's answer or the notifier's `survey.sent` made again is the
same event. Events written but not confirmed published are the outbox relay's (the router), which
runs on start and every few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from shared.bus import EventPublisher, publish
from shared.events import AppealReceived, Event, PersonalDataRemoved
from shared.settings import Settings
from shared.store import history_key, history_records
from shared.tickets import TICKET_NO_PATTERN, Status
from shared.topics import EVENT_TYPES

log = logging.getLogger(__name__)

# Every process that finds the topics missing re-creates them; one of them re-drives. Held for
# longer than a re-drive takes, and not released: another process that saw the same loss a little
# later must not scan again (it would change nothing, the ids being the same, but costs a scan).
REDRIVE_LOCK = "lock:redrive"
REDRIVE_LOCK_SECONDS = 120
REDRIVE_ATTEMPTS = 5
REDRIVE_WINDOW = timedelta(hours=24)

_TICKET_KEY = re.compile(TICKET_NO_PATTERN.replace("^", "^t:"))


def when(raw: str | None) -> datetime | None:
    """A stored time; one written without a zone is UTC (comparing it with the others must not fail)."""
    if not raw:
        return None
    at = datetime.fromisoformat(raw)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def changed_at(ticket: dict[str, Any]) -> datetime | None:
    """When a stored ticket (its JSON, parsed) last changed."""
    return when(ticket.get("updated_at") or ticket.get("received_at"))


def owed(status: str, history: Sequence[dict[str, Any]], since: datetime | None) -> list[dict[str, Any]]:
    """Of one ticket's history (records with their `topic`), the events to publish again: the
    `appeal.received` of a ticket still received; those on a topic that occurred at `since` or later
    (None: none by time), but not the `appeal.received` of a closed ticket. In history order."""
    out = []
    for i, record in enumerate(history):
        topic = record.get("topic")
        if topic not in EVENT_TYPES:  # a fact kept in the history only (a joint meeting's)
            continue
        if topic == AppealReceived.topic:
            if status == Status.RECEIVED and i == 0:
                out.append(record)
                continue
            if status == Status.CLOSED:
                continue
        if since is not None and (at := when(record.get("occurred_at"))) is not None and at >= since:
            out.append(record)
    return out


def as_event(record: dict[str, Any]) -> Event | None:
    fields = dict(record)
    model = EVENT_TYPES[fields.pop("topic")]
    if model is PersonalDataRemoved and not fields.get("caller_id"):
        # An erasure's notice the relay sent and then scrubbed (`PersonalDataRemoved`): no event
        # any more, by design. Said once per erased ticket at every start, a warning read like a
        # broken history.
        return None
    try:
        return model.model_validate(fields)
    except ValidationError:
        log.warning(
            "history record of %s on %s does not parse: not published again",
            record.get("ticket_no"),
            model.topic,
        )
        return None


async def owed_events(redis: Redis, window: timedelta = REDRIVE_WINDOW, batch: int = 1000) -> list[Event]:
    """The events the lost topics may still have owed a consumer (see the module's docstring): one
    scan of the tickets, and the histories read only of the tickets that owe something."""
    newest: datetime | None = None
    # (number, status, last change) of the tickets that may owe something; those changed before the
    # window of the newest change seen so far cannot, and are not kept.
    candidates: list[tuple[str, str, datetime | None]] = []
    keys: list[bytes] = []

    async def look(keys: Sequence[bytes]) -> None:
        nonlocal newest
        for key, raw in zip(keys, await redis.mget(keys), strict=True):
            if not raw:
                continue
            ticket = json.loads(raw)
            status, at = ticket.get("status", ""), changed_at(ticket)
            if at is not None and (newest is None or at > newest):
                newest = at
            if status == Status.RECEIVED or (at is not None and newest is not None and at >= newest - window):
                candidates.append((key.decode()[2:], status, at))

    async for key in redis.scan_iter(match="t:*", count=5000):
        if _TICKET_KEY.match(key.decode()):
            keys.append(key)
        if len(keys) >= batch:
            await look(keys)
            keys = []
    if keys:
        await look(keys)
    if newest is None:
        return []
    since = newest - window
    found: list[Event] = []
    for start in range(0, len(candidates), batch):
        part = candidates[start : start + batch]
        async with redis.pipeline(transaction=False) as pipe:
            for no, _, at in part:
                if at is not None and at >= since:
                    pipe.lrange(history_key(no), 0, -1)
                else:  # still received, changed before the window: only its appeal is owed
                    pipe.lrange(history_key(no), 0, 0)
            histories = await pipe.execute()
        for (_, status, at), raws in zip(part, histories, strict=True):
            records = history_records(raws)
            for record in owed(status, records, since if at is not None and at >= since else None):
                if (event := as_event(record)) is not None:
                    found.append(event)
    return found


async def redrive(settings: Settings, redis: Redis) -> int:
    """Publish the owed events again; returns how many."""
    events = await owed_events(redis)
    if not events:
        return 0
    publisher = EventPublisher(settings, client_id="redrive")
    await publisher.start()
    try:
        await publish(publisher, events)
    finally:
        await publisher.stop()
    return len(events)


async def redrive_once(publisher: EventPublisher, redis: Redis, holder: str) -> int:
    """After this process re-created the lost topics: if it wins the lock, publish the owed events
    again with `publisher` (retrying while the broker settles); returns how many (0 when another
    process holds the lock)."""
    if not await redis.set(REDRIVE_LOCK, holder, nx=True, ex=REDRIVE_LOCK_SECONDS):
        return 0
    for attempt in range(REDRIVE_ATTEMPTS):
        try:
            events = await owed_events(redis)
            await publish(publisher, events)
        except Exception:
            if attempt == REDRIVE_ATTEMPTS - 1:
                await redis.delete(REDRIVE_LOCK)  # let the next loss try again
                raise
            log.warning("re-drive after the broker loss failed; retrying", exc_info=True)
            await asyncio.sleep(2**attempt)
        else:
            log.warning("broker came back empty: %d event(s) published again from the store", len(events))
            return len(events)
    return 0
