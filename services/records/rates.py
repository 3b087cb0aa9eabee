"""The three rates (三率) for any period from the record, counted by the notifier's rules
(`services.notifier.scoring`): an assignment on the day it happens (not the dispatch desk's waiting
room; a reroute after a return and a re-dispatch by the desk, 改派, count again, for the new
department), an acceptance on its day (and a merge, 并案, of a duplicate the department held and had
not accepted yet, as its response), a survey answer on the day it arrives (one to a survey whose
resolution was sent back before it came, `void`, in no rate: counted apart as answered_void).
Each event is grouped by the department, category and grid it names, as the notifier does.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.notifier import scoring
from services.records.db import Pool
from services.records.query import (
    MERGE_ON_TIME,
    MERGED,
    RATED_ANSWER,
    RESPONSE_LATE,
    RESPONSE_ON_TIME,
    VOID_ANSWER,
)

# Each event is counted in the groups it names itself (the assignment, the update and the answer
# all carry their ticket's department, category and grid); events written before they carried them
# fall back to the ticket's current ones. The street is the ticket's (the record has no grid table).
GROUP_SQL = {
    "department": "CASE WHEN e.payload ? 'department' THEN e.payload->'department'->>'id' "
    "ELSE t.department END",
    "category": "CASE WHEN e.payload ? 'category' THEN e.payload->>'category' ELSE t.category END",
    "grid": "CASE WHEN e.payload ? 'grid' THEN e.payload->>'grid' ELSE t.grid END",
    "street": "t.street",
}
# An answer to a survey whose resolution had been sent back by then says so (`void`): in no rate.
_ANSWERED = f"{RATED_ANSWER} AND NOT {VOID_ANSWER}"
_ASSIGNED = "e.topic = 'ticket.assigned' AND e.payload->>'via' <> 'dispatch_desk'"
# The responses (签收) and answers are those the ticket list's filters select (services/records/
# query.py: 签收, 回访答复, 回访评价): one definition, so that the list a figure opens holds what it
# counts.
COUNTERS = {
    "assigned": _ASSIGNED,
    "responded": "e.topic = 'ticket.updated' AND (e.payload->>'action' = 'accepted' "
    f"OR ({MERGED} AND {MERGE_ON_TIME} IS NOT NULL))",
    "responded_on_time": RESPONSE_ON_TIME,
    "answered": _ANSWERED,
    "solved": f"{_ANSWERED} AND coalesce((e.payload->>'solved')::boolean, false)",
    "satisfied": f"{_ANSWERED} AND e.payload->>'rating' = '1'",
    "basically_satisfied": f"{_ANSWERED} AND e.payload->>'rating' = '2'",
    "unsatisfied": f"{_ANSWERED} AND e.payload->>'rating' = '3'",
    "no_answer": "e.topic = 'survey.answered' AND e.payload->>'outcome' = 'no_answer'",
    # Not "erased" (the survey ended by the resident's erasure): it counts nowhere, as in scoring.
    "skipped": "e.topic = 'survey.answered' AND e.payload->>'outcome' IN ('opted_out', 'skipped_anonymous')",
    "answered_directly": "e.topic = 'ticket.assigned' AND e.payload->>'via' = 'answered'",
    # Only where the assignment says (from its version 5), as the notifier counts it.
    "first_assigned": f"{_ASSIGNED} AND coalesce((e.payload->>'first')::boolean, false)",
    "handled_on_spot": "e.topic = 'ticket.assigned' AND e.payload->>'via' = 'on_spot'",
    "urged": "e.topic = 'ticket.updated' AND e.payload->>'action' = 'urged'",
    "verified": "e.topic = 'ticket.updated' AND e.payload->>'action' = 'verified'",
    "verification_failed": "e.topic = 'ticket.updated' AND e.payload->>'action' = 'verified' "
    "AND NOT coalesce((e.payload->'verification'->>'solved')::boolean, false)",
    # A mediation committee's resolution is the one that carries a mediation (others carry null).
    "mediated": "e.topic = 'ticket.updated' AND e.payload->>'action' = 'resolved' "
    "AND e.payload->'mediation'->>'outcome' IS NOT NULL",
    "mediation_agreed": "e.topic = 'ticket.updated' AND e.payload->>'action' = 'resolved' "
    "AND e.payload->'mediation'->>'outcome' = 'agreed'",
    "merged": MERGED,
    # 电话回访: an answer an operator took on the phone names them (`by`); by SMS it names nobody.
    "answered_by_phone": f"{_ANSWERED} AND e.payload->>'by' IS NOT NULL",
    "answered_void": f"{RATED_ANSWER} AND {VOID_ANSWER}",
    # 应响应 (scoring.FIELDS says what counts): on time, or the deadline passed unmet, once.
    "due": f"({RESPONSE_ON_TIME}) OR ({RESPONSE_LATE})",
    "due_on_time": RESPONSE_ON_TIME,
    "due_counted": _ASSIGNED,  # the record counts `due` for every period
}


async def rates(
    pool: Pool,
    group_by: str,
    start: date,
    end: date,
    tz: ZoneInfo,
    weights: scoring.Weights,
    min_answers: int,
) -> list[dict]:
    """Per group: the counters over the local days [start, end] and the rates, in ranking order
    (`scoring.rank`: fewer than `min_answers` answered surveys is 样本不足, after the others; the
    shape of the notifier's `Scorecard.query`, names left to the caller)."""
    if group_by not in GROUP_SQL:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_SQL)}")
    counters = ", ".join(f"count(*) FILTER (WHERE {sql}) AS {name}" for name, sql in COUNTERS.items())
    sql = (
        f"SELECT coalesce({GROUP_SQL[group_by]}, 'unknown') AS grp, {counters} "
        "FROM ticket_events e LEFT JOIN tickets t ON t.ticket_no = e.ticket_no "
        "WHERE e.occurred_at >= %s AND e.occurred_at < %s "
        "AND e.topic IN ('ticket.assigned', 'ticket.updated', 'survey.answered') GROUP BY grp"
    )
    lo = datetime.combine(start, time(), tz)
    hi = datetime.combine(end + timedelta(days=1), time(), tz)
    async with pool.connection() as conn:
        rows = await (await conn.execute(sql, (lo, hi))).fetchall()
    out = [
        {"group": r["grp"]} | scoring.rates({f: r[f] for f in scoring.FIELDS}, weights)
        for r in rows
        if any(r[f] for f in scoring.FIELDS)
    ]
    return scoring.rank(out, min_answers)
