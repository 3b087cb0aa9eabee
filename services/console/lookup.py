"""Residents look their appeal up by its ticket number and the last four digits of the phone they
called from. They see where it is, and nothing personal: not the text, not the address, not the
number. Guessing is bounded: a few wrong tries per ticket and per address each hour.

A resident whose ticket waits for its satisfaction survey (回访中) and who lost or never got the SMS
rates it here: the same three answers and 问题是否已解决, posted with the number and the digits again,
or with the signed link that opened the page (below; checked and counted as a lookup either way),
recorded as an SMS answer would be (`SurveyBook.answer_on_lookup`).

A resident who appealed by WeChat has no phone to give: their notices and the answer to 查询 in the
chat link here signed (`?t=<ticket_no>&e=<day>&s=<sig>`, `shared.lookup_link`), and the signed link
shows the same, without the digits, until its day has passed. Its visits count against the
address's tries like the form's."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from services.console import present
from services.intake.progress import ANSWERED, holder_words, status_words, step_words

# The number as typed and the steps in words are the ones the WeChat and SMS progress query uses.
from services.notifier.survey import reopens
from shared import lookup_link
from shared.city import City
from shared.events import Rating, SurveyAnswered
from shared.store import TicketStore
from shared.survey_reply import rating_words
from shared.tickets import MEDIATION_OUTCOME_NAMES, Status, Ticket

HANDLED = (Status.ASSIGNED, Status.ACCEPTED)  # a department has it (its resolution deadline runs)
WRONG_TRIES_PER_HOUR = 5  # per ticket: 5 of 10,000 last-four combinations
TRIES_PER_IP_PER_HOUR = 60
_TICKET_NO = re.compile(r"^[0-9A-Za-z-]{4,40}$")
TOO_OFTEN = "查询过于频繁，请一小时后再试"
# What a refused link says: a WeChat resident has no digits for the form, so both say how to get a
# fresh link in the chat; a resident who called or texted can still use the form.
NEW_LINK = "请回到公众号对话中发送“查询”获取新链接；也可输入工单号和来电手机号后四位查询"
BAD_LINK = "链接无效，可能不完整或被改动。" + NEW_LINK
EXPIRED_LINK = "链接已过期。" + NEW_LINK
COMMENT_MAX = 300  # characters: a few sentences, like an SMS reply
RATINGS: tuple[tuple[Rating, str], ...] = ((1, "满意"), (2, "基本满意"), (3, "不满意"))
# What the survey's form is refused without (its field: the words); the page asks for them in these
# words beside the question before the form is sent (console.js, data-required), and this refuses.
ANSWER_REQUIRED = {"rating": "请选择满意、基本满意或不满意", "solved": "请选择问题是否已解决"}


@dataclass(frozen=True)
class Refused:
    status: int
    field: str
    message: str


@dataclass(frozen=True)
class Found:
    ticket: Ticket
    history: list[dict[str, Any]]


async def _count(redis: Redis, key: str) -> int:
    async with redis.pipeline(transaction=True) as p:
        p.set(key, 0, ex=3600, nx=True)  # the hour starts at the first try
        p.incr(key)
        _, n = await p.execute()
    return int(n)


def clean_last4(raw: str) -> str:
    return re.sub(r"\s", "", unicodedata.normalize("NFKC", raw))


async def find(redis: Redis, store: TicketStore, ticket_no: str, last4: str, ip: str) -> Found | Refused:
    if not ticket_no:
        return Refused(422, "ticket_no", "请填写工单号（受理短信或话务员告知的编号）")
    if not _TICKET_NO.match(ticket_no):
        return Refused(422, "ticket_no", "工单号应为受理短信中的编号，由数字和“-”组成，如20261201-000123")
    if not re.fullmatch(r"\d{4}", last4):
        return Refused(422, "last4", "请填写来电手机号的后四位数字")
    if await _count(redis, f"console:lookup:ip:{ip}") > TRIES_PER_IP_PER_HOUR:
        return Refused(429, "form", TOO_OFTEN)
    wrong_key = f"console:lookup:wrong:{ticket_no}"
    if int(await redis.get(wrong_key) or 0) >= WRONG_TRIES_PER_HOUR:
        return Refused(429, "form", "该工单号的查询错误次数过多，请一小时后再试或拨打12345")
    ticket = await store.get(ticket_no)
    masked = ticket.caller.masked_phone if ticket else None
    if ticket is None or not masked or masked[-4:] != last4:
        await _count(redis, wrong_key)
        # The same answer whether the ticket exists or not: the form reveals nothing.
        return Refused(404, "form", "没有找到与工单号和手机号后四位相符的诉求，请核对后再试")
    return Found(ticket, await store.history(ticket_no))


async def follow(
    redis: Redis,
    store: TicketStore,
    ticket_no: str,
    expires: str,
    sig: str,
    ip: str,
    today: int,
    key: bytes | None = None,
) -> Found | Refused:
    """The ticket a signed link opens on unix day `today` (`expires`: its `e` as given; `key`: the
    links' key, `lookup_link.link_key`). A link that does not verify, or whose ticket is gone, is
    refused with the same words, and one past its day (or from before links had one) with words
    of its own: the form then asks for the number and digits. A bad signature does not count
    against the ticket, as a wrong last four does: 64 bits are not guessed at 60 tries an hour, and
    counting them would let anyone lock a resident out of their own link."""
    if await _count(redis, f"console:lookup:ip:{ip}") > TRIES_PER_IP_PER_HOUR:
        return Refused(429, "form", TOO_OFTEN)
    if not _TICKET_NO.match(ticket_no):
        return Refused(403, "form", BAD_LINK)
    state = lookup_link.check(ticket_no, expires, sig, today, key)
    if state is lookup_link.LinkState.EXPIRED:
        return Refused(410, "form", EXPIRED_LINK)
    if state is not lookup_link.LinkState.VALID:
        return Refused(403, "form", BAD_LINK)
    ticket = await store.get(ticket_no)
    if ticket is None:
        return Refused(404, "form", BAD_LINK)
    return Found(ticket, await store.history(ticket_no))


def public_view(ticket: Ticket, history: list[dict[str, Any]], city: City, tz: ZoneInfo) -> dict[str, Any]:
    steps = [
        {"at": present.local(record.get("occurred_at"), tz), "text": words}
        for record in history
        if (words := step_words(record)) is not None
    ]
    return {
        "ticket_no": ticket.ticket_no,
        "status": status_words(ticket),
        "received": present.local(ticket.received_at, tz),
        # Waiting at the desk, its category is a guess the desk has still to confirm.
        "category": "/".join(ticket.category_names) if ticket.status != Status.REVIEW else "分类中",
        # Not while the desk is still choosing it (the status says so); 待联席会议确定 in a meeting.
        "department": holder_words(ticket) if ticket.department and ticket.status != "review" else "",
        # While a department has it, when it is due: what a resident asks first when they call.
        "due": present.local(ticket.resolve_by, tz) if ticket.status in HANDLED and ticket.resolve_by else "",
        "resolution": ticket.resolution_note if ticket.status in ANSWERED else "",
        # Handled again (not solved, said the resident or a grid worker's check): the answer before
        # is told as what it was, not as the result.
        "previous_resolution": ticket.resolution_note if ticket.status not in ANSWERED else "",
        # A mediation's outcome, not its agreement: the terms name the parties (personal data).
        "mediation": MEDIATION_OUTCOME_NAMES.get(ticket.mediation_outcome or "", ""),
        "steps": steps,
    }


@dataclass(frozen=True)
class Answer:
    """A resident's answer to the survey as the lookup page's form gives it."""

    rating: Rating
    solved: bool
    comment: str


def read_answer(rating: str, solved: str, comment: str) -> Answer | Refused:
    """The survey form's fields, or which one is wrong and why. Pure."""
    chosen = next((r for r, _ in RATINGS if str(r) == rating.strip()), None)
    if chosen is None:
        return Refused(422, "rating", ANSWER_REQUIRED["rating"])
    if solved not in ("yes", "no"):
        return Refused(422, "solved", ANSWER_REQUIRED["solved"])
    words = unicodedata.normalize("NFKC", comment).strip()
    if len(words) > COMMENT_MAX:
        return Refused(422, "comment", f"意见请不超过{COMMENT_MAX}字（现为{len(words)}字）")
    return Answer(chosen, solved == "yes", words)


def answer_view(answered: SurveyAnswered, posted: tuple[int, bool | None] | None = None) -> dict[str, str]:
    """What the page says of a recorded answer: the answer in words, what happens next, and the
    ticket's status as the answer leaves it (the ticket read before it still says it waits for
    the rating; the router applies the answer a moment later). With `posted`, the rating and
    solved the page sent: when another answer was recorded first (two tabs, each its own choice),
    `other` says this one was not, so the resident does not read the first as theirs. Pure."""
    rating = answered.rating or 3
    if answered.void:  # a grid worker's check had sent the resolution back before the answer
        after = "该办理结果经现场核查未解决，已由承办单位重新办理，办结后将再次请您评价"
        status = "已评价，承办单位重新办理中"
    elif reopens(rating, answered.solved):
        after = "我们将督促重新办理，办理进展将再次通知您"
        status = "已评价，将重新办理"
    else:
        after = "感谢您的评价，本工单办理完毕"
        status = "已评价，办理完毕"
    other = posted is not None and posted != (answered.rating, answered.solved)
    return {
        "words": rating_words(rating, answered.solved),
        "after": after,
        "status": status,
        "other": "本工单的评价已先行提交并记录，以上为已记录的评价；您这次的选择未另行记录" if other else "",
    }
