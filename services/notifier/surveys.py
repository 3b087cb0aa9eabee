"""The survey book: the callback survey after a resolution, the residents' replies, reminders and
timeouts, and opt-outs.

  survey:{id}            one survey (JSON, `services.notifier.survey.Survey`); 30 days
  survey:open:{phone}    the phone's surveys still waiting for an answer, scored by start time (a
                         WeChat user's by their openid: `survey:open:{openid}`)
  survey:last:{phone}    the phone's last closed survey, for 72 hours: later replies are comments on it
  survey:pending:{phone} a reply that named no ticket while several surveys were open (JSON: its
                         text), kept while the resident is asked which ticket it rates; as long as
                         a survey is open (the window). Removed with the phone's surveys on erasure
  survey:answer:{id}     the event that closed the survey (JSON), 30 days: given again when the
                         resolution is read again (after the broker lost it before the router did)
  survey:closing:{id}    a close in flight: set with the ZREM that claims it, deleted once its event
                         is published or the survey reopened (CLOSING_SECONDS at most, past a crash)
  sms:ticket:{no}        also lists the ticket's surveys (`services.notifier.states`): an erasure
                         removes them by ticket (`forget`)
  sms:optout             phones that sent TD / 退订: no more surveys
  survey:callback        the open SMS surveys to ask by phone (电话回访), scored by when they are due:
                         `callback_after` the survey (by default when the reminder goes out),
                         later after a call nobody took
  survey:call:{id}       a phone callback's state (hash): `attempts` (calls not answered), and
                         `by`/`until` while an operator is calling (so no two call one resident)

Every survey ends in exactly one `survey.answered` event (answered, no_answer, opted_out,
skipped_anonymous or erased); comments add more. Residents who do not answer the SMS are asked by phone: an
open survey still unanswered `callback_after` it went out (SURVEY_CALLBACK_HOURS; by default when
its reminder goes out) is due for a call from a hotline operator (电话回访), who records the
answer (`answer_by_phone`, the event naming the operator in `by`) or a call nobody took
(`unreachable`: tried again later, at most CALL_ATTEMPTS times; the SMS window still ends the
survey). A resident without the SMS may answer on the lookup page (`answer_on_lookup`, the event
marked `via` "lookup"), by the same path as the operator's record. Closing is a ZREM on the open
set, so of a reply and the timeout arriving together only one closes the survey; the page's second
post (a double tap, two tabs) waits a moment for the first's close to end and answers as it did.
The messages go out through the dispatcher, once per survey and kind; the reminder and the timeout
are jobs in the job queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from services.notifier.dispatch import Dispatcher
from services.notifier.gateway import Message
from services.notifier.jobs import SurveyJob, encode
from services.notifier.routing import Channel, Recipient
from services.notifier.states import ticket_records_key
from services.notifier.survey import (
    Ask,
    Inbound,
    OptedOut,
    Reply,
    SmsReply,
    Survey,
    SurveyAnswer,
    SurveyComment,
    WhichTicket,
    askable,
    bare_reference,
    choose_survey,
    read_inbound,
    reopens,
    short_ref,
    which_choices,
)
from services.notifier.texts import Texts
from shared import events
from shared.errors import DomainError
from shared.events import (
    AnswerVia,
    Event,
    Rating,
    SurveyAnswered,
    SurveyOutcome,
    SurveySent,
    TicketUpdated,
    json_of,
)
from shared.metrics import SURVEYS_ANSWERED
from shared.privacy import caller_id, mask_personal_data
from shared.survey_reply import LOOKUP_ANSWER_TEXT, PHONE_ANSWER_TEXT, rating_words

SURVEY_TTL = 30 * 86400
LATE_REPLY_SECONDS = 72 * 3600  # after a survey closes, replies within this are comments on it
OPTOUT = "sms:optout"
SURVEY_KINDS = frozenset({"survey", "reminder", "clarification"})  # what an opt-out stops, even held
CALLBACKS = "survey:callback"
CALL_ATTEMPTS = 3  # calls nobody answered before the phone callback gives up (the SMS may still come)
CALL_AGAIN = timedelta(hours=2)  # after a call nobody answered
CALL_HOLD = timedelta(minutes=10)  # an operator's hold on a resident being called
# What a call's answer is refused without (a rating, whether it is solved), each question in its own
# words; the console's form asks for them beside each question before it is sent (data-required).
CALL_ANSWER_REQUIRED = {
    "rating": "接通后请记录市民的评价：满意、基本满意或不满意",
    "solved": "接通后请记录问题是否解决",
}
# A close in flight (claimed, its event not yet published) is marked this long at most: long past
# any publish that succeeds, so the mark only outlives its close when the process died meanwhile.
CLOSING_SECONDS = 60
# The lookup page's post that finds another close of its survey in flight (the same page posted
# twice at once) waits for its outcome this long at most, reading it every LOOKUP_POLL, then says
# the answer is still being recorded: a resident's page is never held for a slow broker.
LOOKUP_WAIT = 3.0
LOOKUP_POLL = 0.05

Publish = Callable[[Sequence[Event]], Awaitable[None]]
# Whether a ticket's resident had their personal data erased, in which case what the notifier kept
# about the ticket has been forgotten by the time it answers (`Notifier.forget_if_erased`).
Erased = Callable[[str], Awaitable[bool]]


def derived_id(*parts: str) -> str:
    """A deterministic id: the same survey and step give the same event or message id."""
    return events.derived_id("/".join(parts))


def message_id_of(survey_id: str, kind: Literal["survey", "reminder"]) -> str:
    """The id of a survey's message or of its reminder, derived from the survey's: sent again after
    a crash under the same id, and matched to its survey when kept for its resident (`message_ids`)."""
    return derived_id(survey_id, "sms" if kind == "survey" else "reminder")


def message_ids(survey_id: str) -> frozenset[str]:
    """The ids of a survey's message and of its reminder: what a message kept for its resident
    (`services.notifier.window`) is matched to its survey by."""
    return frozenset({message_id_of(survey_id, "survey"), message_id_of(survey_id, "reminder")})


def _open_key(to: str) -> str:
    """The surveys of a phone (or an openid) still waiting for an answer."""
    return f"survey:open:{to}"


def _pending_key(to: str) -> str:
    """A reply kept while its resident is asked which ticket it rates."""
    return f"survey:pending:{to}"


class SurveyBook:
    def __init__(
        self,
        sms: Dispatcher,
        publish: Publish,
        texts: Texts,
        *,
        reminder_after: timedelta,
        window: timedelta,
        callback_after: timedelta,
        erased: Erased,
        about: Callable[[str | None], str] = lambda _: "",
    ) -> None:
        # The dispatcher's Redis, job queue and clock: a survey's reminder and timeout wait in the
        # queue that holds its messages, and are due by the same clock.
        self.sms = sms
        self.redis, self.jobs, self.clock = sms.redis, sms.jobs, sms.clock
        self.publish = publish
        self.texts = texts
        self.reminder_after = reminder_after
        self.window = window
        self.callback_after = callback_after
        self.erased = erased
        # What a ticket of a category was about, in a resident's words (its name): kept with the
        # survey for the question "which ticket?", which must not quote the appeal.
        self.about = about
        self._claim = self.redis.register_script(_CLAIM)

    # --- asking -------------------------------------------------------------------------------

    async def start(self, resolved: TicketUpdated, to: Recipient | None) -> list[Event]:
        """The callback with the survey for a resolved ticket (sent to `to`, the caller's phone, or
        the WeChat user's openid: `services.notifier.routing`). Returns the events that record it:
        the survey sent, or why it was not (anonymous appeal, opted-out phone, the resident's
        personal data erased), never nothing.
        Idempotent: the same resolution gives the same survey and events. The event is all it
        reads: its note is the resolution note, and its department, category and grid are kept
        with the survey for the answer's event."""
        no = resolved.ticket_no
        note = self.texts.resolution(
            resolved.note, resolved.mediation.outcome if resolved.mediation else None
        )
        if to is None:
            # No one to reach: an anonymous appeal, or a resident whose personal data was erased
            # before the resolution (the router's events then carry no caller). The history must
            # not call the latter anonymous: the ticket's mark says which (one read, only here).
            erased = await self.erased(no)
            return [self._not_asked(resolved, "erased" if erased else "skipped_anonymous")]
        address, channel = to.address, to.channel
        if channel == "sms" and await self.opted_out(address):
            text = self.texts.render("result", ticket_no=no, note=note)
            await self.sms.send(resolved.event_id, Message(address, text, "result", no))
            return [self._not_asked(resolved, "opted_out")]
        now = self.clock()
        survey = Survey(
            survey_id=resolved.event_id,
            ticket_no=no,
            to=address,
            channel=channel,
            started_at=now,
            department=resolved.department,
            category=resolved.category,
            grid=resolved.grid,
            about=self.about(resolved.category),
        )
        text = await self._naming("survey", address, no, channel, now, note=note)
        message = Message(
            address, text, "survey", no, message_id=message_id_of(survey.survey_id, "survey"), channel=channel
        )
        created = await self.redis.set(_survey_key(survey.survey_id), json_of(survey), nx=True, ex=SURVEY_TTL)
        if created:
            async with self.redis.pipeline(transaction=True) as p:
                p.zadd(_open_key(address), {survey.survey_id: now.timestamp()})
                p.expire(_open_key(address), SURVEY_TTL)
                # Found by its ticket when the resident's personal data is erased (`forget`).
                p.sadd(ticket_records_key(no), _survey_key(survey.survey_id))
                p.expire(ticket_records_key(no), SURVEY_TTL)
                # Still unanswered by then, an operator calls (电话回访); a WeChat user left no number.
                if channel == "sms":
                    p.zadd(CALLBACKS, {survey.survey_id: (now + self.callback_after).timestamp()})
                self.jobs.add_into(
                    p,
                    {
                        SurveyJob("remind", survey.survey_id): now + self.reminder_after,
                        SurveyJob("close", survey.survey_id): now + self.window,
                    },
                )
                await p.execute()
        await self.sms.send(survey.survey_id, message, now)
        # The resolution read again (a re-drive after the broker was lost): the survey's end goes
        # with it, for a router that had not applied it when the broker lost it (it drops a repeat).
        closed = None if created else await self.redis.get(_answer_key(survey.survey_id))
        return [
            SurveySent.caused(
                resolved,
                survey_id=survey.survey_id,
                masked_phone=to.masked,
                message_id=message.message_id,
                text=text,
            ),
            *([SurveyAnswered.model_validate_json(closed)] if closed else []),
        ]

    def _not_asked(self, resolved: TicketUpdated, outcome: SurveyOutcome) -> SurveyAnswered:
        return SurveyAnswered.caused(
            resolved,
            survey_id=resolved.event_id,
            rating=None,
            text="",
            outcome=outcome,
            occurred_at=self.clock(),
            department=resolved.department,
            category=resolved.category,
            grid=resolved.grid,
        )

    async def opted_out(self, phone: str) -> bool:
        return bool(await self.redis.sismember(OPTOUT, phone))

    # --- the scheduled steps ------------------------------------------------------------------

    async def remind(self, survey_id: str, now: datetime) -> None:
        """The one reminder, if the survey is still open (and its ticket not erased)."""
        survey = await self.get(survey_id)
        if survey is None or await self.redis.zscore(_open_key(survey.to), survey_id) is None:
            return
        if await self._forgotten(survey, now):
            return
        text = await self._naming("reminder", survey.to, survey.ticket_no, survey.channel, now)
        # Named after its survey, as the survey's own message is: kept past WeChat's 48 hours,
        # it is matched to the survey when the resident writes again (`message_ids`).
        message = Message(
            survey.to,
            text,
            "reminder",
            survey.ticket_no,
            message_id=message_id_of(survey_id, "reminder"),
            channel=survey.channel,
        )
        await self.sms.send(survey_id, message, now)

    async def expire(self, survey_id: str, now: datetime) -> None:
        """The window ended: the survey closes without an answer (if nothing closed it before)."""
        survey = await self.get(survey_id)
        if survey is not None and not await self._forgotten(survey, now):
            await self._close(survey, "no_answer", "", now, event_id=derived_id(survey_id, "no_answer"))

    # --- replies ------------------------------------------------------------------------------

    async def reply(self, phone: str, message: str | Inbound) -> SmsReply | None:
        """An SMS from a resident (its text, or as `read_inbound` read it): an opt-out, an answer to
        the newest open survey, or a comment on a survey closed lately. None when it is none of
        these (then it is a new appeal, for intake). A progress query is the caller's to answer
        first; one given here is read as words."""
        inbound = read_inbound(message) if isinstance(message, str) else message
        text = inbound.text
        now = self.clock()
        if inbound.kind == "opt_out":
            return await self.opt_out(phone, text, now)
        decided = await self._choose(phone, text, now)
        if isinstance(decided, Ask):
            return await self._ask(phone, decided, now)
        if decided is not None:
            return await self._on_open(*decided, now)
        last = await self.redis.get(f"survey:last:{phone}")
        if last and (closed := await self.get(last)) is not None and not await self._forgotten(closed, now):
            await self._comment(closed, text, now)
            return SurveyComment(ticket_no=closed.ticket_no, clarification=False)
        return None

    async def _naming(
        self, template: str, to: str, no: str, channel: str, now: datetime, **fields: str
    ) -> str:
        """The survey's message `template` (the survey, its reminder) for ticket `no`; its
        `_several` form, with the ticket's reference, when another ticket of `to` waits for its
        rating: the message says how a reply names this one. A survey a grid worker's check voided
        waits for nothing the resident is asked (`survey.askable`): it makes no other "several"."""
        fields = {"ticket_no": no, "question": self.texts.question, **fields}
        others = [s.ticket_no for s in askable(await self._open_surveys(to, now)) if s.ticket_no != no]
        if not others:
            return self.texts.render(template, channel=channel, **fields)
        ref = short_ref(no, [no, *others])
        return self.texts.render(f"{template}_several", channel=channel, ref=ref, **fields)

    async def _choose(self, to: str, text: str, now: datetime) -> tuple[Survey, Reply] | Ask | None:
        """Which open survey of `to` a reply is about (`survey.choose_survey` decides), with the
        reply to record; an `Ask` when it must be asked; None when no survey is open. A reply
        kept pending is taken when used."""
        surveys = await self._open_surveys(to, now)
        if not surveys:
            return None
        raw = await self.redis.get(_pending_key(to))
        pending = json.loads(raw)["text"] if raw else None
        decided = choose_survey(surveys, text, pending)
        if decided is None or isinstance(decided, Ask):
            return decided
        if decided.from_pending:
            # Applied. A rating of another ticket leaves it kept: the question promised that the
            # reference alone applies it, and the resident may rate the other ticket first.
            await self.redis.delete(_pending_key(to))
        return decided.survey, decided.reply

    async def _ask(self, to: str, ask: Ask, now: datetime) -> WhichTicket:
        """Keep the reply pending and ask the resident which ticket it rates: once a day per set of
        open tickets (more unnamed replies replace what is kept, and are not asked again)."""
        if ask.keep is not None:
            # Masked as the answer's event will be (Redis holds no typed number or name either): the kept
            # words are read again for their rating, a lone digit or words a mask leaves as they are.
            kept = json.dumps({"text": mask_personal_data(ask.keep)}, ensure_ascii=False)
            await self.redis.set(_pending_key(to), kept, ex=int(self.window.total_seconds()))
        first = ask.choices[0]
        text = self.texts.render(
            "which_ticket",
            channel=first.channel,
            choices=which_choices(ask, self.sms.policy.tz),
            example=ask.refs[0],
        )
        nos = [s.ticket_no for s in ask.choices]
        if first.channel != "sms":  # the chat's passive reply asks (`answer_in_wechat`)
            return WhichTicket(ticket_nos=nos, asked=True, question=text)
        message = Message(to, text, "which_ticket", first.ticket_no, urgent=True)  # an answer to their SMS
        day = f"{self.sms.policy.local_day(now)}"
        sent = await self.sms.send(
            derived_id("which", day, *sorted(s.survey_id for s in ask.choices)), message, now
        )
        return WhichTicket(ticket_nos=nos, asked=sent in ("sent", "held"), question=text)

    async def answer_in_wechat(self, openid: str, inbound: Inbound) -> SurveyAnswer | WhichTicket | None:
        """A WeChat user's message that rates a survey (`inbound.kind == "rating"`) answers their
        newest open survey, with the rules of an SMS answer (the same `survey.answered`; an
        unsatisfied or not-solved answer reopens the ticket). None when it is no rating, or they
        have no survey open (or another answer closed it first): the message is then what it was
        before (a new appeal). Words without a rating are never comments here, as they are by SMS:
        WeChat users write new appeals in the same conversation. A bare reference ("0101") answers
        "which ticket?" when a reply was kept while the resident was asked, and is otherwise none
        of these either."""
        rated = inbound.kind == "rating" and inbound.reply is not None and inbound.reply.rating is not None
        if not rated and not (bare_reference(inbound.text) and await self.redis.exists(_pending_key(openid))):
            return None
        now = self.clock()
        decided = await self._choose(openid, inbound.text, now)
        if isinstance(decided, Ask):
            return await self._ask(openid, decided, now) if decided.choices[0].channel == "wechat" else None
        if decided is None:
            return None
        survey, reply = decided
        if survey.channel != "wechat" or reply.rating is None:
            return None
        rating, solved = reply.rating, reply.solved
        answered = await self._close(
            survey, "answered", reply.text, now, event_id=events.new_id(), rating=rating, solved=solved
        )
        if answered is None:
            return None
        return SurveyAnswer(ticket_no=survey.ticket_no, rating=rating, solved=solved)

    async def standing(self, to: str, survey_ids: Sequence[str]) -> dict[str, tuple[bool, str | None]]:
        """Per survey of `to` (a phone or an openid): whether it is open, and how it closed (the
        outcome of its `survey.answered`; None while open, or when that is no longer known). One
        round trip."""
        if not survey_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as p:
            for sid in survey_ids:
                p.zscore(_open_key(to), sid)
                p.get(_answer_key(sid))
            found = await p.execute()
        out: dict[str, tuple[bool, str | None]] = {}
        for i, sid in enumerate(survey_ids):
            score, answer = found[2 * i], found[2 * i + 1]
            out[sid] = (score is not None, json.loads(answer)["outcome"] if answer else None)
        return out

    async def _open_surveys(self, to: str, now: datetime) -> list[Survey]:
        """The open surveys of a phone (or openid) whose tickets were not erased, newest first."""
        # Without scores, redis-py returns the members (its types cover every form of the command).
        ids = cast("list[bytes]", await self.redis.zrevrange(_open_key(to), 0, -1))
        if not ids:
            return []
        stored = await self.redis.mget([_survey_key(i.decode()) for i in ids])
        out = []
        for raw in stored:
            if raw is None:
                continue
            survey = Survey.model_validate_json(raw)
            if not await self._forgotten(survey, now):  # that one is gone: the reply is about the rest
                out.append(survey)
        return out

    async def _forgotten(self, survey: Survey, now: datetime) -> bool:
        """Whether the survey's ticket was erased: then the survey is forgotten now, as the
        erasure's notice would have had it (`forget`), before anything is sent or recorded for it.
        The notice may never have come: a broker lost after the relay sent it does not send it
        again. One read of the ticket per step of a survey (a reply, the reminder, the timeout)."""
        if not await self.erased(survey.ticket_no):
            return False
        # The hook forgot the ticket's records by its index; this one goes even if it was not listed.
        await self.forget([_survey_key(survey.survey_id)], now)
        return True

    async def _on_open(self, survey: Survey, parsed: Reply, now: datetime) -> SurveyAnswer | SurveyComment:
        text = parsed.text
        if parsed.rating is not None:
            answered = await self._close(
                survey,
                "answered",
                text,
                now,
                event_id=events.new_id(),
                rating=parsed.rating,
                solved=parsed.solved,
            )
            if answered is not None:
                await self._confirm(survey, parsed.rating, parsed.solved, now, urgent=True)
                return SurveyAnswer(ticket_no=survey.ticket_no, rating=parsed.rating, solved=parsed.solved)
        # Unread words, or a rating that lost the race with another close: the resident's comment.
        await self._comment(survey, text, now)
        clarified = None
        if not parsed.has_rating:  # at most once per survey: sending is once per (survey, kind)
            message = Message(
                survey.to,
                self.texts.render("clarification", ticket_no=survey.ticket_no, question=self.texts.question),
                "clarification",
                survey.ticket_no,
                urgent=True,  # an answer to their own SMS: now, quiet hours or not
            )
            clarified = await self.sms.send(survey.survey_id, message, now)
        return SurveyComment(ticket_no=survey.ticket_no, clarification=clarified in ("sent", "held"))

    async def _confirm(
        self, survey: Survey, rating: Rating, solved: bool | None, now: datetime, *, urgent: bool
    ) -> None:
        """The SMS that tells the resident their answer was recorded, and, when it reopens the
        ticket, that it will be handled again. Once per survey. A WeChat resident is told in the
        chat's passive reply instead."""
        if survey.channel != "sms":
            return
        template = "answer_reopened" if reopens(rating, solved) else "answer_thanks"
        text = self.texts.render(template, ticket_no=survey.ticket_no, rating=rating_words(rating, solved))
        message = Message(survey.to, text, "confirmation", survey.ticket_no, urgent=urgent)
        await self.sms.send(survey.survey_id, message, now)

    async def opt_out(self, phone: str, text: str, now: datetime) -> OptedOut:
        """TD / 退订: no more surveys for this phone; its open surveys close as opted out."""
        await self.redis.sadd(OPTOUT, phone)
        await self.redis.delete(_pending_key(phone))
        closed = []
        for sid in cast("list[bytes]", await self.redis.zrange(_open_key(phone), 0, -1)):
            survey = await self.get(sid)
            if survey and await self._close(
                survey, "opted_out", text, now, event_id=derived_id(survey.survey_id, "opted_out")
            ):
                closed.append(survey.ticket_no)
        confirmation = Message(phone, self.texts.render("opt_out"), "opt_out", urgent=True)
        await self.sms.send(f"optout:{caller_id(phone)}:{self.sms.policy.local_day(now)}", confirmation, now)
        return OptedOut(closed_surveys=closed)

    # --- by phone (电话回访) ----------------------------------------------------------------------

    async def due_calls(self, now: datetime, limit: int = 50) -> tuple[int, list[Call]]:
        """How many open surveys are due for a phone call, and the `limit` longest waiting."""
        async with self.redis.pipeline(transaction=False) as p:
            p.zcount(CALLBACKS, "-inf", now.timestamp())
            p.zrangebyscore(CALLBACKS, "-inf", now.timestamp(), start=0, num=limit, withscores=True)
            total, due = await p.execute()
        if not due:
            return int(total), []
        ids = [sid.decode() for sid, _ in due]
        async with self.redis.pipeline(transaction=False) as p:
            p.mget([_survey_key(sid) for sid in ids])
            for sid in ids:
                p.hgetall(_call_key(sid))
            stored, *states = await p.execute()
        calls = [
            _call(Survey.model_validate_json(raw), score, state, now)
            for raw, (_, score), state in zip(stored, due, states, strict=True)
            if raw is not None  # forgotten meanwhile
        ]
        return int(total), calls

    async def due_count(self, now: datetime) -> int:
        """How many open surveys are due for a phone call: one ZCOUNT, for a menu to show on every
        page (the list itself reads each survey)."""
        return int(await self.redis.zcount(CALLBACKS, "-inf", now.timestamp()))

    async def call(self, survey_id: str, operator: str, now: datetime) -> Call:
        """The survey `operator` is about to phone about, held for them for CALL_HOLD so that no
        other operator calls the same resident meanwhile. Raises CallRefused when it is no longer
        open or another operator holds it."""
        survey = await self._open(survey_id, now)
        key = _call_key(survey_id)
        async with self.redis.pipeline(transaction=False) as p:
            p.hgetall(key)
            p.zscore(CALLBACKS, survey_id)
            state, due = await p.execute()
        held = _call(survey, due or now.timestamp(), state, now)
        if held.calling and held.calling != operator:
            raise CallRefused(f"话务员{held.calling}正在回访该市民，请选择其他工单")
        until = now + CALL_HOLD
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(key, mapping={"by": operator, "until": until.timestamp()})
            p.expire(key, SURVEY_TTL)
            await p.execute()
        return Call(survey, held.due, held.attempts, operator)

    async def answer_by_phone(
        self, survey_id: str, operator: str, rating: Rating, solved: bool, note: str, now: datetime
    ) -> SurveyAnswered:
        """The resident answered on the phone: the survey closes with their rating, as an SMS
        answer would close it, and the event names the operator (`by`). `note`: what they said,
        in the operator's words (kept as the answer's text)."""
        survey = await self._open(survey_id, now)
        answered = await self._answer(
            survey,
            rating,
            solved,
            note.strip() or PHONE_ANSWER_TEXT,
            now,
            event_id=derived_id(survey_id, "phone"),
            by=operator,
        )
        if answered is None:  # the resident's SMS came first
            raise CallRefused("该回访已结束（市民已短信答复或回访期已过），无需再记录")
        return answered

    async def _answer(
        self,
        survey: Survey,
        rating: Rating,
        solved: bool,
        text: str,
        now: datetime,
        *,
        event_id: str,
        by: str | None = None,
        via: AnswerVia | None = None,
    ) -> SurveyAnswered | None:
        """An answer given other than by the resident's reply (an operator's call, the lookup
        page): the survey closes as an SMS answer closes it. None when something closed it first."""
        answered = await self._close(
            survey, "answered", text, now, event_id=event_id, rating=rating, solved=solved, by=by, via=via
        )
        if answered is not None:
            # Told by SMS too, as a written record of the answer (the day's rules apply: not urgent).
            await self._confirm(survey, rating, solved, now, urgent=False)
        return answered

    # --- on the lookup page (查询页) ----------------------------------------------------------------

    async def ticket_survey(self, ticket_no: str, now: datetime) -> tuple[Survey, bool] | None:
        """The ticket's newest survey still kept, and whether it is open; None when it has none (an
        anonymous appeal, an opted-out phone, a survey past its 30 days, or an erased resident)."""
        members = cast("set[bytes]", await self.redis.smembers(ticket_records_key(ticket_no)))
        keys = [m.decode() for m in members if m.startswith(b"survey:")]
        if not keys:
            return None
        stored = [Survey.model_validate_json(raw) for raw in await self.redis.mget(keys) if raw is not None]
        if not stored:
            return None
        newest = max(stored, key=lambda s: s.started_at)
        if await self._forgotten(newest, now):
            return None
        return newest, await self.redis.zscore(_open_key(newest.to), newest.survey_id) is not None

    async def answer_on_lookup(
        self, ticket_no: str, rating: Rating, solved: bool, comment: str, now: datetime
    ) -> SurveyAnswered:
        """The resident rated the ticket's open survey on the lookup page (having given its number
        and their phone's last four digits, or opened it by its signed link): it closes as an SMS
        answer would, marked `via` "lookup". The same page sent twice gives the answer it recorded
        the first time, also when the second comes while the first is being recorded (a double
        tap, two tabs): it waits for that close to end, LOOKUP_WAIT at most. Raises AnswerRefused
        when the ticket has no survey, or one that another answer or its timeout closed, or when
        the first is still being recorded after the wait."""
        found = await self.ticket_survey(ticket_no, now)
        if found is None:
            raise AnswerRefused("该工单没有待评价的回访，无需评价")
        survey, is_open = found
        event_id = derived_id(survey.survey_id, "lookup")
        text = comment.strip() or LOOKUP_ANSWER_TEXT
        until = asyncio.get_running_loop().time() + LOOKUP_WAIT
        while True:
            if is_open:
                answered = await self._answer(
                    survey, rating, solved, text, now, event_id=event_id, via="lookup"
                )
                if answered is not None:
                    return answered
            is_open, earlier = await self._settled(survey, until)
            if is_open:  # the close in flight could not publish and reopened it: this post answers
                continue
            if earlier is not None and earlier.event_id == event_id:
                return earlier  # sent twice: the page's first answer stands
            raise AnswerRefused("该工单的回访已结束（已答复或回访期已过），不能再评价；如仍有问题请拨打12345")

    async def _settled(self, survey: Survey, until: float) -> tuple[bool, SurveyAnswered | None]:
        """Whether the survey is open, and the event that closed it (None: open, or not known),
        once no close of it is in flight: one that is (`survey:closing:{id}`) is waited for until
        `until` (the event loop's clock); past it, AnswerRefused says the answer is still being
        recorded. A close that could not publish reopens the survey before its mark goes: a post
        waiting on it finds it open again, never closed with no answer."""
        sid = survey.survey_id
        loop = asyncio.get_running_loop()
        while True:
            async with self.redis.pipeline(transaction=True) as p:
                p.exists(_closing_key(sid))
                p.zscore(_open_key(survey.to), sid)
                p.get(_answer_key(sid))
                closing, score, kept = await p.execute()
            if not closing:
                return score is not None, SurveyAnswered.model_validate_json(kept) if kept else None
            if loop.time() >= until:
                raise AnswerRefused("您的评价正在记录中，请稍后重新查询查看结果")
            await asyncio.sleep(LOOKUP_POLL)

    async def unreachable(self, survey_id: str, operator: str, now: datetime) -> int:
        """A call nobody answered: tried again after CALL_AGAIN, at most CALL_ATTEMPTS calls (the
        survey stays open for an SMS answer until its window ends). Returns the calls so far."""
        await self._open(survey_id, now)
        key = _call_key(survey_id)
        async with self.redis.pipeline(transaction=True) as p:
            p.hincrby(key, "attempts", 1)
            p.hdel(key, "by", "until")
            attempts = int((await p.execute())[0])
        if attempts >= CALL_ATTEMPTS:
            await self.redis.zrem(CALLBACKS, survey_id)
        else:
            await self.redis.zadd(CALLBACKS, {survey_id: (now + CALL_AGAIN).timestamp()}, xx=True)
        return attempts

    async def _open(self, survey_id: str, now: datetime) -> Survey:
        survey = await self.get(survey_id)
        if survey is None or await self.redis.zscore(_open_key(survey.to), survey_id) is None:
            raise CallRefused("该回访已结束（市民已短信答复或回访期已过），无需再记录")
        if survey.channel != "sms":
            raise CallRefused("该市民经微信反映、未留电话，无法电话回访；回访评价已通过微信发送")
        if await self._forgotten(survey, now):
            raise CallRefused("该市民的个人信息已删除，不能再回访")
        return survey

    # --- the record ---------------------------------------------------------------------------

    async def get(self, survey_id: str | bytes) -> Survey | None:
        sid = survey_id.decode() if isinstance(survey_id, bytes) else survey_id
        raw = await self.redis.get(_survey_key(sid))
        return Survey.model_validate_json(raw) if raw else None

    # --- erasure ------------------------------------------------------------------------------

    async def withdraw_reminders(self, survey_keys: Sequence[str]) -> None:
        """The grid worker found these surveys' resolution not solved (现场核查未解决) and the ticket
        went back to its department: no reminder asks the resident to rate work that is being
        redone. The survey stays open until its window ends, so a reply is still read as its answer
        (which the router keeps in the history and acts on no more) rather than as a new appeal."""
        ids = [k.removeprefix("survey:") for k in survey_keys if k.startswith("survey:")]
        if ids:
            async with self.redis.pipeline(transaction=True) as p:
                p.zrem(self.jobs.key, *(encode(SurveyJob("remind", sid)) for sid in ids))
                p.zrem(CALLBACKS, *ids)  # nor does an operator phone them about it
                await p.execute()

    async def void(self, survey_ids: Sequence[str]) -> None:
        """These surveys' resolutions were sent back (现场核查未解决): each stays as it is (open to its
        end, or closed), marked void, so that an answer still to come says its resolution no longer
        stands (`SurveyAnswered.void`). Open, it is no longer a choice of "which ticket?" nor makes
        the phone's other surveys name their ticket (`survey.askable`, read from this mark): it
        stays in the phone's open set only so that its end is still one `survey.answered` and a
        reply about it is not taken for a new appeal. A survey no longer kept is left alone."""
        ids = list(dict.fromkeys(survey_ids))
        if not ids:
            return
        stored = await self.redis.mget([_survey_key(sid) for sid in ids])
        async with self.redis.pipeline(transaction=False) as p:
            for raw in stored:
                if raw is not None:
                    survey = Survey.model_validate_json(raw).model_copy(update={"void": True})
                    p.set(_survey_key(survey.survey_id), json_of(survey), xx=True, keepttl=True)
            await p.execute()

    async def place(self, survey_keys: Sequence[str], grids: Mapping[str, str]) -> None:
        """These tickets (ticket number -> grid) are in another grid now (事发网格: the desk placed
        them, or dispatched them again in another grid): their surveys keep the new grid, so that
        an answer still to come counts where the ticket now is, as its earlier counts do
        (`scoring.placement_moves`). A survey no longer kept, or already in that grid, is left as
        it is."""
        stored = await self.redis.mget(survey_keys) if survey_keys else []
        async with self.redis.pipeline(transaction=False) as p:
            for raw in stored:
                if raw is None:
                    continue
                survey = Survey.model_validate_json(raw)
                if (grid := grids.get(survey.ticket_no)) is not None and survey.grid != grid:
                    moved = survey.model_copy(update={"grid": grid})
                    p.set(_survey_key(survey.survey_id), json_of(moved), xx=True, keepttl=True)
            await p.execute()

    async def forget(self, survey_keys: Sequence[str], now: datetime) -> list[str]:
        """The resident's personal data was erased from these surveys' tickets: a survey still open
        ends as erased (no one may ask them any more, and the ticket must still close; the
        resident did not opt out, and the history must not say they did), then
        the surveys, their answers and their places in the phone's keys go, with their reminder
        and timeout. Returns the keys of those that were still stored."""
        if not survey_keys:
            return []
        stored = [
            Survey.model_validate_json(raw) for raw in await self.redis.mget(survey_keys) if raw is not None
        ]
        if not stored:
            return []
        async with self.redis.pipeline(transaction=False) as p:
            for survey in stored:
                p.zscore(_open_key(survey.to), survey.survey_id)
            still_open = [s for s, score in zip(stored, await p.execute(), strict=True) if score is not None]
        for survey in still_open:  # rare: erased between the resolution and the answer
            await self._close(survey, "erased", "", now, event_id=derived_id(survey.survey_id, "erased"))
        async with self.redis.pipeline(transaction=True) as p:
            for survey in stored:
                sid = survey.survey_id
                p.delete(_survey_key(sid), _answer_key(sid), _call_key(sid))
                p.zrem(_open_key(survey.to), sid)
                p.delete(_pending_key(survey.to))  # the resident's words, kept by their phone
                p.zrem(CALLBACKS, sid)
                p.zrem(self.jobs.key, *(encode(SurveyJob(a, sid)) for a in ("remind", "close")))
            p.eval(
                _FORGET_LAST,
                len(stored),
                *(f"survey:last:{s.to}" for s in stored),
                *(s.survey_id for s in stored),
            )
            await p.execute()
        return [_survey_key(s.survey_id) for s in stored]

    async def _close(
        self,
        survey: Survey,
        outcome: SurveyOutcome,
        text: str,
        now: datetime,
        *,
        event_id: str,
        rating: Rating | None = None,
        solved: bool | None = None,
        by: str | None = None,
        via: AnswerVia | None = None,
    ) -> SurveyAnswered | None:
        """Close an open survey with `outcome` and publish it. None when it was no longer open (another
        reply or the timeout closed it first). If the publish fails the survey is open again. Until
        its event is published (or the survey reopened), the close is marked in flight
        (`survey:closing:{id}`, set with the claim): a second post of the lookup page then waits
        for its outcome rather than reading the survey as closed with no answer yet."""
        open_key, closing_key = _open_key(survey.to), _closing_key(survey.survey_id)
        if not await self._claim(keys=[open_key, closing_key], args=[survey.survey_id, CLOSING_SECONDS]):
            return None
        answered = SurveyAnswered(
            event_id=event_id,
            ticket_no=survey.ticket_no,
            survey_id=survey.survey_id,
            rating=rating,
            solved=solved,
            text=mask_personal_data(text),  # as `_comment`'s
            outcome=outcome,
            occurred_at=now,
            by=by,
            via=via,
            # Read again: the check that voided it may have come since the survey was read.
            void=outcome == "answered" and await self._is_void(survey.survey_id),
            **_groups(survey),
        )
        await self.redis.set(_answer_key(survey.survey_id), answered.json_bytes, ex=SURVEY_TTL)
        try:
            await self.publish([answered])
        except Exception:
            # Open again before the mark goes, in one step: a post waiting on it sees it open.
            async with self.redis.pipeline(transaction=True) as p:
                p.delete(_answer_key(survey.survey_id))
                p.zadd(open_key, {survey.survey_id: survey.started_at.timestamp()})
                p.delete(closing_key)
                await p.execute()
            raise
        async with self.redis.pipeline(transaction=True) as p:
            p.set(f"survey:last:{survey.to}", survey.survey_id, ex=LATE_REPLY_SECONDS)
            p.zrem(CALLBACKS, survey.survey_id)  # nobody need call any more
            p.delete(_call_key(survey.survey_id))
            p.delete(closing_key)  # published: the answer kept is the outcome
            await p.execute()
        came_by = answered_via(answered, survey.channel)
        SURVEYS_ANSWERED.labels(rating=answered_rating(answered), via=came_by).inc()
        return answered

    async def _is_void(self, survey_id: str) -> bool:
        kept = await self.get(survey_id)
        return kept is not None and kept.void

    async def _comment(self, survey: Survey, text: str, now: datetime) -> None:
        comment = SurveyAnswered(
            ticket_no=survey.ticket_no,
            survey_id=survey.survey_id,
            rating=None,
            # A phone, ID or card number or a name in the resident's words is masked here, where
            # every answer and comment becomes its event (SMS, WeChat, the lookup page, an
            # operator's phone call), as an appeal's words are in intake: the event goes to the
            # record and the department.
            text=mask_personal_data(text),
            outcome="comment",
            occurred_at=now,
            **_groups(survey),
        )
        await self.publish([comment])


# A phone's last closed survey, if it is one of those erased. KEYS: per survey its phone's key;
# ARGV: per survey its id.
_FORGET_LAST = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then redis.call('DEL', KEYS[i]) end
end
return #KEYS
"""


# The claim on an open survey by the close that ends it: out of the open set, and marked in flight,
# in one step (a post reading between the two would find it neither open nor closing). KEYS: the
# open set, the mark; ARGV: the survey's id, the mark's seconds. 1 when this close has it.
_CLAIM = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return 1
"""


def _survey_key(survey_id: str) -> str:
    return f"survey:{survey_id}"


def _closing_key(survey_id: str) -> str:
    return f"survey:closing:{survey_id}"


def _call_key(survey_id: str) -> str:
    return f"survey:call:{survey_id}"


@dataclass(frozen=True)
class Call:
    """An open survey due for a phone call: whom to call (`survey.to`, for the operator only),
    since when it is due, how many calls nobody answered, and who is calling now (None: nobody)."""

    survey: Survey
    due: datetime
    attempts: int
    calling: str | None


class AnswerRefused(DomainError):
    """The lookup page cannot record an answer: the ticket has no survey open (409)."""

    def __init__(self, message: str) -> None:
        super().__init__("answer_refused", message)


class CallRefused(DomainError):
    """The phone callback cannot be taken or recorded: it ended, or another operator has it (409)."""

    def __init__(self, message: str) -> None:
        super().__init__("callback_refused", message)


def _call(survey: Survey, due: float, state: Mapping[Any, Any], now: datetime) -> Call:
    until = float(state.get(b"until", 0))
    by = state.get(b"by")
    return Call(
        survey=survey,
        due=datetime.fromtimestamp(due, now.tzinfo),
        attempts=int(state.get(b"attempts", 0)),
        calling=by.decode() if by and until > now.timestamp() else None,
    )


AnsweredVia = Literal["sms", "wechat", "phone", "lookup", "none"]


def answered_via(answered: SurveyAnswered, channel: Channel) -> AnsweredVia:
    """The channel a survey's answer came by, as the counter says it (`surveys_answered_total`'s
    `via`): the operator's phone callback (the event names them in `by`), the lookup page (`via`),
    else the resident's reply on the survey's own channel (SMS, WeChat); "none" for a survey that
    closed without an answer (its window ended, TD, an erasure). Pure: one of five values, never
    anything of the resident's, so the label cannot grow the counter's series."""
    if answered.outcome != "answered":
        return "none"
    if answered.by is not None:
        return "phone"
    return answered.via or channel


def answered_rating(answered: SurveyAnswered) -> str:
    """How a survey closed, as the counter says it (`surveys_answered_total`'s `rating`): 1, 2 or 3;
    "void" for an answer to a survey a grid worker's check had voided (作废回访: in no rate, so a
    panel by rating must not show it as satisfied or not); else how it closed without one."""
    if answered.void:
        return "void"
    return str(answered.rating) if answered.rating else answered.outcome


def _answer_key(survey_id: str) -> str:
    return f"survey:answer:{survey_id}"


def _groups(survey: Survey) -> dict[str, Any]:
    """What an answer's event carries about the ticket, from the survey that kept it."""
    return {"department": survey.department, "category": survey.category, "grid": survey.grid}
