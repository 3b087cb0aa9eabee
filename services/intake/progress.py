"""Residents asking for their appeals' progress where they raised them (WeChat, SMS). Pure functions.

What counts as a progress query: a message that is nothing but a query word (查询, 进度, 查进度,
办理进度…, with stray punctuation and a polite 请 / 帮我 / 一下 around it), or a ticket number
(`yyyymmdd-nnnnnn`, with or without the dash, full-width digits too), alone or after a query word
or 工单号. Anything longer or vaguer ("进度太慢了，路灯还没修") is not one: it goes on as it did
before (a survey reply, or a new appeal), so a query never swallows a resident's words, and a
survey's "1" or "满意" is never a query.

The answer names the tickets, their status and department and the last step in words, never what
the resident wrote, where, or who: the same words the console's lookup page shows (`step_words`).
On WeChat each ticket it names also carries a freshly signed link to that page (`shared.lookup_link`),
the way a WeChat resident, who has no phone digits to type, gets a new link once an old one expired.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from shared.tickets import DASHES, Status, Ticket

LISTED = 3  # tickets a keyword query lists, the most recent first (an SMS stays short)
RESULT_MAX_CHARS = 40  # a closed ticket's result, as the survey SMS cut it

# Longest first inside the pattern, so that 查询进度 is not read as 查询 followed by junk.
QUERY_WORDS = (
    "查询",
    "查进度",
    "进度",
    "办理进度",
    "查询进度",
    "进度查询",
    "查工单",
    "工单查询",
    "查询工单",
    "工单进度",
    "查询工单进度",
    "查询办理进度",
    "我的工单",
)
_WORD = "|".join(sorted(map(re.escape, QUERY_WORDS), key=len, reverse=True))
_POLITE = r"(?:请|麻烦)?(?:帮我|我要|我想)?"
_NUMBER = r"(?P<no>\d{8}-?\d{6,9})"
_KEYWORD_ONLY = re.compile(rf"{_POLITE}(?:{_WORD})(?:一下)?")
_WITH_NUMBER = re.compile(rf"{_POLITE}(?:(?:{_WORD})(?:一下)?)?(?:工单号?|单号)?{_NUMBER}(?:{_WORD})?")
# Everything a resident may put around the words: spaces, punctuation, emoji. Dashes are kept (they
# may sit inside a ticket number) after every dash-like character becomes "-" (`DASHES`).
_IGNORED_CATEGORIES = ("Z", "P", "S", "C")

# What a resident is told happened, in their words; the rest of the history is internal.
_SHOWN = {
    "appeal.received": "诉求已受理",
    "ticket.assigned": "已转交承办单位",
    "accepted": "承办单位已签收，正在办理",
    "extension_approved": "办理期限已延长",
    "resolved": "承办单位已办结",
    # Not 已请您评价: at night the survey's SMS waits for the morning (quiet hours), and the resident
    # reading this has not been asked yet. No channel named either: by SMS, or in WeChat.
    "surveyed": "办理结果待您评价",
    "closed": "工单已关闭",
    "reopened": "工单重新办理",
    "urged": "已收到您的催办，已转告承办单位",
}
_ANSWERED = {"answered": "已收到您的评价", "comment": "已收到您的留言"}

# An assignment after the first says how it came about: the resident sees the department change, or
# the same one named twice (a joint meeting gives the ticket back to it), and should know why.
_ASSIGNED_AGAIN = {
    "meeting": "经联席会议协调，已确定承办单位",
    "reroute": "原承办单位退回，已改派承办单位",
    "redispatch": "已改派承办单位",
}

# A ticket's status as a resident is told it (the lookup page, the answer to 查询): the staff's words
# (`shared.tickets.STATUS_NAMES`: 待人工派单, 联席会议, 回访中) name the centre's own steps.
RESIDENT_STATUS_NAMES: dict[Status, str] = {
    Status.RECEIVED: "已受理",
    Status.REVIEW: "已受理",  # the department is told as being chosen (正在分派)
    Status.ASSIGNED: "已转交承办单位",
    Status.ACCEPTED: "办理中",
    Status.RESOLVED: "已办结",
    Status.SURVEYED: "已办结，待您评价",
    Status.CLOSED: "已办结，工单已关闭",
    Status.MEETING: "多部门协调办理中",
}
# The statuses whose resolution note is the answer the resident has: in any other, a note left from
# before is one the resident or a grid worker's check found did not solve it.
ANSWERED = (Status.RESOLVED, Status.SURVEYED, Status.CLOSED)


def status_words(ticket: Ticket) -> str:
    return RESIDENT_STATUS_NAMES.get(ticket.status, str(ticket.status))


# While a joint meeting holds a ticket the department it names is only the one it came from: the
# meeting decides who handles it (the staff's pages say 待会议确定).
PENDING_MEETING = "待联席会议确定"


def holder_words(ticket: Ticket) -> str:
    """The 承办单位 a resident is told: the department handling the ticket, 正在分派 while one is
    being chosen, 待联席会议确定 while a joint meeting decides."""
    if ticket.status == Status.MEETING:
        return PENDING_MEETING
    if ticket.department is None or ticket.status in (Status.RECEIVED, Status.REVIEW):
        return "正在分派"
    return ticket.department.name


NOT_FOUND = (
    "未找到该用户的工单{ticket_no}。请核对工单号（受理时告知的编号，如20261201-000123）；"
    "发送“查询”可查看您近期的工单，也可拨打12345。"
)
NONE_OPEN = (
    "未找到您近期的工单。已关闭的工单请发送工单号查询；如需反映新问题，请直接发送文字描述，也可拨打12345。"
)
LIST_HEAD = "您近期的工单："
ONE_HEAD = "您的工单："
MORE = "另有{n}件工单未列出，可发送工单号逐件查询。"
LIST_TAIL = "发送工单号可查询某一件工单。"
# A WeChat text message's link: WeChat shows the words and opens the address. The address is
# `shared.lookup_link`'s, whose page refuses quotes and angle brackets, so it cannot end the tag early.
LINK = '<a href="{url}">查看详情</a>'
WECHAT_TEXT_BYTES = 2048  # the most a WeChat text message carries


@dataclass(frozen=True)
class Query:
    """A progress query: about one ticket (its number, normalised), or about the sender's recent ones."""

    ticket_no: str | None = None


@dataclass(frozen=True)
class TicketProgress:
    """One ticket as a resident is told about it."""

    ticket_no: str
    status: str  # in words
    department: str  # the department handling it, or that one is being chosen
    last_step: str  # in words, with its local time; "" when the history shows none
    # 并案: the ticket was merged into this one, being handled for it: `status` and `department`
    # are then that ticket's (None: Redis no longer has it), and nothing else of it is told.
    merged_into: str | None = None
    # A closed ticket: what the department did (its resolution note, cut short), told instead of
    # its last step (工单已关闭, which the status says). "" otherwise.
    result: str = ""


def _compact(raw: str) -> str:
    """The message with what carries no meaning for the rule taken out (white space, punctuation,
    symbols, controls), full-width folded, dash-likes as "-"."""
    text = DASHES.sub("-", unicodedata.normalize("NFKC", raw))
    return "".join(c for c in text if c == "-" or not unicodedata.category(c).startswith(_IGNORED_CATEGORIES))


def _plausible_day(digits: str) -> bool:
    """Ticket numbers begin with the day they were received: a run of digits that is no date is
    something else (a phone number, an order number) and not a query."""
    try:
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return False
    return 2000 <= day.year <= 2099


def parse_query(raw: str) -> Query | None:
    """The progress query `raw` is, or None when it is not clearly one (see the module's rule)."""
    text = _compact(raw)
    if len(text) > 40:  # the longest query the rule reads is far shorter
        return None
    if _KEYWORD_ONLY.fullmatch(text):
        return Query()
    m = _WITH_NUMBER.fullmatch(text)
    if m is None:
        return None
    digits = m.group("no").replace("-", "")
    if not _plausible_day(digits):
        return None
    return Query(ticket_no=f"{digits[:8]}-{digits[8:]}")


def step_words(record: dict[str, Any], *, department: bool = True) -> str | None:
    """A history record as the resident is told it, or None for an internal step. `department`:
    whether an assignment names the department (a line that shows it apart leaves it out)."""
    key = record.get("action") or record.get("topic", "")
    if key == "ticket.assigned" and record.get("via") == "dispatch_desk":
        return "正在人工分派承办单位"
    if key == "verified":  # 现场核查: the outcome, not the worker's words (they are for staff)
        if (record.get("verification") or {}).get("solved"):
            return "网格员已现场核查，问题已解决"
        return "网格员现场核查发现问题未解决，已退回承办单位重新办理"
    if key == "merged":  # 并案: which ticket to follow (the main ticket's side is not this resident's)
        return f"与工单{(record.get('merge') or {}).get('into', '')}为同一问题，已合并办理"
    if key == "remerged":  # 并案: the ticket followed was merged into another, followed from now on
        merge = record.get("merge") or {}
        return f"所并入的工单{merge.get('via', '')}已与工单{merge.get('into', '')}合并办理"
    if key == "escalated" and record.get("meeting"):  # 吹哨报到: held for the departments to settle
        return "已提请相关部门召开联席会议，协调确定承办单位"
    if key == "survey.answered":  # a rating, or words kept as a comment; no answer is no step of theirs
        return _ANSWERED.get(record.get("outcome") or "answered")
    words = _SHOWN.get(key)
    if key == "ticket.assigned":  # why a second department (or the same one again) has it now
        words = _ASSIGNED_AGAIN.get(record.get("via") or "", words)
    if words is None:
        return None
    name = (record.get("department") or {}).get("name", "") if key == "ticket.assigned" else ""
    return words + (f"：{name}" if name and department else "")


def _month_day_time(value: object, tz: ZoneInfo) -> str:
    try:
        d = datetime.fromisoformat(str(value)).astimezone(tz)
    except ValueError:
        return ""
    return f"{d.month}月{d.day}日{d:%H:%M}"


def progress_of(
    ticket: Ticket, history: Sequence[dict[str, Any]], tz: ZoneInfo, main: Ticket | None = None
) -> TicketProgress:
    """What a resident is told about one of their tickets: nothing of its text, place or caller.
    A ticket merged into another (并案, `main`: that ticket, if Redis has it) is told by that
    ticket's status and department, the words the resident needs to follow it; nothing else of
    it (its history is another resident's: their urges, their survey)."""
    if ticket.merged_into is not None:
        followed = progress_of(main, (), tz) if main is not None else None
        return TicketProgress(
            ticket_no=ticket.ticket_no,
            status=followed.status if followed else "",
            department=followed.department if followed else "",
            last_step="",
            merged_into=ticket.merged_into,
        )
    last = ""
    for record in reversed(history):
        words = step_words(record, department=False)
        if words is not None:
            at = _month_day_time(record.get("occurred_at"), tz)
            last = f"{at} {words}" if at else words
            break
    note = " ".join(ticket.resolution_note.split()).rstrip("。.") if ticket.status == Status.CLOSED else ""
    return TicketProgress(
        ticket_no=ticket.ticket_no,
        status=status_words(ticket),
        department=holder_words(ticket),
        last_step=last,
        result=note if len(note) <= RESULT_MAX_CHARS else note[: RESULT_MAX_CHARS - 1] + "…",
    )


def _line(p: TicketProgress) -> str:
    if p.merged_into is not None:
        merged = f"工单号{p.ticket_no}，与工单{p.merged_into}为同一问题，已并入该工单合并办理"
        if not p.status:
            return merged + "。"
        return f"{merged}；工单{p.merged_into}{p.status}，承办单位：{p.department}。"
    if p.result:
        return f"工单号{p.ticket_no}，{p.status}，承办单位：{p.department}，办理结果：{p.result}。"
    step = f"，最新进展：{p.last_step}" if p.last_step else ""
    return f"工单号{p.ticket_no}，{p.status}，承办单位：{p.department}{step}。"


def reply_text(
    query: Query, found: Sequence[TicketProgress], more: int = 0, link: Callable[[str], str] | None = None
) -> str:
    """The answer to `query`: `found` are the sender's tickets it is about (the asked number's, when
    it is the sender's; else the most recent), `more` how many of theirs were left out. A number
    that is not the sender's gets the answer a number that does not exist gets. `link`: the address
    of a ticket's lookup page (WeChat, when the page is known), added after each ticket's line; None
    (SMS) adds nothing, so an SMS stays as short as it was. Three links fit a WeChat text message
    many times over with any sensible page; should a long page make them not fit, the most recent
    ticket alone is linked, and failing that none, rather than have WeChat cut the answer."""
    if link is not None:
        for linked in (len(found), 1):
            text = _reply(query, found, more, link, linked)
            if len(text.encode()) <= WECHAT_TEXT_BYTES:
                return text
    return _reply(query, found, more, None, 0)


def _reply(
    query: Query, found: Sequence[TicketProgress], more: int, link: Callable[[str], str] | None, linked: int
) -> str:
    """`reply_text` with the first `linked` tickets (the most recent) linked."""

    def line(i: int, p: TicketProgress) -> str:
        return _line(p) + (LINK.format(url=link(p.ticket_no)) if link and i < linked else "")

    if query.ticket_no is not None:
        if not found:
            return NOT_FOUND.format(ticket_no=query.ticket_no)
        return ONE_HEAD + line(0, found[0])
    if not found:
        return NONE_OPEN
    lines = [f"{i + 1}. {line(i, p)}" for i, p in enumerate(found)]
    tail = MORE.format(n=more) if more else LIST_TAIL
    return "\n".join([LIST_HEAD, *lines, tail])
