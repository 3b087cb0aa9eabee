"""Residents' progress queries (WeChat, SMS), pure: which messages are queries, and the answer's words."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from services.intake.progress import (
    LISTED,
    QUERY_WORDS,
    RESULT_MAX_CHARS,
    WECHAT_TEXT_BYTES,
    Query,
    TicketProgress,
    _line,
    holder_words,
    parse_query,
    progress_of,
    reply_text,
    step_words,
)
from services.notifier.survey import is_opt_out, parse_reply
from services.notifier.texts import DEFAULT_FILE, NotificationsError, load_texts
from shared.events import Caller, DepartmentRef
from shared.tickets import Status, Ticket

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 23, 2, 5, tzinfo=UTC)  # 10:05 in Beijing

QUERIES = {
    "查询": None,
    "查询。": None,
    " 查进度！": None,
    "进度?": None,
    "办理进度": None,
    "查询进度～": None,
    "请帮我查询一下": None,
    "我的工单": None,
    "🙏查询": None,
    "20261123-000001": "20261123-000001",
    "20261123000001": "20261123-000001",
    "２０２６１１２３－０００００１": "20261123-000001",
    "20261123 — 000001": "20261123-000001",
    "查询 20261123-000001": "20261123-000001",
    "工单号：20261123-000001": "20261123-000001",
    "查询工单号20261123000001。": "20261123-000001",
    "20261123-000001进度": "20261123-000001",
    "20261123-1000001": "20261123-1000001",  # a day past a million appeals
}
NOT_QUERIES = [
    "",
    "1",
    "１",
    "3 没解决",
    "满意",
    "不满意",
    "TD",
    "退订",
    "好",
    "进度太慢了，路灯还没修",
    "查询一下我家门口的路灯什么时候修",
    "进度 谢谢",
    "工单",
    "13812345678",  # a phone number
    "99999999000001",  # fourteen digits that begin with no day
    "20261341000001",  # nor does this (month 13)
    "2026112300001",  # five digits after the day
    "幸福路公交站的站牌被撞坏了，请派人修一下，工单号20261123-000001",
]


@pytest.mark.parametrize(("text", "number"), QUERIES.items())
def test_a_query_is_recognised_with_its_number_as_typed_on_a_phone(text, number):
    assert parse_query(text) == Query(ticket_no=number)


@pytest.mark.parametrize("text", NOT_QUERIES)
def test_anything_else_is_not_a_query(text):
    assert parse_query(text) is None


@pytest.mark.parametrize("text", [*QUERIES, *QUERY_WORDS])
def test_a_query_is_never_a_survey_answer_nor_an_opt_out(text):
    # The SMS endpoint asks for a query before the survey book: this is why a "1" still answers it.
    assert parse_reply(text).rating is None
    assert not is_opt_out(text)


@given(st.text(max_size=60))
def test_what_the_survey_book_would_rate_is_never_a_query(text):
    if parse_reply(text).rating is not None or is_opt_out(text):
        assert parse_query(text) is None


def _ticket(status: Status, **extra) -> Ticket:
    return Ticket(
        ticket_no="20261123-000001",
        status=status,
        channel="wechat",
        text="我叫张三，住阳光花园3号楼2单元501，楼下路灯坏了",
        address="阳光花园3号楼2单元501",
        caller=Caller(caller_id="abc", masked_phone="138****5678"),
        received_at=NOW,
        **extra,
    )


DEPT = DepartmentRef(id="urban_mgmt", name="区城市管理委员会")
HISTORY = [
    {"topic": "appeal.received", "occurred_at": "2026-11-23T02:00:00+00:00"},
    {"topic": "appeal.classified", "occurred_at": "2026-11-23T02:00:01+00:00", "confidence": 0.9},
    {
        "topic": "ticket.assigned",
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
        "occurred_at": "2026-11-23T02:00:02+00:00",
    },
    {"topic": "ticket.updated", "action": "accepted", "occurred_at": "2026-11-23T02:05:00+00:00"},
    {"topic": "ticket.updated", "action": "overdue", "occurred_at": "2026-11-24T02:05:00+00:00"},
]


def test_a_tickets_progress_is_its_status_department_and_last_step_in_words():
    p = progress_of(_ticket(Status.ACCEPTED, department=DEPT), HISTORY, TZ)
    # "overdue" is internal: the last step a resident is told is the department's acceptance.
    assert p == TicketProgress(
        "20261123-000001", "办理中", "区城市管理委员会", "11月23日10:05 承办单位已签收，正在办理"
    )
    fresh = progress_of(_ticket(Status.RECEIVED), HISTORY[:1], TZ)
    assert (fresh.status, fresh.department, fresh.last_step) == (
        "已受理",
        "正在分派",
        "11月23日10:00 诉求已受理",
    )
    # At the dispatch desk the department a classifier guessed is not yet the one handling it.
    review = progress_of(_ticket(Status.REVIEW, department=DEPT), HISTORY[:2], TZ)
    assert (review.status, review.department) == ("已受理", "正在分派")
    assigned = progress_of(_ticket(Status.ASSIGNED, department=DEPT), HISTORY[:3], TZ)
    assert assigned.last_step == "11月23日10:00 已转交承办单位"  # the department is on the line already


def test_the_answer_lists_the_tickets_without_personal_data():
    mine = [
        progress_of(_ticket(Status.ACCEPTED, department=DEPT), HISTORY, TZ),
        TicketProgress("20261122-000007", "已派单", "区市政市容委", ""),
    ]
    text = reply_text(Query(), mine)
    assert text.splitlines()[0] == "您近期的工单："
    assert "1. 工单号20261123-000001，办理中，承办单位：区城市管理委员会，最新进展：11月23日10:05" in text
    assert "2. 工单号20261122-000007，已派单，承办单位：区市政市容委。" in text
    assert text.endswith("发送工单号可查询某一件工单。")
    for private in ("张三", "阳光花园", "5678", "138"):
        assert private not in text
    more = reply_text(Query(), mine[:1] * LISTED, more=2)
    assert more.endswith("另有2件工单未列出，可发送工单号逐件查询。")


def test_on_wechat_each_ticket_carries_a_link_to_its_page_and_sms_none():
    mine = [
        progress_of(_ticket(Status.ACCEPTED, department=DEPT), HISTORY, TZ),
        TicketProgress("20261122-000007", "已派单", "区市政市容委", ""),
    ]

    def link(no: str) -> str:
        return f"https://12345.example.cn/console/lookup?t={no}&e=20600&s=0123456789abcdef"

    listed = reply_text(Query(), mine, link=link).splitlines()
    plain = reply_text(Query(), mine).splitlines()
    assert len(listed) == len(plain) == 4
    for with_link, without, p in zip(listed[1:3], plain[1:3], mine, strict=True):
        # The line as before, then the ticket's own page: WeChat shows 查看详情 and opens the address.
        assert with_link == f'{without}<a href="{link(p.ticket_no)}">查看详情</a>'
    assert (listed[0], listed[3]) == (plain[0], plain[3])
    one = reply_text(Query("20261122-000007"), mine[1:], link=link)
    assert one == (
        "您的工单：工单号20261122-000007，已派单，承办单位：区市政市容委。"
        f'<a href="{link("20261122-000007")}">查看详情</a>'
    )
    # Nothing found, nothing linked.
    assert reply_text(Query("20261122-000009"), [], link=link) == reply_text(Query("20261122-000009"), [])
    assert reply_text(Query(), [], link=link) == reply_text(Query(), [])


def test_links_too_long_for_a_wechat_text_leave_the_most_recent_linked_then_none():
    three = [TicketProgress(f"20261122-00000{i}", "已派单", "区市政市容委", "") for i in range(3)]

    def page(chars: int):
        return lambda no: f"https://12345.example.cn/{'p' * chars}?t={no}"

    fits = reply_text(Query(), three, link=page(500))
    assert fits.count("查看详情") == 3
    assert len(fits.encode()) <= WECHAT_TEXT_BYTES
    # Three such links would not fit: the most recent ticket, listed first, keeps its link.
    one = reply_text(Query(), three, link=page(700))
    assert len(one.encode()) <= WECHAT_TEXT_BYTES
    assert one.count("查看详情") == 1
    assert "查看详情" in one.splitlines()[1]
    assert reply_text(Query(), three, link=page(2100)) == reply_text(Query(), three)
    assert reply_text(Query(three[0].ticket_no), three[:1], link=page(2100)) == reply_text(
        Query(three[0].ticket_no), three[:1]
    )


def test_a_merged_ticket_is_told_by_the_ticket_it_follows_and_nothing_else_of_that_one():
    """并案: the resident follows the main ticket, another resident's: its number, status and
    department only (not its last step, which may be that resident's urge or survey)."""
    mine = _ticket(Status.CLOSED, department=DEPT, merged_into="20261123-000001").model_copy(
        update={"ticket_no": "20261123-000005"}
    )
    theirs = _ticket(Status.ACCEPTED, department=DEPT, merged=("20261123-000005",), urges=2)
    p = progress_of(mine, HISTORY, TZ, theirs)
    assert p == TicketProgress("20261123-000005", "办理中", "区城市管理委员会", "", "20261123-000001")
    text = reply_text(Query("20261123-000001"), [p])
    assert text == (
        "您的工单：工单号20261123-000005，与工单20261123-000001为同一问题，已并入该工单合并办理；"
        "工单20261123-000001办理中，承办单位：区城市管理委员会。"
    )
    for private in ("张三", "阳光花园", "5678", "催办"):
        assert private not in text
    # The main ticket gone from Redis: the resident is still told which ticket they follow.
    gone = reply_text(Query("20261123-000005"), [progress_of(mine, HISTORY, TZ, None)])
    assert gone.endswith("与工单20261123-000001为同一问题，已并入该工单合并办理。")
    merged = {"topic": "ticket.updated", "action": "merged", "merge": {"into": "20261123-000001"}}
    assert step_words(merged) == "与工单20261123-000001为同一问题，已合并办理"
    assert step_words({"topic": "ticket.updated", "action": "duplicate_merged"}) is None  # another's
    carried = {
        "topic": "ticket.updated",
        "action": "remerged",
        "merge": {"into": "20261123-000009", "duplicate": "20261123-000005", "via": "20261123-000001"},
    }
    assert step_words(carried) == "所并入的工单20261123-000001已与工单20261123-000009合并办理"


def test_a_ticket_held_for_a_joint_meeting_and_reassigned_says_why_each_step():
    dept = {"id": "urban_mgmt", "name": "区城市管理委员会"}
    first = {"topic": "ticket.assigned", "via": "rule", "department": dept}
    held = {"topic": "ticket.updated", "action": "escalated", "meeting": {"meeting_id": "M1"}}
    decided = {"topic": "ticket.assigned", "via": "meeting", "department": dept}
    assert [step_words(r) for r in (first, held, decided)] == [
        "已转交承办单位：区城市管理委员会",
        "已提请相关部门召开联席会议，协调确定承办单位",
        "经联席会议协调，已确定承办单位：区城市管理委员会",
    ]
    assert step_words({**first, "via": "reroute"}) == "原承办单位退回，已改派承办单位：区城市管理委员会"
    assert step_words({**first, "via": "redispatch"}, department=False) == "已改派承办单位"
    # A deadline's escalation (督办) is the staff's business, not the resident's.
    supervised = {"topic": "ticket.updated", "action": "escalated", "supervision": {"stage": "resolve"}}
    assert step_words(supervised) is None
    # The survey: a rating is an evaluation, unread words a message kept; none is no step of theirs.
    answered = {"topic": "survey.answered"}
    assert step_words({**answered, "outcome": "answered", "rating": 1}) == "已收到您的评价"
    assert step_words({**answered, "outcome": "comment"}) == "已收到您的留言"
    assert step_words({**answered, "outcome": "no_answer"}) is None


def test_while_a_joint_meeting_decides_the_resident_is_not_told_the_department_it_came_from():
    held = _ticket(Status.MEETING, department=DEPT)
    assert holder_words(held) == "待联席会议确定"
    said = _line(progress_of(held, HISTORY, TZ))
    assert "承办单位：待联席会议确定" in said
    assert "区城市管理委员会" not in said
    assert holder_words(_ticket(Status.ACCEPTED, department=DEPT)) == "区城市管理委员会"
    assert holder_words(_ticket(Status.REVIEW, department=DEPT)) == "正在分派"


def test_a_number_that_is_not_the_senders_is_answered_as_one_that_does_not_exist():
    one = progress_of(_ticket(Status.CLOSED, department=DEPT), HISTORY, TZ)
    answer = reply_text(Query("20261123-000001"), [one])
    assert answer.startswith("您的工单：工单号20261123-000001，已办结，工单已关闭")
    # The caller of the answer passes no ticket for another's number and for a missing one alike.
    missing = reply_text(Query("20261123-000009"), [])
    assert missing.startswith("未找到该用户的工单20261123-000009。")
    assert reply_text(Query("20261123-000001"), []) == missing.replace("000009", "000001")
    assert reply_text(Query(), []).startswith("未找到您近期的工单。已关闭的工单请发送工单号查询")


def test_the_sms_answer_is_a_template_a_city_may_edit(tmp_path: Path):
    texts = load_texts()
    assert texts.render("progress_reply", progress="您近期的工单：…") == "【12345】您近期的工单：…"
    raw = yaml.safe_load(DEFAULT_FILE.read_text(encoding="utf-8"))
    # A city's own file from before the query: the shipped text is used.
    del raw["templates"]["progress_reply"]
    own = tmp_path / "notifications.yaml"
    own.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert load_texts(own).render("progress_reply", progress="X") == "【12345】X"
    # One that leaves the answer out would send residents nothing they asked for.
    raw["templates"]["progress_reply"] = "{signature}请拨打12345查询"
    own.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(
        NotificationsError, match=r"template 'progress_reply' must show the answer \{progress\}"
    ):
        load_texts(own)


def test_a_closed_ticket_is_told_with_its_result_instead_of_its_last_step():
    closed = _ticket(Status.CLOSED, department=DEPT, resolution_note="已更换路灯灯泡，恢复照明。")
    p = progress_of(closed, [*HISTORY, {"topic": "ticket.updated", "action": "closed"}], TZ)
    assert p.result == "已更换路灯灯泡，恢复照明"
    assert _line(p) == (
        "工单号20261123-000001，已办结，工单已关闭，承办单位：区城市管理委员会，"
        "办理结果：已更换路灯灯泡，恢复照明。"
    )
    long = progress_of(_ticket(Status.CLOSED, department=DEPT, resolution_note="修" * 60), HISTORY, TZ)
    assert len(long.result) == RESULT_MAX_CHARS
    assert long.result.endswith("…")
    # Still being handled: no result yet (a note left from before is not the answer).
    again = progress_of(_ticket(Status.ASSIGNED, department=DEPT, resolution_note="已修好"), HISTORY, TZ)
    assert again.result == ""


def test_a_survey_sent_at_night_is_not_told_as_asked_already():
    """The survey's SMS of a ticket resolved at night waits for the morning (quiet hours): the step
    says the rating is the resident's to give, not that they were asked."""
    surveyed = {"topic": "ticket.updated", "action": "surveyed", "occurred_at": "2026-11-23T15:00:00+00:00"}
    p = progress_of(_ticket(Status.SURVEYED, department=DEPT), [*HISTORY[:4], surveyed], TZ)
    assert p.last_step == "11月23日23:00 办理结果待您评价"
    assert "已请您" not in p.last_step
