"""The notifier's scheduled jobs: a held message to send, a survey to remind of or to close, the
WeChat notices kept for a resident who wrote to the account again (`services.notifier.pending`).

  sms:due   sorted set: one job (JSON) per member, scored by the Unix time it is due

A job is claimed with ZREM: only the replica whose ZREM removed it runs it, so two notifiers never
run the same job. A job that fails goes back in the set, due again a few minutes later. A job's JSON
is deterministic (sorted keys), so scheduling the same job twice keeps one member.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from services.notifier.gateway import Message

log = logging.getLogger(__name__)

DUE = "sms:due"
RETRY_LATER = timedelta(minutes=5)  # a failed job, or a provider outage longer than the gateway's retries


@dataclass(frozen=True)
class SendJob:
    """A message held by quiet hours or the daily cap, or one the provider did not take yet."""

    message: Message


@dataclass(frozen=True)
class SurveyJob:
    """Remind the resident of an open survey, or close it as unanswered."""

    action: Literal["remind", "close"]
    survey_id: str


@dataclass(frozen=True)
class ReturnJob:
    """A WeChat resident wrote to the account again: what was kept for them past WeChat's 48
    hours goes out now (`Notifier` reads the openid's `wx:pending:*`)."""

    openid: str


Job = SendJob | SurveyJob | ReturnJob


def encode(job: Job) -> bytes:
    if isinstance(job, SendJob):
        # A held message: the notifier's most frequent job, and orjson writes it several times
        # faster than the json module (a flood's held acknowledgements spent a twentieth of the
        # notifier's time here). It is never looked up by its JSON, only claimed as read.
        return orjson.dumps({"job": "send", "message": job.message.to_json()}, option=orjson.OPT_SORT_KEYS)
    # These two are also found again by their JSON (a survey's reminder is removed when it is
    # answered, a resident's return job is rescheduled), so they keep the form they always had:
    # jobs written by an earlier version must still be found.
    if isinstance(job, ReturnJob):
        body: dict[str, Any] = {"job": "return", "openid": job.openid}
    else:
        body = {"job": job.action, "survey_id": job.survey_id}
    return json.dumps(body, ensure_ascii=False, sort_keys=True).encode()


def decode(raw: str | bytes) -> Job:
    body = json.loads(raw)
    if body["job"] == "send":
        return SendJob(Message.from_json(body["message"]))
    if body["job"] == "return":
        return ReturnJob(body["openid"])
    if body["job"] in ("remind", "close"):
        return SurveyJob(body["job"], body["survey_id"])
    raise ValueError(f"unknown notifier job {body['job']!r}")


class JobQueue:
    def __init__(self, redis: Redis, key: str = DUE) -> None:
        self.redis = redis
        self.key = key

    def add_into(self, p: Pipeline, jobs: dict[Job, datetime]) -> None:
        """Schedule `jobs` (job -> when) as part of the pipeline `p` (with the writes they belong to)."""
        p.zadd(self.key, {encode(job): at.timestamp() for job, at in jobs.items()})

    async def scan(
        self, now: datetime, run: Callable[[Job, datetime], Awaitable[None]], limit: int = 200
    ) -> int:
        """Claim and `run` the jobs due at `now`, up to `limit`. Returns how many ran."""
        done = 0
        # Without scores, redis-py returns the members (its types cover every form of the command).
        due = await self.redis.zrangebyscore(self.key, "-inf", now.timestamp(), start=0, num=limit)
        raws = cast("list[bytes]", due)
        for raw in raws:
            if not await self.redis.zrem(self.key, raw):
                continue  # another notifier claimed it
            try:
                await run(decode(raw), now)
                done += 1
            except Exception:
                log.exception("scheduled notifier job failed; retrying later")
                await self.redis.zadd(self.key, {raw: (now + RETRY_LATER).timestamp()})
        return done
