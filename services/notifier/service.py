"""The notifier's work with I/O: sending once per event, holding and scheduling, the survey book.

  sms:done:{event}:{kind}   this event's message of this kind was taken in hand (never sent twice)
  sms:msg:{message_id}      the message's state (JSON): held, sent, retrying, failed, delivered, ...
  sms:count:{day}           hash phone -> messages sent to it that local day (the daily cap)
  sms:due                   scheduled jobs (held sends, survey reminders and timeouts) by due time
  sms:optout                phones that sent TD / 退订: no more surveys
  survey:{id}               one survey (JSON: ticket, phone, start)
  survey:open:{phone}       the phone's surveys still waiting for an answer, by start time
  survey:last:{phone}       the phone's last closed survey, for a while: later replies are comments

Scheduled jobs are claimed with ZREM (only the replica whose ZREM returns 1 runs the job), so two
notifiers never send the same held message twice. Every function that depends on time takes `now`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from services.notifier.gateway import (
    PermanentSmsError,
    SmsError,
    SmsGateway,
    SmsMessage,
    make_gateway,
)
from services.notifier.policy import Policy, QuietHours
from services.notifier.survey import is_opt_out, parse_reply
from services.notifier.texts import Texts, load_texts
from shared.city import City
from shared.events import Event, SurveyAnswered, SurveyOutcome, SurveySent, TicketUpdated, now_utc
from shared.metrics import SMS_SENT, SURVEYS_ANSWERED
from shared.privacy import caller_id, mask_phone
from shared.settings import Settings
from shared.store import TicketStore
from shared.tickets import Ticket

log = logging.getLogger(__name__)

SENT_TTL = 30 * 86400
SURVEY_TTL = 30 * 86400
LATE_REPLY_SECONDS = 72 * 3600  # after a survey closes, replies within this are comments on it
RETRY_LATER = timedelta(minutes=5)  # a provider outage outlasted the gateway's own retries
DUE = "sms:due"
OPTOUT = "sms:optout"
SURVEY_KINDS = {"survey", "reminder", "clarification"}  # what an opt-out stops, even when already held

Publish = Callable[[Sequence[Event]], Awaitable[None]]


# Per-item commands of a batch as one command each (redis-py packs and parses every command in Python).
# KEYS: the keys; ARGV: the ttl, then a value per key. Returns per key 1 if it was set now, else 0.
_SET_NX_EACH = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'EX', ARGV[1]) and 1 or 0
end
return out
"""
# KEYS: hashes; ARGV[1]: the field. Returns the field of each ('' where there is none).
_HGET_EACH = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGET', KEYS[i], ARGV[1]) or '' end
return out
"""


# The states of a dispatched batch, and the day's count of each phone sent to, in one command.
# KEYS: the day's count hash, then per message its state key. ARGV: state ttl, count ttl, then per
# message: its state record and the phone to count ('' when it was not sent).
_RECORD_STATES = """
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', ARGV[1])
  if ARGV[2 * i] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[2 * i], 1) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return #KEYS - 1
"""


def local_datetime(value: object, tz: ZoneInfo) -> datetime | None:
    """An event's ISO time field in local time; None when the event does not carry a valid one."""
    try:
        return datetime.fromisoformat(str(value)).astimezone(tz)
    except ValueError:
        return None


def _derived_id(*parts: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)).hex


class Notifier:
    def __init__(
        self,
        store: TicketStore,
        gateway: SmsGateway,
        publish: Publish,
        *,
        texts: Texts,
        policy: Policy,
        reminder_after: timedelta = timedelta(hours=24),
        window: timedelta = timedelta(hours=48),
        clock: Callable[[], datetime] = now_utc,
        jobs_key: str = DUE,
    ) -> None:
        self.store = store
        self.redis: Redis = store.redis
        self.gateway = gateway
        self.publish = publish
        self.texts = texts
        self.policy = policy
        self.reminder_after = reminder_after
        self.window = window
        self.clock = clock
        self.jobs = jobs_key
        self._set_nx_each = self.redis.register_script(_SET_NX_EACH)
        self._hget_each = self.redis.register_script(_HGET_EACH)

    @classmethod
    def from_settings(cls, settings: Settings, store: TicketStore, publish: Publish, **kw: Any) -> Notifier:
        """Raises ValueError naming the setting or template at fault."""
        if settings.survey_reminder_hours >= settings.survey_window_hours:
            raise ValueError("SURVEY_REMINDER_HOURS must be below SURVEY_WINDOW_HOURS")
        return cls(
            store,
            make_gateway(settings, store.redis),
            publish,
            texts=load_texts(settings.notifications_file),
            policy=Policy(
                QuietHours.parse(settings.quiet_hours), settings.sms_daily_cap, ZoneInfo(settings.timezone)
            ),
            reminder_after=timedelta(hours=settings.survey_reminder_hours),
            window=timedelta(hours=settings.survey_window_hours),
            **kw,
        )

    # --- sending ------------------------------------------------------------------------------

    async def notify(self, event_id: str, message: SmsMessage, now: datetime | None = None) -> str:
        """Send `message` for `event_id` unless one of its kind already was (restarts included).
        Returns sent, held (quiet hours / daily cap), retrying, failed or duplicate."""
        return (await self.notify_many([(event_id, message)], now))[0]

    async def notify_many(
        self, items: Sequence[tuple[str, SmsMessage]], now: datetime | None = None
    ) -> list[str]:
        """`notify` for a batch, in three Redis round trips whatever its size."""
        if not items:
            return []
        now = now or self.clock()
        keys = [f"sms:done:{event_id}:{m.kind}" for event_id, m in items]
        claimed = await self._set_nx_each(keys=keys, args=[SENT_TTL, *(m.message_id for _, m in items)])
        mine = [i for i, ok in enumerate(claimed) if ok]
        results = ["duplicate"] * len(items)
        try:
            states = await self._dispatch([items[i][1] for i in mine], now)
        except Exception:
            # Redis failed: let the redelivered event try again (should the gateway have taken some
            # already, a rare repeat beats a lost message).
            if mine:
                await self.redis.delete(*(keys[i] for i in mine))
            raise
        for i, state in zip(mine, states, strict=False):
            results[i] = state
        return results

    def _count_key(self, now: datetime) -> str:
        return f"sms:count:{self.policy.local_day(now):%Y%m%d}"

    async def _dispatch(self, messages: list[SmsMessage], now: datetime) -> list[str]:
        """Hold what quiet hours or the cap hold, hand the rest to the gateway, record every state."""
        if not messages:
            return []
        count_key = self._count_key(now)
        counts = await self.redis.hmget(count_key, [m.phone for m in messages])
        in_batch: Counter[str] = Counter()  # several messages to one phone in the same batch
        held: dict[int, datetime] = {}
        for i, (m, count) in enumerate(zip(messages, counts, strict=False)):
            at = self.policy.send_at(now, urgent=m.urgent, sent_today=int(count or 0) + in_batch[m.phone])
            if at > now:
                held[i] = at
            else:
                in_batch[m.phone] += 1
        to_send = [i for i in range(len(messages)) if i not in held]
        outcomes = dict(zip(to_send, await self._send_all([messages[i] for i in to_send]), strict=False))
        states: list[str] = []
        written: list[tuple[str, str, str]] = []  # state key, state, phone to count ('' : not sent)
        async with self.redis.pipeline(transaction=False) as p:
            for i, m in enumerate(messages):
                outcome = outcomes.get(i)
                if i in held:
                    self._schedule_into(p, {"job": "send", "message": m.to_json()}, held[i])
                    written.append((*self._state(m, "held", until=held[i].isoformat()), ""))
                    states.append("held")
                elif isinstance(outcome, PermanentSmsError):
                    log.warning("SMS %s for %s refused by the provider: %s", m.kind, m.ticket_no, outcome)
                    written.append((*self._state(m, "failed", error=str(outcome)), ""))
                    states.append("failed")
                elif isinstance(outcome, SmsError):
                    self._schedule_into(p, {"job": "send", "message": m.to_json()}, now + RETRY_LATER)
                    written.append((*self._state(m, "retrying", error=str(outcome)), ""))
                    states.append("retrying")
                else:
                    key, record = self._state(m, "sent", provider_id=str(outcome), sent_at=now.isoformat())
                    written.append((key, record, m.phone))
                    SMS_SENT.labels(kind=m.kind).inc()
                    states.append("sent")
            p.eval(
                _RECORD_STATES,
                1 + len(written),
                count_key,
                *(key for key, _, _ in written),
                SENT_TTL,
                2 * 86400,
                *(v for _, record, phone in written for v in (record, phone)),
            )
            await p.execute()
        return states

    async def _send_all(self, messages: list[SmsMessage]) -> list[str | SmsError]:
        """Provider ids, or the SmsError for each message the gateway did not take. Anything else
        (Redis down under the outbox gateway) raises."""
        if not messages:
            return []
        send_many = getattr(self.gateway, "send_many", None)  # a gateway that takes a batch at once
        if send_many is not None:
            return list(await send_many(messages))
        results = await asyncio.gather(*(self.gateway.send(m) for m in messages), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, SmsError):
                raise r
        return results  # type: ignore[return-value]

    @staticmethod
    def _state(message: SmsMessage, state: str, **extra: str) -> tuple[str, str]:
        """The message's state record: its key and JSON."""
        record = {
            "state": state,
            "kind": message.kind,
            "ticket_no": message.ticket_no or "",
            "phone": mask_phone(message.phone),
            **extra,
        }
        return f"sms:msg:{message.message_id}", json.dumps(record, ensure_ascii=False)

    async def _record_state(self, message: SmsMessage, state: str, **extra: str) -> None:
        key, record = self._state(message, state, **extra)
        await self.redis.set(key, record, ex=SENT_TTL)

    async def message_state(self, message_id: str) -> dict[str, str]:
        raw = await self.redis.get(f"sms:msg:{message_id}")
        return json.loads(raw) if raw else {}

    async def receipt(self, message_id: str, delivered: bool, error: str = "") -> bool:
        """A provider's delivery receipt. False when the message is unknown."""
        record = await self.message_state(message_id)
        if not record:
            return False
        record |= {"state": "delivered" if delivered else "undelivered", "receipt_error": error}
        await self.redis.set(f"sms:msg:{message_id}", json.dumps(record, ensure_ascii=False), keepttl=True)
        return True

    def _schedule_into(self, p: Any, job: dict[str, Any], at: datetime) -> None:
        p.zadd(self.jobs, {json.dumps(job, ensure_ascii=False, sort_keys=True): at.timestamp()})

    async def scan(self, now: datetime | None = None, limit: int = 200) -> int:
        """Run the jobs due at `now`: held messages, survey reminders and timeouts. Returns how many."""
        now = now or self.clock()
        done = 0
        for raw in await self.redis.zrangebyscore(self.jobs, "-inf", now.timestamp(), start=0, num=limit):
            if not await self.redis.zrem(self.jobs, raw):
                continue  # another notifier claimed it
            try:
                await self._run(json.loads(raw), now)
                done += 1
            except Exception:
                log.exception("scheduled notifier job failed; retrying later")
                await self.redis.zadd(self.jobs, {raw: (now + RETRY_LATER).timestamp()})
        return done

    async def _run(self, job: dict[str, Any], now: datetime) -> None:
        if job["job"] == "send":
            message = SmsMessage.from_json(job["message"])
            if message.kind in SURVEY_KINDS and await self.redis.sismember(OPTOUT, message.phone):
                await self._record_state(message, "cancelled", reason="opted out while it was held")
                return
            await self._dispatch([message], now)
            return
        survey = await self._survey(job["survey_id"])
        if survey is None:
            return
        if job["job"] == "remind":
            if await self.redis.zscore(f"survey:open:{survey['phone']}", survey["survey_id"]) is not None:
                text = self.texts.render(
                    "reminder", ticket_no=survey["ticket_no"], question=self.texts.question
                )
                await self.notify(
                    survey["survey_id"],
                    SmsMessage(survey["phone"], text, "reminder", survey["ticket_no"]),
                    now,
                )
        elif job["job"] == "close":
            await self._close(
                survey, "no_answer", "", now, event_id=_derived_id(survey["survey_id"], "no_answer")
            )

    # --- messages about tickets ---------------------------------------------------------------

    async def phone_of(self, ticket: Ticket) -> str | None:
        if ticket.caller.caller_id is None:
            return None
        return (await self.store.contact(ticket.caller.caller_id)).get("phone")

    async def phones(self, caller_ids: Sequence[str]) -> list[str | None]:
        """The phones of many callers in one round trip (None where there is no contact)."""
        if not caller_ids:
            return []
        found = await self._hget_each(keys=[f"contact:{cid}" for cid in caller_ids], args=["phone"])
        return [v.decode() if v else None for v in found]

    def ack_message(self, ticket_no: str, phone: str, *, urgent: bool = False) -> SmsMessage:
        return SmsMessage(
            phone, self.texts.render("ack", ticket_no=ticket_no), "ack", ticket_no, urgent=urgent
        )

    async def acknowledge(self, cause: Event, ticket_no: str, phone: str, *, urgent: bool = False) -> str:
        return await self.notify(cause.event_id, self.ack_message(ticket_no, phone, urgent=urgent))

    async def progress(self, cause: Event, ticket: Ticket, template: str, **fields: str) -> str | None:
        phone = await self.phone_of(ticket)
        if phone is None:
            return None
        text = self.texts.render(template, ticket_no=ticket.ticket_no, **fields)
        return await self.notify(cause.event_id, SmsMessage(phone, text, "progress", ticket.ticket_no))

    async def supervise(self, updates: Sequence[TicketUpdated], city: City) -> list[str]:
        """督办短信: an overdue ticket's notice to its department's supervisor; an escalated one's to
        that supervisor and to the office it was escalated to. Only departments with a
        `supervisor_mobile`; once per event and recipient."""
        items = []
        for u in updates:
            notice = u.supervision
            if notice is None:  # escalated to a joint meeting, not by a deadline
                continue
            names = {
                "stage": notice.stage_name,
                "deadline": self._local_time(notice.deadline),
                "department": u.department.name if u.department else "",
            }
            template = "overdue_notice" if u.action == "overdue" else "escalated_notice"
            for dept_id in dict.fromkeys(d for d in (notice.supervisor, notice.to) if d):
                dept = city.department_by_id.get(str(dept_id))
                if dept is None or not dept.supervisor_mobile:
                    continue
                text = self.texts.render(template, ticket_no=u.ticket_no, **names)
                items.append(
                    (
                        f"{u.event_id}:{dept.id}",
                        SmsMessage(dept.supervisor_mobile, text, "supervision", u.ticket_no),
                    )
                )
        return await self.notify_many(items)

    def _local_time(self, value: object) -> str:
        d = local_datetime(value, self.policy.tz)
        return f"{d.month}月{d.day}日{d:%H:%M}" if d else ""

    # --- the survey ---------------------------------------------------------------------------

    def _not_asked(self, resolved: TicketUpdated, outcome: SurveyOutcome) -> SurveyAnswered:
        return SurveyAnswered.caused(
            resolved, survey_id=resolved.event_id, rating=None, text="", outcome=outcome
        )

    async def start_survey(self, resolved: TicketUpdated, ticket: Ticket) -> list[Event]:
        """The callback with the survey for a resolved ticket. Returns the events that record it: the
        survey sent, or why it was not (anonymous appeal, opted-out phone), never nothing."""
        phone = await self.phone_of(ticket)
        note = self.texts.short_note(resolved.note or ticket.resolution_note)
        if phone is None:
            return [self._not_asked(resolved, "skipped_anonymous")]
        if await self.redis.sismember(OPTOUT, phone):
            text = self.texts.render("result", ticket_no=ticket.ticket_no, note=note)
            await self.notify(resolved.event_id, SmsMessage(phone, text, "result", ticket.ticket_no))
            return [self._not_asked(resolved, "opted_out")]
        survey_id = resolved.event_id
        now = self.clock()
        text = self.texts.render(
            "survey", ticket_no=ticket.ticket_no, note=note, question=self.texts.question
        )
        message = SmsMessage(
            phone, text, "survey", ticket.ticket_no, message_id=_derived_id(survey_id, "sms")
        )
        record = {
            "survey_id": survey_id,
            "ticket_no": ticket.ticket_no,
            "phone": phone,
            "started_at": now.timestamp(),
        }
        if await self.redis.set(f"survey:{survey_id}", json.dumps(record), nx=True, ex=SURVEY_TTL):
            async with self.redis.pipeline(transaction=True) as p:
                p.zadd(f"survey:open:{phone}", {survey_id: now.timestamp()})
                p.expire(f"survey:open:{phone}", SURVEY_TTL)
                p.zadd(
                    self.jobs,
                    {
                        json.dumps({"job": "remind", "survey_id": survey_id}, sort_keys=True): (
                            now + self.reminder_after
                        ).timestamp(),
                        json.dumps({"job": "close", "survey_id": survey_id}, sort_keys=True): (
                            now + self.window
                        ).timestamp(),
                    },
                )
                await p.execute()
        await self.notify(survey_id, message, now)
        return [
            SurveySent.caused(
                resolved,
                survey_id=survey_id,
                masked_phone=mask_phone(phone),
                message_id=message.message_id,
                text=text,
            )
        ]

    async def _survey(self, survey_id: str | bytes) -> dict[str, Any] | None:
        sid = survey_id.decode() if isinstance(survey_id, bytes) else survey_id
        raw = await self.redis.get(f"survey:{sid}")
        return json.loads(raw) if raw else None

    async def _close(
        self,
        survey: dict[str, Any],
        outcome: SurveyOutcome,
        text: str,
        now: datetime,
        *,
        event_id: str,
        rating: int | None = None,
        solved: bool | None = None,
    ) -> SurveyAnswered | None:
        """Close an open survey with `outcome` and publish it. None when it was no longer open (another
        reply or the timeout closed it first). If the publish fails the survey is open again."""
        open_key = f"survey:open:{survey['phone']}"
        if not await self.redis.zrem(open_key, survey["survey_id"]):
            return None
        answered = SurveyAnswered(
            event_id=event_id,
            ticket_no=survey["ticket_no"],
            survey_id=survey["survey_id"],
            rating=rating,
            solved=solved,
            text=text,
            outcome=outcome,
            occurred_at=now,
        )
        try:
            await self.publish([answered])
        except Exception:
            await self.redis.zadd(open_key, {survey["survey_id"]: survey["started_at"]})
            raise
        await self.redis.set(f"survey:last:{survey['phone']}", survey["survey_id"], ex=LATE_REPLY_SECONDS)
        SURVEYS_ANSWERED.labels(rating=str(rating) if rating else outcome).inc()
        return answered

    async def _comment(self, survey: dict[str, Any], text: str, now: datetime) -> None:
        await self.publish(
            [
                SurveyAnswered(
                    ticket_no=survey["ticket_no"],
                    survey_id=survey["survey_id"],
                    rating=None,
                    text=text,
                    outcome="comment",
                    occurred_at=now,
                )
            ]
        )

    async def reply(self, phone: str, text: str) -> dict[str, Any] | None:
        """An SMS from a resident: opt-out, an answer to the newest open survey, or a comment on a
        survey closed lately. None when it is none of these (then it is a new appeal)."""
        now = self.clock()
        if is_opt_out(text):
            return await self.opt_out(phone, text, now)
        newest = await self.redis.zrevrange(f"survey:open:{phone}", 0, 0)
        survey = await self._survey(newest[0]) if newest else None
        if survey is not None:
            parsed = parse_reply(text)
            if parsed.rated:
                answered = await self._close(
                    survey,
                    "answered",
                    text,
                    now,
                    event_id=uuid.uuid4().hex,
                    rating=parsed.rating,
                    solved=parsed.solved,
                )
                if answered is not None:
                    return {
                        "kind": "survey_answer",
                        "ticket_no": survey["ticket_no"],
                        "rating": parsed.rating,
                        "solved": parsed.solved,
                    }
            await self._comment(survey, text, now)
            clarified = None
            if not parsed.rated:  # at most once per survey: notify is idempotent on (survey, kind)
                message = SmsMessage(
                    phone,
                    self.texts.render(
                        "clarification",
                        ticket_no=survey["ticket_no"],
                        question=self.texts.question,
                    ),
                    "clarification",
                    survey["ticket_no"],
                    urgent=True,
                )  # an answer to their own SMS: now
                clarified = await self.notify(survey["survey_id"], message, now)
            return {
                "kind": "comment",
                "ticket_no": survey["ticket_no"],
                "clarification": clarified in ("sent", "held"),
            }
        last = await self.redis.get(f"survey:last:{phone}")
        if last and (survey := await self._survey(last)) is not None:
            await self._comment(survey, text, now)
            return {"kind": "comment", "ticket_no": survey["ticket_no"], "clarification": False}
        return None

    async def opt_out(self, phone: str, text: str, now: datetime) -> dict[str, Any]:
        """TD / 退订: no more surveys for this phone; its open surveys close as opted out."""
        await self.redis.sadd(OPTOUT, phone)
        closed = []
        for sid in await self.redis.zrange(f"survey:open:{phone}", 0, -1):
            survey = await self._survey(sid)
            if survey and await self._close(
                survey, "opted_out", text, now, event_id=_derived_id(survey["survey_id"], "opted_out")
            ):
                closed.append(survey["ticket_no"])
        confirmation = SmsMessage(phone, self.texts.render("opt_out"), "opt_out", urgent=True)
        await self.notify(f"optout:{caller_id(phone)}:{self.policy.local_day(now)}", confirmation, now)
        return {"kind": "opt_out", "closed_surveys": closed}
