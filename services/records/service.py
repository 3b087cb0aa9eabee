"""The records' I/O: events into `ticket_events`, the fold of the tickets and meetings they touch
into `tickets` and `meetings` (services/records/projection.py), rebuilds, counters, retention.

Per batch, one transaction: the events are inserted in one statement (the batch as one JSON
document) with `ON CONFLICT DO NOTHING`, so a replay inserts nothing; then every ticket the batch
touched is folded: its new events onto its stored row when they all come after what the row holds
(the usual case), else again from all its events, and the rows are upserted in one statement. A
meeting is folded again from all its stored events. A ticket's row is always the fold of everything
known about it, whatever order the topics were read in.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from psycopg import AsyncCursor
from psycopg.rows import DictRow
from psycopg.types.json import Json, Jsonb

from services.records.db import Pool
from services.records.projection import (
    TICKET_TOPICS,
    TOPIC_ORDER,
    Row,
    at,
    fold_meeting,
    fold_ticket,
)
from shared.city import City
from shared.events import Event, Payload, topic_first
from shared.photo_store import PhotoStore
from shared.privacy import scrub_event
from shared.store import TicketStore, history_key
from shared.topics import APPEAL_RECEIVED

log = logging.getLogger("records")

# The folded columns, with the type each has in the JSON document an upsert sends (the table's own,
# but `confidence` goes in as double precision and is cast to real as a single value would be).
TICKET_TYPES = {
    "ticket_no": "text",
    "status": "text",
    "channel": "text",
    "title": "text",
    "text": "text",
    "address": "text",
    "lng": "double precision",
    "lat": "double precision",
    "caller_id": "text",
    "masked_phone": "text",
    "operator_id": "text",
    "urgent": "boolean",
    "received_at": "timestamptz",
    "photos": "text[]",
    "category": "text",
    "category_names": "text[]",
    "confidence": "double precision",
    "appeal_type": "text",
    "grid": "text",
    "community": "text",
    "street": "text",
    "department": "text",
    "department_name": "text",
    "co_departments": "text[]",
    "assigned_via": "text",
    "explanation": "text",
    "assigned_at": "timestamptz",
    "respond_by": "timestamptz",
    "resolve_by": "timestamptz",
    "accepted_at": "timestamptz",
    "accepted_on_time": "boolean",
    "resolved_at": "timestamptz",
    "resolution_note": "text",
    "resolution_photos": "text[]",
    "mediation_outcome": "text",
    "mediation_agreement": "text",
    "closed_at": "timestamptz",
    "returns": "integer",
    "reopens": "integer",
    "urges": "integer",
    "merged_into": "text",
    "merged": "text[]",
    "verified_at": "timestamptz",
    "verified_by": "text",
    "verification": "text",
    "verification_note": "text",
    "verification_photos": "text[]",
    "overdue": "boolean",
    "escalated": "boolean",
    "meeting_id": "text",
    "rating": "integer",
    "solved": "boolean",
    "survey_outcome": "text",
    "events": "integer",
    "updated_at": "timestamptz",
}
TICKET_COLUMNS = list(TICKET_TYPES)
MEETING_COLUMNS = [
    "meeting_id",
    "reason",
    "lead_street",
    "summoned",
    "tickets",
    "category",
    "grid",
    "deadline",
    "explanation",
    "convened_at",
    "checked_in",
    "checkins",
    "decided_at",
    "lead",
    "decided_by",
    "decision",
    "updated_at",
]


def _upsert(table: str, columns: Sequence[str], key: str) -> str:
    cols = ", ".join(columns)
    values = ", ".join(f"%({c})s" for c in columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
    return f"INSERT INTO {table} ({cols}) VALUES ({values}) ON CONFLICT ({key}) DO UPDATE SET {updates}"


UPSERT_MEETING = _upsert("meetings", MEETING_COLUMNS, "meeting_id")
# Rows and events go to the server as one JSON document per statement, not one statement per row:
# the rows' parameters cost psycopg more CPU to adapt, one by one, than the whole batch costs
# orjson, and the server runs one statement instead of hundreds. The rows as `json`, not `jsonb`:
# read once into their columns, they need no binary form, and `json_to_recordset` fills them from
# the text as it parses it (a fifth less of the server's time for the statement).
UPSERT_TICKETS = (
    f"INSERT INTO tickets ({', '.join(TICKET_COLUMNS)}) SELECT {', '.join(TICKET_COLUMNS)} "
    f"FROM json_to_recordset(%s) AS r({', '.join(f'{c} {t}' for c, t in TICKET_TYPES.items())}) "
    f"ON CONFLICT (ticket_no) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in TICKET_COLUMNS if c != "ticket_no")
)
INSERT_EVENTS = (
    "INSERT INTO ticket_events (event_id, ticket_no, topic, occurred_at, payload) "
    "SELECT e->>'event_id', e->>'ticket_no', e->>'topic', (e->>'occurred_at')::timestamptz, e "
    "FROM jsonb_array_elements(%s) AS e ON CONFLICT (event_id) DO NOTHING RETURNING event_id, recorded_at"
)
# The stored rows, each with the [topic, event id] of its events at the row's `updated_at`: a new
# event of the same time still folds onto the row when its topic comes later in the pipeline than
# theirs (the router stamps an assignment with its classification's time). The events just inserted
# are told apart in Python: a list of ids compared row by row costs the server more than the read.
SELECT_TICKETS = (
    f"SELECT {', '.join('t.' + c for c in TICKET_COLUMNS)}, "
    "ARRAY(SELECT ARRAY[e.topic, e.event_id] FROM ticket_events e "
    "WHERE e.ticket_no = t.ticket_no AND e.occurred_at = t.updated_at) AS last_events, "
    "t.personal_data_removed_at AS erased_at "
    "FROM tickets t WHERE t.ticket_no = ANY(%s)"
)


# The topics of a ticket that waits for its assignment: its row may be held back until that comes.
WAITING_TOPICS = frozenset({"appeal.received", "appeal.located", "appeal.photos_added", "appeal.classified"})
# The router's events that answer one of the pipeline's (`awaits_its_cause`).
ANSWERING_TOPICS = frozenset({"ticket.assigned", "ticket.updated"})


def waits(events: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a ticket with these new events waits for the router: just received or classified
    by the model, no more. Not one a person is to look at (a classification flagged for review),
    nor one a reviewer has placed (its row shows the review until the assignment), nor later
    news of a ticket with a row (a photo, a location), which would then be folded again."""
    return any(e["topic"] in ("appeal.received", "appeal.classified") for e in events) and all(
        e["topic"] in WAITING_TOPICS and not e.get("needs_review") and not e.get("reviewed_by")
        for e in events
    )


def awaits_its_cause(events: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a ticket still in its intake (its appeal among these events) has an assignment whose
    classification, or a hold whose assignment, is not here (the event it answers, `caused_by`):
    that is on its way. The worker reads each topic's partitions in turn, so in a flood it reads
    the large classifications behind the small assignments, and a hotspot's hold may come before
    the assignment written with it. A ticket folded without its cause was folded again, from all
    its events read back, when the cause came: most tickets of a flood were written twice."""
    ids = {e["event_id"] for e in events}
    return any(e["topic"] == "appeal.received" for e in events) and any(
        e["topic"] in ANSWERING_TOPICS and e.get("caused_by") is not None and e["caused_by"] not in ids
        for e in events
    )


def events_by_ticket(events: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Tickets' events (not meetings'), in the order given."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in events:
        if not p["topic"].startswith("meeting."):
            out.setdefault(p["ticket_no"], []).append(p)
    return out


def still_waits(held: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a ticket whose row is held back with `held` (none: not held) stays held with these
    new `events`: it waits for the router (`waits`), or for the classification of an assignment
    that came before it, or for the assignment of a hold that came before it (`awaits_its_cause`)."""
    if all(e["topic"] in WAITING_TOPICS for e in held) and waits(events):
        return True
    return awaits_its_cause([*held, *events])


def payload(topic: str, event: Event) -> dict[str, Any]:
    # From the event's JSON: the text it came in (see `Event.from_json`), read by orjson, costs a
    # fifth of dumping the model again.
    dumped = Payload(orjson.loads(event.json_bytes), event.json_bytes)
    dumped["topic"] = topic  # set, not merged into a new dict: one dict per event, not two
    return dumped


def as_jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=orjson.dumps)


def stored(event: Mapping[str, Any]) -> bytes:
    """An event (with its `topic`) as `ticket_events` stores it: its message's bytes when it has
    them (`Payload`), else its object dumped."""
    if isinstance(event, Payload):
        return topic_first(event["topic"], event.body)
    return orjson.dumps(event)


def events_json(events: Sequence[Mapping[str, Any]]) -> bytes:
    """The events as one JSON array, for INSERT_EVENTS."""
    return b"[" + b",".join(map(stored, events)) + b"]"


# Events per INSERT_EVENTS statement, and rows per UPSERT_TICKETS. A batch of a flood holds up to
# 20,000 events, 8 to 24 MB of JSON: as one statement that document was a fresh block of memory at
# every batch, in the worker (above the allocator's threshold, mapped and unmapped) and in
# PostgreSQL, and each of its pages was faulted in and zeroed anew. A thousand events, or five
# hundred rows, are about a megabyte, which both reuse.
EVENTS_PER_STATEMENT = 1000
ROWS_PER_STATEMENT = 500


async def upsert_tickets(cur: AsyncCursor[DictRow], rows: Sequence[Row]) -> None:
    """Write these rows (one per ticket: a statement may not update a row twice), in this order."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start : start + ROWS_PER_STATEMENT]
        await cur.execute(UPSERT_TICKETS, (Json(part, dumps=orjson.dumps),))


async def insert_events(
    cur: AsyncCursor[DictRow], payloads: Sequence[Mapping[str, Any]]
) -> dict[str, datetime]:
    """Store these events (as published, with their topic), in this order; returns the ids of those
    that were not stored yet, each with when it was (the transaction's time)."""
    inserted: dict[str, datetime] = {}
    for start in range(0, len(payloads), EVENTS_PER_STATEMENT):
        part = payloads[start : start + EVENTS_PER_STATEMENT]
        await cur.execute(INSERT_EVENTS, (Jsonb(part, dumps=events_json),))
        inserted.update((r["event_id"], r["recorded_at"]) for r in await cur.fetchall())
    return inserted


def street_index(city: City) -> dict[str, tuple[str, str]]:
    return {g: (info.community_id, info.street_id) for g, info in city.grids.items()}


def _comes_after(event: Mapping[str, Any], row: Row, fresh: Container[str]) -> bool:
    """Whether `event` sorts after every event folded into `row` (projection.in_order): a later
    time, or the same time and a later stage than all the events of that time stored before
    (`fresh`: the ids of those just inserted)."""
    when = at(event["occurred_at"])
    if when != row["updated_at"]:
        return when > row["updated_at"]
    stage = TOPIC_ORDER.get(event["topic"], 9)
    return all(TOPIC_ORDER.get(topic, 9) < stage for topic, id_ in row["last_events"] if id_ not in fresh)


async def _each_history(
    store: TicketStore, batch: int, work: Callable[[TicketStore, list[str]], Awaitable[int]]
) -> int:
    """Run `work` on the numbers of every ticket with a Redis history, `batch` at a time; returns
    the sum of what it returned."""
    total = 0
    nos: list[str] = []
    async for key in store.redis.scan_iter(match="t:*:h", count=5000):
        nos.append(key.decode()[2:-2])
        if len(nos) >= batch:
            total += await work(store, nos)
            nos = []
    return total + await work(store, nos)


def photos_of(event: Mapping[str, Any]) -> Sequence[str]:
    """The photo ids an event brings to its ticket: an appeal's (also inside the classification
    that carries it) or a resolution's."""
    photos: Sequence[str] = event.get("photos") or ()
    if photos:
        return photos
    appeal = event.get("appeal")
    return (appeal.get("photos") or ()) if isinstance(appeal, Mapping) else ()


UPSERT_HELD = (
    "INSERT INTO records_held (instance, since, seen_at) VALUES (%s, %s, now()) "
    "ON CONFLICT (instance) DO UPDATE SET since = EXCLUDED.since, seen_at = now()"
)


@dataclass(frozen=True)
class Held:
    """The events of a ticket whose row is held back: stored already, not folded yet."""

    events: list[dict[str, Any]]
    since: datetime  # when the first was stored (PostgreSQL's clock, as `records_held` keeps it)
    at: float  # and when, on this worker's monotonic clock


@dataclass(frozen=True)
class _Holding:
    """What a transaction folds, and how what is held back changes with it (applied once it has
    committed): a change, not a new copy of the held tickets, which in a flood are thousands."""

    fold: list[dict[str, Any]]  # the events a transaction folds
    earlier: set[str]  # of those, the ids of the ones stored before it
    released: set[str]  # held tickets it folds
    holding: dict[str, Held]  # tickets held back after it, new or with more events

    def keeps(self, no: str, held: Mapping[str, Held]) -> bool:
        """Whether ticket `no` is held back after the transaction (`held`: before it)."""
        return no in self.holding or (no in held and no not in self.released)


class Records:
    def __init__(
        self,
        pool: Pool,
        city: City,
        store: TicketStore | None = None,
        photos: PhotoStore | None = None,
        *,
        hold_seconds: float = 0,
        hold_most: int = 20_000,
        instance: str | None = None,
    ) -> None:
        """`store`: the ticket store in Redis, where a ticket the record has erased is erased again
        if it comes back (see `_fold_onto`); `photos`: where the tickets' photos are kept, which
        the removal of personal data deletes. The worker passes both; readers of the record need
        neither.

        `hold_seconds`: how long the row of a ticket that waits for its assignment (`waits`) may be
        held back, its events stored but not folded, so that the ticket's stages make one write of
        its row, not one each (in a flood they come seconds apart); at most `hold_most` events held.
        0 (the default, for all but the worker): every row written at once. `instance`: this
        worker's name in `records_held` (a new one at every start)."""
        self.pool = pool
        self.streets = street_index(city)
        self.store = store
        self.photos = photos
        self.hold_seconds, self.hold_most = hold_seconds, hold_most
        self.instance = instance or uuid.uuid4().hex
        # In the order each was first held: oldest first, by `at` and (as PostgreSQL's clock goes
        # forward) by `since`. A ticket held again with more events keeps its place.
        self._held: dict[str, Held] = {}
        self._held_events = 0  # their events, all together
        # Set when a ticket was held with a `since` before the last one's (PostgreSQL's clock went
        # back): the earliest of what is held may then not be the first; until nothing is held.
        self._since_floor: datetime | None = None
        self._marked = False  # `records_held` has our row with a `since`
        self._unsure = False  # the last transaction failed: it may have committed
        # One projection at a time: each computes what stays held from what was, and a batch and
        # the periodic write of held rows interleaving would drop what the other held.
        self._projecting = asyncio.Lock()

    # --- the projection -----------------------------------------------------------------------

    async def project(self, topic: str, events: Sequence[Event]) -> None:
        await self.project_many([(topic, e) for e in events])

    async def project_many(self, events: Sequence[tuple[str, Event]]) -> None:
        """Record a batch of events (each with its topic) and fold them into their rows, in one
        transaction."""
        await self.project_payloads([payload(topic, e) for topic, e in events])

    async def project_payloads(self, payloads: Sequence[dict[str, Any]]) -> None:
        """`project_many` for events as the JSON objects they were published as, each with its
        `topic` set (the worker's, `shared.bus.subscribe_payloads`: checked against their models)."""
        if payloads:
            await self._project(payloads)

    async def write_held(self, *, everything: bool = False) -> int:
        """Write the held-back rows whose time is up (all of them with `everything`: the worker is
        stopping). Returns how many tickets were held back before."""
        if not (self._held or self._marked):
            return 0
        held = len(self._held)
        await self._project([], everything=everything)
        return held

    def _due(self, everything: bool, incoming: int) -> set[str]:
        """The held tickets whose rows are to be written now: held `hold_seconds`, or the oldest
        beyond `hold_most` events with the `incoming` ones of the batch (should all be held)."""
        if everything:
            return set(self._held)
        now, due, total = time.monotonic(), set(), self._held_events + incoming
        # Oldest first, so both are a prefix: this stops at the first ticket neither due nor over
        # the most, rather than passing over thousands of held tickets at every batch.
        for no, h in self._held.items():
            if now - h.at < self.hold_seconds and total <= self.hold_most:
                break
            due.add(no)
            total -= len(h.events)
        return due

    async def _project(self, payloads: Sequence[dict[str, Any]], *, everything: bool = False) -> None:
        async with self._projecting:
            try:
                await self._project_alone(payloads, everything=everything)
            except BaseException:
                # It may have committed all the same (the answer to COMMIT lost with the connection):
                # its events are then stored, and the batch read again finds them stored, so the
                # tickets it held back would be held nowhere. The next transaction folds the stored
                # events it is given again (`_held_after`).
                self._unsure = True
                raise
            self._unsure = False

    async def _project_alone(self, payloads: Sequence[dict[str, Any]], *, everything: bool) -> None:
        due = self._due(everything, len(payloads))
        taken: list[tuple[str, str, str]] = []
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            # The tickets' locks before their events: a catch-up from Redis (`copy_histories`) locks
            # its tickets and then inserts their events, so taking them the other way round here
            # let the two wait on each other (PostgreSQL reported the deadlock). The events go in
            # in one order, their ids', for the meetings' events, which no ticket's lock covers.
            nos = {p["ticket_no"] for p in payloads if not p["topic"].startswith("meeting.")}
            await self._lock(cur, nos | due)
            ordered = sorted(payloads, key=lambda p: p["event_id"])
            inserted = await insert_events(cur, ordered) if payloads else {}
            # A replay inserts nothing; an event twice in the batch is inserted, and folded, once.
            fresh = list({p["event_id"]: p for p in payloads if p["event_id"] in inserted}.values())
            if taken := [(p["ticket_no"], i, p["event_id"]) for p in fresh for i in photos_of(p)]:
                await cur.executemany(
                    "INSERT INTO ticket_photos (ticket_no, photo_id, event_id) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    taken,
                )
            tickets = events_by_ticket(fresh)
            held = self._held_after(tickets, inserted, due, await self._stored_before(cur, tickets, due))
            # Tickets before meetings: every transaction takes its locks in that order.
            if held.fold:
                await self._fold_onto(cur, held.fold, held.earlier)
            if self._unsure and self.hold_seconds > 0:
                stored = {n for n in nos - {p["ticket_no"] for p in fresh} if not held.keeps(n, self._held)}
                await self._refold_tickets(cur, stored)
            if meetings := {p.get("meeting_id", "") for p in fresh if p["topic"].startswith("meeting.")}:
                await self.refold_meetings(cur, meetings)
            since = self._since_after(held)
            if since is not None or self._marked:
                await cur.execute(UPSERT_HELD, (self.instance, since))
        # Committed: only now is what is held changed (a failed batch is read again, and what it
        # took out to fold is still held).
        self._apply_holding(held)
        self._marked = since is not None
        if taken and self.photos is not None:
            # Recorded (committed): the sweep of unattached uploads leaves these alone. Should this
            # fail, the sweep still finds them in `ticket_photos` before it deletes anything.
            await self.photos.attached(i for _, i, _ in taken)

    async def _stored_before(
        self, cur: AsyncCursor[DictRow], tickets: Mapping[str, list[dict[str, Any]]], due: set[str]
    ) -> set[str]:
        """Of the tickets these new events would hold back anew, those with events stored by an
        earlier transaction. Those were folded then (nothing held them, or their time was up), and
        what they would wait for may be among them: read before the appeal, the assignment and its
        classification were folded into no row, and the appeal's row then waited for an assignment
        that had come already, until its time was up (at 1,000 appeals/s a few hundred rows were
        seconds late at any moment). Such a ticket is folded at once."""
        if self.hold_seconds <= 0:
            return set()
        anew = {
            no: events
            for no, events in tickets.items()
            if no not in self._held and no not in due and still_waits((), events)
        }
        if not anew:
            return set()
        await cur.execute(  # NOT IN a subquery: hashed, where a list parameter is read row by row
            "SELECT DISTINCT ticket_no FROM ticket_events "
            "WHERE ticket_no = ANY(%s) AND event_id NOT IN (SELECT unnest(%s::text[]))",
            (list(anew), [e["event_id"] for events in anew.values() for e in events]),
        )
        return {r["ticket_no"] for r in await cur.fetchall()}

    def _held_after(
        self,
        tickets: Mapping[str, list[dict[str, Any]]],
        inserted: Mapping[str, datetime],
        due: set[str],
        stored: Collection[str] = frozenset(),
    ) -> _Holding:
        """Which ticket events a transaction folds (the new ones, `events_by_ticket`, with those held of
        the same tickets and of those due) and which it holds back (a ticket that still waits:
        `waits`; not one with events stored before, `_stored_before`)."""
        fold: list[dict[str, Any]] = []
        earlier: set[str] = set()
        released: set[str] = set()
        holding: dict[str, Held] = {}

        def release(no: str, h: Held) -> None:  # a held ticket's stored events join the fold
            fold.extend(h.events)
            earlier.update(e["event_id"] for e in h.events)
            released.add(no)

        now = time.monotonic()
        for no, events in tickets.items():
            before = self._held.get(no)
            waiting = (before is not None or no not in stored) and still_waits(
                before.events if before else (), events
            )
            if self.hold_seconds > 0 and no not in due and waiting:
                holding[no] = (
                    Held([*before.events, *events], before.since, before.at)
                    if before
                    else Held(events, inserted[events[0]["event_id"]], now)
                )
                continue
            if before:
                release(no, before)
            fold += events
        for no in due:
            if no not in tickets and (h := self._held.get(no)):
                release(no, h)
        return _Holding(fold, earlier, released, holding)

    def _since_after(self, held: _Holding) -> datetime | None:
        """When the earliest event of what is held back after `held` was stored (None: nothing
        held). The first ticket still held is the earliest of the old ones, unless the clock went
        back (`_since_floor`); the tickets held anew may be earlier still."""
        first = next((h.since for no, h in self._held.items() if no not in held.released), None)
        new = [h.since for no, h in held.holding.items() if no not in self._held]
        if first is None and not new:
            return None
        return min(s for s in (first, self._since_floor, *new) if s is not None)

    def _apply_holding(self, held: _Holding) -> None:
        for no in held.released:
            if (gone := self._held.pop(no, None)) is not None:
                self._held_events -= len(gone.events)
        for no, h in held.holding.items():
            before = self._held.get(no)
            if before is None and self._held and h.since < next(reversed(self._held.values())).since:
                floor = self._since_floor
                self._since_floor = h.since if floor is None else min(floor, h.since)
            self._held_events += len(h.events) - (len(before.events) if before else 0)
            self._held[no] = h  # in place when it was held: its place stays its first
        if not self._held:
            self._since_floor = None

    async def recover_held(self, stale_after: float) -> int:
        """Fold the tickets whose rows a worker held back when it stopped without writing them (it
        crashed): its `records_held` row, not written for `stale_after` seconds, says from when to
        when it stored events. Each is folded again from all its events, which is right whatever
        other workers wrote since; the row is then deleted. Rows of workers that hold nothing and
        are gone are deleted too. Returns how many tickets were folded."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT instance, since, seen_at FROM records_held "
                "WHERE instance <> %s AND seen_at < now() - make_interval(secs => %s)",
                (self.instance, stale_after),
            )
            gone = await cur.fetchall()
        folded = 0
        for r in gone:
            if r["since"] is not None:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(
                        "SELECT DISTINCT ticket_no FROM ticket_events "
                        "WHERE recorded_at BETWEEN %s AND %s AND topic NOT LIKE 'meeting.%%'",
                        (r["since"], r["seen_at"]),
                    )
                    nos = [n["ticket_no"] for n in await cur.fetchall()]
                for i in range(0, len(nos), 1000):
                    async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as c:
                        folded += await self._refold_tickets(c, nos[i : i + 1000])
                log.warning("folded %d ticket(s) whose rows a stopped records worker had held back", len(nos))
            async with self.pool.connection() as conn:
                # Only as it was read: a worker that was slow, not gone, and wrote since keeps it.
                await conn.execute(
                    "DELETE FROM records_held WHERE instance = %s AND seen_at = %s",
                    (r["instance"], r["seen_at"]),
                )
        return folded

    async def forget_held(self) -> None:
        """Remove this worker's `records_held` row (it is stopping, and holds nothing now)."""
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM records_held WHERE instance = %s", (self.instance,))
        self._marked = False

    async def lock_table(self) -> tuple[int, int]:
        """The server's `max_locks_per_transaction` and the backends its lock table is sized for
        (connections and prepared transactions): the table holds their product, and one
        transaction may take it all."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT current_setting('max_locks_per_transaction')::int AS each, "
                "current_setting('max_connections')::int "
                "+ current_setting('max_prepared_transactions')::int AS backends"
            )
            r = await cur.fetchone()
        assert r is not None
        return r["each"], r["backends"]

    @staticmethod
    async def _lock(cur: AsyncCursor[DictRow], keys: Iterable[str]) -> None:
        """Hold these tickets (or meetings) until the transaction ends. Replicas of the worker, and
        the removal of personal data, may fold the same ticket at once; without the lock the one
        that commits last would write a row missing the other's events. Taken in sorted order: no
        deadlock between batches."""
        await cur.execute(
            "SELECT pg_advisory_xact_lock(k) FROM "
            "(SELECT hashtextextended(n, 7) AS k FROM unnest(%s::text[]) AS n ORDER BY 1 OFFSET 0) AS s",
            (sorted(set(keys)),),
        )

    async def _fold_onto(
        self, cur: AsyncCursor[DictRow], fresh: Sequence[dict[str, Any]], earlier: Container[str] = ()
    ) -> None:
        """Fold new events onto the stored rows where they all come after what a row holds (the
        usual case: one read of the rows, not of every event); the others, events that arrived
        out of order, and new tickets, are folded again from all their events. `earlier`: the ids
        of those stored by an earlier transaction (held back): a ticket with one of them and a row
        is folded again too, as another worker may have folded them into it already. The caller
        holds the tickets' locks."""
        by_ticket = events_by_ticket(fresh)
        await cur.execute(SELECT_TICKETS, (list(by_ticket),))
        stored = {r["ticket_no"]: r for r in await cur.fetchall()}
        # A ticket whose personal data was removed while some of its events were still on their
        # way (the record reads each topic on its own) takes those events scrubbed too.
        erased = {no: at for no, row in stored.items() if (at := row.pop("erased_at")) is not None}
        if erased:
            for no in erased:
                by_ticket[no] = [scrub_event(p) for p in by_ticket[no]]
            await cur.executemany(
                "UPDATE ticket_events SET payload = %s WHERE event_id = %s",
                [(as_jsonb(p), p["event_id"]) for no in erased for p in by_ticket[no]],
            )
            # Those events may also have rebuilt the ticket in Redis, with the resident's words,
            # if Redis had lost it: the router makes a ticket it does not find from the appeal a
            # classification carries. Every write of the router publishes an event that comes
            # here after the write, so the ticket is found and erased again (inside this
            # transaction: if Redis fails, the batch is read again and so is this), and announced
            # again with the caller id the rebuilt ticket carries (`TicketStore.keep_erased` says
            # why: the first notice may have been lost with the ticket).
            if self.store is not None:
                await self.store.keep_erased(erased)
        ids = {p["event_id"] for p in fresh}
        rows: list[Row] = []
        again: list[str] = []
        for no, evs in by_ticket.items():
            row = stored.get(no)
            if (
                row is not None
                and not any(e["event_id"] in earlier for e in evs)
                and all(_comes_after(e, row, ids) for e in evs)
            ):
                del row["last_events"]
                if (folded := fold_ticket(evs, self.streets, start=row)) is not None:
                    rows.append(folded)
            else:
                again.append(no)
        rows += await self._refolded_tickets(cur, again, by_ticket)
        await upsert_tickets(cur, rows)
        if late := await self._erased_on_their_way(cur, fresh, erased):
            await self.remove_personal_data(cur, late)
            # In Redis too, announced like the erasure on request, so intake and the notifier drop
            # their keys linking the caller to these tickets (the erasure did not find them).
            if self.store is not None:
                now = datetime.now(UTC)
                await self.store.keep_erased(dict.fromkeys(late, now))

    @staticmethod
    async def caller_lock(cur: AsyncCursor[DictRow], caller_ids: Iterable[str]) -> None:
        """Hold these callers until the transaction ends: an erasure finds a caller's tickets under
        it, and the projection takes it before it asks whether a caller was erased (`_erased_on_
        their_way`), so no ticket can be recorded between the erasure's look and its audit entry
        and be missed by both."""
        await Records._lock(cur, [f"caller:{c}" for c in caller_ids])

    async def _erased_on_their_way(
        self, cur: AsyncCursor[DictRow], fresh: Sequence[dict[str, Any]], erased: Container[str]
    ) -> list[str]:
        """The (locked) tickets of this batch whose caller asked for erasure after the appeal was
        received: the appeal was on its way to the record when the erasure looked for it there."""
        appeals: dict[str, tuple[str, datetime]] = {}
        for p in fresh:
            appeal = p if p["topic"] == APPEAL_RECEIVED else p.get("appeal")
            if p["ticket_no"] in erased or not isinstance(appeal, Mapping):
                continue
            if cid := (appeal.get("caller") or {}).get("caller_id"):
                appeals[p["ticket_no"]] = (cid, at(appeal["received_at"]))
        if not appeals:
            return []
        callers = sorted({cid for cid, _ in appeals.values()})
        await self.caller_lock(cur, callers)
        await cur.execute(
            "SELECT subject, max(at) AS at FROM privacy_audit "
            "WHERE action = 'erase' AND subject = ANY(%s) GROUP BY subject",
            (callers,),
        )
        asked = {r["subject"]: r["at"] for r in await cur.fetchall()}
        return sorted(
            no for no, (cid, received) in appeals.items() if cid in asked and received <= asked[cid]
        )

    async def remove_personal_data(self, cur: AsyncCursor[DictRow], nos: Sequence[str]) -> None:
        """Scrub these tickets' stored events, fold their rows and their meetings' again, and mark
        the rows (the projection scrubs a marked ticket's later events by the mark). Locks the
        tickets for the transaction, so no fold of them comes in between (a lock the transaction
        holds already is taken again at no cost)."""
        if not nos:
            return
        await self._lock(cur, nos)
        await cur.execute(
            "SELECT event_id, ticket_no, topic, payload FROM ticket_events WHERE ticket_no = ANY(%s)",
            (list(nos),),
        )
        rows = await cur.fetchall()
        scrubbed = [(r["event_id"], scrub_event(r["payload"])) for r in rows]
        await cur.executemany(
            "UPDATE ticket_events SET payload = %s WHERE event_id = %s",
            [(as_jsonb(p), eid) for eid, p in scrubbed],
        )
        by_ticket: dict[str, list[dict[str, Any]]] = {}
        meetings: set[str] = set()
        for r, (_, p) in zip(rows, scrubbed, strict=True):
            if not r["topic"].startswith("meeting."):
                by_ticket.setdefault(r["ticket_no"], []).append(p)
            else:
                meetings.add(p.get("meeting_id", ""))
        rows = [t for evs in by_ticket.values() if (t := fold_ticket(evs, self.streets))]
        # A row with no events to fold it from again (the record reads each topic on its own: its
        # events may be on their way yet, or gone) is scrubbed as it stands, so no word of the
        # resident's outlives the erasure in it; the late events come scrubbed by the mark.
        if unfolded := sorted(set(nos) - {r["ticket_no"] for r in rows}):
            await cur.execute(
                f"SELECT {', '.join(TICKET_COLUMNS)} FROM tickets WHERE ticket_no = ANY(%s)", (unfolded,)
            )
            rows += [scrub_event(r) for r in await cur.fetchall()]
        await upsert_tickets(cur, rows)
        await cur.execute(
            "UPDATE tickets SET personal_data_removed_at = now(), caller_id = NULL, "
            "masked_phone = NULL WHERE ticket_no = ANY(%s)",
            (list(nos),),
        )
        await self._delete_photos(cur, nos)
        # A meeting's row holds the words of its facts (the explanation, the decision's note),
        # which may repeat the resident's: folded again from the facts just scrubbed.
        await self.refold_meetings(cur, meetings)

    async def _delete_photos(self, cur: AsyncCursor[DictRow], nos: Sequence[str]) -> None:
        """Delete the files of these tickets' photos, but for a photo another ticket also has (the
        same picture sent twice is one file). Inside the transaction: if the photo store is away,
        the removal fails as a whole and is done again, rather than say done with photos left."""
        await cur.execute(
            "DELETE FROM ticket_photos WHERE ticket_no = ANY(%s) RETURNING photo_id", (list(nos),)
        )
        ids = {r["photo_id"] for r in await cur.fetchall()}
        if not ids or self.photos is None:
            return
        await cur.execute(
            "SELECT DISTINCT photo_id FROM ticket_photos WHERE photo_id = ANY(%s)", (list(ids),)
        )
        shared = {r["photo_id"] for r in await cur.fetchall()}
        await self.photos.delete(sorted(ids - shared))

    async def _refold_tickets(self, cur: AsyncCursor[DictRow], nos: Iterable[str]) -> int:
        nos = sorted(set(nos))
        if not nos:
            return 0
        await self._lock(cur, nos)
        rows = await self._refolded_tickets(cur, nos, {})
        await upsert_tickets(cur, rows)
        return len(rows)

    async def _refolded_tickets(
        self, cur: AsyncCursor[DictRow], nos: Sequence[str], fresh: Mapping[str, Sequence[dict[str, Any]]]
    ) -> list[Row]:
        """The rows of these (locked) tickets folded from all their events: those stored before,
        read back, and `fresh`, those this transaction has just inserted, as they are (a new
        ticket's appeal is not read back from the table it was just written to)."""
        if not nos:
            return []
        by_ticket: dict[str, list[Mapping[str, Any]]] = {
            no: [p for p in fresh.get(no, ()) if p["topic"] in TICKET_TOPICS] for no in nos
        }
        # NOT IN a subquery: hashed, where a list parameter is read row by row. The topics are
        # picked here, not by a condition: `topic = ANY(the ticket topics)`, nearly every event, had
        # the planner join the whole index by topic with the one by ticket until the table's first
        # analyze (in a flood on a fresh database, 40 of a 55 ms read of 500 tickets' events).
        await cur.execute(
            "SELECT ticket_no, topic, payload FROM ticket_events "
            "WHERE ticket_no = ANY(%s) AND event_id NOT IN (SELECT unnest(%s::text[]))",
            (list(nos), [p["event_id"] for evs in by_ticket.values() for p in evs]),
        )
        for r in await cur.fetchall():
            if r["topic"] in TICKET_TOPICS:
                by_ticket[r["ticket_no"]].append(r["payload"])
        return [row for evs in by_ticket.values() if (row := fold_ticket(evs, self.streets))]

    async def refold_meetings(self, cur: AsyncCursor[DictRow], ids: Iterable[str]) -> int:
        """Fold these meetings' rows again from all their facts, in the caller's transaction (the
        projection's, or an erasure's that has just scrubbed some of them)."""
        ids = sorted(i for i in set(ids) if i)
        if not ids:
            return 0
        await self._lock(cur, [f"meeting:{i}" for i in ids])
        await cur.execute(
            "SELECT payload FROM ticket_events "
            "WHERE topic LIKE 'meeting.%%' AND payload->>'meeting_id' = ANY(%s)",
            (ids,),
        )
        by_meeting: dict[str, list[Mapping[str, Any]]] = {}
        for r in await cur.fetchall():
            event = r["payload"]
            by_meeting.setdefault(event["meeting_id"], []).append(event)
        rows: list[Row] = [row for evs in by_meeting.values() if (row := fold_meeting(evs))]
        if rows:
            await cur.executemany(UPSERT_MEETING, [{**r, "checkins": as_jsonb(r["checkins"])} for r in rows])
        return len(rows)

    async def rebuild(self, since: datetime | None = None, chunk: int = 2000) -> int:
        """Fold again every ticket and meeting with an event at or after `since` (None: all of
        them, from scratch). Returns how many tickets were written."""
        written = 0
        marks: dict[str, tuple[datetime | None, datetime | None]] = {}
        gone: list[tuple[datetime, str]] = []  # the meetings that left Redis
        async with self.pool.connection() as conn:
            if since is None:
                async with conn.transaction():
                    # What no event says, kept across the emptying: which tickets had their personal
                    # data removed (the worker scrubs their late events by it), and which tickets and
                    # meetings left Redis.
                    cur = await conn.execute(
                        "SELECT ticket_no, personal_data_removed_at, left_redis_at FROM tickets "
                        "WHERE personal_data_removed_at IS NOT NULL OR left_redis_at IS NOT NULL"
                    )
                    marks = {
                        r["ticket_no"]: (r["personal_data_removed_at"], r["left_redis_at"])
                        for r in await cur.fetchall()
                    }
                    cur = await conn.execute(
                        "SELECT meeting_id, left_redis_at FROM meetings WHERE left_redis_at IS NOT NULL"
                    )
                    gone = [(r["left_redis_at"], r["meeting_id"]) for r in await cur.fetchall()]
                    await conn.execute("TRUNCATE tickets, meetings")
            where, args = ("WHERE occurred_at >= %s", [since]) if since else ("", [])
            cur = await conn.execute(f"SELECT DISTINCT ticket_no FROM ticket_events {where}", args)
            nos = [r["ticket_no"] for r in await cur.fetchall()]
            for i in range(0, len(nos), chunk):
                async with conn.transaction(), conn.cursor() as c:
                    written += await self._refold_tickets(c, nos[i : i + chunk])
                    if kept := [(*marks[no], no) for no in nos[i : i + chunk] if no in marks]:
                        await c.executemany(
                            "UPDATE tickets SET personal_data_removed_at = %s, left_redis_at = %s "
                            "WHERE ticket_no = %s",
                            kept,
                        )
            cur = await conn.execute(
                "SELECT DISTINCT payload->>'meeting_id' AS id FROM ticket_events "
                f"{where + ' AND' if where else 'WHERE'} topic LIKE 'meeting.%%'",
                args,
            )
            ids = [r["id"] for r in await cur.fetchall()]
            async with conn.transaction(), conn.cursor() as c:
                await self.refold_meetings(c, ids)
                if gone:
                    await c.executemany("UPDATE meetings SET left_redis_at = %s WHERE meeting_id = %s", gone)
        return written

    async def backfill_from_store(self, store: TicketStore, batch: int = 500) -> int:
        """Copy the events kept in Redis's ticket histories into the record (a system that ran
        before the record existed, or events the record missed). Returns events read."""
        return await _each_history(store, batch, self.copy_histories)

    async def catch_up_with_store(self, store: TicketStore, batch: int = 1000) -> int:
        """Copy in the events of every ticket whose Redis history holds more than the record: the
        embedded broker keeps nothing across a restart (nor when it is lost while we run), so the
        events it held that this worker had not read yet are left only in the histories. Counting
        first keeps it to a few round trips per `batch` tickets, not a read of every history. The
        count misses a ticket only where the record also holds an event its history does not have
        yet (a classification or survey event its writer published before the router recorded it)
        and lacks another. Returns how many were behind."""
        return await _each_history(store, batch, self._catch_up)

    async def _catch_up(self, store: TicketStore, nos: list[str]) -> int:
        if not nos:
            return 0
        async with store.redis.pipeline(transaction=False) as pipe:
            for no in nos:
                pipe.llen(history_key(no))
            lengths = await pipe.execute()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ticket_no, count(*) AS n FROM ticket_events "
                "WHERE ticket_no = ANY(%s) GROUP BY ticket_no",
                (nos,),
            )
            recorded = {r["ticket_no"]: r["n"] for r in await cur.fetchall()}
        behind = [no for no, n in zip(nos, lengths, strict=True) if n > recorded.get(no, 0)]
        await self.copy_histories(store, behind)
        return len(behind)

    async def copy_histories(self, store: TicketStore, nos: Sequence[str]) -> int:
        """Copy into the record what these tickets' Redis histories hold (what it has already is
        left as it is) and fold their rows and meetings again. Returns how many events were read."""
        events = [record for no in nos for record in await store.history(no)]
        if not events:
            return 0
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            # A ticket the record has erased whose Redis history holds what the record lacks was
            # rebuilt there (see `_fold_onto`): its events come in scrubbed, and it is erased again.
            await self._lock(cur, nos)
            await cur.execute(
                "SELECT ticket_no, personal_data_removed_at AS at FROM tickets "
                "WHERE ticket_no = ANY(%s) AND personal_data_removed_at IS NOT NULL",
                (nos,),
            )
            if erased := {r["ticket_no"]: r["at"] for r in await cur.fetchall()}:
                events = [scrub_event(e) if e["ticket_no"] in erased else e for e in events]
                await store.keep_erased(erased)
            await insert_events(cur, events)
            await self._refold_tickets(cur, nos)
            await self.refold_meetings(
                cur, {e.get("meeting_id", "") for e in events if e["topic"].startswith("meeting.")}
            )
        return len(events)

    # --- numbering ----------------------------------------------------------------------------

    async def raise_counters(self, store: TicketStore, today: date) -> dict[str, int]:
        """Make the ticket counters of today and yesterday start above the highest number the
        record has seen: Redis may have lost its data, the record has not."""
        days = [today - timedelta(days=1), today]
        highest: dict[str, int] = {}
        async with self.pool.connection() as conn:
            for day in days:
                prefix = f"{day:%Y%m%d}-"
                cur = await conn.execute(
                    "SELECT max(ticket_no) AS no FROM ticket_events WHERE ticket_no >= %s AND ticket_no < %s",
                    (prefix, f"{day:%Y%m%d}."),  # '.' sorts right after '-'
                )
                row = await cur.fetchone()
                no = row["no"] if row else None
                if no:
                    highest[prefix[:-1]] = int(no[-6:])
                    await store.raise_counter(day, int(no[-6:]))
        return highest
