"""The router's Redis state beside the ticket store: deadline timers, department queues, joint
meetings and hotspot counters. I/O only; the decisions are in workflow / timers / meetings.

Keys:
  timers                 sorted set: timer member (timers.Timer.member) -> when it fires (unix time)
  queue:{dept}           sorted set: the department's open tickets -> their nearest deadline (those
                         with none: one score for those waiting to be acted on, a higher one for
                         those in a meeting, a higher one still for those resolved)
  queue:{dept}:closed    sorted set: its closed tickets, newest first
  queue:owner            hash: ticket -> the department whose queue holds it
  meeting:{id}           a joint meeting, as JSON (meetings.Meeting) without its tickets; a decided
                         one leaves Redis after its tickets (`leave`, the records worker's retention)
  meeting:{id}:tickets   sorted set: its tickets -> the order they joined it in
  meeting:open:{cat}:{grid}  the open hotspot meeting of that cluster, if any
  meetings:of:{dept}     sorted set: the open meetings the department is summoned to -> deadline
  meetings:of:{dept}:decided  sorted set: its decided ones -> when decided (listed for 30 days)
  meetings:of:{dept}:check_in  sorted set: the open ones it has not checked in to yet -> deadline
  meetings:all, meetings:all:decided  the same lists of every meeting (the dispatch desk's)
  hot:{cat}:{grid}       sorted set: recent tickets of that category in that grid -> received time
  precedent:{cat}:{grid}  the lead the last joint meeting of that cluster named (rules.Precedent, as
                         JSON), written with its decision, expiring `meeting_precedent_days` after it
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.router import meetings
from services.router.rules import Precedent
from services.router.timers import Timer, timers_for
from shared.city import Supervision
from shared.events import (
    DepartmentRef,
    Event,
    MeetingConvened,
    MeetingSpec,
    MeetingUpdated,
    TicketUpdated,
    View,
    json_of,
)
from shared.store import ConcurrentUpdate, TicketStore, ticket_key
from shared.tickets import Status, Ticket


class Escalation(View):
    """What the router reads of every ticket update (`View`): the joint meeting an escalation asks
    for, and the words that say why. The other actions, most of what it reads, need no more."""

    of = TicketUpdated
    version: int = 5
    note: str = ""
    meeting: MeetingSpec | None = None


TIMERS = "timers"
OWNER = "queue:owner"
_FAR = 4102444800.0  # 2100-01-01: tickets with no running deadline sort last
# Of those, the tickets no one is to act on now (resolved and waiting for their survey, in a
# meeting) sort after the ones waiting for the desk (待人工派单), which then share one score of their
# own: the desk's queue also holds every ticket answered on the call until its survey closes it,
# thousands a day in a big city, and its waiting tickets are read without reading those.
_DONE = _FAR + 1
# Held by a joint meeting, between the two: the meeting is to decide, no department to act. A band of
# its own so that the desk finds its returned tickets a meeting took from its waiting room (a
# hotspot's meeting takes every ticket of its cluster) without reading the answered calls (`followed`).
# One held before this band existed is moved to it at the router's start (`Queues.band_held`).
_HELD = _FAR + 0.5

# Move tickets a joint meeting holds from the _DONE band of their queue to _HELD, each only if Redis
# still has it held and at _DONE, in one step: a decision or any other write at the same moment is
# not undone. Queue keys derived from the owner hash, as `_INDEX` does.
# KEYS[1]: queue:owner, then the tickets' keys. ARGV[1], ARGV[2]: the two scores, then their numbers.
_BAND_HELD = """
local moved = 0
for i = 3, #ARGV do
  local no = ARGV[i]
  local dept = redis.call('HGET', KEYS[1], no)
  local score = dept and redis.call('ZSCORE', 'queue:' .. dept, no)
  if score and tonumber(score) == tonumber(ARGV[1]) then
    local raw = redis.call('GET', KEYS[i - 1])
    if raw and cjson.decode(raw).status == 'meeting' then
      redis.call('ZADD', 'queue:' .. dept, ARGV[2], no)
      moved = moved + 1
    end
  end
end
return moved
"""

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
        return int(await self.redis.zadd(self.key, timers, nx=True) or 0) if timers else 0

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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _queue_score(t: Ticket) -> float:
    due = t.respond_by if t.status == Status.ASSIGNED else t.resolve_by
    if due and t.status in (Status.ASSIGNED, Status.ACCEPTED):
        return due.timestamp()
    if t.status == Status.MEETING:
        return _HELD
    return _DONE if t.status in (Status.RESOLVED, Status.SURVEYED) else _FAR


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
        if t.status == Status.CLOSED:
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

    async def band_held(self, nos: Sequence[str]) -> int:
        """Give those of these tickets that a joint meeting holds the score of held ones where they
        still have the one they had before that band existed (an upgrade: see `_HELD`). Returns how
        many moved; a second run moves none."""
        if not nos:
            return 0
        keys = [ticket_key(no) for no in nos]
        return int(await self.redis.eval(_BAND_HELD, 1 + len(keys), OWNER, *keys, _DONE, _HELD, *nos))

    async def page(self, dept: str, where: QueueFilter, *, page: int, size: int) -> tuple[int, list[Ticket]]:
        """A page of the department's queue (its closed list for `status=closed`) and how many the
        filter admits. Unfiltered, only the page's tickets are read, so reading a queue of thousands
        page by page costs one read of each ticket, not one of the whole queue per page; a filter
        reads the whole queue once."""
        key = f"queue:{dept}:closed" if where.status == Status.CLOSED else f"queue:{dept}"
        if not where.narrows():
            total, nos = await self._slice(key, (page - 1) * size, size)
            return total, [t for t in await self.store.get_many(nos) if t is not None and _held_by(t, dept)]
        found = await self._admitted(key, dept, where)
        return len(found), _models(found, page, size)

    async def page_holding(
        self, dept: str, where: QueueFilter, ticket_no: str, *, page: int, size: int
    ) -> tuple[int, int, list[Ticket]]:
        """As `page`, narrowed, but the page that holds `ticket_no` where the filter admits it (the
        desk comes back to the card it dispatched from): how many are admitted, the page's number
        and its tickets."""
        found = await self._admitted(f"queue:{dept}", dept, where)
        at = next((i for i, (no, _) in enumerate(found) if no == ticket_no), None)
        page = at // size + 1 if at is not None else page
        return len(found), page, _models(found, page, size)

    async def _admitted(self, key: str, dept: str, where: QueueFilter) -> list[tuple[str, bytes | str]]:
        """The queue's tickets the filter admits, in its order: (number, the JSON the store keeps)."""
        return [(no, raw) for no, raw, _ in await self._read(key, dept, where)]

    async def _read(
        self,
        key: str,
        dept: str,
        where: QueueFilter,
        upto: float | str | None = None,
        lower: float | str = _FAR,
    ) -> list[tuple[str, bytes | str, dict[str, Any]]]:
        """The queue's tickets the filter admits, in its order: (number, the JSON the store keeps,
        that JSON parsed). The whole queue is read (for `status=review`, only its tickets with the
        score of those waiting for the desk: see `_DONE`; with `upto`, those from that score to
        `upto`), but no ticket is made a model: each is looked at as the JSON the store keeps (a
        fifth of the time a model takes, and the page of a queue of ten thousand narrowed to a few
        is then a quarter of a second, not a second). Each ticket read is still checked: one indexed
        before `_DONE` existed sorts with the waiting ones until it next changes, and the filter
        leaves it out."""
        if upto is not None:
            nos = [_text(n) for n in await self.redis.zrangebyscore(key, lower, upto)]
        elif where.status == Status.REVIEW:
            nos = [_text(n) for n in await self.redis.zrangebyscore(key, _FAR, _FAR)]
        else:
            nos = [_text(n) for n in await self.redis.zrange(key, 0, -1)]
        found: list[tuple[str, bytes | str, dict[str, Any]]] = []
        for i in range(0, len(nos), 500):
            chunk = nos[i : i + 500]
            for no, raw in zip(chunk, await self.redis.mget([ticket_key(n) for n in chunk]), strict=True):
                if raw and _held_by(kept := orjson.loads(raw), dept) and where.admits(kept):
                    found.append((no, raw, kept))
        return found

    async def followed(self, desk: str, departments: Sequence[str]) -> FollowedByDesk:
        """What the dispatch desk follows, in one pass over the queues (`QueueFilter.desk`): every
        extension request waiting for its decision, every grid worker's request to correct a
        ticket's grid (申请更正事发网格) waiting for it, and the tickets returned at least once (退单)
        still open, those the departments hold (queue by queue, in the order given) before those
        at the desk: waiting to be dispatched again, then held by a joint meeting. Kept as the store
        keeps them: the caller makes models of what it shows, a page of the returned ones, not of
        all of them.

        Every open returned ticket is counted and listed, wherever it went: the desk reads the
        heading's count as the returned tickets it follows, and one a joint meeting took (a
        hotspot's takes every ticket of its cluster, the desk's waiting room included; a second
        return sends one to a meeting) is still one it follows, with the meeting's status, until
        the meeting sends it out again. Had it left the table on being held, the count would drop
        with nothing saying where the ticket went."""
        # The queues side by side, as the console read them before: their round trips overlap.
        *held, desks = await asyncio.gather(
            *(self._read(f"queue:{dept}", dept, QueueFilter(desk=True)) for dept in departments),
            # The desk's waiting room and its tickets held by a meeting (their score bands, not the
            # thousands of answered calls waiting for their survey after them), and before them, by
            # their deadlines, the calls answered on the spot (直接答复) that their residents found
            # wanting, reopened at the desk, which holds them with no department (see `reopened`).
            self._read(f"queue:{desk}", desk, QueueFilter(), upto=_HELD, lower="-inf"),
        )
        at_desk = [(no, raw, kept) for no, raw, kept in desks if QueueFilter(desk=True).admits(kept)]
        followed = FollowedByDesk([], [], [])
        followed.reopened.extend(
            raw for _, raw, kept in desks if kept["status"] in (Status.ASSIGNED, Status.ACCEPTED)
        )
        for _, raw, kept in (ticket for queue in held for ticket in queue):
            if kept["status"] == Status.CLOSED:
                continue
            if kept.get("extension_request") is not None:
                followed.extensions.append(raw)
            if kept.get("place_request") is not None:
                followed.place_requests.append(raw)
            if kept.get("returns", 0) > 0:
                followed.returned.append(raw)
        # The desk's own tickets held by a joint meeting may be placed, and so asked about too.
        followed.place_requests.extend(
            raw for _, raw, kept in at_desk if kept["status"] == Status.MEETING and kept.get("place_request")
        )
        followed.returned.extend(
            raw
            for _, raw, kept in at_desk
            if kept["status"] in (Status.REVIEW, Status.MEETING) and kept.get("returns", 0) > 0
        )
        return followed

    async def numbers(self, dept: str) -> list[str]:
        """The numbers of the department's open tickets, as its queue holds them, none of them read:
        what a live page needs to know which tickets are the department's (thousands, in one
        command)."""
        return [_text(n) for n in await self.redis.zrange(f"queue:{dept}", 0, -1)]

    async def _slice(self, key: str, start: int, size: int) -> tuple[int, list[str]]:
        async with self.redis.pipeline(transaction=False) as p:
            p.zcard(key)
            p.zrange(key, start, start + size - 1)
            total, nos = await p.execute()
        return int(total), [_text(n) for n in nos]


@dataclass(frozen=True)
class FollowedByDesk:
    """`Queues.followed`: the JSON the store keeps of the tickets with an extension request waiting
    for the desk, and of those returned at least once, in the order the desk lists them."""

    extensions: list[bytes | str]
    returned: list[bytes | str]
    place_requests: list[bytes | str]  # a grid worker's request to correct the grid, waiting
    # 当场答复重办: a call the operator answered on the spot (the desk's, accepted and resolved at
    # once) that its resident found wanting is reopened where it was, at the desk, as 已派单: not
    # waiting to be dispatched (待人工派单), so in neither of the desk's lists, and no department
    # has it. The desk sends it to one (改派), most urgent first.
    reopened: list[bytes | str] = dataclasses.field(default_factory=list)


def _models(found: list[tuple[str, bytes | str]], page: int, size: int) -> list[Ticket]:
    """Page `page` (of `size`) of the admitted tickets, made models: only the page's are."""
    return [Ticket.model_validate_json(raw) for _, raw in found[(page - 1) * size : page * size]]


def _held_by(t: Ticket | Mapping[str, Any], dept: str) -> bool:
    """Whether the ticket (a model, or the JSON the store keeps) is still the department's: one
    that moved on since it was indexed is dropped, and the next index call cleans up."""
    if isinstance(t, Ticket):
        return t.department is not None and t.department.id == dept
    return (t.get("department") or {}).get("id") == dept


@dataclass(frozen=True)
class QueueFilter:
    """What a page of a department's queue is narrowed to; None narrows nothing. `categories`: a
    category with those under it; `received_on`: the day, in `tz`; `desk`: the tickets the dispatch
    desk follows, an extension request or a request to correct the grid waiting for its decision, or
    returned at least once."""

    status: str | None = None
    overdue: bool | None = None
    categories: frozenset[str] | None = None
    grid: str | None = None
    received_on: date | None = None
    tz: ZoneInfo | None = None
    desk: bool | None = None
    # The dispatch desk's two lists of waiting tickets: True, those classified with a confidence
    # below `threshold` (低置信度待复核); False, the others (未能自动派单: no confidence, or enough).
    low_confidence: bool | None = None
    threshold: float = 0.0

    def narrows(self) -> bool:
        """Whether any ticket of the list read (open or closed) may be left out."""
        rest = dataclasses.replace(self, status=None, tz=None, threshold=0.0)
        return rest != QueueFilter() or self.status not in (None, Status.CLOSED)

    def admits(self, t: Mapping[str, Any]) -> bool:
        """Whether the ticket, as the JSON the store keeps (`Ticket`'s fields), is admitted."""
        return (
            (self.status is None or t["status"] == self.status)
            and (self.overdue is None or t.get("overdue", False) == self.overdue)
            and (self.categories is None or t.get("category") in self.categories)
            and (self.grid is None or (t.get("grid") or {}).get("grid") == self.grid)
            and (self.received_on is None or self._day(t["received_at"]) == self.received_on)
            and (self.desk is None or self._followed_by_desk(t) == self.desk)
            and (self.low_confidence is None or self._low(t) == self.low_confidence)
        )

    def _low(self, t: Mapping[str, Any]) -> bool:
        return (confidence := t.get("confidence")) is not None and confidence < self.threshold

    @staticmethod
    def _followed_by_desk(t: Mapping[str, Any]) -> bool:
        return (
            t.get("extension_request") is not None
            or t.get("place_request") is not None
            or t.get("returns", 0) > 0
        )

    def _day(self, received_at: str) -> date:
        return datetime.fromisoformat(received_at).astimezone(self.tz).date()


def _followed(t: Ticket) -> tuple:
    """What a ticket's timers and queue entry are computed from."""
    closed = (t.closed_at or t.updated_at) if t.status == Status.CLOSED else None
    return t.status, t.department, t.assigned_at, t.respond_by, t.resolve_by, closed


class FollowUps:
    """The TicketStore's `on_write` for the router: the timers and the queue entry of every ticket
    whose deadlines, status or department the write changed, in the write's own MULTI.

    Every process that changes tickets (the router worker and the API) sets it on its store, so
    the timers and queues can never lag behind a ticket and nobody has to follow the events to
    catch up (see docs/writers.md)."""

    def __init__(self, timers: TimerStore, queues: Queues) -> None:
        self.timers, self.queues = timers, queues

    @classmethod
    def attach(cls, store: TicketStore, sup: Supervision) -> FollowUps:
        """Set the follow-ups on `store` (its Redis holds the timers and queues too)."""
        follow = cls(TimerStore(store.redis, sup), Queues(store.redis, store))
        store.on_write = follow
        return follow

    def __call__(self, pipe: Any, changes: Sequence[tuple[Ticket | None, Ticket]]) -> None:
        tickets = [new for old, new in changes if old is None or _followed(old) != _followed(new)]
        self.timers.schedule_into(pipe, tickets)
        self.queues.index_into(pipe, tickets)


# A decision about a meeting: given it as it is (None: not opened yet), the meeting as it is to be and
# the events that record the change, or None for "nothing to do".
Decide = Callable[[meetings.Meeting | None], tuple[meetings.Meeting, list[Event]] | None]


def open_key(category: str, grid: str) -> str:
    """The id of the cluster's open hotspot meeting, if there is one."""
    return f"meeting:open:{category}:{grid}"


def precedent_key(category: str, grid: str) -> str:
    """The cluster's precedent: the lead its last joint meeting named (`rules.Precedent`)."""
    return f"precedent:{category}:{grid}"


class Precedents:
    """The joint meetings' precedents, read (`MeetingStore.change_many` writes them, with the
    decisions). Expired ones are gone from Redis; the rules check the time again (`Precedent.until`),
    so a window shortened since is the one that counts."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def get(self, category: str, grid: str | None) -> Precedent | None:
        """The cluster's precedent, if there is one (one GET; none asked without a grid)."""
        return (await self.read_many([(category, grid)])).get((category, grid or ""))

    async def read_many(self, clusters: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str], Precedent]:
        """The precedents of these (category, grid) clusters that have one, in one MGET (a batch
        of appeals costs one round trip, whatever its size); clusters without a grid have none."""
        wanted = list(dict.fromkeys((c, g) for c, g in clusters if c and g))
        if not wanted:
            return {}
        raws = await self.redis.mget([precedent_key(c, g) for c, g in wanted])
        pairs = zip(wanted, raws, strict=True)
        return {cluster: Precedent.model_validate_json(raw) for cluster, raw in pairs if raw}


def list_key(dept: str | None, listed: meetings.Listed) -> str:
    """The list of the open or decided meetings that summon the department (None: every meeting)."""
    base = "meetings:all" if dept is None else f"meetings:of:{dept}"
    return base if listed == "open" else f"{base}:decided"


def check_in_key(dept: str) -> str:
    """The open meetings that summon the department and that it has not checked in to yet."""
    return f"meetings:of:{dept}:check_in"


def _list_into(pipe: Any, meeting: meetings.Meeting, since: float) -> None:
    """Put the meeting on the lists of every department it summons and on the desk's, as a command
    of the caller's transaction (the meeting's own write). Moved from the open list to the decided
    one once decided; the decided lists written lose the decisions older than `since`, so they stay
    bounded without a sweep of their own (readers skip those a list not written lately still has)."""
    listed, score = meetings.listed_as(meeting)
    mid = meeting.meeting_id
    other: meetings.Listed = "decided" if listed == "open" else "open"
    for dept in (None, *meeting.summoned):
        pipe.zadd(list_key(dept, listed), {mid: score})
        pipe.zrem(list_key(dept, other), mid)
        pipe.zremrangebyscore(list_key(dept, "decided"), "-inf", f"({since}")
    for dept in meeting.summoned:
        if listed == "open" and dept not in meeting.checkins:
            pipe.zadd(check_in_key(dept), {mid: score})
        else:
            pipe.zrem(check_in_key(dept), mid)


ListedStatus = Literal["open", "decided", "all"]


def tickets_key(mid: str) -> str:
    """A meeting's tickets: a sorted set beside its JSON, so that taking more costs what they add.
    A hotspot's meeting takes tickets at every batch of a flood and may hold thousands: kept in its
    JSON, each attach read, parsed and wrote them all, and Redis's append-only file took every byte
    (a thousand meetings of several kilobytes, rewritten a few times a second)."""
    return f"meeting:{mid}:tickets"


@dataclass(frozen=True)
class StoredMeeting:
    """A meeting as Redis holds it: its JSON as stored (`raw`, which `MeetingStore.leave` compares),
    the meeting with its tickets (all of them, or only those asked about: `MeetingStore._read`),
    which of those its set holds, and how many the set holds. A meeting written before its tickets
    had a set of their own keeps them in its JSON (`in_json`) until its next write moves them."""

    raw: bytes
    meeting: meetings.Meeting
    in_set: frozenset[str]
    size: int
    in_json: bool


# Per meeting, in one round trip: its JSON, how many tickets its set holds, and its tickets: all of
# them (n = -1), or those of the n named that it holds (asked 1,000 at a time: Lua's `unpack` has a
# limit). KEYS: per meeting its key and its tickets' key. ARGV: per meeting n, then the n tickets.
_READ = """
local out = {}
local a = 1
for i = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  local held = {}
  if n < 0 then
    held = redis.call('ZRANGE', KEYS[i + 1], 0, -1)
  end
  for s = 0, n - 1, 1000 do
    local e = math.min(s + 1000, n)
    local scores = redis.call('ZMSCORE', KEYS[i + 1], unpack(ARGV, a + 1 + s, a + e))
    for j = 1, e - s do
      if scores[j] then held[#held + 1] = ARGV[a + s + j] end
    end
  end
  out[#out + 1] = {redis.call('GET', KEYS[i]) or '', redis.call('ZCARD', KEYS[i + 1]), held}
  a = a + 1 + math.max(n, 0)
end
return out
"""


def _stored(reply: list[Any]) -> StoredMeeting | None:
    raw, size, held = reply
    if not raw:
        return None
    meeting = meetings.Meeting.model_validate_json(raw)
    in_set = [_text(t) for t in held]
    in_json = bool(meeting.tickets)
    meeting.tickets = list(dict.fromkeys([*meeting.tickets, *in_set])) if in_json else in_set
    return StoredMeeting(bytes(raw), meeting, frozenset(in_set), int(size), in_json)


def _write_meeting(pipe: Any, before: StoredMeeting | None, meeting: meetings.Meeting) -> bytes | None:
    """Add the meeting's new tickets to its set, as a command of the caller's transaction, each
    after those it holds. Returns its JSON when that is to be written: new, changed other than in
    its tickets (a check-in, a decision, one more department summoned), or still holding tickets
    of its own; None when only tickets joined it, most of a hotspot's meeting's writes."""
    mid = meeting.meeting_id
    known = before.in_set if before is not None else frozenset()
    new = [t for t in meeting.tickets if t not in known]
    if new:
        start = before.size if before is not None else 0
        pipe.zadd(tickets_key(mid), {t: start + i for i, t in enumerate(new)})
    if (
        before is not None
        and not before.in_json
        and before.meeting.model_copy(update={"tickets": meeting.tickets}) == meeting
    ):
        return None
    return json_of(meeting.model_copy(update={"tickets": []}))  # they are in their set


# A decided meeting leaves Redis (the records worker's retention, once the record holds it) only as
# it was read, so still decided and unchanged, and only if none of its tickets is in Redis (a
# ticket there looks its meeting up there); off every list with it. The cluster's key goes only if
# it still names this meeting: a hotspot's was removed with its decision, and the cluster may have
# opened another meeting since. A decided meeting takes no more tickets, so its JSON as read says
# it is unchanged. KEYS: the meeting, its tickets' set, ARGV[3] list keys, the cluster's key if
# ARGV[4] is 1, then its tickets. ARGV: the meeting as read, its id, those two counts. Returns 1:
# removed; 0: changed since, or a ticket is in Redis; 2: already gone.
_LEAVE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 2 end
if raw ~= ARGV[1] then return 0 end
local lists, cluster = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 3 + lists + cluster, #KEYS, 500 do
  if redis.call('EXISTS', unpack(KEYS, i, math.min(i + 499, #KEYS))) > 0 then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2])
for i = 3, 2 + lists do redis.call('ZREM', KEYS[i], ARGV[2]) end
if cluster == 1 and redis.call('GET', KEYS[3 + lists]) == ARGV[2] then
  redis.call('DEL', KEYS[3 + lists])
end
return 1
"""


class MeetingStore:
    """`precedent_days`: how long a decision's precedent lasts, as the city says
    (`supervision.meeting_precedent_days`), for the stores that decide meetings (the router's
    worker and API); 0, the default, for those that only read or evict them: none is written."""

    def __init__(self, redis: Redis, store: TicketStore, *, precedent_days: float = 0) -> None:
        self.redis, self.store, self.precedent_days = redis, store, precedent_days

    @staticmethod
    def key(mid: str) -> str:
        return f"meeting:{mid}"

    async def _read(
        self, client: Any, mids: Sequence[str], probe: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, StoredMeeting | None]:
        """These meetings as stored, in one round trip (`client`: a pipeline under WATCH reads
        there). A meeting named in `probe` comes with only those of the tickets named there that it
        holds: enough to attach them, without reading what it holds already."""
        if not mids:
            return {}
        keys: list[str] = []
        args: list[str | int] = []
        for mid in mids:
            keys += [self.key(mid), tickets_key(mid)]
            asked = probe.get(mid) if probe is not None else None
            args += [-1] if asked is None else [len(asked), *asked]
        replies = await client.eval(_READ, len(keys), *keys, *args)
        return {mid: _stored(reply) for mid, reply in zip(mids, replies, strict=True)}

    async def get(self, mid: str) -> meetings.Meeting | None:
        found = (await self._read(self.redis, [mid]))[mid]
        return found.meeting if found is not None else None

    async def read_many(self, mids: Sequence[str]) -> dict[str, StoredMeeting | None]:
        """These meetings as stored, with all their tickets; None for those Redis does not hold."""
        return await self._read(self.redis, mids)

    async def leave(self, read: Mapping[str, StoredMeeting]) -> list[str]:
        """Remove these decided meetings from Redis, and from every list they are on, each only if
        it is still as it was read (`read_many`) and none of its tickets is in Redis. For the
        records worker's retention, once the record holds them (`meetings.may_leave_redis`).
        Returns those no longer in Redis: removed, or gone already."""
        if not read:
            return []
        leave = self.redis.register_script(_LEAVE)
        async with self.redis.pipeline(transaction=False) as p:
            for mid, stored in read.items():
                m = stored.meeting
                lists = [list_key(None, "open"), list_key(None, "decided")]
                for dept in m.summoned:
                    lists += [list_key(dept, "open"), list_key(dept, "decided"), check_in_key(dept)]
                cluster = (
                    [open_key(m.category, m.grid)] if m.reason == "hotspot" and m.category and m.grid else []
                )
                keys = [self.key(mid), tickets_key(mid), *lists, *cluster, *map(ticket_key, m.tickets)]
                await leave(keys=keys, args=[stored.raw, mid, len(lists), len(cluster)], client=p)
            results = await p.execute()
        return [mid for mid, done in zip(read, results, strict=True) if done]

    async def listing(
        self, dept: str | None, status: ListedStatus, page: int, size: int, now: float
    ) -> tuple[int, int, list[meetings.Meeting]]:
        """A page of the meetings that summon the department (None: every meeting): the open ones
        first, the nearest deadline first, then those decided in the last
        `meetings.DECIDED_LISTED_DAYS`, the latest decision first. Returns how many the list holds
        (of `status`), how many of them are open, and the page's meetings."""
        since = meetings.listed_since(now)
        open_key, decided_key = list_key(dept, "open"), list_key(dept, "decided")
        async with self.redis.pipeline(transaction=False) as p:
            p.zcard(open_key)
            p.zcount(decided_key, since, "+inf")
            open_count, decided_count = await p.execute()
        open_count = 0 if status == "decided" else int(open_count)
        decided_count = 0 if status == "open" else int(decided_count)
        opened, decided = meetings.page_spans(open_count, decided_count, page, size)
        async with self.redis.pipeline(transaction=False) as p:
            if opened:
                p.zrange(open_key, opened.start, opened.stop - 1)
            if decided:
                p.zrevrangebyscore(decided_key, "+inf", since, start=decided.start, num=len(decided))
            mids = [_text(m) for ids in await p.execute() for m in ids]
        found: list[meetings.Meeting] = []
        for stored in (await self._read(self.redis, mids)).values():
            # Decided between the reads above: listed again where it now belongs on the next read.
            if stored is not None and status in ("all", stored.meeting.status):
                found.append(stored.meeting)
        return open_count + decided_count, open_count, found

    async def counts(self, dept: str | None) -> tuple[int, int | None]:
        """How many open meetings summon the department (None: how many are open), and how many of
        those still wait for it to check in (None for every meeting's). One round trip, two counts."""
        async with self.redis.pipeline(transaction=False) as p:
            p.zcard(list_key(dept, "open"))
            if dept is not None:
                p.zcard(check_in_key(dept))
            counts = await p.execute()
        return int(counts[0]), int(counts[1]) if dept is not None else None

    async def list_existing(self, batch: int = 200) -> int:
        """Put on the lists the meetings written before the lists existed (an upgrade), so none is
        lost to the departments it summons: each `meeting:{id}` on no list is written again as it
        is by `change_many`, the lists' one writer, under its WATCH (a check-in or a decision at the
        same moment is not undone). Those decided too long ago to be listed are left alone. Run at
        the router's start; a second run, or another replica's at the same time, lists nothing
        twice. Returns how many it listed."""
        listed: set[str] = set()  # a set: a write retried under WATCH decides again

        def as_it_is(m: meetings.Meeting | None) -> tuple[meetings.Meeting, list[Event]] | None:
            if m is None:
                return None
            kind, score = meetings.listed_as(m)
            if kind == "decided" and score < meetings.listed_since(time.time()):
                return None
            listed.add(m.meeting_id)
            return m, []

        async def list_missing(mids: list[str]) -> None:
            async with self.redis.pipeline(transaction=False) as p:
                for mid in mids:
                    p.zscore(list_key(None, "open"), mid)
                    p.zscore(list_key(None, "decided"), mid)
                scores = await p.execute()
            pairs = zip(mids, zip(scores[::2], scores[1::2], strict=True), strict=True)
            missing = [mid for mid, (opened, decided) in pairs if opened is None and decided is None]
            if missing:
                await self.change_many(dict.fromkeys(missing, as_it_is), relist=True)

        mids: list[str] = []
        # `meeting:open:{cat}:{grid}` shares the prefix; a meeting's id has no colon.
        async for key in self.redis.scan_iter(match="meeting:*", count=1000):
            mid = _text(key).removeprefix("meeting:")
            if ":" not in mid:
                mids.append(mid)
            if len(mids) >= batch:
                await list_missing(mids)
                mids = []
        if mids:
            await list_missing(mids)
        return len(listed)

    async def open_tickets(self, batch: int = 200) -> AsyncIterator[list[str]]:
        """The tickets of every open meeting, a batch of meetings at a time."""
        mids = [_text(m) for m in await self.redis.zrange(list_key(None, "open"), 0, -1)]
        for i in range(0, len(mids), batch):
            read = await self._read(self.redis, mids[i : i + batch])
            yield [no for stored in read.values() if stored for no in stored.meeting.tickets]

    async def change(self, mid: str, decide: Decide) -> meetings.Meeting | None:
        """Change one meeting (see `change_many`)."""
        return (await self.change_many({mid: decide}))[mid]

    async def change_many(
        self,
        decisions: dict[str, Decide],
        *,
        relist: bool = False,
        probe: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, meetings.Meeting | None]:
        """Change meetings under WATCH, all in one transaction. Their facts (convened, attached,
        checked in, decided) go into the history of the ticket each names, in the same transaction
        (`TicketStore.record_into`): the ticket view shows its meeting's course. A fact comes only
        with a change of its meeting, so it is written once; it is not published (nothing consumes
        it). Every meeting written is put on the lists of the departments it summons in the same
        transaction too (`_list_into`), so a department's list is never behind its meetings: when
        its place there changes (`meetings.listing`), or always with `relist` (meetings written
        before the lists existed). A decision sets its cluster's precedent (`meetings.precedent`,
        read by `Precedents`) in the same transaction too: the router is the one writer of meetings
        and what follows from them.

        A decision that only attaches tickets needs to know which of them the meeting holds: with
        `probe` (meeting id -> the tickets to look for), its meeting comes with only those of its
        tickets, so that attaching costs what it adds, not what the meeting holds. Returns each
        meeting as it now is (with those tickets only, for a probed one)."""
        keys = [k for mid in decisions for k in (self.key(mid), tickets_key(mid))]
        for _ in range(8):
            async with self.redis.pipeline(transaction=True) as p:
                try:
                    await p.watch(*keys)
                    stored = await self._read(p, list(decisions), probe)
                    before = {mid: found.meeting if found else None for mid, found in stored.items()}
                    out = dict(before)
                    changed: dict[str, meetings.Meeting] = {}
                    events: list[Event] = []
                    for mid, decide in decisions.items():
                        if (decided := decide(before[mid])) is not None:
                            out[mid] = changed[mid] = decided[0]
                            events += decided[1]
                    if not changed:
                        await p.reset()
                        return out
                    p.multi()
                    self.store.record_into(p, events)
                    written = {
                        self.key(mid): raw
                        for mid, meeting in changed.items()
                        if (raw := _write_meeting(p, stored[mid], meeting)) is not None
                    }
                    # One command for all the meetings: in a flood a batch may change hundreds, and
                    # each command of a transaction costs its packing, a reply of its own (QUEUED)
                    # and one in the EXEC's, on top of its work in Redis.
                    if written:
                        p.mset(written)
                    since = meetings.listed_since(time.time())
                    for mid, meeting in changed.items():
                        if relist or meetings.listing(before[mid]) != meetings.listing(meeting):
                            _list_into(p, meeting, since)
                        if meeting.reason == "hotspot" and meeting.category and meeting.grid:
                            key = open_key(meeting.category, meeting.grid)
                            was_open = (old := before[mid]) is not None and old.status == "open"
                            if meeting.status == "open":
                                # Taking more tickets, it is the cluster's already.
                                if relist or not was_open:
                                    p.set(key, mid)
                            elif old is None or was_open:
                                # Only as it is decided: a decided meeting written again as it is
                                # (`list_existing`) must not end the open meeting its cluster may
                                # have convened since.
                                p.delete(key)
                                p.zrem(f"hot:{meeting.category}:{meeting.grid}", *meeting.tickets)
                        if self.precedent_days > 0 and (
                            precedent := meetings.precedent(before[mid], meeting)
                        ):
                            p.set(
                                precedent_key(precedent.category, precedent.grid),
                                json_of(precedent),
                                ex=max(1, int(self.precedent_days * 86400)),
                            )
                    await p.execute()
                    return out
                except WatchError:
                    continue
        raise ConcurrentUpdate(f"meetings kept changing: {', '.join(list(decisions)[:5])}")

    async def open_from(
        self,
        escalations: Sequence[Escalation],
        ref: Callable[[str], DepartmentRef],
    ) -> list[tuple[meetings.Meeting, list[str]]]:
        """Open (or attach tickets to) the meetings that `escalated` events ask for. Returns each
        meeting with the tickets that asked for it (a meeting may have been decided meanwhile)."""
        by_meeting: dict[str, list[Escalation]] = {}
        specs: dict[str, MeetingSpec] = {}
        for e in escalations:
            if e.meeting is not None:
                by_meeting.setdefault(e.meeting.meeting_id, []).append(e)
                specs.setdefault(e.meeting.meeting_id, e.meeting)
        decisions: dict[str, Decide] = {}
        for mid, events in by_meeting.items():

            def decide(
                current: meetings.Meeting | None,
                events: list[Escalation] = events,
                spec: MeetingSpec = specs[mid],
                mid: str = mid,
            ) -> tuple[meetings.Meeting, list[Event]] | None:
                meeting, added = meetings.merge(
                    current, spec, [e.ticket_no for e in events], events[0].occurred_at
                )
                if not added:
                    return None
                first = next(e for e in events if e.ticket_no == added[0])
                # Each fact with the meeting's own clock where it has one: the record's copy, folded
                # from them, reads as the meeting did (`meetings.unrecorded`).
                out: Event
                if current is None:
                    out = MeetingConvened.caused(
                        first,
                        occurred_at=meeting.convened_at,
                        meeting_id=mid,
                        reason=meeting.reason,
                        lead_street=ref(meeting.lead_street),
                        summoned=tuple(ref(d) for d in meeting.summoned),
                        tickets=tuple(meeting.tickets),
                        category=meeting.category,
                        grid=meeting.grid,
                        deadline=meeting.deadline,
                        explanation=meetings.explanation(meeting.reason, first.note),
                    )
                else:
                    out = MeetingUpdated.caused(
                        first,
                        meeting_id=mid,
                        action="attached",
                        actor="system",
                        tickets=tuple(added),
                        summoned=tuple(ref(d) for d in meeting.summoned if d not in current.summoned),
                    )
                return meeting, [out]

            decisions[mid] = decide
        if not decisions:
            return []
        changed = await self.change_many(
            decisions, probe={mid: [e.ticket_no for e in events] for mid, events in by_meeting.items()}
        )
        return [
            (meeting, [e.ticket_no for e in events])
            for mid, events in by_meeting.items()
            if (meeting := changed[mid]) is not None
        ]

    async def open_hotspots(self, first_tickets: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
        """The open meeting of each hot (category, grid) cluster, given its first ticket: the one
        already open, or a new id claimed atomically (replicas seeing the same cluster agree on one).
        One round trip for them all."""
        async with self.redis.pipeline(transaction=False) as p:
            for (category, grid), first in first_tickets.items():
                key = open_key(category, grid)
                p.set(key, meetings.meeting_id("hotspot", category, grid, first), nx=True)
                p.get(key)
            replies = await p.execute()
        return {cluster: mid.decode() for cluster, mid in zip(first_tickets, replies[1::2], strict=False)}


# Count a batch into its clusters in one command. Per cluster: add the tickets, drop those older
# than the window, count those in it, and give the open meeting's id and that count (the cluster's
# other tickets are in the meeting already); with no meeting open, all its tickets once they are
# enough to make it hot, else the count alone. A cluster stays below the count for as long as the
# window lasts when a city sets the count high (or turns hotspots off with a count nobody reaches):
# its whole list, sent and parsed at every batch that touched it, grew with the window, and in a
# two-minute flood with the count out of reach it became most of Redis's time (ZRANGE and the
# formatting of its scores).
# KEYS, per cluster: hot:{cat}:{grid}, meeting:open:{cat}:{grid}. ARGV: window start, now, ttl, the
# count that makes a cluster hot, then per cluster: n, n times member, score.
_RECORD = """
local since, now, ttl, hot = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
local a = 5
for c = 1, #KEYS, 2 do
  local key = KEYS[c]
  local last = a + 2 * tonumber(ARGV[a])
  for j = a + 1, last, 2 do redis.call('ZADD', key, ARGV[j + 1], ARGV[j]) end
  a = last + 1
  redis.call('ZREMRANGEBYSCORE', key, '-inf', since)
  redis.call('EXPIRE', key, ttl)
  local open = redis.call('GET', KEYS[c + 1])
  local inside = redis.call('ZCOUNT', key, since, now)
  if open then
    out[#out + 1] = {open, inside}
  elseif inside >= hot then
    out[#out + 1] = {'', redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')}
  else
    out[#out + 1] = {'', inside}
  end
end
return out
"""


class Hotspots:
    def __init__(self, redis: Redis, sup: Supervision) -> None:
        self.redis, self.sup = redis, sup

    async def record(
        self, tickets: Sequence[Ticket], now: float
    ) -> dict[tuple[str, str], tuple[str | None, list[str]]]:
        """Count the tickets into their (category, grid) clusters. Returns each hot cluster's open
        meeting (None: none yet) and the tickets to bring to it, oldest first: all the cluster's if
        it just turned hot, else only these (the others are there already)."""
        clusters: dict[tuple[str, str], dict[str, float]] = {}
        for t in tickets:
            if t.category and t.grid and t.grid.grid:
                clusters.setdefault((t.category, t.grid.grid), {})[t.ticket_no] = t.received_at.timestamp()
        if not clusters:
            return {}
        days = self.sup.hotspot_window_days
        since = meetings.window_start(now, days)
        keys: list[str] = []
        count = self.sup.hotspot_count
        args: list[str | float | int] = [since, now, int(days * 86400) + 86400, count]
        for (cat, grid), members in clusters.items():
            keys += [f"hot:{cat}:{grid}", open_key(cat, grid)]
            args.append(len(members))
            for member in members.items():
                args += member
        replies = await self.redis.eval(_RECORD, len(keys), *keys, *args)
        hot: dict[tuple[str, str], tuple[str | None, list[str]]] = {}
        recent: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for cluster, (mid, reply) in zip(clusters, replies, strict=False):
            if not mid and isinstance(reply, list):  # enough in the window: the rule reads the members
                recent[cluster] = [(reply[i].decode(), float(reply[i + 1])) for i in range(0, len(reply), 2)]
            elif mid and reply >= count:  # the rule of meetings.hot_clusters, counted in Redis
                inside = meetings.hot_clusters({cluster: list(clusters[cluster].items())}, now, days, 1)
                if inside:
                    hot[cluster] = (mid.decode(), inside[cluster])
        for cluster, nos in meetings.hot_clusters(recent, now, days, count).items():
            hot[cluster] = (None, nos)
        return hot
