"""Labelled examples from people: reviewers correcting the classifier and dispatch-desk operators
picking a department. `appeals train --include-feedback` adds them to the training data.

  feedback:examples   a Redis list of JSON records {ticket_no, title, text, label, grid, source, by, at}
  feedback:ticket:{no} the latest correction per ticket (a corrected correction replaces the first)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from redis.asyncio import Redis

EXAMPLES = "feedback:examples"


async def record_example(
    redis: Redis,
    *,
    ticket_no: str,
    text: str,
    label: str,
    title: str = "",
    grid: str | None = None,
    source: str,
    by: str,
) -> dict:
    record = {
        "ticket_no": ticket_no,
        "title": title,
        "text": text,
        "label": label,
        "grid": grid,
        "source": source,
        "by": by,
        "at": datetime.now(UTC).isoformat(),
    }
    raw = json.dumps(record, ensure_ascii=False)
    async with redis.pipeline(transaction=True) as p:
        p.rpush(EXAMPLES, raw)
        p.set(f"feedback:ticket:{ticket_no}", raw)
        await p.execute()
    return record


async def examples(redis: Redis) -> list[dict]:
    """The labelled examples, one per ticket (the latest correction wins), oldest first."""
    latest: dict[str, dict] = {}
    for raw in await redis.lrange(EXAMPLES, 0, -1):
        r = json.loads(raw)
        latest[r["ticket_no"]] = r
    return list(latest.values())
