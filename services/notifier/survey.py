"""The survey as data, and reading residents' replies to it. Pure: no I/O.

The survey asks one combined question (the texts are in notifications.yaml):
    回复1满意，2基本满意，3不满意；问题仍未解决请加回复“未解决”
- the digit (or the words 满意 / 基本满意 / 不满意 and their variants) is the satisfaction rating;
- "solved" follows from the rating (1, 2: solved; 3: not solved) unless the words say otherwise:
  "1 但是没解决" is satisfied-and-not-solved, "3 解决了但太慢" is unsatisfied-and-solved;
- "没解决" alone (no rating) is read as unsatisfied and not solved;
- anything else is free text: kept as the resident's comment, and one clarification is sent.

`Survey` is one survey as the survey book stores it; `SurveyAnswer`, `SurveyComment` and `OptedOut`
are what an inbound SMS turned out to be (the SMS endpoint answers with them as JSON).

`read_inbound` is what a resident's message is, on SMS and WeChat alike: a progress query, an
opt-out, a rating, or other words. Each channel then acts on it (services.notifier.views for SMS,
services.intake.wechat_views for WeChat), with the survey state it keeps.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from services.intake.progress import Query, parse_query
from services.notifier.routing import Channel
from shared.events import DepartmentRef, Rating
from shared.survey_reply import COUNTED, RATING_WORDS, REF_DIGITS, REFERENCE

# Checked before the "solved" words: "没解决" contains "解决".
_UNSOLVED = (
    "没解决",
    "未解决",
    "没有解决",
    "没能解决",
    "不解决",
    "没处理",
    "没有处理",
    "未处理",
    "没人处理",
    "还没修",
    "没修好",
    "没人管",
    "还是老样子",
    "没效果",
    "没有效果",
)
_SOLVED = ("已解决", "解决了", "已经解决", "处理好了", "修好了", "已修好", "已处理")
# A rating digit at the start, not part of a longer number nor counting something: "1", "1。",
# "1 谢谢", "3根本没修".
_LEADING_DIGIT = re.compile(rf"^\s*([123])(?![\d{COUNTED}])")
_OPT_OUT = {"TD", "退订", "取消订阅", "退订短信"}


class Survey(BaseModel):
    """One survey: asked for `ticket_no` of `to` at `started_at`. `to` is where it was asked on
    `channel`: the phone, or the WeChat user's openid (a WeChat resident with no phone). It is
    personal data: it stays in the survey book's Redis record and is never put in an event or a
    log line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    survey_id: str  # the id of the `ticket.updated` (resolved) event that started it
    ticket_no: str
    # Records written before the address was named `to` have it as `phone`.
    to: str = Field(validation_alias=AliasChoices("to", "phone"))
    channel: Channel = "sms"  # records written before WeChat was surveyed are SMS
    started_at: datetime  # records written as a Unix timestamp are read as well
    # The ticket's groups at resolution, from that event: the answer's event carries them to the
    # scorecard. None in records written before they were kept.
    department: DepartmentRef | None = None
    category: str | None = None
    grid: str | None = None
    # What the appeal was about, in a few words a resident recognises (the category's name): how
    # the question "which one?" lists it when one phone has several surveys open. Never the
    # appeal's own words, which may name people and places. "" in records written before.
    about: str = ""
    # Its resolution was sent back by a grid worker's check (现场核查未解决): an answer still closes
    # it, and says so (`SurveyAnswered.void`), but it is no longer asked about (`askable`).
    void: bool = False


class SurveyAnswer(BaseModel):
    """The reply rated the newest open survey, which is now closed."""

    kind: Literal["survey_answer"] = "survey_answer"
    ticket_no: str
    rating: Rating
    solved: bool | None


class SurveyComment(BaseModel):
    """The reply is the resident's words on a survey (open without a rating, or closed lately)."""

    kind: Literal["comment"] = "comment"
    ticket_no: str
    clarification: bool  # whether this reply made us ask the question again (once per survey)


class WhichTicket(BaseModel):
    """The phone has several surveys open and the reply named none of them: it is kept pending and
    the resident was asked which ticket it is about (`asked`: the SMS went out now)."""

    kind: Literal["which_ticket"] = "which_ticket"
    ticket_nos: list[str]  # the tickets they may choose from, newest first
    asked: bool
    question: str  # what they were asked (the tickets by reference and category: no personal data)


class OptedOut(BaseModel):
    """TD / 退订: no more surveys for the phone; its open surveys were closed."""

    kind: Literal["opt_out"] = "opt_out"
    closed_surveys: list[str]  # their ticket numbers


# What an inbound SMS was, when it was about surveys (else it is a new appeal, for intake).
SmsReply = Annotated[SurveyAnswer | SurveyComment | WhichTicket | OptedOut, Field(discriminator="kind")]


@dataclass(frozen=True)
class Reply:
    """A reply as read: its rating and whether the problem is solved, when it says."""

    rating: Rating | None
    solved: bool | None
    text: str  # as sent

    @property
    def has_rating(self) -> bool:
        return self.rating is not None


def normalize(raw: str) -> str:
    """NFKC (full-width １ becomes 1, ＴＤ becomes TD), trimmed."""
    return unicodedata.normalize("NFKC", raw).strip()


def is_opt_out(raw: str) -> bool:
    """TD / 退订 (the carriers' unsubscribe words), alone, in any case, with stray punctuation."""
    return normalize(raw).strip("。.!！ ").upper() in _OPT_OUT


def parse_reply(raw: str) -> Reply:
    text = normalize(raw)
    rating: Rating | None = None
    if m := _LEADING_DIGIT.match(text):
        rating = int(m.group(1))  # type: ignore[assignment]
    else:
        rating = next((value for word, value in RATING_WORDS if word in text), None)
    if any(w in text for w in _UNSOLVED):
        return Reply(rating=rating or 3, solved=False, text=raw)
    if rating is None:
        return Reply(rating=None, solved=None, text=raw)
    solved = True if any(w in text for w in _SOLVED) else rating != 3
    return Reply(rating=rating, solved=solved, text=raw)


InboundKind = Literal["query", "opt_out", "rating", "words"]


@dataclass(frozen=True)
class Inbound:
    """What a resident's message is (`read_inbound`), with what was read from it."""

    kind: InboundKind
    text: str  # as sent
    query: Query | None = None  # kind "query"
    reply: Reply | None = None  # kind "rating" or "words": the message read as a survey reply


def read_inbound(raw: str) -> Inbound:
    """What a resident's message is, on any channel, before any state is looked at:

    - "query": a progress query (查询, a ticket number; `services.intake.progress.parse_query`),
      first: a query is never a rating or TD, and a resident with a survey open may still ask;
    - "opt_out": TD / 退订;
    - "rating": it rates a survey (1/2/3, 满意…, 没解决; `parse_reply`);
    - "words": anything else.

    What follows is the channel's: by SMS a rating or words answer or comment on the phone's open
    survey, else they are a new appeal; on WeChat a rating answers the user's open survey, and
    everything else is what it was before surveys reached WeChat (a new appeal)."""
    query = parse_query(raw)
    if query is not None:
        return Inbound("query", raw, query=query)
    if is_opt_out(raw):
        return Inbound("opt_out", raw)
    # A reply may begin with the reference of the ticket it rates ("0001 3"): the rating follows it.
    ref, rest = split_reference(raw)
    reply = parse_reply(rest if ref is not None and rest else raw)
    return Inbound("rating" if reply.has_rating else "words", raw, reply=reply)


# In a chat that also takes appeals (WeChat), how long a message may be and still be read as a bare
# survey reply ("满意", "3 还是不亮") when it does not begin with its rating.
CHAT_REPLY_MAX_CHARS = 15
_REPLY_OPENINGS = tuple(w for w, _ in RATING_WORDS) + _UNSOLVED  # what a reply may begin with


def bare_reference(text: str) -> bool:
    """Whether the message is a ticket's reference and nothing else ("0101", "尾号0101"): the answer
    to "which ticket?", which applies the reply kept while the resident was asked."""
    ref, rest = split_reference(text)
    return ref is not None and not rest


def answers_survey_in_chat(inbound: Inbound) -> bool:
    """Whether a chat message may answer the user's open survey: a rating, or a bare reference (the
    answer to "which ticket?"; `SurveyBook.answer_in_wechat` takes it only when a reply was kept).
    The chat is also where residents appeal, so a new complaint that says 不满意 or 没解决 in passing
    must stay an appeal: a message answers only when it begins with its rating (1/2/3, 满意, 不满意,
    没解决…) or is short enough to be nothing but a reply. By SMS every message to the survey's
    number is a reply."""
    if inbound.kind != "rating":
        return bare_reference(inbound.text)
    ref, rest = split_reference(inbound.text)
    text = normalize(rest if ref is not None else inbound.text).strip()
    if _LEADING_DIGIT.match(text) or len(text) <= CHAT_REPLY_MAX_CHARS:
        return True
    return text.startswith(_REPLY_OPENINGS)


# --- several surveys open on one phone: which ticket a reply is about ---------------------------------
#
# One phone may have several tickets resolved within days of each other (a streetlight, then
# rubbish), each with its survey open. A reply must rate the ticket the resident means, never the one
# we guess: the survey SMS sent while another is open gives the ticket's short reference (the last
# digits of its number, `short_ref`), a reply may begin with it ("0001 3 路灯还是不亮"), and a reply
# that names none while several are open is kept pending and the resident is asked which ticket
# (`choose_survey`). With one survey open nothing changes. The reference's shape (`REF_DIGITS`,
# `REFERENCE`) is in shared.survey_reply: what the history keeps of a reply reads it off too.


def _digits(ticket_no: str) -> str:
    return re.sub(r"\D", "", ticket_no)


def short_ref(ticket_no: str, others: Iterable[str]) -> str:
    """The last digits of `ticket_no` that no other ticket in `others` ends with, at least
    REF_DIGITS: 20261123-000001 among 20261124-000002 is "0001"."""
    digits = _digits(ticket_no)
    rest = [_digits(o) for o in others if o != ticket_no]
    for n in range(REF_DIGITS, len(digits)):
        if not any(o.endswith(digits[-n:]) for o in rest):
            return digits[-n:]
    return digits


def split_reference(raw: str) -> tuple[str | None, str]:
    """The ticket reference a reply begins with, if any, and the reply without it:
    "0001 3 还是不亮" -> ("0001", "3 还是不亮"); "3 还是不亮" -> (None, "3 还是不亮")."""
    text = normalize(raw)
    m = REFERENCE.match(text)
    if m is None:
        return None, raw
    return m.group("ref"), text[m.end() :].strip()


def refers_to(ref: str, ticket_no: str) -> bool:
    return _digits(ticket_no).endswith(ref)


def open_per_ticket(open_surveys: Sequence[Survey]) -> list[Survey]:
    """The newest open survey of each ticket, newest first (`open_surveys` newest first). A ticket
    sent back by a grid worker's check and resolved again has two open: the newer is the one asked."""
    seen: dict[str, Survey] = {}
    for s in open_surveys:
        seen.setdefault(s.ticket_no, s)
    return list(seen.values())


def askable(open_surveys: Sequence[Survey]) -> list[Survey]:
    """The open surveys a resident may be asked to rate, one per ticket, newest first: not those a
    grid worker's check voided (现场核查未解决). A void survey stays open to its end, so that a reply
    about it is still its answer rather than a new appeal, but its answer counts in no rate and
    reopens nothing: asking "which ticket?" about it, or giving another survey a reference because
    of it, would make the resident choose between a ticket that is being redone and one that waits."""
    return open_per_ticket([s for s in open_surveys if not s.void])


@dataclass(frozen=True)
class Rate:
    """The reply (or the reply kept pending, `from_pending`) is about `survey`; `reply` is it read
    without its reference (it may carry no rating: then it is a comment on that survey)."""

    survey: Survey
    reply: Reply
    from_pending: bool = False


@dataclass(frozen=True)
class Ask:
    """Several surveys are open and the reply named none of them (or a reference that fits none or
    several): ask the resident which ticket, listing `choices` with their references `refs`, and keep
    `keep` pending (None: what is pending already stays, the reply added nothing to it)."""

    choices: tuple[Survey, ...]
    refs: tuple[str, ...]
    keep: str | None


def choose_survey(open_surveys: Sequence[Survey], text: str, pending: str | None) -> Rate | Ask | None:
    """Which of a phone's open surveys (newest first) the reply `text` is about: the one place
    that decides it, for SMS and WeChat alike. `pending`: an earlier reply kept while the resident
    was asked which ticket. None when no survey is open (the reply is then what it was before: a
    late comment, or a new appeal).

    The choices are the `askable` surveys; those a grid worker's check voided are never asked about
    nor make the others "several", yet a reply still reaches one (its answer is void: in no rate):
    - one ticket to choose (or none, only void surveys open: the newest of those): the reply is
      about it, as it always was; a reference to it is read off ("0001 3" rates 3), and a bare
      reference applies the pending reply;
    - several: a reply beginning with the reference of exactly one of them is about that one (a
      bare reference applies the pending reply); any other is kept pending and the resident asked;
    - a reply beginning with the reference of a void survey, and of no choice, is about that one."""
    choices = askable(open_surveys)
    voided = open_per_ticket([s for s in open_surveys if s.void])
    if not choices and not voided:
        return None
    ref, rest = split_reference(text)
    named = _named(choices, ref) or _named(voided, ref)
    if len(named) == 1:
        if not rest and pending is not None:
            return Rate(named[0], parse_reply(pending), from_pending=True)
        if rest or len(choices) <= 1:
            return Rate(named[0], parse_reply(rest or text))
    elif len(choices) <= 1:
        return Rate(choices[0] if choices else voided[0], parse_reply(text))
    nos = [s.ticket_no for s in choices]
    refs = tuple(short_ref(no, nos) for no in nos)
    # A bare reference that fits none (or several) adds nothing to keep: the earlier reply stays.
    keep = None if ref is not None and not rest else text
    return Ask(tuple(choices), refs, keep)


def _named(surveys: Sequence[Survey], ref: str | None) -> list[Survey]:
    return [s for s in surveys if ref is not None and refers_to(ref, s.ticket_no)]


def which_choices(ask: Ask, tz: ZoneInfo) -> str:
    """The tickets to choose from, as the question lists them: by reference, what they were about
    and the day the result came, nothing of the resident's own words:
    尾号0001（路灯故障，11月23日办结）；尾号0002（垃圾清运，11月24日办结）"""
    parts = []
    for survey, ref in zip(ask.choices, ask.refs, strict=True):
        day = survey.started_at.astimezone(tz)
        words = "，".join(w for w in (survey.about, f"{day.month}月{day.day}日办结") if w)
        parts.append(f"尾号{ref}（{words}）")
    return "；".join(parts)


def reopens(rating: Rating | None, solved: bool | None) -> bool:
    """Whether an answer sends the ticket back to be handled again (the router's reopen): 不满意,
    or not solved."""
    return rating == 3 or solved is False
