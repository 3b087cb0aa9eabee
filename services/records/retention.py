"""Retention: closed tickets leave Redis (the record keeps them), personal data leaves closed tickets
after its period, and one resident's personal data is erased on request, with an audit entry.

Redis keeps the working set: a ticket closed more than REDIS_KEEP_CLOSED_DAYS ago is removed from
it, once the record holds every event of its history (what it lacks is copied in first) and Redis
still has it closed (a reopening inside the window keeps it). Reading it by number then answers
from PostgreSQL. So is a joint meeting decided as long ago, once all its tickets have left and the
record's row holds what Redis holds of it (folded again from the facts the record has, if not).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
from psycopg import AsyncCursor
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from services.records.db import Pool
from services.records.projection import meeting_of
from services.records.service import Records
from services.router import meetings
from services.router.service import MeetingStore, StoredMeeting
from shared.city import load_city
from shared.photo_store import PhotoStore
from shared.settings import Settings
from shared.store import TicketStore, history_key, ticket_key

log = logging.getLogger("records.retention")

# A page of the record's meetings decided before a time, after (decided_at, meeting_id), all of
# whose tickets the record has seen leave Redis (one it does not know counts as still there). Pages
# by key, not by LIMIT alone: a meeting that stays (the record lacks some of it) holds up no other.
_DECIDED_MEETINGS = """
SELECT m.* FROM meetings m
WHERE m.decided_at < %s AND m.left_redis_at IS NULL AND (m.decided_at, m.meeting_id) > (%s, %s)
  AND NOT EXISTS (
    SELECT 1 FROM unnest(m.tickets) AS n (no) LEFT JOIN tickets t ON t.ticket_no = n.no
    WHERE t.left_redis_at IS NULL)
ORDER BY m.decided_at, m.meeting_id LIMIT %s
"""
_BEFORE_ALL = (datetime(1970, 1, 1, tzinfo=UTC), "")

# Delete a ticket and its history only if it is still closed and its history has the length whose
# events the record was seen to hold (1); 2: already gone. KEYS: ticket, history; ARGV: that length.
_EVICT = """
local raw = redis.call('GET', KEYS[1])
if not raw then return redis.call('EXISTS', KEYS[2]) == 0 and 2 or 0 end
if cjson.decode(raw)['status'] ~= 'closed' then return 0 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


class Retention:
    def __init__(self, pool: Pool, store: TicketStore, settings: Settings) -> None:
        self.pool = pool
        self.store = store
        self.settings = settings
        self.tz = ZoneInfo(settings.timezone)
        self.photos = PhotoStore.from_settings(settings, store.redis)
        self.records = Records(pool, load_city(settings.city_config_dir), photos=self.photos)

    async def run(self, now: datetime | None = None, limit: int = 5000) -> dict[str, int]:
        """Both jobs, each in rounds of `limit` tickets until nothing is left to do."""
        now = now or datetime.now(UTC)
        left = removed = 0
        keep = timedelta(days=self.settings.redis_keep_closed_days)
        while n := await self.evict_closed(now - keep, limit):
            left += n
            if n < limit:
                break
        # After the tickets: a meeting leaves once all its tickets have.
        meetings_left = await self.evict_decided_meetings(now - keep)
        cutoff = now - timedelta(days=self.settings.personal_data_keep_days)
        while n := await self.remove_personal_data(cutoff, limit):
            removed += n
            if n < limit:
                break
        swept = 0
        uploaded_before = now - timedelta(hours=self.settings.photo_unattached_hours)
        while n := await self.sweep_unattached_photos(uploaded_before, limit):
            swept += n
            if n < limit:
                break
        if left or meetings_left or removed or swept:
            log.info(
                "retention: %d closed tickets and %d decided meetings left Redis, personal data "
                "removed from %d, %d photo(s) no ticket took deleted",
                left,
                meetings_left,
                removed,
                swept,
            )
        return {
            "left_redis": left,
            "meetings_left_redis": meetings_left,
            "personal_data_removed": removed,
            "unattached_photos_deleted": swept,
        }

    async def sweep_unattached_photos(self, uploaded_before: datetime, limit: int = 5000) -> int:
        """One round: photos uploaded before `uploaded_before` that no ticket took (a form left
        unsent, a photo chosen and removed) are deleted. The record says which were taken: a
        photo still listed as pending but recorded on a ticket is only taken off the list. Returns
        how many were looked at."""
        ids = await self.photos.pending_before(uploaded_before.timestamp(), limit)
        if not ids:
            return 0
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT photo_id FROM ticket_photos WHERE photo_id = ANY(%s)", (ids,)
            )
            taken = {r["photo_id"] for r in await cur.fetchall()}
        await self.photos.attached(taken)
        await self.photos.delete([i for i in ids if i not in taken])
        return len(ids)

    async def evict_closed(self, closed_before: datetime, limit: int = 5000) -> int:
        """One round: up to `limit` tickets closed before `closed_before` leave Redis, each once the
        record holds every event of its history. What it lacks is copied in first: a joint
        meeting's facts, which only the histories carry, and events a lost broker took with it.
        Returns how many left (or were already gone)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ticket_no FROM tickets WHERE status = 'closed' AND closed_at < %s "
                "AND left_redis_at IS NULL ORDER BY closed_at LIMIT %s",
                (closed_before, limit),
            )
            nos = [r["ticket_no"] for r in await cur.fetchall()]
        if not nos:
            return 0
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for no in nos:
                pipe.lrange(history_key(no), 0, -1)
            histories = await pipe.execute()
        ids = {no: [orjson.loads(r)["event_id"] for r in h] for no, h in zip(nos, histories, strict=True)}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_id FROM ticket_events WHERE event_id = ANY(%s)",
                ([i for each in ids.values() for i in each],),
            )
            recorded = {r["event_id"] for r in await cur.fetchall()}
        if behind := [no for no, each in ids.items() if not recorded.issuperset(each)]:
            await self.records.copy_histories(self.store, behind)
        evict = self.store.redis.register_script(_EVICT)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            # With the length read: an event added to a history since then keeps its ticket here.
            for no, each in ids.items():
                await evict(keys=[ticket_key(no), history_key(no)], args=[len(each)], client=pipe)
            results = await pipe.execute()
        gone = [no for no, done in zip(ids, results, strict=True) if done]
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE tickets SET left_redis_at = now() WHERE ticket_no = ANY(%s)", (gone,))
        return len(gone)

    async def evict_decided_meetings(self, decided_before: datetime, batch: int = 500) -> int:
        """One round: the joint meetings decided before `decided_before` whose tickets have all left
        Redis leave it too (`MeetingStore.leave`: only as read, and with no ticket of theirs back),
        each once the record's row holds what Redis holds of it (`meetings.may_leave_redis`). A row
        that does not is folded again from the meeting's facts in the record (copied there from
        the tickets' histories as the tickets left) and compared again; a meeting the record still
        lacks something of stays, and is logged. Returns how many left (or were gone already)."""
        store = MeetingStore(self.store.redis, self.store)
        left, after = 0, _BEFORE_ALL
        lacking: dict[str, list[str]] = {}
        while True:
            async with self.pool.connection() as conn:
                cur = await conn.execute(_DECIDED_MEETINGS, (decided_before, *after, batch))
                rows = await cur.fetchall()
            if not rows:
                break
            after = (rows[-1]["decided_at"], rows[-1]["meeting_id"])
            read = await store.read_many([r["meeting_id"] for r in rows])
            held = {mid: stored.meeting for mid, stored in read.items() if stored}
            recorded = {r["meeting_id"]: meeting_of(r, self.tz) for r in rows}
            if behind := [mid for mid, m in held.items() if meetings.unrecorded(m, recorded[mid])]:
                recorded.update(await self._refolded_meetings(behind))
            leaving: Mapping[str, StoredMeeting] = {
                mid: stored
                for mid, stored in read.items()
                if stored and meetings.may_leave_redis(held[mid], recorded[mid], decided_before)
            }
            lacking |= {
                mid: gaps
                for mid in behind
                if held[mid].status == "decided" and (gaps := meetings.unrecorded(held[mid], recorded[mid]))
            }
            gone = [mid for mid, stored in read.items() if stored is None] + await store.leave(leaving)
            if gone:
                async with self.pool.connection() as conn:
                    await conn.execute(
                        "UPDATE meetings SET left_redis_at = now() WHERE meeting_id = ANY(%s)", (gone,)
                    )
            left += len(gone)
            if len(rows) < batch:
                break
        if lacking:
            log.info(
                "retention: %d decided meeting(s) stay in Redis, the record lacking some of what Redis "
                "holds (e.g. %s)",
                len(lacking),
                "; ".join(f"{mid}: {', '.join(gaps)}" for mid, gaps in list(lacking.items())[:5]),
            )
        return left

    async def _refolded_meetings(self, mids: Sequence[str]) -> dict[str, meetings.Meeting]:
        """These meetings as the record holds them once folded again from their facts."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await self.records.refold_meetings(cur, mids)
            await cur.execute("SELECT * FROM meetings WHERE meeting_id = ANY(%s)", (list(mids),))
            return {r["meeting_id"]: meeting_of(r, self.tz) for r in await cur.fetchall()}

    async def remove_personal_data(self, closed_before: datetime, limit: int = 5000) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ticket_no FROM tickets WHERE status = 'closed' AND closed_at < %s "
                "AND personal_data_removed_at IS NULL LIMIT %s",
                (closed_before, limit),
            )
            nos = [r["ticket_no"] for r in await cur.fetchall()]
        await self.scrub(nos)
        if nos:
            await self.audit(
                "retention", None, "system", len(nos), {"closed_before": closed_before.isoformat()}
            )
        return len(nos)

    async def erase_caller(
        self, caller_id: str, actor: str, reason: str, found_by: dict[str, str] | None = None
    ) -> list[str]:
        """A resident's right to erasure: every ticket of `caller_id`, in the record and in Redis,
        loses its personal data; the contact goes; an audit entry says who did it, why, and how the
        resident was found (`found_by`: by phone, or by which ticket number).

        The tickets are looked up, and the audit entry written, under the caller's lock in one
        transaction. An appeal the record had not stored yet is then erased by the projection when
        it arrives (it asks the audit under the same lock), so none falls between the two."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await Records.caller_lock(cur, [caller_id])
            await cur.execute("SELECT ticket_no FROM tickets WHERE caller_id = %s", (caller_id,))
            nos = [r["ticket_no"] for r in await cur.fetchall()]
            detail = {"reason": reason, **(found_by or {})}
            await self._audit(cur, "erase", caller_id, actor, len(nos), detail)
        await self.scrub(nos)
        # The same removal in Redis, where the ticket still is (the working set). The ticket keeps
        # the mark, so a write that was on its way (the router's assignment) stays scrubbed too.
        # Each ticket erased there is announced (`PersonalDataRemoved`, via the outbox): intake and
        # the notifier drop their own keys linking the caller to it.
        now = datetime.now(UTC)
        for no in nos:
            await self.store.remove_personal_data(no, now, announce_caller=caller_id)
        await self.store.redis.delete(f"contact:{caller_id}")
        return nos

    async def scrub(self, nos: Sequence[str]) -> None:
        """Remove personal data from these tickets' stored events and fold them again."""
        if not nos:
            return
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await self.records.remove_personal_data(cur, nos)

    async def audit(self, action: str, subject: str | None, actor: str, tickets: int, detail: dict) -> None:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await self._audit(cur, action, subject, actor, tickets, detail)

    @staticmethod
    async def _audit(
        cur: AsyncCursor[DictRow], action: str, subject: str | None, actor: str, tickets: int, detail: dict
    ) -> None:
        await cur.execute(
            "INSERT INTO privacy_audit (action, subject, actor, tickets, detail) VALUES (%s, %s, %s, %s, %s)",
            (action, subject, actor, tickets, Jsonb(detail)),
        )
