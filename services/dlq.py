"""`appeals dlq list` and `appeals dlq replay`: the dead-letter topics, read and re-driven.

Each `<topic>.dlq` record (written by `shared.bus.dead_letter`) holds the original bytes, the error,
the consumer group that dead-lettered it and the original partition and offset. After the cause is
fixed (a producer's bug, a schema the consumers now accept), `replay` publishes the original bytes to
the original topic again (without the personal data, if the ticket's was erased meanwhile); each
replay is remembered in Redis so a second run does not repeat it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import typer

from shared import topics
from shared.privacy import scrub_event
from shared.settings import Settings, get_settings
from shared.store import TicketStore

dlq_cli = typer.Typer(help="Dead letters: messages no consumer could handle, and their replay.")
REPLAYED_KEY = "dlq:replayed"  # Redis hash: "<dlq topic>:<partition>:<offset>" -> original topic's new offset


@dataclass(frozen=True)
class DeadLetter:
    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: str | None  # the claim key (shared.bus.dead_letter_key)
    record: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.dlq_topic}:{self.dlq_partition}:{self.dlq_offset}"


async def read_dead_letters(settings: Settings, names: list[str]) -> list[DeadLetter]:
    """Every record of the given dead-letter topics, oldest first, without joining a group."""
    from shared.bus import read_topics

    out: list[DeadLetter] = []
    for records in (await read_topics(settings.kafka_bootstrap_servers, names)).values():
        for r in records:
            try:
                record = json.loads(r.value or b"{}")
            except ValueError:
                record = {
                    "error": "not a dead-letter record",
                    "body": (r.value or b"").decode(errors="replace"),
                }
            key = r.key.decode() if r.key else None
            out.append(DeadLetter(r.topic, r.partition, r.offset, key, record))
    return sorted(out, key=lambda d: (d.dlq_topic, d.dlq_partition, d.dlq_offset))


def _dlq_topics(topic: str | None) -> list[str]:
    if topic is None:
        return [topics.dlq(t) for t in topics.EVENT_TYPES]
    if topic not in topics.EVENT_TYPES:
        raise typer.BadParameter(f"unknown topic {topic!r}; one of {', '.join(topics.EVENT_TYPES)}")
    return [topics.dlq(topic)]


async def _replayed(settings: Settings) -> dict[str, str]:
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return dict(await redis.hgetall(REPLAYED_KEY))  # type: ignore[arg-type]
    finally:
        await redis.aclose()


@dlq_cli.command("list")
def list_(
    topic: str = typer.Option(None, help="Only this topic's dead letters (e.g. appeal.received)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Dead letters, oldest first: where they came from, which group gave up, why, and the bytes."""
    settings = get_settings()
    letters = asyncio.run(read_dead_letters(settings, _dlq_topics(topic)))
    replayed = asyncio.run(_replayed(settings))
    for d in letters:
        r = d.record
        if as_json:
            typer.echo(json.dumps({"ref": d.ref, "replayed": d.ref in replayed, **r}, ensure_ascii=False))
            continue
        where = f"{r.get('topic')}[{r.get('partition')}]@{r.get('offset')}"
        mark = "  (replayed)" if d.ref in replayed else ""
        typer.echo(f"{d.ref}  {where}  by {r.get('group') or r.get('consumer')}{mark}")
        typer.echo(f"    error: {r.get('error')}")
        typer.echo(f"    body:  {str(r.get('body'))[:200]}")
    if not as_json:
        typer.echo(f"{len(letters)} dead letter(s)")


@dlq_cli.command("replay")
def replay(
    topic: str = typer.Argument(..., help="The original topic whose dead letters to publish again."),
    ref: list[str] = typer.Option(None, "--ref", help="Only these (as `dlq list` shows them); repeatable."),
    again: bool = typer.Option(False, "--again", help="Also those replayed before."),
) -> None:
    """Publish dead letters back to their topic (after the cause is fixed); each once unless --again."""
    settings = get_settings()
    result = asyncio.run(_replay(settings, topic, set(ref or ()), again))
    typer.echo(
        f"replayed {result['replayed']}, skipped {result['skipped']} already replayed"
        + (f", {result['scrubbed']} without the personal data erased since" if result["scrubbed"] else "")
    )


async def _replay(settings: Settings, topic: str, refs: set[str], again: bool) -> dict[str, int]:
    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

    from shared.bus import claim_key, compression

    letters = await read_dead_letters(settings, _dlq_topics(topic))
    unknown = refs - {d.ref for d in letters}
    if unknown:
        raise typer.BadParameter(f"no such dead letter(s): {', '.join(sorted(unknown))}")
    chosen = [d for d in letters if not refs or d.ref in refs]
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", compression_type=compression(settings)
    )
    await producer.start()
    counts = {"replayed": 0, "skipped": 0, "scrubbed": 0}
    try:
        done = await redis.hgetall(REPLAYED_KEY)
        for d in chosen:
            if d.ref in done and not again:
                counts["skipped"] += 1
                continue
            body = str(d.record.get("body", "")).encode()
            key = None
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                event = json.loads(body)
                no = str(event["ticket_no"])
                key = no.encode()  # keep one ticket's events in order
                if await TicketStore(redis).is_erased(no):
                    # The resident's data was erased after this was dead-lettered: it goes back
                    # without it, or the pipeline would write the words back (an appeal's text).
                    body = json.dumps(scrub_event(event), ensure_ascii=False).encode()
                    counts["scrubbed"] += 1
            if d.key:
                # Subscribers that see only bodies claim by their hash: let the replayed copy be claimed.
                await redis.delete(claim_key(d.key))
            meta = await producer.send_and_wait(d.record.get("topic") or topic, body, key=key)
            await redis.hset(REPLAYED_KEY, d.ref, f"{meta.partition}:{meta.offset}")
            counts["replayed"] += 1
    finally:
        await producer.stop()
        await redis.aclose()
    return counts
