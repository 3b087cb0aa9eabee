"""A caller's history in the record (PostgreSQL), for the hotline operator's preview (来电历史): how
often this number appealed lately, and its last few tickets, closed ones included, with how their
survey went. An operator can then say "您上周反映的路灯问题已办结" or notice a frequent caller.

Only what identifies no one leaves here: numbers, dates, categories, statuses, departments and
survey results; never an old ticket's text, address or phone (its page, with its own access rules,
is a click away). A ticket whose personal data was erased is not linked back to its caller: the
erasure clears its `caller_id` and marks it, and the query checks the mark as well, so a row
scrubbed by any path stays out.

The preview must never wait on the record: `CallerHistories` gives up after a short time and then
leaves the record alone for a while, answering "no history known" meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from services.records.db import DatabaseNotConfigured, Pool
from shared.tickets import RATING_NAMES, STATUS_NAMES, Status

log = logging.getLogger("records.callers")

RECENT_TICKETS = 5  # listed: enough to recognise the caller's last matters, short enough to glance at
SHORT_DAYS, LONG_DAYS = 30, 365  # the two counts (近30天, 近一年)
LOOKUP_SECONDS = 1.5  # the longest the preview waits for the record; it answers without the history then
AWAY_SECONDS = 30.0  # after a failed lookup: no preview tries the record again for this long
NOT_SURVEYED = "未回访"  # closed without a rating: the resident did not answer, opted out, or was anonymous

# One round trip. The caller's rows are taken first, by the caller index (`tickets_by_caller`),
# then sorted: asked for newest first in one step, the planner may instead walk the whole table in
# `tickets_by_received` order filtering on the caller (seen for a caller with 4% of the rows), which
# grows with the table, not the caller. Both counts are window aggregates over all the caller's
# rows, computed before LIMIT cuts the list.
HISTORY_SQL = """
WITH mine AS MATERIALIZED (
    SELECT ticket_no, received_at, category_names, status, department_name, rating, merged_into
    FROM tickets
    WHERE caller_id = %(caller)s AND personal_data_removed_at IS NULL
)
SELECT *,
       count(*) FILTER (WHERE received_at >= %(short)s) OVER () AS short_count,
       count(*) FILTER (WHERE received_at >= %(long)s) OVER () AS long_count
FROM mine
ORDER BY received_at DESC, ticket_no DESC
LIMIT %(limit)s
"""


def survey_words(status: str, rating: int | None) -> str | None:
    """How the survey went, in the words of the survey (满意/基本满意/不满意), 未回访 for a ticket
    closed without a rating, None while it has none yet. A reopened ticket keeps its 不满意 while
    the department works on it again: that is why the caller may be calling."""
    if rating in RATING_NAMES:
        return RATING_NAMES[rating]
    return NOT_SURVEYED if status == Status.CLOSED else None


def status_name(status: str) -> str:
    try:
        return STATUS_NAMES[Status(status)]
    except ValueError:  # a status this code does not know (a newer writer): shown as stored
        return status


@dataclass(frozen=True)
class PastTicket:
    ticket_no: str
    received_at: datetime
    category_names: tuple[str, ...]
    status: str
    department: str | None
    rating: int | None
    merged_into: str | None = None  # 并案: closed into this ticket, which the caller follows now

    def view(self, tz: ZoneInfo) -> dict[str, Any]:
        merged = self.merged_into is not None
        return {
            "ticket_no": self.ticket_no,
            "received_on": self.received_at.astimezone(tz).date().isoformat(),  # the city's day
            "category_names": list(self.category_names),
            "status": self.status,
            # A merged ticket's survey is its main ticket's: "closed, not surveyed" would tell the
            # operator the matter is over when it is being handled under the other number.
            "status_name": f"已并入工单{self.merged_into}" if merged else status_name(self.status),
            "department": None if merged else self.department,
            "survey": None if merged else survey_words(self.status, self.rating),
        }


@dataclass(frozen=True)
class CallerHistory:
    last_30_days: int
    last_365_days: int
    tickets: tuple[PastTicket, ...]

    def view(self, tz: ZoneInfo) -> dict[str, Any]:
        return {
            "last_30_days": self.last_30_days,
            "last_365_days": self.last_365_days,
            "tickets": [t.view(tz) for t in self.tickets],
        }


def history_of(rows: Sequence[Mapping[str, Any]]) -> CallerHistory:
    """The query's rows as a history (no rows: a caller the record does not know)."""
    first = rows[0] if rows else {}
    return CallerHistory(
        last_30_days=int(first.get("short_count") or 0),
        last_365_days=int(first.get("long_count") or 0),
        tickets=tuple(
            PastTicket(
                ticket_no=r["ticket_no"],
                received_at=r["received_at"],
                category_names=tuple(r["category_names"] or ()),
                status=r["status"],
                department=r["department_name"],
                rating=r["rating"],
                merged_into=r.get("merged_into"),
            )
            for r in rows
        ),
    )


async def caller_history(
    pool: Pool, caller_id: str, *, now: datetime | None = None, limit: int = RECENT_TICKETS
) -> CallerHistory:
    """The caller's counts over the last 30 and 365 days and their `limit` most recent tickets, of
    any age (a caller of two years ago is still recognised), erased tickets left out."""
    now = now or datetime.now(UTC)
    params = {
        "caller": caller_id,
        "short": now - timedelta(days=SHORT_DAYS),
        "long": now - timedelta(days=LONG_DAYS),
        "limit": limit,
    }
    async with pool.connection() as conn:
        rows = await (await conn.execute(HISTORY_SQL, params)).fetchall()
    return history_of(rows)


# What "the record is away" looks like from here: the server down or unreachable (psycopg's errors,
# the pool's timeout among them), too slow (TimeoutError), or no database configured at all.
AWAY = (psycopg.Error, OSError, TimeoutError, DatabaseNotConfigured)


class CallerHistories:
    """The operator preview's way to the record: a caller's history as the API answers it, or None
    when the record cannot say in time. Never raises for the record being away: taking a call must
    not depend on it (the preview answers without the history, and says nothing about it)."""

    def __init__(
        self,
        pool_of: Callable[[], Awaitable[Pool]],
        tz: ZoneInfo,
        *,
        seconds: float = LOOKUP_SECONDS,
        away_seconds: float = AWAY_SECONDS,
    ) -> None:
        self.pool_of = pool_of  # opens the pool on first use: the API starts without the record
        self.tz = tz
        self.seconds = seconds
        self.away_seconds = away_seconds
        self._away_until = 0.0

    async def view(self, caller_id: str) -> dict[str, Any] | None:
        # A record that just failed is not asked again at once: with a server that hangs rather
        # than refuses, every preview would otherwise wait the whole `seconds` for nothing.
        if time.monotonic() < self._away_until:
            return None
        try:
            async with asyncio.timeout(self.seconds):
                history = await caller_history(await self.pool_of(), caller_id)
        except AWAY as e:
            self._away_until = time.monotonic() + self.away_seconds
            # Once per pause, not per preview: the records worker and the search say it too.
            log.warning(
                "caller history: the record (PostgreSQL) did not answer (%r); previews go without it "
                "for %.0f s",
                e,
                self.away_seconds,
            )
            return None
        return history.view(self.tz)
