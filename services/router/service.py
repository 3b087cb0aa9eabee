"""The router's Redis state beside the ticket store: deadline timers, department queues, joint
meetings and hotspot counters. I/O only; the decisions are in workflow / timers / meetings.

Keys:
  timers                 sorted set: timer member (timers.Timer.member) -> when it fires (unix time)
  queue:{dept}           sorted set: the department's open tickets -> their nearest deadline
  queue:owner            hash: ticket -> the department whose queue holds it
  meeting:{id}           a joint meeting, as JSON (meetings.Meeting)
  meeting:open:{cat}:{grid}  the open hotspot meeting of that cluster, if any
  hot:{cat}:{grid}       sorted set: recent tickets of that category in that grid -> received time
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.router import meetings
from services.router.timers import Timer, timers_for
from shared import tickets as st
from shared.city import Supervision
from shared.events import DepartmentRef, Event, MeetingConvened, MeetingUpdated, TicketUpdated
from shared.store import Change, ConcurrentUpdate, Outcome, TicketStore, apply_and_publish
from shared.tickets import Ticket

TIMERS = "timers"
OWNER = "queue:owner"
_FAR = 4102444800.0  # 2100-01-01: tickets with no running deadline sort last

# Claim due timers atomically: each due member is pushed `lease` seconds into the future, so no
# other replica sees it; the claimer removes it once fired. A claimer that dies leaves it to come
# back after the lease (firing is idempotent). Returns member, original score pairs.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], ARGV[2], due[i]) end
return due
"""


class TimerStore:
    def __init__(self, redis: Redis, sup: Supervision, key: str = TIMERS) -> None:
        self.redis, self.sup, self.key = redis, sup, key
        self._claim = redis.register_script(_CLAIM)

    def _needed(self, tickets: Iterable[Ticket]) -> dict[str, float]:
        return {t.member: t.due.timestamp() for ticket in tickets for t in timers_for(ticket, self.sup)}

    async def schedule(self, tickets: Iterable[Ticket]) -> int:
        """Set the timers the tickets need (NX: a timer already set, or claimed, stays as it is)."""
        timers = self._needed(tickets)
        return await self.redis.zadd(self.key, timers, nx=True) if timers else 0

    def schedule_into(self, pipe: Any, tickets: Iterable[Ticket]) -> None:
        """`schedule`, as a command of the caller's pipeline (a ticket write's MULTI)."""
        if timers := self._needed(tickets):
            pipe.zadd(self.key, timers, nx=True)

    async def claim_due(self, now: float, lease: float = 60, limit: int = 200) -> list[Timer]:
        raw = await self._claim(keys=[self.key], args=[now, now + lease, limit])
        return [Timer.parse(raw[i].decode(), float(raw[i + 1])) for i in range(0, len(raw), 2)]

    async def done(self, timers: Sequence[Timer]) -> None:
        if timers:
            await self.redis.zrem(self.key, *[t.member for t in timers])


def _queue_score(t: Ticket) -> float:
    due = t.respond_by if t.status == st.ASSIGNED else t.resolve_by
    return due.timestamp() if due and t.status in (st.ASSIGNED, st.ACCEPTED) else _FAR


# Index a batch in one command. A ticket leaves the queue of the department that held it before
# (queue:owner); a closed one moves to the department's closed list, newest first. The queue keys
# are derived here from department ids (one Redis, as the ticket writes' MULTI already assumes).
# KEYS[1]: queue:owner. ARGV, per ticket: ticket number, department, score, "1" if closed.
_INDEX = """
for i = 1, #ARGV, 4 do
  local no, dept, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[1], no)
  if old and old ~= dept then redis.call('ZREM', 'queue:' .. old, no) end
  if ARGV[i + 3] == '1' then
    redis.call('ZREM', 'queue:' .. dept, no)
    redis.call('ZADD', 'queue:' .. dept .. ':closed', score, no)
    redis.call('HDEL', KEYS[1], no)
  else
    redis.call('ZADD', 'queue:' .. dept, score, no)
    redis.call('ZREM', 'queue:' .. dept .. ':closed', no)
    redis.call('HSET', KEYS[1], no, dept)
  end
end
return 0
"""


def _index_args(tickets: Iterable[Ticket]) -> list[str | float]:
    args: list[str | float] = []
    for t in tickets:
        if t.department is None:
            continue
        if t.status == st.CLOSED:
            closed_at = (t.closed_at or t.updated_at or t.received_at).timestamp()
            args += [t.ticket_no, t.department.id, -closed_at, "1"]
        else:
            args += [t.ticket_no, t.department.id, _queue_score(t), "0"]
    return args


class Queues:
    """Each department's queue, most urgent deadline first. Closed tickets leave it for the
    department's closed list (`queue:{dept}:closed`, newest first), which `status=closed` pages."""

    def __init__(self, redis: Redis, store: TicketStore) -> None:
        self.redis, self.store = redis, store

    async def index(self, tickets: Sequence[Ticket]) -> None:
        if args := _index_args(tickets):
            await self.redis.eval(_INDEX, 1, OWNER, *args)

    def index_into(self, pipe: Any, tickets: Sequence[Ticket]) -> None:
        """`index`, as a command of the caller's pipeline (a ticket write's MULTI)."""
        if args := _index_args(tickets):
            pipe.eval(_INDEX, 1, OWNER, *args)

    async def page(
        self, dept: str, *, status: str | None, overdue: bool | None, page: int, size: int
    ) -> tuple[int, list[Ticket]]:
        key = f"queue:{dept}:closed" if status == st.CLOSED else f"queue:{dept}"
        nos = [n.decode() for n in await self.redis.zrange(key, 0, -1)]
        found: list[Ticket] = []
        for i in range(0, len(nos), 500):
            for t in await self.store.get_many(nos[i:i + 500]):
                if t is None or t.department is None or t.department.id != dept:
                    continue  # moved on since it was indexed; the next index call cleans up
                if (status is None or t.status == status) and (overdue is None or t.overdue == overdue):
                    found.append(t)
        return len(found), found[(page - 1) * size: page * size]


def _followed(t: Ticket) -> tuple:
    """What a ticket's timers and queue entry are computed from."""
    closed = (t.closed_at or t.updated_at) if t.status == st.CLOSED else None
    return t.status, t.department, t.assigned_at, t.respond_by, t.resolve_by, closed


class FollowUps:
    """The TicketStore's `on_write` for the router: the timers and the queue entry of every ticket
    whose deadlines, status or department the write changed, in the write's own MULTI."""

    def __init__(self, timers: TimerStore, queues: Queues) -> None:
        self.timers, self.queues = timers, queues

    def __call__(self, pipe: Any, changes: Sequence[tuple[Ticket | None, Ticket]]) -> None:
        tickets = [new for old, new in changes if old is None or _followed(old) != _followed(new)]
        self.timers.schedule_into(pipe, tickets)
        self.queues.index_into(pipe, tickets)


class RecentIds:
    """Event ids seen lately; past `size` the oldest are forgotten (which costs a re-read, no error)."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, ids: Iterable[str]) -> None:
        for i in ids:
            self._ids[i] = None
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def pop(self, event_id: str) -> bool:
        """Whether the id was there (it is forgotten now: a redelivery is followed again)."""
        if event_id not in self._ids:
            return False
        del self._ids[event_id]
        return True


def record_fact(ticket: Ticket | None, fact: Event) -> Outcome | None:
    """Decision: put a fact about the ticket (a meeting's) in its history and publish it, once."""
    if ticket is None or ticket.has_applied(fact.event_id):
        return None
    return Outcome(ticket.model_copy(update={"applied": (ticket.applied + [fact.event_id])[-300:]}), publish=[fact])


class MeetingStore:
    def __init__(self, redis: Redis, store: TicketStore) -> None:
        self.redis, self.store = redis, store

    @staticmethod
    def key(mid: str) -> str:
        return f"meeting:{mid}"

    async def get(self, mid: str) -> meetings.Meeting | None:
        raw = await self.redis.get(self.key(mid))
        return meetings.Meeting.model_validate_json(raw) if raw else None

    async def change(
        self, mid: str, decide: Callable[[meetings.Meeting | None], tuple[meetings.Meeting, list[Event]] | None],
        publish: Callable[[Sequence[Event]], Awaitable[None]],
    ) -> meetings.Meeting | None:
        """Change one meeting under WATCH. Its events are written first, into the history (and the
        outbox) of the ticket each names, so they are published even if we die before the meeting
        is written; a replay derives the same event ids and the tickets drop the repeats."""
        for _ in range(8):
            async with self.redis.pipeline(transaction=True) as p:
                try:
                    await p.watch(self.key(mid))
                    raw = await p.get(self.key(mid))
                    current = meetings.Meeting.model_validate_json(raw) if raw else None
                    decided = decide(current)
                    if decided is None:
                        await p.reset()
                        return current
                    meeting, events = decided
                    await apply_and_publish(
                        self.store, [Change(e.ticket_no, partial(record_fact, fact=e)) for e in events], publish)
                    p.multi()
                    p.set(self.key(mid), meeting.model_dump_json())
                    if meeting.reason == "hotspot" and meeting.category and meeting.grid:
                        open_key = f"meeting:open:{meeting.category}:{meeting.grid}"
                        if meeting.status == "open":
                            p.set(open_key, mid)
                        else:
                            p.delete(open_key)
                            p.zrem(f"hot:{meeting.category}:{meeting.grid}", *meeting.tickets)
                    await p.execute()
                    return meeting
                except WatchError:
                    continue
        raise ConcurrentUpdate(f"meeting {mid} kept changing")

    async def open_from(self, escalations: Sequence[TicketUpdated], ref: Callable[[str], DepartmentRef],
                        publish: Callable[[Sequence[Event]], Awaitable[None]]) -> list[tuple[meetings.Meeting, list[str]]]:
        """Open (or attach tickets to) the meetings that `escalated` events ask for. Returns each
        meeting with the tickets that asked for it (a meeting may have been decided meanwhile)."""
        touched = []
        by_meeting: dict[str, list[TicketUpdated]] = {}
        for e in escalations:
            by_meeting.setdefault(e.data["meeting"]["meeting_id"], []).append(e)
        for mid, events in by_meeting.items():
            spec = events[0].data["meeting"]

            def decide(current, events=events, spec=spec, mid=mid):
                meeting, added = meetings.merge(
                    current, spec, [e.ticket_no for e in events], events[0].occurred_at)
                if not added:
                    return None
                first = next(e for e in events if e.ticket_no == added[0])
                if current is None:
                    out = MeetingConvened.caused(
                        first, meeting_id=mid, reason=meeting.reason, lead_street=ref(meeting.lead_street),
                        summoned=tuple(ref(d) for d in meeting.summoned), tickets=tuple(meeting.tickets),
                        category=meeting.category, grid=meeting.grid, deadline=meeting.deadline,
                        explanation=f"{meetings.REASON_NAMES[meeting.reason]}：{first.note}",
                    )
                else:
                    out = MeetingUpdated.caused(first, meeting_id=mid, action="attached", actor="system",
                                                tickets=tuple(added))
                return meeting, [out]

            meeting = await self.change(mid, decide, publish)
            touched.append((meeting, [e.ticket_no for e in events]))
        return touched

    async def open_hotspots(self, clusters: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (category, grid) clusters have an open meeting already (one round trip)."""
        found = await self.redis.mget([f"meeting:open:{c}:{g}" for c, g in clusters])
        return {cluster for cluster, mid in zip(clusters, found) if mid is not None}

    async def open_hotspot(self, category: str, grid: str, first_ticket: str) -> str:
        """The open meeting for a hot cluster: the one already open, or a new id claimed atomically
        (two router replicas seeing the same cluster agree on one meeting)."""
        key = f"meeting:open:{category}:{grid}"
        mid = meetings.meeting_id("hotspot", category, grid, first_ticket)
        await self.redis.set(key, mid, nx=True)
        return (await self.redis.get(key)).decode()


class Hotspots:
    def __init__(self, redis: Redis, sup: Supervision) -> None:
        self.redis, self.sup = redis, sup

    async def record(self, tickets: Sequence[Ticket], now: float) -> dict[tuple[str, str], list[str]]:
        """Count the tickets into their (category, grid) clusters; return the hot clusters."""
        clusters: dict[tuple[str, str], dict[str, float]] = {}
        for t in tickets:
            if t.category and t.grid and t.grid.grid:
                clusters.setdefault((t.category, t.grid.grid), {})[t.ticket_no] = t.received_at.timestamp()
        if not clusters:
            return {}
        window = self.sup.hotspot_window_days * 86400
        async with self.redis.pipeline(transaction=False) as p:
            for (cat, grid), members in clusters.items():
                key = f"hot:{cat}:{grid}"
                p.zadd(key, members)
                p.zremrangebyscore(key, "-inf", now - window)
                p.expire(key, int(window) + 86400)
                p.zrange(key, 0, -1, withscores=True)
            results = await p.execute()
        recent = {
            key: [(m.decode(), s) for m, s in results[4 * i + 3]] for i, key in enumerate(clusters)
        }
        return meetings.hot_clusters(recent, now, self.sup.hotspot_window_days, self.sup.hotspot_count)
