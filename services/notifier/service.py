"""The notifier's service layer: the messages about tickets, and the parts that send them.

It wires four parts, each with its own Redis keys (listed at the top of each module):
  - `dispatch.Dispatcher`: sends once per (event, kind), within the daily cap, outside quiet hours,
    through the gateway (sms:done, sms:sending, sms:count);
  - `jobs.JobQueue`: the scheduled jobs (held messages, survey reminders and timeouts), claimed
    with ZREM so two notifiers never run one twice (sms:due);
  - `states.MessageStates`: each message's state and the provider's delivery receipts (sms:msg),
    and the index of a ticket's records that reach its resident (sms:ticket), which `forget` uses
    when the resident's personal data is erased;
  - `surveys.SurveyBook`: the callback survey, replies, reminders, timeouts, opt-outs (survey:*,
    sms:optout);
  - `pending.PendingNotices`: the WeChat notices kept past WeChat's 48 hours until the resident
    writes again (wx:pending), which `returned` hands back to the send path then.
What is left here reads the callers' contacts (where each is reached, by SMS or WeChat:
`routing.route`) and composes the acknowledgement, progress and supervision
messages. Every function that depends on time takes `now` or the injected clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from services.notifier.dispatch import Dispatcher, SendResult
from services.notifier.gateway import Message, SmsGateway, make_gateway
from services.notifier.jobs import DUE, Job, JobQueue, ReturnJob, SendJob
from services.notifier.pending import PREFIX as PENDING_PREFIX
from services.notifier.policy import Policy, QuietHours
from services.notifier.routing import CONTACT_FIELDS, Recipient, route
from services.notifier.scoring import sets_grid
from services.notifier.states import MessageStates, about_resident, state_key, ticket_records_key
from services.notifier.surveys import SURVEY_KINDS, Publish, SurveyBook, derived_id, message_ids
from services.notifier.texts import Texts, load_texts, month_day_time
from services.notifier.wechat_gateway import WeChatGateway, make_wechat_gateway
from services.notifier.window import Return, SurveyFacts, on_return
from shared.city import City
from shared.errors import DomainError
from shared.events import Event, TicketAssigned, TicketUpdated, now_utc
from shared.metrics import WECHAT_ON_RETURN
from shared.redis_client import text
from shared.settings import Settings
from shared.store import TicketStore
from shared.tickets import Ticket

log = logging.getLogger(__name__)
# What the desk may send again (补发): notices whose text still says what it said. A survey is
# answered by reply, which its SMS alone cannot tie to a second copy; its callback is by phone.
RESENDABLE = frozenset({"ack", "progress", "result"})

# KEYS: hashes; ARGV: the fields. Returns the fields of each, one after the other ('' where there is
# none): the contacts of a batch's callers in one command (redis-py packs and parses every command
# in Python).
_HMGET_EACH = """
local out = {}
for i = 1, #KEYS do
  local values = redis.call('HMGET', KEYS[i], unpack(ARGV))
  for j = 1, #ARGV do out[#out + 1] = values[j] or '' end
end
return out
"""
# A progress message: the event it is about (the ticket and its caller), the template, its fields.
Progress = tuple[TicketAssigned | TicketUpdated, str, dict[str, str]]


def category_name(city: City | None, category: str | None) -> str:
    """What a ticket of `category` was about, as a resident names it (路灯故障); "" when unknown."""
    found = city.category_by_id.get(category or "") if city is not None else None
    return found.name if found else ""


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
        callback_after: timedelta | None = None,
        clock: Callable[[], datetime] = now_utc,
        jobs_key: str = DUE,
        wechat: WeChatGateway | None = None,
        city: City | None = None,
    ) -> None:
        self.store = store
        self.redis: Redis = store.redis
        self.publish = publish
        self.texts = texts
        self.policy = policy
        self.clock = clock
        self.jobs = JobQueue(self.redis, jobs_key)
        self.states = MessageStates(self.redis)
        self.sms = Dispatcher(self.redis, gateway, policy, self.jobs, wechat=wechat, clock=clock)
        self.pending = self.sms.pending
        self.surveys = SurveyBook(
            self.sms,
            publish,
            texts,
            reminder_after=reminder_after,
            window=window,
            callback_after=reminder_after if callback_after is None else callback_after,
            erased=self.forget_if_erased,
            about=partial(category_name, city),
        )
        self._hmget_each = self.redis.register_script(_HMGET_EACH)

    @classmethod
    def from_settings(cls, settings: Settings, store: TicketStore, publish: Publish, **kw: Any) -> Notifier:
        """Raises ValueError naming the setting or template at fault."""
        if settings.survey_reminder_hours >= settings.survey_window_hours:
            raise ValueError("SURVEY_REMINDER_HOURS must be below SURVEY_WINDOW_HOURS")
        if settings.callback_hours >= settings.survey_window_hours:
            # The survey has closed by then: nobody would ever be listed for a call.
            raise ValueError(
                f"SURVEY_CALLBACK_HOURS ({settings.callback_hours:g}) must be below "
                f"SURVEY_WINDOW_HOURS ({settings.survey_window_hours:g})"
            )
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
            callback_after=timedelta(hours=settings.callback_hours),
            wechat=make_wechat_gateway(settings, store.redis),
            **kw,
        )

    @property
    def gateway(self) -> SmsGateway:
        return self.sms.gateway

    @property
    def wechat(self) -> WeChatGateway:
        return self.sms.wechat

    # --- the scheduled jobs -------------------------------------------------------------------

    async def scan(self, now: datetime | None = None, limit: int = 200) -> int:
        """Run the jobs due at `now`: held messages, survey reminders and timeouts, the notices kept
        for WeChat residents who wrote again. Returns how many."""
        return await self.jobs.scan(now or self.clock(), self._run, limit)

    async def _run(self, job: Job, now: datetime) -> None:
        if isinstance(job, SendJob):
            message = job.message
            if about_resident(message):
                # The resident's data was erased since, and the message must not reach them: their
                # ticket has the mark (whether or not the erasure's notice came), or the message's
                # state, written with the job, is gone (`forget` ran on the notice).
                if await self.forget_if_erased(message.ticket_no or ""):
                    return
                state = await self.states.get(message.message_id)
                if not state:
                    return
                if replaced_by := state.get("replaced_by"):
                    # Sent again at once (补发) while it waited: the resident has it already.
                    await self.states.set(message, "cancelled", reason="resent", replaced_by=replaced_by)
                    return
            if message.kind in SURVEY_KINDS and await self.surveys.opted_out(message.to):
                await self.states.set(message, "cancelled", reason="opted out while it was held")
                return
            await self.sms.dispatch([message], now)
        elif isinstance(job, ReturnJob):
            await self.returned(job.openid, now)
        elif job.action == "remind":
            await self.surveys.remind(job.survey_id, now)
        else:
            await self.surveys.expire(job.survey_id, now)

    # --- WeChat residents who write again -----------------------------------------------------

    async def wrote(self, openid: str, now: datetime | None = None) -> bool:
        """A WeChat resident wrote to the account (any message that opens WeChat's 48 hours): what
        was kept for them goes out at the next scan (`returned`), not here, since this is asked
        while WeChat waits for the passive reply. One Redis command; whether anything waits."""
        return await self.pending.wake(openid, now or self.clock())

    async def returned(self, openid: str, now: datetime) -> int:
        """The notices kept for `openid` past WeChat's 48 hours, now that they wrote again: each
        that still makes sense (`window.on_return`) goes through the send path a held message
        takes (quiet hours and the daily cap hold it, its state moves from `undelivered` to what
        this yields), oldest first, one at a time so that WeChat shows them in that order.
        Returns how many were handed over. Should a send fail, those not handed over yet are kept
        again, and the job (retried by the queue) goes on with them."""
        kept = await self.pending.take(openid)
        if not kept:
            return 0
        try:
            decided, tickets = await self._decide_return(openid, kept, now)
        except Exception:
            await self.pending.keep(kept)  # Redis failed: all of it waits for the job's retry
            raise
        handed = 0
        for i, r in enumerate(decided):
            m = r.message
            try:
                if r.action == "drop":
                    log.info(
                        "WeChat %s for %s to %s kept past the 48 hours, not sent: %s",
                        m.kind, m.ticket_no, m.masked_to, r.reason,
                    )  # fmt: skip
                    await self.states.dropped(m.message_id, r.reason)
                    WECHAT_ON_RETURN.labels(kind=m.kind, outcome="dropped").inc()
                    continue
                # Its state went with an erasure since it was kept: it must not reach them.
                if not await self.redis.exists(state_key(m.message_id)):
                    continue
                message = m if r.action == "send" else self._result_of(m, tickets[m.ticket_no or ""])
                [outcome] = await self.sms.dispatch([message], now)
            except Exception:
                await self.pending.keep([d.message for d in decided[i:] if d.action != "drop"])
                raise
            handed += 1
            WECHAT_ON_RETURN.labels(kind=message.kind, outcome=outcome).inc()
            log.info(
                "WeChat %s for %s to %s, kept past the 48 hours: %s on the resident's return",
                message.kind, message.ticket_no, message.masked_to, outcome,
            )  # fmt: skip
        return handed

    async def _decide_return(
        self, openid: str, kept: list[Message], now: datetime
    ) -> tuple[list[Return[Message]], dict[str, Ticket | None]]:
        """What becomes of each notice kept for `openid` (`window.on_return`), from their tickets
        and the state of those tickets' latest surveys (two round trips); and those tickets."""
        nos = sorted({m.ticket_no for m in kept if m.ticket_no})
        tickets = dict(zip(nos, await self.store.get_many(nos), strict=True))
        # Erased since (the erasure's notice may not have come): what the notice removes goes now,
        # and nothing about those tickets reaches the resident.
        erased = {no for no, t in tickets.items() if t is not None and t.personal_data_removed_at is not None}
        if erased:
            await self.forget(sorted(erased), now)
        # A kept survey or reminder is weighed against the survey of its ticket's latest resolution
        # (the ticket names it: `Ticket.resolution_id`), as that survey stands now.
        surveyed = {m.ticket_no for m in kept if m.kind in ("survey", "reminder")}
        current = {
            no: t
            for no, t in tickets.items()
            if no in surveyed and no not in erased and t is not None and t.resolution_id
        }
        standing = await self.surveys.standing(openid, [t.resolution_id or "" for t in current.values()])
        facts = {
            no: SurveyFacts(
                message_ids=message_ids(sid),
                open=standing[sid][0],
                void=sid in t.void_surveys,
                outcome=standing[sid][1],
            )
            for no, t in current.items()
            if (sid := t.resolution_id or "")
        }
        return on_return([m for m in kept if m.ticket_no not in erased], facts, now), tickets

    def _result_of(self, survey: Message, ticket: Ticket | None) -> Message:
        """The result notice of a kept survey whose question is moot (it closed unanswered): the
        resolution it asked about, without the question. Named after that survey's message, so a
        retry of the job writes the same message."""
        note = self.texts.resolution(ticket.resolution_note, ticket.mediation_outcome) if ticket else ""
        to = Recipient(survey.channel, survey.to)
        message = self._to(to, "result", "result", survey.ticket_no or "", note=note)
        return replace(message, message_id=derived_id(survey.message_id, "result"))

    # --- erasure ------------------------------------------------------------------------------

    async def forget_if_erased(self, ticket_no: str) -> bool:
        """Whether the ticket carries the mark of an erasure (`TicketStore.is_erased`); if so, what
        `forget` removes goes now. Asked where something kept about a ticket is about to reach its
        resident (a held message, a survey's reminder, timeout or reply): the erasure's notice is
        how these are removed, and a broker lost after the relay sent it does not send it again.
        One read per held message or survey step. Messages sent as events arrive need none: the
        router's events about an erased ticket carry no caller, and those written before the
        erasure find no contact, which it deleted."""
        if not ticket_no or not await self.store.is_erased(ticket_no):
            return False
        await self.forget([ticket_no])
        return True

    async def forget(self, ticket_nos: Sequence[str], now: datetime | None = None) -> int:
        """The residents of these tickets had their personal data erased: what the notifier keeps
        about their messages and surveys for those tickets goes (found by `ticket_records_key`).
        A held message is then not sent (`_run` finds no state). Returns how many records went."""
        if not ticket_nos:
            return 0
        indexes, states, survey_keys, pending = await self._records_of(ticket_nos)
        surveys = await self.surveys.forget(survey_keys, now or self.clock())
        # The notices kept for the resident past WeChat's 48 hours (their openid and the texts):
        # those about these tickets go before the index that finds them.
        kept = await self.pending.forget(pending, ticket_nos)
        await self.redis.delete(*states, *indexes)
        return len(states) + len(surveys) + kept

    async def sent_back(self, checks: Sequence[TicketUpdated]) -> None:
        """These tickets went back to their departments after a grid worker's check (`verified`, not
        solved): their open surveys send no reminder (`SurveyBook.withdraw_reminders`), and the
        survey of the resolution sent back is void (`SurveyBook.void`): an answer still to come
        says so, and counts in no rate. A check written before it named its survey voids the
        ticket's surveys (the open one is that resolution's: an earlier one closed before it)."""
        if not checks:
            return
        keys = (await self._records_of([c.ticket_no for c in checks]))[2]
        await self.surveys.withdraw_reminders(keys)
        named = [c.verification.survey_id for c in checks if c.verification and c.verification.survey_id]
        unnamed = [c.ticket_no for c in checks if not (c.verification and c.verification.survey_id)]
        old = (await self._records_of(unnamed))[2] if unnamed else []
        await self.surveys.void([*named, *(k.removeprefix("survey:") for k in old)])

    async def placed(self, events: Sequence[TicketAssigned | TicketUpdated]) -> None:
        """These events set their tickets' grid (`scoring.sets_grid`: the desk placed them, 事发网格,
        or dispatched them in a grid it chose, perhaps another, after a return): their open surveys
        follow (`SurveyBook.place`: a survey already in that grid is left as it is)."""
        grids = {e.ticket_no: e.grid for e in events if sets_grid(e) and e.grid is not None}
        if grids:
            await self.surveys.place((await self._records_of(list(grids)))[2], grids)

    async def _records_of(
        self, ticket_nos: Sequence[str]
    ) -> tuple[list[str], list[str], list[str], list[str]]:
        """What the notifier keeps about these tickets, found by `ticket_records_key` in one round
        trip: (the index keys, the messages' state keys, the surveys' keys, the keys of the WeChat
        notices kept for their residents)."""
        indexes = [ticket_records_key(no) for no in dict.fromkeys(ticket_nos)]
        async with self.redis.pipeline(transaction=False) as p:
            for key in indexes:
                p.smembers(key)
            members = await p.execute()
        records = sorted({m.decode() if isinstance(m, bytes) else m for found in members for m in found})
        states = [r for r in records if r.startswith("sms:")]
        pending = [r for r in records if r.startswith(PENDING_PREFIX)]
        surveys = [r for r in records if r.startswith("survey:")]
        return indexes, states, surveys, pending

    # --- messages about tickets ---------------------------------------------------------------

    async def recipients(self, caller_ids: Sequence[str | None]) -> list[Recipient | None]:
        """Where many callers are reached (`routing.route`: a phone by SMS, else a WeChat openid
        by WeChat), in one round trip; None where there is no caller or contact."""
        known = [cid for cid in caller_ids if cid is not None]
        if not known:
            return [None] * len(caller_ids)
        values = await self._hmget_each(keys=[f"contact:{cid}" for cid in known], args=list(CONTACT_FIELDS))
        found = iter(values)
        out: list[Recipient | None] = []
        for cid in caller_ids:
            if cid is None:
                out.append(None)
                continue
            # The fields come one after the other for each caller: each `next` reads this one's.
            contact = {f: text(v) for f in CONTACT_FIELDS if (v := next(found))}
            out.append(route(contact))
        return out

    async def phones(self, caller_ids: Sequence[str | None]) -> list[str | None]:
        """The phones of many callers (None where there is none: no caller, or WeChat only)."""
        recipients = await self.recipients(caller_ids)
        return [to.address if to and to.channel == "sms" else None for to in recipients]

    def _to(self, to: Recipient, template: str, kind: str, ticket_no: str, **fields: str) -> Message:
        """A message about a ticket to its resident, on their channel (WeChat drops the signature)."""
        text = self.texts.render(template, channel=to.channel, ticket_no=ticket_no, **fields)
        return Message(to.address, text, kind, ticket_no, channel=to.channel)

    async def results_to_duplicates(self, resolved: Sequence[TicketUpdated]) -> list[SendResult]:
        """并案: the residents of the duplicates merged into a resolved ticket hear its result,
        under their own ticket's number (the `result` SMS: the survey is the main ticket's
        resident's, whose answer closes or reopens it). One read of the resolved tickets and one of
        their duplicates for the batch; an erased duplicate's resident has no phone any more."""
        if not resolved:
            return []
        mains = await self.store.get_many([u.ticket_no for u in resolved])
        pairs = [(u, no) for u, main in zip(resolved, mains, strict=True) if main for no in main.merged]
        if not pairs:
            return []
        duplicates = await self.store.get_many([no for _, no in pairs])
        recipients = await self.recipients([d.caller.caller_id if d else None for d in duplicates])
        messages = [
            (
                f"{u.event_id}:{no}",
                self._to(to, "result", "result", no, note=self.texts.resolution(u.note, _outcome(u))),
            )
            for (u, no), to in zip(pairs, recipients, strict=True)
            if to
        ]
        return await self.sms.send_many(messages)

    def ack_message(self, ticket_no: str, phone: str, *, urgent: bool = False) -> Message:
        return Message(phone, self.texts.render("ack", ticket_no=ticket_no), "ack", ticket_no, urgent=urgent)

    async def acknowledge(
        self, cause: Event, ticket_no: str, phone: str, *, urgent: bool = False
    ) -> SendResult:
        return await self.sms.send(cause.event_id, self.ack_message(ticket_no, phone, urgent=urgent))

    async def resend(
        self, ticket_no: str, message_id: str, caller_id: str | None, now: datetime | None = None
    ) -> tuple[Message, SendResult]:
        """补发: the desk sends one of the ticket's messages to its resident again (one who lost the
        ticket number, or whose phone was off), with the text it had, to their contact as it is
        now, at once: the resident asked for it, so quiet hours and the day's cap do not hold it;
        the message itself, if it waits for them, is not sent when they end. A second request for
        the same message within the same minute (a double click) sends nothing more
        (`duplicate`). Raises DomainError saying why it cannot."""
        record = await self.states.get(message_id)
        if record.get("ticket_no") != ticket_no:
            raise DomainError("message_not_found", f"工单{ticket_no}没有这条通知", kind="not_found")
        if record.get("kind") not in RESENDABLE or not record.get("text"):
            raise DomainError(
                "not_resendable", "只能补发受理告知、进度告知和办理结果；回访评价可在“电话回访”中处理"
            )
        (to,) = await self.recipients([caller_id])
        if to is None:
            raise DomainError("no_contact", "市民没有留下联系方式（匿名诉求，或个人信息已删除），无法补发")
        now = now or self.clock()
        message = Message(
            to.address, record["text"], record["kind"], ticket_no, urgent=True, channel=to.channel,
            resent_from=message_id,
        )  # fmt: skip
        minute = str(int(now.timestamp()) // 60)
        result = await self.sms.send(derived_id(message_id, "resend", minute), message)
        if record["state"] == "held" and result != "duplicate":
            await self.states.replaced(message_id, message.message_id)  # not sent a second time
        return message, result

    async def resend_acknowledgement(
        self, ticket_no: str, caller_id: str | None
    ) -> tuple[Message, SendResult]:
        """补发受理短信: the ticket's 受理告知 (the one first made, not a copy resent since) sent again
        as `resend` sends it. For the hotline, whose caller says the number never came."""
        records = await self.states.of_ticket(ticket_no)
        acks = [r for r in records if r.get("kind") == "ack" and not r.get("resent_from")]
        if not acks:
            raise DomainError(
                "message_not_found",
                f"工单{ticket_no}没有可补发的受理短信（匿名诉求、未留联系方式，或已超过30天保存期）",
                kind="not_found",
            )
        return await self.resend(ticket_no, acks[0]["message_id"], caller_id)

    async def answer_query(self, phone: str, progress: str, ticket_nos: Sequence[str]) -> SendResult:
        """The answer to a progress query the resident just sent (`progress`, intake's words about
        `ticket_nos`), now: quiet hours do not hold an answer to their own SMS, as they do not hold
        a survey's clarification; nor does the daily cap (held to the morning it would answer
        nothing); the per-caller hourly limit on queries bounds how many go out. Filed under the
        first ticket it names, so that erasing the resident's personal data (which reaches all of
        their tickets) removes its record, and a retry still pending is not sent."""
        text = self.texts.render("progress_reply", progress=progress)
        message = Message(phone, text, "query", ticket_nos[0] if ticket_nos else None, urgent=True)
        return await self.sms.send(message.message_id, message)

    async def progress(self, items: Sequence[Progress]) -> list[SendResult]:
        """Progress messages to the callers of the tickets the events are about, by SMS or WeChat:
        one contact lookup and one send for the batch. Anonymous callers, and callers without a
        contact, get none."""
        recipients = await self.recipients([cause.caller_id for cause, _, _ in items])
        return await self.sms.send_many(
            [
                (cause.event_id, self._to(to, template, "progress", cause.ticket_no, **fields))
                for (cause, template, fields), to in zip(items, recipients, strict=True)
                if to is not None
            ]
        )

    async def start_surveys(self, resolved: Sequence[TicketUpdated]) -> list[Event]:
        """The surveys for resolved tickets, to their callers by SMS or WeChat (one lookup for the
        batch; see `SurveyBook.start`). Returns the events that record them."""
        out: list[Event] = []
        for update, to in zip(resolved, await self.recipients([u.caller_id for u in resolved]), strict=True):
            out.extend(await self.surveys.start(update, to))
        return out

    async def supervise(self, updates: Sequence[TicketUpdated], city: City) -> list[SendResult]:
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
                        Message(dept.supervisor_mobile, text, "supervision", u.ticket_no),
                    )
                )
        return await self.sms.send_many(items)

    def _local_time(self, value: object) -> str:
        return month_day_time(value, self.policy.tz)


def _outcome(resolved: TicketUpdated) -> str | None:
    """A mediation committee's resolution: how the mediation ended (None for any other)."""
    return resolved.mediation.outcome if resolved.mediation else None
