"""Search filters: validated, then turned into one SQL WHERE clause with its parameters. Pure: no
connection here, so the rules (which filters, which sorts, who sees what) are tested alone.

Full text (`q`) is a substring match over title, text and address, served by a pg_trgm GIN index:
trigrams need no segmenter, so place names and words jieba does not know (小区 names, road names)
are found as typed. Queries of one or two characters cannot use trigrams and scan; the API asks
for at least two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.router.rules import FIRST_CONTACT
from shared.city import City
from shared.errors import DomainError
from shared.knowledge import category_filter
from shared.privacy import InvalidPhone, caller_id, is_caller_id, normalize_phone
from shared.tickets import (
    CLOSED,
    OPEN_STATUSES,
    RATING_NAMES,
    RESOLVED,
    SURVEYED,
    TICKET_NO_PATTERN,
    Status,
    clean_ticket_no,
)

MAX_PAGE_SIZE = 500
# Held by a joint meeting, the ticket's clock is the meeting's (its 会议时限), which the ticket's row
# does not keep: from the meeting's row once the record has its facts (when its tickets leave
# Redis), until then from the hold (`escalated`), which carries the deadline as the ticket in Redis
# has it. A row of `tickets` (unaliased), for the list's rows and its `due` order alike.
MEETING_BY = (
    "(CASE WHEN tickets.status = 'meeting' THEN COALESCE("
    "(SELECT m.deadline FROM meetings m WHERE m.meeting_id = tickets.meeting_id), "
    "(SELECT (e.payload->'meeting'->>'deadline')::timestamptz FROM ticket_events e "
    "WHERE e.ticket_no = tickets.ticket_no AND e.payload->'meeting'->>'meeting_id' = tickets.meeting_id "
    "ORDER BY e.occurred_at DESC LIMIT 1)) END)"
)
# The deadline that runs now, as the console's time left counts down to it (present.due_of): to
# accept while assigned, to resolve once accepted, the meeting's while one holds the ticket; none
# otherwise (waiting at the desk, resolved, closed), which sorts last.
DUE = (
    "CASE tickets.status WHEN 'assigned' THEN respond_by WHEN 'accepted' THEN resolve_by "
    f"WHEN 'meeting' THEN {MEETING_BY} END"
)
# Sort keys the API accepts -> SQL; ticket_no breaks ties so that pages never overlap.
SORTS = {
    # The most pressing first: among the overdue, the longest overdue (the dashboard's 超期工单).
    "due": f"{DUE} ASC NULLS LAST, ticket_no ASC",
    "received_at": "received_at ASC, ticket_no ASC",
    "-received_at": "received_at DESC, ticket_no DESC",
    "resolve_by": "resolve_by ASC NULLS LAST, ticket_no ASC",
    "-resolve_by": "resolve_by DESC NULLS LAST, ticket_no DESC",
    "updated_at": "updated_at ASC, ticket_no ASC",
    "-updated_at": "updated_at DESC, ticket_no DESC",
    "ticket_no": "ticket_no ASC",
    "-ticket_no": "ticket_no DESC",
}
CHANNELS = frozenset({"hotline", "wechat", "box", "sms", "open311", "web", "patrol"})


def invalid(name: str, message: str) -> DomainError:
    return DomainError("invalid_filter", f"{name}: {message}", kind="invalid", field=name)


def _day(name: str, value: str | None, tz: ZoneInfo, *, end: bool) -> datetime | None:
    """A date (YYYY-MM-DD, local day: `to` includes the whole day) or an ISO time."""
    if not value:
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime.combine(d + timedelta(days=1) if end else d, time(), tz)
        t = datetime.fromisoformat(value)
        return t if t.tzinfo else t.replace(tzinfo=tz)
    except ValueError:
        raise invalid(name, f"“{value}”不是有效日期，请用 YYYY-MM-DD 或 ISO 时间") from None


def _flag(name: str, value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise invalid(name, f"“{value}”应为 true 或 false")


# A survey's rated answer, as an event `e` of `ticket_events` (the three rates' SQL counts these
# too, services/records/rates.py), and whether its survey's resolution had been sent back before it
# came (void: in no rate).
RATED_ANSWER = (
    "e.topic = 'survey.answered' AND e.payload->>'outcome' = 'answered' AND e.payload->>'rating' IS NOT NULL"
)
VOID_ANSWER = "coalesce((e.payload->>'void')::boolean, false)"
# The rated answers to a ticket's surveys, oldest first, each its rating ("1" 满意 .. "3" 不满意) and
# "v" when void: each answer is what the rates count, on the day it came; the ticket's `rating`
# keeps only the last one.
ANSWERS_SQL = (
    f"ARRAY(SELECT (e.payload->>'rating') || CASE WHEN {VOID_ANSWER} THEN 'v' ELSE '' END "
    f"FROM ticket_events e WHERE e.ticket_no = tickets.ticket_no AND {RATED_ANSWER} ORDER BY e.occurred_at)"
)
# 回访评价 filter: tickets with at least one counted answer of this rating (any of its surveys), as
# the satisfaction rate counts each answer; its own `rating` is only the last.
_ANSWERED_WITH = (
    "EXISTS (SELECT 1 FROM ticket_events e WHERE e.ticket_no = tickets.ticket_no "
    f"AND {RATED_ANSWER} AND NOT {VOID_ANSWER} AND e.payload->>'rating' = %s)"
)
# 回访答复 filter: tickets with at least one answer the rates count (`answered`: rated, not void), or
# none (not surveyed yet, no reply, skipped, or only an answer voided by the check).
_ANSWERED = (
    "EXISTS (SELECT 1 FROM ticket_events e WHERE e.ticket_no = tickets.ticket_no "
    f"AND {RATED_ANSWER} AND NOT {VOID_ANSWER})"
)

# A department's response (签收) as an event `e` of `ticket_events`, as the response rate counts it
# (services/records/rates.py takes these; `scoring.fields_for` is the rule): one for each assignment
# whose response came due, on time or not; a ticket re-dispatched or rerouted responds again.
# 并案: a duplicate merged while a department held it and had not accepted it yet answers for that
# department's response; its `merge` says whether it was on time.
MERGED = "e.topic = 'ticket.updated' AND e.payload->>'action' = 'merged'"
MERGE_ON_TIME = "(e.payload->'merge'->>'response_on_time')::boolean"
# An acceptance's `on_time` (in `data` in events of version 1).
_ACCEPTED_ON_TIME = "coalesce((e.payload->>'on_time')::boolean, (e.payload->'data'->>'on_time')::boolean)"
RESPONSE_ON_TIME = (
    "e.topic = 'ticket.updated' AND ((e.payload->>'action' = 'accepted' "
    f"AND coalesce({_ACCEPTED_ON_TIME}, false)) "
    f"OR ({MERGED} AND coalesce({MERGE_ON_TIME}, false)))"
)
_LATE = (
    "e.topic = 'ticket.updated' AND ((e.payload->>'action' = 'accepted' "
    f"AND NOT coalesce({_ACCEPTED_ON_TIME}, true)) "
    f"OR ({MERGED} AND NOT coalesce({MERGE_ON_TIME}, true)))"
)
_NOT_NOTICED = "NOT coalesce((e.payload->>'marked_overdue')::boolean, false)"
_RESPOND_OVERDUE = (
    "e.topic = 'ticket.updated' AND e.payload->>'action' = 'overdue' "
    "AND e.payload->'supervision'->>'stage' = 'respond'"
)
# Due and not on time: the response deadline's notice (the ticket still not accepted then), or a
# late acceptance that came before the notice (one after it was counted by the notice, once).
RESPONSE_LATE = f"({_RESPOND_OVERDUE}) OR (({_LATE}) AND {_NOT_NOTICED})"
# 签收 filter: the tickets with at least one response of the kind (any of its assignments), as the
# response rate counts each response due: on time (按时签收) or not (超时签收, or the deadline passed
# with the ticket not accepted, 逾期未签收). A ticket still inside its deadline is in neither, as it
# is in no rate yet.
RESPONSES = {"on_time": RESPONSE_ON_TIME, "late": RESPONSE_LATE}
RESPONSE_NAMES = {"on_time": "按时签收", "late": "超时签收或逾期未签收"}
_RESPONDED = "EXISTS (SELECT 1 FROM ticket_events e WHERE e.ticket_no = tickets.ticket_no AND ({}))"


def answers_words(answers: list[str] | None) -> str:
    """The answers of `ANSWERS_SQL` as a manager reconciles them with the rates: each rating with how
    often it was given, in the survey's order (不满意×2、满意×1), and the void ones apart (another
    answer came after the check had sent its resolution back: in no rate). "" for none."""
    counted = [a for a in answers or () if not a.endswith("v")]
    void = len(answers or ()) - len(counted)
    words = "、".join(f"{RATING_NAMES[r]}×{counted.count(str(r))}" for r in RATING_NAMES if str(r) in counted)
    if void:
        words += f"{'；' if words else ''}作废{void}次（核查退回后答复，不计入三率）"
    return words


@dataclass(frozen=True)
class Search:
    """The filters of GET /api/v1/tickets (and of its export), validated."""

    where: str
    params: list[Any] = field(default_factory=list)
    order_by: str = SORTS["-received_at"]
    page: int = 1
    size: int = 50

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


def build(
    raw: dict[str, str | None],
    *,
    tz: ZoneInfo,
    city: City,
    department_scope: str | None,
    grid_scope: str | None = None,
    page: int = 1,
    size: int = 50,
    max_size: int = MAX_PAGE_SIZE,
) -> Search:
    """`raw`: the query parameters as given. `city`: whose category tree a category filter takes
    its branch from. `department_scope`: None for the dispatch desk (sees everything), else the
    department whose tickets (lead or co-handler) are the only ones visible. A department summoned
    to a joint meeting reads its tickets by number but does not list them: like its queue in Redis,
    its list holds what it handles; the meeting's page links the others. `grid_scope`: a grid
    worker's grid, the only one whose tickets it sees."""
    clauses: list[str] = []
    params: list[Any] = []

    def add(sql: str, *values: Any) -> None:
        clauses.append(sql)
        params.extend(values)

    if page < 1:
        raise invalid("page", "页码从1开始")
    if not 1 <= size <= max_size:
        raise invalid("size", f"每页条数应在1到{max_size}之间")
    if department_scope is not None:
        add("(department = %s OR co_departments @> ARRAY[%s])", department_scope, department_scope)
    if grid_scope is not None:
        add("grid = %s", grid_scope)
    if status := raw.get("status"):
        statuses = [s.strip() for s in status.split(",") if s.strip()]
        unknown = [s for s in statuses if s not in Status.__members__.values()]
        if unknown:
            raise invalid("status", f"未知状态“{unknown[0]}”，可选：{'、'.join(s.value for s in Status)}")
        add("status = ANY(%s)", statuses)
    if channel := raw.get("channel"):
        if channel not in CHANNELS:
            raise invalid("channel", f"未知渠道“{channel}”，可选：{'、'.join(sorted(CHANNELS))}")
        add("channel = %s", channel)
    # A category takes those under it, from the city's tree (`City.branch`), as the department's
    # queue and the knowledge base narrow theirs: the ids need not be dotted paths, and a row whose
    # category the tree no longer has is not taken for one under a branch by its spelling. An id
    # the city does not have is refused, saying what to give, rather than answered with nothing.
    if (branch := category_filter(city, raw.get("category"))) is not None:
        add("category = ANY(%s)", sorted(branch))
    for name in ("department", "street", "community", "grid"):
        if value := raw.get(name):
            if name == "department":
                add("(department = %s OR co_departments @> ARRAY[%s])", value, value)
            else:
                add(f"{name} = %s", value)
    phone, caller = (raw.get("phone") or "").strip(), (raw.get("caller") or "").strip()
    if phone or caller:
        # A caller's tickets by the number they called from (the record keeps its salted hash, not
        # the number), or by that hash (`caller`, which the console's list carries in its links so
        # that the number is in no URL): the desk's, which reads everything; a department or a grid
        # worker sees masked numbers, and a lookup by number would unmask them.
        name = "phone" if phone else "caller"
        if department_scope is not None or grid_scope is not None:
            raise DomainError(
                "phone_not_allowed", "只有派单中心可以按来电号码查询", kind="forbidden", field=name
            )
        if caller and not is_caller_id(caller):
            raise invalid("caller", "来电人标识无效，请重新输入来电号码查询")
        try:
            add("caller_id = %s", caller or caller_id(normalize_phone(phone)))
        except InvalidPhone as e:
            raise invalid("phone", f"{e}，请填写11位手机号或带区号的固话") from None
    for name in ("urgent", "overdue"):
        if (flag := _flag(name, raw.get(name))) is not None:
            add(f"{name} = %s", flag)
    if answer := raw.get("answer"):
        if answer not in {str(r) for r in RATING_NAMES}:
            names = "、".join(f"{r}（{n}）" for r, n in RATING_NAMES.items())
            raise invalid("answer", f"未知的回访评价“{answer}”，可选：{names}")
        add(_ANSWERED_WITH, answer)
    if response := raw.get("response"):
        if response not in RESPONSES:
            names = "、".join(f"{k}（{n}）" for k, n in RESPONSE_NAMES.items())
            raise invalid("response", f"未知的签收情况“{response}”，可选：{names}")
        clauses.append(_RESPONDED.format(RESPONSES[response]))
    if (flag := _flag("answered", raw.get("answered"))) is not None:
        clauses.append(_ANSWERED if flag else f"NOT {_ANSWERED}")
    if (flag := _flag("reopened", raw.get("reopened"))) is not None:
        # 重办: reopened at least once (a resident's 不满意 or 未解决, or a check found it not solved).
        add("reopens > 0" if flag else "reopens = 0")
    if (flag := _flag("verified", raw.get("verified"))) is True:
        add("verified_at IS NOT NULL")
    elif flag is False:
        # Not checked on the spot since its last resolution (现场核查), where there is something to
        # check: not those closed at first contact and never reopened (`workflow.needs_no_check`).
        add(
            "verified_at IS NULL AND NOT (coalesce(assigned_via, '') = ANY(%s) AND reopens = 0)",
            sorted(FIRST_CONTACT),
        )
    start = _day("from", raw.get("from"), tz, end=False)
    end = _day("to", raw.get("to"), tz, end=True)
    if start and end and start >= end:
        raise invalid("to", "结束日期不能早于开始日期")
    if start:
        add("received_at >= %s", start)
    if end:
        add("received_at < %s", end)
    if q := (raw.get("q") or "").strip():
        if len(q) > 100:
            raise invalid("q", "搜索词最多100个字")
        numbers, words = keywords(q)
        # A ticket number, as the resident reads it out (工单号), or its serial's last digits.
        for no in numbers:
            add("ticket_no LIKE %s", no if "-" in no else "%" + no)
        if words:
            # The text lives apart (migrations/0002): its trigram index is not rewritten with the row.
            add(
                "ticket_no IN (SELECT ticket_no FROM ticket_search WHERE "
                + " AND ".join(["search ILIKE %s"] * len(words))
                + ")",
                *(containing(w) for w in words),
            )
    sort = raw.get("sort") or "-received_at"
    if sort not in SORTS:
        raise invalid("sort", f"不支持的排序“{sort}”，可选：{'、'.join(SORTS)}")
    return Search(
        where=" AND ".join(clauses) or "TRUE",
        params=params,
        order_by=SORTS[sort],
        page=page,
        size=size,
    )


_SERIAL = re.compile(r"\d{4,7}")
MAX_KEYWORDS = 5


def keywords(q: str) -> tuple[list[str], list[str]]:
    """The search box's words (separated by spaces, full-width ones too), each of which a ticket
    must match: ticket numbers (20261203-000005, typed with or without the dash or in full-width
    digits, or only its serial's last digits, 000005) and words of its title, text or address.
    Raises DomainError (field `q`) for a word too short to search or too many words."""
    terms = q.split()  # full-width spaces too
    if len(terms) > MAX_KEYWORDS:
        raise invalid("q", f"搜索词最多{MAX_KEYWORDS}个，请用空格分开")
    numbers, words = [], []
    for term in terms:
        # A number read as the lookup page reads one (`clean_ticket_no`); a word keeps its own
        # characters (the text's punctuation is full-width: ， is no ,).
        number = clean_ticket_no(term)
        if re.fullmatch(TICKET_NO_PATTERN, number) or _SERIAL.fullmatch(number):
            numbers.append(number)
        elif len(term) < 2:
            raise invalid("q", f"搜索词至少两个字（“{term}”太短），多个词请用空格分开")
        else:
            words.append(term)
    return numbers, words


def containing(text: str) -> str:
    """An ILIKE pattern matching `text` anywhere, its own % _ and \\ taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# 我上报的: a grid worker's own reports, by where they stand: still with someone (已受理, 待人工派单,
# 已派单, 办理中, 联席会议), or finished by their department (已办结, 回访中, 已关闭), or all of them.
REPORTED_STATES: dict[str, tuple[str, ...]] = {
    "open": tuple(sorted(OPEN_STATUSES)),
    "done": (RESOLVED, SURVEYED, CLOSED),
    "all": (),
}
REPORTED_STATE_NAMES = {"all": "全部", "open": "未办结", "done": "已办结"}
REPORTED_MAX_SIZE = 100
# 人工选定, as the ticket's page says it (`present.grid_chosen_by_desk`): the grid the ticket is in now
# is one the dispatch desk chose, as it dispatched it or later (事发网格: `placed`). Read from the
# events for a page's rows only.
GRID_CHOSEN_SQL = (
    "EXISTS (SELECT 1 FROM ticket_events e WHERE e.ticket_no = tickets.ticket_no "
    "AND ((e.topic = 'ticket.assigned' AND coalesce((e.payload->>'grid_chosen')::boolean, false)) "
    "OR (e.topic = 'ticket.updated' AND e.payload->>'action' = 'placed')) "
    "AND e.payload->>'grid' = tickets.grid)"
)


def reported(reporter: str, state: str | None, *, page: int = 1, size: int = 20) -> Search:
    """The reports `reporter` (a grid worker's 工号, from its credential) filed on patrol, newest
    first, in `state` (REPORTED_STATES; none: all), wherever the desk placed them: the worker's list
    is scoped by who reported, not by grid. Only the patrol channel, the one a grid worker's token
    registers: a hotline operator with the same 工号 is someone else. Reads `tickets_by_operator`."""
    if page < 1:
        raise invalid("page", "页码从1开始")
    if not 1 <= size <= REPORTED_MAX_SIZE:
        raise invalid("size", f"每页条数应在1到{REPORTED_MAX_SIZE}之间")
    state = state or "all"
    if state not in REPORTED_STATES:
        names = "、".join(f"{k}（{n}）" for k, n in REPORTED_STATE_NAMES.items())
        raise invalid("state", f"未知的办理状态“{state}”，可选：{names}")
    clauses: list[str] = ["operator_id = %s", "channel = %s"]
    params: list[Any] = [reporter, "patrol"]
    if statuses := REPORTED_STATES[state]:
        clauses.append("status = ANY(%s)")
        params.append([str(s) for s in statuses])
    return Search(" AND ".join(clauses), params, SORTS["-received_at"], page, size)
