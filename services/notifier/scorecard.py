"""The scorecard: the counters behind the three rates (三率) and the score, in Redis, and the queries
on them (the formulas are in `scoring.py`).

  stats:{dimension}:{group}:{yyyymmdd}   hash: counter -> count (see services.notifier.scoring.FIELDS)
  stats:{dimension}:{group}:{yyyymm}     the sums of a past month's days, made by the first period
                                         that reads the whole month, dropped by a late count into it
  stats:groups:{dimension}               the groups seen, per dimension
  stats:seen:{event_id}                  the event was counted (idempotency; kept 30 days)
  stats:moved:{event_id}                 the event that set its ticket's grid (a placement, 事发网格,
                                         or an assignment in another grid) moved its counts (the same)

One Lua script checks `seen` and increments every counter atomically, so an event read twice
(a consumer restarted before its commit) is counted once. A batch is one command. A period reads
each whole past month from its month's sums and the rest day by day: a year's ranking of a thousand
grids reads about 12,000 hashes, not 365,000. Counting stays one increment per counter: the months
are summed when first read, not as each count comes in.

An event that sets the grid a ticket counts in (`scoring.sets_grid`: the desk's placement, `placed`,
or an assignment in a grid the desk chose, such as its dispatch of a returned ticket in another
grid) moves the ticket's counts made so far into the new grid and street
(`scoring.placement_moves`), read from the ticket's history in the ticket store: one more script,
with signed increments, once per such event. Other assignments read nothing: one in the grid the
counts are in already moves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from redis.asyncio import Redis

from services.notifier import scoring
from shared.city import City
from shared.events import Event, SurveyAnswered, TicketAssigned, TicketUpdated
from shared.settings import Settings
from shared.store import TicketStore
from shared.topics import EVENT_TYPES

log = logging.getLogger(__name__)

SEEN_TTL = 30 * 86400  # longer than the topics' retention: a re-read never counts twice

# The metric names predate the scorecard's name; dashboards read them, so they stay.
SCORECARD_EVENTS = Counter(
    "hotline_rate_events_total",
    "Events counted for the three rates, by department and counter",
    ["department", "field"],
)
SCORECARD_RATES = Gauge(
    "hotline_rate",
    "The three rates, the score and the direct-answer rate (month to date), by grouping and group",
    ["group_by", "group", "rate"],
)

# A batch in one command. Per event: check `seen`, then count it (the checks and the counting atomic
# together). The counts of the batch's new events are summed first and each counter is incremented
# once: a batch of hundreds of events falls into a few hundred counters, where incrementing each
# event's own took a dozen calls an appeal. KEYS, per event: seen, its n counter hashes, their n
# group sets, and the m month sums its count makes stale (a count into a past month: m = n, else
# 0). ARGV: ttl, then per event: n, number of fields f, m, the n group names, the f fields. Returns
# per event 1 if it was counted now, 0 if it had been already.
_COUNT_ONCE_SCRIPT = """
local ttl = ARGV[1]
local k, a = 1, 2
local out = {}
local counts, groups, stale = {}, {}, {}
while a <= #ARGV do
  local n, f, m = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl) then
    for i = 1, n do
      local key = KEYS[k + i]
      local c = counts[key] or {}
      counts[key] = c
      for j = a + 3 + n, a + 2 + n + f do c[ARGV[j]] = (c[ARGV[j]] or 0) + 1 end
      local set = KEYS[k + n + i]
      groups[set] = groups[set] or {}
      groups[set][ARGV[a + 2 + i]] = true
    end
    for i = 1, m do stale[KEYS[k + 2 * n + i]] = true end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  k = k + 1 + 2 * n + m
  a = a + 3 + n + f
end
for key, c in pairs(counts) do
  for field, by in pairs(c) do redis.call('HINCRBY', key, field, by) end
end
for set, names in pairs(groups) do
  for name in pairs(names) do redis.call('SADD', set, name) end
end
for key in pairs(stale) do redis.call('DEL', key) end
return out
"""

# A batch of placements in one command. Per placement: check `moved`, then add each signed count
# (the checks and the moves atomic together). KEYS, per placement: moved, then per hash: the hash,
# its group set, and its month's sums when the move makes them stale (a day of a past month). ARGV:
# ttl, then per placement: the number of hashes h, then per hash: its group, 1 if its month's sums
# are stale else 0, the number of fields f, then f pairs of field and signed count. Returns per
# placement 1 if it moved now, 0 if it had already.
_MOVE_ONCE_SCRIPT = """
local ttl = ARGV[1]
local k, a = 1, 2
local out = {}
while a <= #ARGV do
  local h = tonumber(ARGV[a])
  local fresh = redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl)
  k, a = k + 1, a + 1
  for i = 1, h do
    local m, f = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    if fresh then
      for j = a + 3, a + 1 + 2 * f, 2 do redis.call('HINCRBY', KEYS[k], ARGV[j], ARGV[j + 1]) end
      redis.call('SADD', KEYS[k + 1], ARGV[a])
      if m == 1 then redis.call('DEL', KEYS[k + 2]) end
    end
    k = k + 2 + m
    a = a + 3 + 2 * f
  end
  out[#out + 1] = fresh and 1 or 0
end
return out
"""
# The events a placement may move (those `scoring.fields_for` counts), and those that set the grid.
_MOVABLE = (TicketAssigned, TicketUpdated, SurveyAnswered)


# The counters of each group summed over the period, in Redis: a ranking of a thousand grids over a
# month of days is 31,000 hashes, which read one by one cost this process seconds. KEYS: each group's
# hashes of the period, group after group, ARGV[1] of each: days, and past months. ARGV[2..]: for each
# of those, 0 for a day, the month's number of days for a month. A month not summed yet is summed
# from its days (named from the month's key: only one Redis holds the scorecard) and kept, so the
# next period that reads it reads one hash. Returns per group its sums, field, count, ...
_SUM_SCRIPT = """
local function add(into, h)
  for i = 1, #h, 2 do into[h[i]] = (into[h[i]] or 0) + tonumber(h[i + 1]) end
end
local function flat(sums)
  local out = {}
  for field, n in pairs(sums) do
    out[#out + 1] = field
    out[#out + 1] = n
  end
  return out
end
local per_group = tonumber(ARGV[1])
local out = {}
for g = 0, #KEYS / per_group - 1 do
  local sum = {}
  for s = 1, per_group do
    local key, days = KEYS[g * per_group + s], tonumber(ARGV[s + 1])
    local h = redis.call('HGETALL', key)
    if days > 0 and #h == 0 then
      local month = {}
      for d = 1, days do add(month, redis.call('HGETALL', key .. string.format('%02d', d))) end
      h = flat(month)
      if #h > 0 then redis.call('HSET', key, unpack(h)) end
    end
    add(sum, h)
  end
  out[#out + 1] = flat(sum)
end
return out
"""
# Hashes per call of the script: Redis answers no one else while it runs (a few milliseconds).
SUM_KEYS_PER_CALL = 5000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _month(day: date) -> str:
    return day.strftime("%Y%m")


def _first_of_next_month(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


def period_keys(start: date, end: date, current: str) -> list[tuple[str, int]]:
    """The suffixes of a group's hashes that hold [start, end], each with its number of days: a
    month (yyyymm) for each whole month in it before the `current` one (yyyymm: its days still
    change), 0 for each other day (yyyymmdd)."""
    keys: list[tuple[str, int]] = []
    day = start
    while day <= end:
        following = _first_of_next_month(day)
        if day.day == 1 and following - timedelta(days=1) <= end and _month(day) < current:
            keys.append((_month(day), (following - day).days))
            day = following
        else:
            keys.append((day.strftime("%Y%m%d"), 0))
            day += timedelta(days=1)
    return keys


class Scorecard:
    def __init__(self, redis: Redis, city: City, tz: ZoneInfo, weights: scoring.Weights) -> None:
        self.redis = redis
        self.city = city
        self.tz = tz
        self.weights = weights
        self._count_once = redis.register_script(_COUNT_ONCE_SCRIPT)
        self._move_once = redis.register_script(_MOVE_ONCE_SCRIPT)
        # The tickets' histories, for what a move moves (shared code on the same Redis).
        self.store = TicketStore(redis)
        self._sum = redis.register_script(_SUM_SCRIPT)

    @classmethod
    def from_settings(cls, redis: Redis, city: City, settings: Settings) -> Scorecard:
        weights = scoring.Weights.parse(settings.satisfaction_basic_weight, settings.score_weights)
        return cls(redis, city, ZoneInfo(settings.timezone), weights)

    def groups_of(self, event: TicketAssigned | TicketUpdated | SurveyAnswered) -> dict[str, str]:
        """The event's group in each dimension, from the event alone: each of these carries its
        ticket's department, category and grid (the street follows from the grid)."""
        return scoring.groups_for(
            self.city, event.department.id if event.department else None, event.category, event.grid
        )

    async def record(self, events: Sequence[TicketAssigned | TicketUpdated | SurveyAnswered]) -> int:
        """Count the events, in one Redis command for the batch, and move the counts of the tickets
        whose grid they set (`move_placed`: placed, or assigned, in another grid). Returns how many
        were new."""
        counted: list[tuple[dict[str, str], tuple[str, ...]]] = []
        keys: list[str] = []
        args: list[str | int] = [SEEN_TTL]
        current = _month(datetime.now(self.tz).date())
        for event in events:
            fields = scoring.fields_for(event)
            if not fields:
                continue
            groups = self.groups_of(event)
            # The day formatted once (strftime per key was a twentieth of the notifier's time).
            stamp = event.occurred_at.astimezone(self.tz).date().strftime("%Y%m%d")
            # Late, into a month gone by (a backlog read after an outage): its sums are stale.
            month = stamp[:6]
            stale = [f"stats:{d}:{g}:{month}" for d, g in groups.items()] if month < current else []
            keys += [
                f"stats:seen:{event.event_id}",
                *(f"stats:{d}:{g}:{stamp}" for d, g in groups.items()),
                *(f"stats:groups:{d}" for d in groups),
                *stale,
            ]
            args += [len(groups), len(fields), len(stale), *groups.values(), *fields]
            counted.append((groups, fields))
        results = await self._count_once(keys=keys, args=args) if counted else []
        new = 0
        for (groups, fields), fresh in zip(counted, results, strict=False):
            if fresh:
                new += 1
                for f in fields:
                    SCORECARD_EVENTS.labels(department=groups["department"], field=f).inc()
        await self.move_placed([e for e in events if scoring.sets_grid(e)])
        return new

    async def move_placed(self, placements: Sequence[TicketAssigned | TicketUpdated]) -> int:
        """Move the counts each ticket had before an event that set its grid (`scoring.sets_grid`: a
        placement, or an assignment in a grid the desk chose) out of the grid and street they are in
        into the event's (`scoring.placement_moves`), once per event however often it is read
        (`stats:moved`), in one Redis command for the batch. Returns how many moved now: the desk's
        dispatch in the grid its ticket's counts are in already moves nothing.

        A count the notifier has not made yet (an earlier event on another topic, still to be read)
        is moved all the same: the old grid shows it below zero until it comes, then nothing, as
        signed increments add up in any order."""
        current = _month(datetime.now(self.tz).date())
        keys: list[str] = []
        args: list[str | int] = [SEEN_TTL]
        moving = 0
        for placed in placements:
            # A ticket whose history is gone (finished and left Redis for the record) has nothing
            # to move: an empty history, no placement in it, no moves. Such events are rare (the
            # desk's), so each reads its ticket's history on its own.
            moves = scoring.placement_moves(self.city, placed, await self._history(placed.ticket_no), self.tz)
            if not moves:
                continue
            keys.append(f"stats:moved:{placed.event_id}")
            args.append(len(moves))
            for (dim, group, day), counts in moves.items():
                stale = _month(day) < current  # its month's sums, if made, no longer add up
                keys += [f"stats:{dim}:{group}:{day:%Y%m%d}", f"stats:groups:{dim}"]
                keys += [f"stats:{dim}:{group}:{day:%Y%m}"] if stale else []
                args += [group, int(stale), len(counts)]
                args += [x for field, n in counts.items() for x in (field, n)]
            moving += 1
        return sum(await self._move_once(keys=keys, args=args)) if moving else 0

    async def _history(self, ticket_no: str) -> list[Event]:
        """The ticket's events a move reads (`_MOVABLE`), in order, from its history."""
        events: list[Event] = []
        for record in await self.store.history(ticket_no):
            kind = EVENT_TYPES.get(record.pop("topic", ""))
            if kind is None or not issubclass(kind, _MOVABLE):
                continue
            try:
                events.append(kind.model_validate(record))
            except ValidationError:
                # Written by this system, so it parses; if one did not, the rest still move.
                log.warning("ticket %s: a %s record of its history does not parse", ticket_no, kind.topic)
        return events

    async def query(self, group_by: str, start: date, end: date) -> list[dict]:
        """Per group: the counters summed over [start, end] and the rates, in ranking order
        (`scoring.rank`: best score first, those with too few answers, 样本不足, after them)."""
        # A month is summed and kept once it ended a day ago: the notifier drops the sums of a month
        # gone by when a count comes late into it, by its own clock, which may be a little behind.
        settled = _month((datetime.now(self.tz) - timedelta(days=1)).date())
        spans = period_keys(start, end, settled)
        members = await self.redis.smembers(f"stats:groups:{group_by}")
        groups = sorted(_text(g) for g in members)
        per_call = max(1, SUM_KEYS_PER_CALL // max(1, sum(n or 1 for _, n in spans)))
        lengths = [len(spans), *(n for _, n in spans)]
        async with self.redis.pipeline(transaction=False) as p:
            for i in range(0, len(groups), per_call):
                keys = [f"stats:{group_by}:{g}:{d}" for g in groups[i : i + per_call] for d, _ in spans]
                await self._sum(keys=keys, args=lengths, client=p)
            sums = [flat for chunk in await p.execute() for flat in chunk] if groups else []
        out = []
        for g, flat in zip(groups, sums, strict=True):
            total: dict[str, int] = {}
            scoring.add(total, {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)})
            if any(total.values()):
                out.append(
                    {"group": g, "name": self.name_of(group_by, g)} | scoring.rates(total, self.weights)
                )
        return scoring.rank(out, self.city.sla.ranking.min_answers)

    def name_of(self, group_by: str, group: str) -> str:
        city = self.city
        if group == "unknown":
            # A ticket with no grid is 未定位 (in no street either), as the console says it elsewhere.
            return "未定位" if group_by in scoring.PLACE_DIMENSIONS else "未知"
        if group_by == "department" and group in city.department_by_id:
            return city.department_by_id[group].name
        if group_by == "category" and group in city.category_by_id:
            return "/".join(city.category_names(group))
        if group_by == "grid" and group in city.grids:
            return city.grids[group].grid.name
        if group_by == "street":
            names = {s.id: s.name for s in city.district.streets}
            return names.get(group, group)
        return group

    async def refresh_gauges(self, now: datetime) -> None:
        """The rates month to date, for Prometheus."""
        today = now.astimezone(self.tz).date()
        for dim in scoring.DIMENSIONS:
            for row in await self.query(dim, today.replace(day=1), today):
                for rate in (
                    "response_rate",
                    "resolution_rate",
                    "satisfaction_rate",
                    "score",
                    "direct_answer_rate",
                ):
                    if row[rate] is not None:
                        SCORECARD_RATES.labels(group_by=dim, group=row["group"], rate=rate).set(row[rate])
