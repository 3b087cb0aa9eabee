"""The console's pure parts: deadlines as time left, histories as sentences, the grid map, what a
resident's lookup shows, and the templates' escaping."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, date, datetime, timedelta
from html import escape as html_escape
from html import unescape as html_unescape
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import pytest

from services.console import present
from services.console.backend import Reply
from services.console.lookup import (
    COMMENT_MAX,
    RATINGS,
    Answer,
    Refused,
    answer_view,
    clean_last4,
    public_view,
    read_answer,
)
from services.console.views import (
    KNOWLEDGE_DONE,
    LIST_FILTERS,
    NOT_CLOSED,
    co_handlers_of,
    erasure_body,
    erasure_of,
    lead_of,
    list_choices,
    list_errors,
    list_row,
    place_of,
    row,
    templates,
)
from services.notifier import scoring
from services.notifier.surveys import CALL_ANSWER_REQUIRED
from services.router.service import QueueFilter
from shared.city import load_city
from shared.events import Caller, DepartmentRef, SurveyAnswered
from shared.tickets import Status, Ticket, clean_ticket_no
from shared.trend import ranked
from tests.markup import described_by

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def city():
    return load_city()


def test_time_left_and_overdue():
    assert present.time_left(NOW + timedelta(hours=3, minutes=20), NOW) == ("剩余3小时20分", False)
    assert present.time_left(NOW - timedelta(days=1, hours=2), NOW) == ("已超期1天2小时", True)
    assert present.time_left(None, NOW) == ("", False)
    assert present.time_left(NOW - timedelta(seconds=20), NOW) == ("已超期不足1分钟", True)
    assert present.time_left(NOW + timedelta(seconds=20), NOW) == ("剩余不足1分钟", False)
    assert present.time_left(NOW + timedelta(hours=2, seconds=20), NOW) == ("剩余2小时0分", False)


def test_the_deadline_that_matters_follows_the_status():
    ticket = {
        "status": "assigned",
        "respond_by": "2026-03-02T10:00:00+00:00",
        "resolve_by": "2026-03-09T10:00:00+00:00",
    }
    assert present.due_of(ticket) == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert present.due_of({**ticket, "status": "accepted"}) == datetime(2026, 3, 9, 10, tzinfo=UTC)
    assert present.due_of({**ticket, "status": "closed"}) is None
    # Held by a joint meeting: the meeting's deadline, said as such.
    held = {**ticket, "status": "meeting", "meeting_by": "2026-03-05T10:00:00+00:00"}
    assert present.due_of(held) == datetime(2026, 3, 5, 10, tzinfo=UTC)
    assert [present.due_label(t["status"]) for t in (ticket, {"status": "accepted"}, held)] == [
        "签收时限",
        "办结时限",
        "会议时限",
    ]


def test_the_ticket_list_shows_the_deadline_that_applies_not_a_resolve_deadline_that_does_not(city):
    """工单列表's 办结时限: a ticket at the dispatch desk awaits dispatch, and one a joint meeting holds
    runs by the meeting's deadline (会议时限, as its page says); the others keep their resolve deadline."""
    item = {
        "ticket_no": "20260302-000001",
        "status": "accepted",
        "resolve_by": "2026-03-09T10:00:00+00:00",
        "meeting_by": None,
    }
    assert list_row(item, TZ, city)["resolve_due"] == "2026-03-09 18:00"
    assert list_row({**item, "status": "review"}, TZ, city)["resolve_due"] == "待派单"
    held = {**item, "status": "meeting", "meeting_by": "2026-03-05T10:00:00+00:00"}
    assert list_row(held, TZ, city)["resolve_due"] == "会议时限 2026-03-05 18:00"
    # The meeting not yet in the record (its events a moment behind): no date, and no resolve deadline.
    assert list_row({**held, "meeting_by": None}, TZ, city)["resolve_due"] == "待联席会议决定"
    html = tickets_html(city, rows=[list_row(held, TZ, city)], total=1)
    assert re.search(r'<td data-label="办结时限">会议时限 2026-03-05 18:00</td>', html)
    assert "2026-03-09" not in html


def test_history_sentences(city):
    assigned = {
        "topic": "ticket.assigned",
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
        "via": "rule",
        "explanation": "按权责清单派单",
    }
    assert present.describe(assigned, city) == "派单至区城市管理委员会（按权责清单）：按权责清单派单"
    returned = {
        "topic": "ticket.updated",
        "action": "returned",
        "department": {"id": "water", "name": "区水务局"},
        "data": {"reason_name": "不属于本单位职责"},
        "note": "应由供热公司处理",
    }
    assert present.describe(returned, city) == "退单：区水务局，不属于本单位职责，应由供热公司处理"
    resolved = {
        "topic": "ticket.updated",
        "action": "resolved",
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
        "note": "已更换灯泡",
        "photos": ["a" * 32, "b" * 32],
    }
    assert present.describe(resolved, city) == "办结：区城市管理委员会，已更换灯泡，附照片2张"
    # A note ended with a full stop (as staff write one) is not followed by "，" as well.
    ended = {**resolved, "note": "已更换灯头及镇流器，现已恢复照明。"}
    assert (
        present.describe(ended, city) == "办结：区城市管理委员会，已更换灯头及镇流器，现已恢复照明，附照片2张"
    )
    assert (
        present.describe({**ended, "photos": []}, city)
        == "办结：区城市管理委员会，已更换灯头及镇流器，现已恢复照明。"
    )
    received = {"topic": "appeal.received", "photos": ["a" * 32]}
    assert present.describe(received, city) == "受理登记（附照片1张）"
    assert present.describe({"topic": "appeal.received", "photos": []}, city) == "受理登记"
    # An extension request's reason is its note too: said once.
    asked = {
        "topic": "ticket.updated",
        "action": "extension_requested",
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
        "note": "需要更换灯杆",
        "extension": {"days": 3, "reason": "需要更换灯杆"},
    }
    assert present.describe(asked, city).endswith("：区城市管理委员会，3个工作日（需要更换灯杆）")


def test_history_sentences_name_what_each_step_carried(city):
    water, extension = {"id": "water", "name": "区水务局"}, {"days": 5, "reason": "等材料"}
    returned = {
        "topic": "ticket.updated",
        "action": "returned",
        "department": water,
        "note": "应由供热公司处理",
        "returned": {"reason": "not_ours", "reason_name": "不属于本单位职责", "returns": 1},
    }
    assert present.describe(returned, city) == "退单：区水务局，不属于本单位职责，应由供热公司处理"
    extension = {
        "topic": "ticket.updated",
        "action": "extension_requested",
        "department": water,
        "extension": {"days": 3, "reason": "需协调施工队"},
    }
    assert present.describe(extension, city) == "申请延期：区水务局，3个工作日（需协调施工队）"
    overdue = {
        "topic": "ticket.updated",
        "action": "overdue",
        "department": water,
        "supervision": {"stage": "resolve", "stage_name": "办结", "deadline": NOW.isoformat()},
    }
    assert present.describe(overdue, city) == "超期督办：区水务局，办结时限"
    closed = {"topic": "ticket.updated", "action": "closed", "answer": {"rating": 2}}
    assert present.describe(closed, city) == "关闭：回访结果：基本满意"
    # Closed by the survey's end after an erasure: not the resident's opt-out, nor anonymous.
    erased = {"topic": "ticket.updated", "action": "closed", "answer": {"outcome": "erased"}}
    assert present.describe(erased, city) == "关闭：市民个人信息已删除，不再回访"
    urged = {
        "topic": "ticket.updated",
        "action": "urged",
        "actor": "0231",
        "department": water,
        "note": "上周打过电话，还是没人来",
        "urge": {"urges": 2},
    }
    assert present.describe(urged, city) == "来电催办：上周打过电话，还是没人来（第2次，话务员0231）"
    by_desk = {**urged, "actor": city.responsibilities.dispatch_desk, "note": ""}
    assert present.describe(by_desk, city) == "来电催办：（未记录来电内容）（第2次，派单中心）"


def test_the_step_a_survey_answer_took_says_the_rating_in_words_and_the_resident_s_comment(city):
    """关闭 / 重新办理 after the resident's answer, as staff write it: 回访结果 in words (with 问题未解决
    when the answer says so), and 市民意见 only when they said more than their answer. Records
    written before kept the reply as sent in the note: what only repeats the answer is not said."""
    water = {"id": "water", "name": "区水务局"}
    closed = {"topic": "ticket.updated", "action": "closed", "department": water, "answer": {"rating": 1}}
    for note in ("", "1", "满意", "满意，1", "电话回访", "查询页评价"):
        assert present.describe({**closed, "note": note}, city) == "关闭：区水务局；回访结果：满意"
    assert present.describe({**closed, "note": "1 很满意谢谢"}, city) == (
        "关闭：区水务局；回访结果：满意；市民意见：很满意谢谢"
    )
    reopened = {
        "topic": "ticket.updated",
        "action": "reopened",
        "department": water,
        "answer": {"rating": 3, "solved": False, "reopens": 1},
        "note": "路灯还是不亮",
    }
    assert present.describe(reopened, city) == "重新办理：区水务局；回访结果：不满意；市民意见：路灯还是不亮"
    old = {**reopened, "note": "不满意，路灯还是不亮"}  # written before: the reply as sent
    assert present.describe(old, city) == "重新办理：区水务局；回访结果：不满意；市民意见：路灯还是不亮"
    unsolved = {**reopened, "answer": {"rating": 1, "solved": False}, "note": "1 未解决"}
    assert present.describe(unsolved, city) == "重新办理：区水务局；回访结果：满意，问题未解决"


def test_history_sentences_say_how_a_survey_ended_and_what_a_meeting_did_in_words(city):
    answered = {"topic": "survey.answered", "rating": 1, "outcome": "answered"}
    assert present.describe(answered, city) == "市民回复回访：满意"
    # No answer to give: the reason in words, never the outcome's code.
    for outcome, words in present.OUTCOME_NAMES.items():
        ended = {"topic": "survey.answered", "rating": None, "outcome": outcome, "text": ""}
        assert present.describe(ended, city) == f"回访结束：{words}"
        assert outcome not in present.describe(ended, city)
    comment = {"topic": "survey.answered", "rating": None, "outcome": "comment", "text": "灯又坏了"}
    assert present.describe(comment, city) == "市民补充意见：灯又坏了"

    street = {"id": "street_s01", "name": "和平街道办事处"}
    base = {"topic": "meeting.updated", "meeting_id": "M1", "tickets": [], "note": ""}
    checked_in = {**base, "action": "checked_in", "actor": "street_s01", "department": street}
    assert present.describe(checked_in, city) == "联席会议报到：和平街道办事处"
    decided = {**base, "action": "decided", "department": street, "note": "属地牵头"}
    assert present.describe(decided, city) == "联席会议决定：由和平街道办事处主办（属地牵头）"
    attached = {**base, "action": "attached", "tickets": ["20260302-000002", "20260302-000003"]}
    assert present.describe(attached, city) == "联席会议关联工单：20260302-000002、20260302-000003"


def test_a_grid_the_desk_chose_is_shown_as_chosen_by_a_person(city):
    """The grid the dispatch desk chose as it dispatched (the classifier found none) is the ticket's
    place, said to be the desk's choice (人工选定) as a chosen category is: read from the history, which
    the ticket has wherever it is read from."""
    placed = {**DEPARTMENTS_TICKET, "grid": {"grid": "s02c01g02", "method": "desk"}}
    by_desk = {"topic": "ticket.assigned", "via": "operator", "grid": "s02c01g02", "grid_chosen": True}
    by_rule = {"topic": "ticket.assigned", "via": "rule", "grid": "s02c01g02"}
    assert present.grid_chosen_by_desk(placed, [by_rule, by_desk])
    assert not present.grid_chosen_by_desk(placed, [by_rule])
    # A grid chosen, then another one: the ticket's is no longer the desk's choice.
    assert not present.grid_chosen_by_desk({**placed, "grid": {"grid": "s01c01g01"}}, [by_desk])
    assert not present.grid_chosen_by_desk({**placed, "grid": None}, [by_desk])
    assert city.place_name("s02c01g02") == "建设街道/建设社区第二网格"
    assert city.place_name(None) == "未定位"
    html = render_ticket(city, placed, place=city.place_name("s02c01g02"), grid_chosen=True)
    assert '<dd id="ticket-grid">建设街道/建设社区第二网格（人工选定）</dd>' in html
    html = render_ticket(city, placed, place=city.place_name("s02c01g02"), grid_chosen=False)
    assert '<dd id="ticket-grid">建设街道/建设社区第二网格</dd>' in html


def test_a_grid_the_desk_placed_after_the_assignment_is_chosen_by_a_person_and_settles_a_dispute(city):
    """事发网格 after the assignment (`ticket.updated` `placed`): the ticket's grid is the desk's
    choice (人工选定), and the located grid of a disputed place, confirmed so, is no longer said to
    disagree with its address. The history's line is the event's note."""
    located = {"grid": "s01c01g01", "method": "coordinates", "address_grid": "s02c01g01"}
    classified = {"topic": "appeal.classified", "grid": located}
    confirmed = {
        "topic": "ticket.updated",
        "action": "placed",
        "grid": "s01c01g01",
        "note": "事发网格经人工核实为和平街道/和平里社区第一网格（12345派单中心）",
        "place": {"grid": "s01c01g01", "was": "s01c01g01", "confirmed": True},
    }
    desk = {**DEPARTMENTS_TICKET, "grid": {"grid": "s01c01g01", "method": "desk"}}
    assert present.grid_chosen_by_desk(desk, [classified, confirmed])
    assert present.grid_disputed(city, desk, [classified, confirmed]) == ""
    assert present.grid_disputed(city, desk, [classified]) != ""  # not yet confirmed: still said
    assert present.describe(confirmed, city) == confirmed["note"]
    # Placed elsewhere since: that grid is not the one placed.
    assert not present.grid_chosen_by_desk({**desk, "grid": {"grid": "s02c01g02"}}, [confirmed])
    other = {**confirmed, "action": "accepted", "on_time": True}  # another update names the grid too
    assert not present.grid_chosen_by_desk(desk, [other])


def test_the_desk_is_offered_the_citys_grids_to_place_an_assigned_ticket_and_no_one_else_is(city):
    """事发网格 on the ticket's page: the desk's form (a select of every grid, by street and community,
    none chosen) posting to the console; a department reads the place and gets no form."""
    ticket = {**DEPARTMENTS_TICKET, "grid": None}
    form = {"can_place": True, "grid_groups": present.grid_choices(city), "place": "未定位"}
    html = render_ticket(city, ticket, **form)
    found = re.search(
        r'<form method="post" action="/console/tickets/20260302-000003/place".*?</form>', html, re.S
    )
    assert found is not None
    assert "事发位置未定位" in found[0]
    select = re.search(r'<select id="place-grid" name="grid"([^>]*)>(.*?)</select>', found[0], re.S)
    assert select is not None
    assert 'data-required="请在“事发网格”中按街道、社区选择问题所在的网格"' in select[1]
    groups = re.findall(r'<optgroup label="([^"]*)">', select[2])
    assert groups[:2] == ["和平街道/和平里社区", "和平街道/东湖社区"]
    assert len(re.findall(r'<option value="s\d\dc\d\dg\d\d"', select[2])) == len(city.grids)
    assert "selected" not in select[2]
    assert unread(html) == []
    as_department = render_ticket(
        city, ticket, role="department", department="urban_mgmt", handles=True, **form
    )
    assert 'id="place-grid"' not in as_department
    apart = "定位与地址不一致：定位在和平里社区第一网格，地址在建设社区第一网格"
    html = render_ticket(city, ticket, grid_apart=apart, **form)
    assert f"{apart}，请核实后在下方“事发网格”中确认或更正" in html


def test_the_located_grid_chosen_is_said_confirmed_not_changed():
    """After 事发网格: the page says the place was confirmed when the desk chose the grid it was
    located in (经人工核实), else that it changed; by the ticket's last placing."""
    moved = {"action": "placed", "place": {"grid": "s01c01g01", "was": None, "confirmed": False}}
    confirmed = {"action": "placed", "place": {"grid": "s01c01g02", "was": "s01c01g02", "confirmed": True}}
    assert present.placed_done({"history": [{"action": "accepted"}, moved]}) == "place"
    assert present.placed_done({"history": [moved, confirmed]}) == "place_confirmed"
    assert present.placed_done({"history": [confirmed, moved]}) == "place"
    assert present.placed_done({}) == "place"
    assert "已确认事发网格为{place}" in present.DONE["place_confirmed"]


def test_coordinates_and_an_address_in_other_grids_are_said_with_the_grids_names(city):
    """定位与地址不一致 on the ticket's page: where the coordinates (or the reporting worker's grid) put
    it and where its address does, by the grids' full names, read from the ticket's grid (the working
    set) or its last classification (a ticket read back from the record keeps only the place); not
    said when they agree, nor once the desk chose the grid."""
    located = {"grid": "s01c01g01", "method": "coordinates", "address_grid": "s02c01g01"}
    live = {**DEPARTMENTS_TICKET, "grid": located}
    said = "定位与地址不一致：定位在和平里社区第一网格，地址在建设社区第一网格"
    assert present.grid_disputed(city, live) == said
    patrol = {**live, "grid": {**located, "method": "patrol"}}
    assert present.grid_disputed(city, patrol) == (
        "上报网格与地址不一致：网格员所属和平里社区第一网格，地址在建设社区第一网格"
    )
    # From the record: the grid's place only, the classification in the history.
    recorded = {**DEPARTMENTS_TICKET, "grid": {"grid": "s01c01g01", "community": "s01c01", "street": "s01"}}
    classified = {"topic": "appeal.classified", "grid": located}
    assert present.grid_disputed(city, recorded, [classified]) == said
    assert present.grid_disputed(city, recorded, []) == ""
    # They agree, or the classification was of version 1 (nothing looked for): nothing said.
    assert present.grid_disputed(city, {**live, "grid": {**located, "address_grid": None}}) == ""
    assert (
        present.grid_disputed(city, recorded, [{"topic": "appeal.classified", "grid": {"grid": "s01c01g01"}}])
        == ""
    )
    assert present.grid_disputed(city, {**live, "grid": None}) == ""
    # The desk placed it (in the address's grid, or any): the page says 人工选定 instead.
    chosen = {**DEPARTMENTS_TICKET, "grid": {"grid": "s02c01g01", "method": "desk"}}
    by_desk = {"topic": "ticket.assigned", "via": "operator", "grid": "s02c01g01", "grid_chosen": True}
    assert present.grid_disputed(city, chosen, [classified, by_desk]) == ""
    # The desk kept the coordinates' grid as it dispatched (none chosen): still said, for the
    # department and the grid's worker to look at both places.
    kept = {"topic": "ticket.assigned", "via": "operator", "grid": "s01c01g01"}
    assert present.grid_disputed(city, recorded, [classified, kept]) == said

    def told(role: str, status: str = "assigned", **context) -> str:
        """What the page tells this reader to do about the disagreement."""
        t = {**live, "status": status}
        html = render_ticket(city, t, role, place=city.place_name("s01c01g01"), grid_apart=said, **context)
        apart = re.search(r'<dd id="grid-apart" class="warning">([^<]*)</dd>', html)
        assert apart is not None
        return apart[1].removeprefix(said)

    # The desk corrects it below; a department may still return it, until it took it up; the grid's
    # worker looks on the spot; whoever finds it wrong and cannot correct it tells the desk.
    assert told("admin", can_place=True) == "，请核实后在下方“事发网格”中确认或更正"
    assert (
        told("department", department="urban_mgmt", apart_elsewhere=True)
        == "，请核实事发位置，不在本单位辖区的可按“属地（网格）有误”退单"
    )
    # The other place has the same department (a district-wide one): no reason to send it back.
    assert told("department", department="urban_mgmt") == "，请核实事发位置，有误的请告知派单中心更正"
    assert (
        told("department", "accepted", department="urban_mgmt")
        == "，请核实事发位置，有误的请告知派单中心更正"
    )
    assert told("grid_worker") == "，请到现场核实事发位置，有误的请告知派单中心更正"
    # A grid worker's request to correct it waits: every reader is told so, the desk where to decide,
    # and the desk's form has the grid asked for chosen already.
    asked = present.place_request(
        {**live, "place_request": {"grid": "s02c01g01", "by": "W011", "reason": "在建设社区"}}, city
    )
    waiting = f"，网格员W011已申请更正为{asked['place']}，等待派单中心审核"
    assert told("department", department="urban_mgmt", apart_elsewhere=True, place_request=asked) == waiting
    assert told("grid_worker", place_request=asked) == waiting
    assert told("admin", can_place=True, place_request=asked).startswith("，网格员W011已申请更正为")
    html = render_ticket(
        city, live, place=city.place_name("s01c01g01"), grid_apart=said, can_place=True,
        place_request=asked, grid_groups=present.grid_choices(city), grid_id="s01c01g01",
    )  # fmt: skip
    assert 'id="place-asked"' in html
    assert re.search(r'<option value="s02c01g01"[^>]*selected', html), "the grid asked for is chosen"
    waiting = {**live, "status": "review"}
    html = render_ticket(city, waiting, place=city.place_name("s01c01g01"), grid_apart=said)
    assert f"{said}，派单时请在“事发网格”中确认" in html
    html = render_ticket(city, live, place=city.place_name("s01c01g01"), grid_apart="")
    assert 'id="grid-apart"' not in html


def render_ticket(city, ticket, role="admin", department=None, handles=False, meeting_title="", **context):
    who = SimpleNamespace(
        principal=SimpleNamespace(role=role, is_admin=role == "admin", department=department, operator=None),
        csrf="x",
    )
    return templates.get_template("ticket.html").render(
        request=None,
        s=who,
        t=row(ticket, TZ, NOW),
        history=[],
        map=present.grid_map(city, {}),
        grid_name="未定位",
        departments=present.departments_of(city),
        handles=handles,
        meeting_title=meeting_title,
        **({"errors": {}, "values": {}, "kept": {}} | context),  # a refused form's, where given
    )


DEPARTMENTS_TICKET = {
    "ticket_no": "20260302-000003",
    "status": "assigned",
    "text": "光明路的路灯不亮",
    "caller": {"caller_id": "c1", "masked_phone": "138****0000"},
    "confidence": None,
    "received_at": "2026-03-02T08:00:00+00:00",
    "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
}


def test_a_tickets_forms_say_in_the_servers_words_what_a_step_cannot_go_without(city):
    """What the workflow refuses a step without (REQUIRED) is on the field, for the script to ask
    before the step's confirmation: 退单's 说明 only for 诉求分类有误, the disputed rule only for the
    reasons that dispute a list naming the department; 办结's note always."""
    from services.router.workflow import DISPUTES, REQUIRED

    wanted = "权责清单规定由本单位主办（路灯）；如有异议，请写明所争议的规则及理由"
    html = render_ticket(
        city, DEPARTMENTS_TICKET, role="department", department="urban_mgmt", handles=True,
        dispute_wanted=wanted, disputes="|".join(DISPUTES),
    )  # fmt: skip

    def field(fid: str) -> str:
        found = re.search(rf'<(?:textarea|input) id="{fid}"[^>]*>', html)
        assert found is not None, fid
        return html_unescape(found[0])

    note = field("return-note")
    assert f'data-required="{REQUIRED["return.note"]}"' in note
    assert 'data-required-if="reason=wrong_category"' in note
    assert 'data-refused-as="return-note-error"' in note
    rule = field("return-rule")
    assert f'data-required="{wanted}"' in rule
    assert 'data-required-if="reason=not_ours|needs_other"' in rule
    assert 'data-refused-as="return-disputed_rule-error"' in rule
    resolve = field("resolve-note")
    assert f'data-required="{REQUIRED["resolve.note"]}"' in resolve
    # A choice too, asked for in words, not by `required` (the browser's bubble, in its language).
    reason = html_unescape(re.search(r'<select id="return-reason"[^>]*>', html)[0])
    assert f'data-required="{REQUIRED["return.reason"]}"' in reason
    assert 'aria-required="true"' in reason
    assert not re.search(r"\srequired\b", reason)
    assert "data-required-if" not in resolve
    # The list names another department: nothing to dispute, nothing asked.
    plain = render_ticket(city, DEPARTMENTS_TICKET, role="department", department="urban_mgmt", handles=True)
    found = re.search(r'<input id="return-rule"[^>]*>', plain)
    assert found is not None
    assert "data-required" not in found[0]


class _TicketApi:
    """The API as a department reads one ticket: the ticket, with its history; nothing else."""

    def __init__(self, ticket: dict) -> None:
        self.ticket = ticket

    async def get(self, path: str, **params):
        if path == f"/api/v1/tickets/{self.ticket['ticket_no']}":
            return Reply(200, self.ticket)
        return Reply(200, {"to_check_in": 0})  # the menu's count of meetings


async def department_sees(monkeypatch, city, ticket: dict, department: str) -> str:
    """The ticket's page (`views.ticket_page`) as `department` reads it."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    monkeypatch.setattr(views, "api", lambda request, s: _TicketApi(ticket))
    settings = SimpleNamespace(timezone="Asia/Shanghai")
    request = SimpleNamespace(
        query_params={}, app=SimpleNamespace(state=SimpleNamespace(city=city, settings=settings))
    )
    s = Session(token="t", principal=Principal(role="department", department=department), csrf="c")
    return (await views.ticket_page(request, ticket["ticket_no"], s)).body.decode()


def held_ticket(city, category: str, department: str, grid: str = "s01c01g01", **more) -> dict:
    """A ticket `department` holds (已派单) in `grid`, as the API returns it."""
    dept = city.department_by_id[department]
    return {
        **DEPARTMENTS_TICKET,
        "category": category,
        "category_names": list(city.category_names(category)),
        "grid": {"grid": grid, "method": "gazetteer"},
        "department": {"id": dept.id, "name": dept.name},
        "assigned_via": "rule",
        "history": [],
        **more,
    }


@pytest.mark.parametrize(
    ("category", "department", "offered"),
    [
        ("housing.property.fee", "housing", True),  # owners and their property company: a dispute
        ("env.noise", "environment", True),  # a neighbour's noise at night
        ("city.facility.streetlight", "urban_mgmt", False),  # no one's dispute
        ("utility.water", "water", False),
    ],
)
async def test_mediation_is_offered_only_on_a_category_the_city_marks_for_it(
    monkeypatch, city, category, department, offered
):
    """转人民调解 is offered on the ticket's page of the department holding it only where the
    city's data says mediation fits (`mediation: true` in categories.yaml): a water cut or a broken
    street light has no parties to mediate between (the API refuses it too, in words)."""
    assert city.mediable(category) is offered
    html = await department_sees(monkeypatch, city, held_ticket(city, category, department), department)
    assert ('id="mediate"' in html) is offered
    assert ('action="/console/tickets/20260302-000003/mediate"' in html) is offered
    assert 'id="return"' in html  # the department's other forms stay


async def test_a_returns_disputed_rule_is_filled_in_with_the_rule_that_routed_the_ticket(monkeypatch, city):
    """退单's 有异议的权责规则 is filled in, editable, with the rule the ticket was routed here by
    (its last `ticket.assigned`'s `rule`), which a return disputing the list must quote: not typed
    by hand from the refusal. Sent to the desk by another way (人工派单), the rule the list names the
    department by (the refusal's); a department the list does not name is offered none."""
    listed = workflow_listed(city, "city.facility.streetlight", "s01c01g01", "urban_mgmt")
    assert listed == "城市管理/市政设施 → 区城市管理委员会"
    routed = "城市管理/市政设施/路灯故障 → 区城市管理委员会"  # a rule the list had when it was routed
    lamp = "city.facility.streetlight"

    def assigned(dept: str, via: str, rule: str) -> dict:
        name = city.department_by_id[dept].name
        return {
            "topic": "ticket.assigned",
            "department": {"id": dept, "name": name},
            "via": via,
            "rule": rule,
        }

    def field(html: str) -> tuple[str, str, str]:
        label = re.search(r'<label for="return-rule">([^<]*)</label>', html)
        offered = re.search(r'<input type="hidden" name="disputed_rule_offered" value="([^"]*)">', html)
        value = re.search(r'<input id="return-rule"[^>]*value="([^"]*)"', html)
        assert label is not None
        assert offered is not None
        assert value is not None
        return html_unescape(label[1]), html_unescape(offered[1]), html_unescape(value[1])

    by_rule = held_ticket(city, lamp, "urban_mgmt", history=[assigned("urban_mgmt", "rule", routed)])
    label, offered, value = field(await department_sees(monkeypatch, city, by_rule, "urban_mgmt"))
    assert value == offered == routed
    assert label == "有异议的权责规则（如权责清单指定本单位；已填入本工单派单所依据的规则，可修改）"
    # Dispatched by the desk (no rule on the assignment): the list's rule for the department.
    history = [
        assigned("urban_mgmt", "rule", routed),
        assigned("water", "redispatch", ""),
        assigned("urban_mgmt", "operator", ""),
    ]
    by_desk = held_ticket(city, lamp, "urban_mgmt", history=history)
    assert field(await department_sees(monkeypatch, city, by_desk, "urban_mgmt"))[1:] == (listed, listed)
    # A department the list does not name for it: nothing to fill in, said as before.
    elsewhere = held_ticket(city, lamp, "water", history=[assigned("water", "operator", "")])
    assert field(await department_sees(monkeypatch, city, elsewhere, "water")) == (
        "有异议的权责规则（如权责清单指定本单位）",
        "",
        "",
    )
    # A refused return keeps what the field had, emptied or edited, not the rule filled in.
    kept = render_ticket(
        city, DEPARTMENTS_TICKET, role="department", department="urban_mgmt", handles=True,
        offered_rule=routed, values={"return": {"reason": "not_ours", "disputed_rule": ""}},
    )  # fmt: skip
    assert field(kept)[1:] == (routed, "")


@pytest.mark.parametrize(
    ("reason", "typed", "sent"),
    [
        ("not_ours", "R", "R"),  # disputes the list: the rule filled in is the one disputed
        ("needs_other", "R", "R"),
        ("duplicate", "R", ""),  # left as filled in with a reason that disputes nothing: nothing
        ("wrong_grid", "R（限和平街道）有误", "R（限和平街道）有误"),  # typed: said, whatever the reason
        ("not_ours", "", ""),  # emptied: the workflow asks for it
    ],
)
def test_a_return_sends_the_rule_filled_in_only_as_a_dispute(reason, typed, sent):
    from starlette.datastructures import FormData

    from services.console.views import disputed_rule_of

    form = FormData({"reason": reason, "disputed_rule": typed, "disputed_rule_offered": "R"})
    assert disputed_rule_of(form) == sent


def workflow_listed(city, category: str, grid: str, dept: str) -> str:
    from services.router.workflow import listed_rule
    from shared.events import GridMatch

    return listed_rule(city, category, GridMatch(grid=grid, method="gazetteer"), dept)


def test_a_return_is_asked_for_the_rule_only_where_the_list_names_the_department(city):
    from services.router.workflow import dispute_wanted
    from shared.events import GridMatch

    rule = next(r for r in city.responsibilities.rules if not (r.grid or r.community or r.street))
    anywhere = GridMatch(grid=None)
    assert dispute_wanted(city, rule.category, anywhere, rule.lead).startswith("权责清单规定由本单位主办（")
    other = next(d.id for d in city.departments if d.id != rule.lead and d.kind != "dispatch_desk")
    assert dispute_wanted(city, rule.category, anywhere, other) == ""
    assert dispute_wanted(city, None, anywhere, rule.lead) == ""


def test_a_department_summoned_to_a_tickets_meeting_reads_it_without_its_handling_forms(city):
    """吹哨报到: the street office reads the case it is summoned about; only the department that
    handles the ticket gets 签收 and 办结 (the API would refuse the others)."""
    ticket = {**DEPARTMENTS_TICKET, "ticket_no": "20260302-000002", "meeting_id": "M0123456789abcde"}
    summoned = render_ticket(city, ticket, role="department", department="street_s02")
    assert 'id="summoned-only"' in summoned
    assert 'href="/console/meetings/M0123456789abcde"' in summoned  # its own page, listed or not
    assert 'id="accept"' not in summoned
    holder = render_ticket(city, ticket, role="department", department="urban_mgmt", handles=True)
    assert 'id="accept"' in holder
    assert 'id="summoned-only"' not in holder
    co_handled = {**ticket, "co_departments": [{"id": "water", "name": "区水务局"}]}
    assert (lead_of(co_handled), co_handlers_of(co_handled)) == ("urban_mgmt", {"water"})


def test_a_co_handling_department_reads_the_ticket_without_the_leads_forms(city):
    """协办: the workflow lets only the lead act (签收, 办结, 退单, 延期 refused to any other as if
    the ticket did not exist), so a co-handler is not offered them: it reads who co-handles the
    ticket and who handles it. Everyone reads the co-handlers under 承办单位."""
    co_departments = [{"id": "water", "name": "区水务局"}, {"id": "police", "name": "区公安分局"}]
    ticket = {**DEPARTMENTS_TICKET, "co_departments": co_departments}
    co = render_ticket(city, ticket, role="department", department="water", co_handles=True)
    assert 'id="co-departments">区水务局、区公安分局<' in co
    assert 'id="co-handled"' in co
    assert "由主办单位区城市管理委员会办理" in co
    assert 'id="summoned-only"' not in co
    assert 'id="accept"' not in co
    assert 'action="/console/tickets/20260302-000003/' not in co
    lead = render_ticket(city, ticket, role="department", department="urban_mgmt", handles=True)
    assert 'id="accept"' in lead
    assert 'id="co-handled"' not in lead
    assert 'id="co-departments">区水务局、区公安分局<' in render_ticket(city, ticket)
    assert 'id="co-departments"' not in render_ticket(city, DEPARTMENTS_TICKET)


# A ticket a joint meeting holds: the department it names (the one that returned it twice) is
# only summoned to the meeting.
HELD_BY_MEETING = {
    "ticket_no": "20260302-000002",
    "status": "meeting",
    "text": "小区门口垃圾堆积",
    "caller": {"caller_id": "c1", "masked_phone": "138****0000"},
    "confidence": None,
    "received_at": "2026-03-01T08:00:00+00:00",
    "department": {"id": "street_s03", "name": "光明街道办事处"},
    "meeting_id": "M0123456789abcde",
}


def test_a_ticket_held_by_a_joint_meeting_links_it_and_counts_down_to_its_deadline(city):
    """联席会议: the ticket's page links the meeting that holds it (for those who read meetings) and
    its 时限 is the meeting's (会议时限), not a dash; an overdue mark left from the department's
    deadline before the hold does not say the meeting is late."""
    ticket = {
        **HELD_BY_MEETING,
        "meeting_by": (NOW + timedelta(days=2, hours=3)).isoformat(),
        "overdue": True,  # its department's acceptance ran late before the meeting took it
    }
    html = render_ticket(city, ticket)
    meeting = re.search(r'<dd id="meeting">(.*?)</dd>', html, re.S)
    assert meeting is not None
    assert '<a href="/console/meetings/M0123456789abcde">M0123456789abcde</a>' in meeting[1]
    assert "待会议确定主办单位" in meeting[1]
    # Named by what it is about when the meeting could be read, its number beside the name.
    named = render_ticket(city, ticket, meeting_title="光明街道南苑社区第三网格垃圾清运热点")
    link = '<a href="/console/meetings/M0123456789abcde">光明街道南苑社区第三网格垃圾清运热点</a>'
    assert f"{link}（编号M0123456789abcde）" in named
    due = re.search(r"<dt>会议时限</dt><dd>(.*?)</dd>", html, re.S)
    assert due is not None
    assert due[1].strip() == "剩余2天3小时"
    late = render_ticket(city, {**ticket, "meeting_by": (NOW - timedelta(hours=5)).isoformat()})
    assert re.search(r'<dt>会议时限</dt><dd><strong class="overdue">超期</strong> 已超期5小时0分</dd>', late)
    # A grid worker reads the ticket but not meetings: the meeting named, not linked.
    worker = render_ticket(city, ticket, role="grid_worker")
    assert re.search(r'<dd id="meeting">M0123456789abcde（待会议确定主办单位）</dd>', worker)
    # Decided: the ticket went to the lead; the meeting that decided it is still linked.
    decided = {**ticket, "status": "assigned", "meeting_by": None, "overdue": False}
    html = render_ticket(city, {**decided, "respond_by": (NOW + timedelta(hours=4)).isoformat()})
    assert 'href="/console/meetings/M0123456789abcde"' in html
    assert "待会议确定主办单位" not in html
    assert "<dt>签收时限</dt>" in html
    assert 'id="meeting"' not in render_ticket(city, {**decided, "meeting_id": None})


def test_a_ticket_held_by_a_joint_meeting_names_no_department_as_its_lead(city):
    """While a joint meeting decides who leads, the department the ticket still names (the one that
    returned it twice, here) is not its 承办单位: the ticket's page says 待会议确定 and names the
    meeting, and no list row, merge candidate or desk line claims that department either."""
    ticket = {**HELD_BY_MEETING, "meeting_by": (NOW + timedelta(days=2)).isoformat()}
    lead = re.search(r'<dt>承办单位</dt><dd id="ticket-department">(.*?)</dd>', render_ticket(city, ticket))
    assert lead is not None
    assert lead[1] == "待会议确定（联席会议M0123456789abcde）"
    named = render_ticket(city, ticket, meeting_title="工单20260302-000002")
    assert '<dd id="ticket-department">待会议确定（联席会议工单20260302-000002）</dd>' in named
    # Decided, the ticket names its lead again.
    decided = {**ticket, "status": "assigned", "department": {"id": "urban_mgmt", "name": "区城市管理委员会"}}
    assert '<dd id="ticket-department">区城市管理委员会</dd>' in render_ticket(city, decided)
    # The ticket list (as the record lists it: the department's name beside its id).
    item = {
        "ticket_no": ticket["ticket_no"],
        "status": "meeting",
        "department": "street_s03",
        "department_name": "光明街道办事处",
        "meeting_by": ticket["meeting_by"],
    }
    listed = tickets_html(city, rows=[list_row(item, TZ, city)], total=1)
    table = listed[listed.index('<table class="list stack" id="ticket-list">') :]
    assert '<td data-label="承办单位">待会议确定</td>' in table
    assert "光明街道办事处" not in table
    assert list_row({**item, "status": "assigned"}, TZ, city)["department_name"] == "光明街道办事处"
    # The dashboard's overdue list and the desk's lines read the router's tickets (row), the grid
    # worker's own reports the record's (report_row).
    from services.console.reported import report_row

    assert row(ticket, TZ, NOW)["department_name"] == "待会议确定"
    assert report_row(item, TZ, city, NOW)["department_name"] == "待会议确定"
    assert present.holder_name({**ticket, "status": "accepted"}) == "光明街道办事处"
    assert present.holder_name({"status": "review"}) == ""
    # A merge candidate the meeting holds, offered on another ticket's page.
    other = {**DEPARTMENTS_TICKET, "status": "review", "department": None}
    candidate = {**ticket, "status_name": "联席会议", "merged": 0}
    offered = render_ticket(city, other, can_merge=True, merge_candidates=[candidate])
    label = re.search(r'<label for="merge-into-1">(.*?)</label>', offered)
    assert label is not None
    assert label[1].startswith("工单20260302-000002（联席会议，待会议确定）")


def test_a_ticket_whose_personal_data_was_erased_says_so_not_that_the_caller_was_anonymous(city):
    ticket = {
        "ticket_no": "20260302-000001",
        "status": "closed",
        "text": "[已删除]",
        "caller": {"caller_id": "c1", "masked_phone": None},
        "confidence": None,
        "received_at": "2026-03-02T08:00:00+00:00",
    }
    erased = render_ticket(city, {**ticket, "personal_data_removed_at": "2026-03-03T08:00:00+00:00"})
    assert re.search(r'<dd id="caller">\s*\[已删除\]\s*</dd>', erased)
    anonymous = render_ticket(city, ticket)  # no phone was given: anonymous it is
    assert re.search(r'<dd id="caller">\s*匿名\s*</dd>', anonymous)
    with_phone = render_ticket(city, {**ticket, "caller": {"caller_id": "c1", "masked_phone": "138****5678"}})
    assert "138****5678" in with_phone


def test_the_forms_of_an_erased_ticket_say_once_that_what_is_typed_there_is_removed_too(city):
    """Staff wording on an erased ticket is scrubbed as it is saved (it may repeat the resident's
    name): whoever has a form with words to type on it is told so once, above the forms; a reader
    with nothing to type, or a ticket not erased, has no such line."""
    removed = {"personal_data_removed_at": "2026-03-03T08:00:00+00:00", "text": "[已删除]"}
    erased = {**DEPARTMENTS_TICKET, **removed}
    line = (
        "该工单的市民个人信息已按本人申请删除，下方填写的说明、理由提交后也将删除，"
        "需要留存的办理情况请另行记录。"
    )
    handling = render_ticket(city, erased, role="department", department="urban_mgmt", handles=True)
    assert handling.count('id="erased-notes"') == 1
    assert line in handling
    assert handling.index('id="erased-notes"') < handling.index('id="resolve-note"')
    accepted = render_ticket(
        city, {**erased, "status": "accepted"}, role="department", department="urban_mgmt", handles=True
    )
    assert accepted.index('id="erased-notes"') < accepted.index('id="extend-reason"')
    desk = render_ticket(city, erased)  # the desk's 改派 and its reason
    assert 'id="erased-notes"' in desk
    assert 'id="erased-notes"' not in render_ticket(
        city, DEPARTMENTS_TICKET, role="department", department="urban_mgmt", handles=True
    )
    assert 'id="erased-notes"' not in render_ticket(city, {**erased, "status": "closed"})
    summoned = render_ticket(city, erased, role="department", department="water", handles=False)
    assert 'id="erased-notes"' not in summoned


def test_grid_map_draws_every_configured_grid_darkest_where_most(city):
    drawn = present.grid_map(city, {"s01c01g01": 10, "s02c01g01": 1})
    shapes = {s["grid"]: s for s in drawn["shapes"]}
    assert set(shapes) == {g for g, info in city.grids.items() if info.grid.polygon}
    assert shapes["s01c01g01"]["fill"] == present.SHADES[-1]
    assert shapes["s01c01g01"]["ink"] == "#ffffff"
    assert shapes["s02c01g01"]["fill"] not in (present.SHADES[0], present.SHADES[-1])
    assert shapes["s01c01g02"]["fill"] == present.SHADES[0]
    # North up: the demo city's top row (lat 39.96-39.98) is drawn at the top.
    assert min(float(p.split(",")[1]) for p in shapes["s01c01g01"]["points"].split()) == 0


def test_the_grid_map_names_each_grid_in_its_cell_not_its_code(city):
    gid, info = next(iter(city.grids.items()))
    rest = info.grid.name.removeprefix(info.community_name)
    assert present.map_label(city, gid) == [info.community_name, rest]
    assert "".join(present.map_label(city, gid)) == info.grid.name
    svg = templates.get_template("_map.html").render(
        map=present.grid_map(city, {gid: 3}), map_id="m", map_title="各网格派单量"
    )
    written = re.findall(r"<tspan[^>]*>([^<]*)</tspan>", svg)
    assert info.community_name in written
    for code in city.grids:  # the codes are for programs; staff know the grids by name
        assert f">{code}<" not in svg


def test_a_residents_lookup_shows_no_personal_data(city):
    ticket = Ticket(
        ticket_no="20260302-000001",
        status=Status.ACCEPTED,
        channel="hotline",
        text="我叫张三，住阳光花园3号楼2单元，路灯坏了",
        address="阳光花园3号楼2单元501",
        caller=Caller(caller_id="abc", masked_phone="138****5678"),
        received_at=NOW,
        category_names=("城市管理", "市政设施", "路灯故障"),
        department=DepartmentRef(id="urban_mgmt", name="区城市管理委员会"),
        resolve_by=datetime(2026, 3, 9, 10, 0, tzinfo=UTC),
    )
    history = [
        {"topic": "appeal.received", "occurred_at": NOW.isoformat()},
        {"topic": "appeal.classified", "occurred_at": NOW.isoformat(), "confidence": 0.9},
        {"topic": "ticket.assigned", "via": "dispatch_desk", "occurred_at": NOW.isoformat()},
        {"topic": "ticket.updated", "action": "accepted", "occurred_at": NOW.isoformat()},
    ]
    shown = str(public_view(ticket, history, city, TZ))
    assert "张三" not in shown
    assert "阳光花园" not in shown
    assert "5678" not in shown
    assert "办理中" in shown
    assert "承办单位已签收，正在办理" in shown
    assert "正在人工分派承办单位" in shown
    # When it is due, in the city's time, while the department has it; not once it is resolved.
    assert public_view(ticket, history, city, TZ)["due"] == "2026-03-09 18:00"
    resolved = ticket.model_copy(update={"status": Status.RESOLVED})
    assert public_view(resolved, history, city, TZ)["due"] == ""
    # At the desk, its category is a guess still to be confirmed: not told as the category.
    waiting = ticket.model_copy(update={"status": Status.REVIEW})
    assert public_view(waiting, history, city, TZ)["category"] == "分类中"
    # The status in the resident's words, not the centre's (待人工派单, 联席会议, 回访中).
    assert public_view(waiting, history, city, TZ)["status"] == "已受理"
    held = ticket.model_copy(update={"status": Status.MEETING})
    assert public_view(held, history, city, TZ)["status"] == "多部门协调办理中"
    # The meeting decides who handles it: not the department it came from.
    assert public_view(held, history, city, TZ)["department"] == "待联席会议确定"
    assert public_view(ticket, history, city, TZ)["department"] == "区城市管理委员会"
    surveyed = ticket.model_copy(update={"status": Status.SURVEYED, "resolution_note": "已更换灯泡"})
    assert public_view(surveyed, history, city, TZ)["status"] == "已办结，待您评价"


def test_a_resolution_found_not_to_solve_it_is_not_shown_as_the_result(city):
    """Reopened (the resident said it was not solved) or sent back by a grid worker's check, the
    ticket keeps the department's last note; the lookup tells it as the answer before, and that the
    problem is being handled again, not as the result."""
    ticket = Ticket(
        ticket_no="20260302-000002",
        status=Status.RESOLVED,
        channel="hotline",
        text="路灯坏了",
        caller=Caller(caller_id="abc", masked_phone="138****5678"),
        received_at=NOW,
        category_names=("城市管理", "市政设施", "路灯故障"),
        department=DepartmentRef(id="urban_mgmt", name="区城市管理委员会"),
        resolution_note="已恢复正常照明",
    )
    answered = public_view(ticket, [], city, TZ)
    assert (answered["resolution"], answered["previous_resolution"]) == ("已恢复正常照明", "")
    for again in (Status.ASSIGNED, Status.ACCEPTED, Status.MEETING):
        redone = public_view(ticket.model_copy(update={"status": again}), [], city, TZ)
        assert (redone["resolution"], redone["previous_resolution"]) == ("", "已恢复正常照明")
    html = templates.get_template("lookup.html").render(
        request=None, s=None, csrf="x", values={}, errors={}, found={**redone, "steps": []}
    )
    assert "<dt>办理结果</dt>" not in html
    assert "上次答复" in html
    assert "问题未解决，正在重新办理" in html


def test_a_residents_survey_answer_on_the_lookup_page_is_read_and_told_back():
    """The survey's form on the lookup page: the three answers and 问题是否已解决, a comment within
    its length; and the answer recorded, told back with what happens next."""
    assert read_answer("3", "no", " 路灯还是不亮 ") == Answer(3, False, "路灯还是不亮")
    assert read_answer("1", "yes", "") == Answer(1, True, "")
    for rating in ("", "0", "4", "满意", "12"):
        refused = read_answer(rating, "yes", "")
        assert isinstance(refused, Refused)
        assert (refused.status, refused.field) == (422, "rating")
    assert read_answer("2", "", "") == Refused(422, "solved", "请选择问题是否已解决")
    long = read_answer("2", "yes", "很" * (COMMENT_MAX + 1))
    assert isinstance(long, Refused)
    assert long.field == "comment"
    assert str(COMMENT_MAX) in long.message
    assert read_answer("2", "yes", "很" * COMMENT_MAX) == Answer(2, True, "很" * COMMENT_MAX)

    def told(rating, solved, void=False):
        event = SurveyAnswered(
            ticket_no="20260302-000002", survey_id="s", rating=rating, solved=solved, text="", void=void
        )
        return answer_view(event)

    # Counted as any answer: not as 电话回访, which names an operator.
    on_the_page = SurveyAnswered(
        ticket_no="20260302-000002", survey_id="s", rating=3, solved=False, text="", via="lookup"
    )
    assert scoring.fields_for(on_the_page) == ("answered", "unsatisfied")
    assert told(3, False) == {
        "words": "不满意",
        "after": "我们将督促重新办理，办理进展将再次通知您",
        "status": "已评价，将重新办理",
        "other": "",
    }
    assert told(1, False)["words"] == "满意，问题未解决"
    assert "重新办理" in told(1, False)["after"]  # not solved reopens, satisfied or not
    assert told(2, True) == {
        "words": "基本满意",
        "after": "感谢您的评价，本工单办理完毕",
        "status": "已评价，办理完毕",
        "other": "",
    }
    assert "现场核查" in told(1, True, void=True)["after"]
    # Two tabs, each its own choice: the second is shown the first as recorded, and told it is not
    # its own; the same answer sent twice is simply recorded.
    first = SurveyAnswered(ticket_no="20260302-000002", survey_id="s", rating=1, solved=True, text="")
    assert answer_view(first, posted=(1, True))["other"] == ""
    assert "未另行记录" in answer_view(first, posted=(3, False))["other"]
    assert answer_view(first, posted=(3, False))["words"] == "满意"


def test_the_lookup_page_offers_the_survey_only_while_it_is_open(city):
    found = {"ticket_no": "20260302-000002", "status": "已办结，待您评价", "steps": []}
    base = {"request": None, "s": None, "csrf": "x", "errors": {}, "found": found, "ratings": RATINGS}
    render = templates.get_template("lookup.html").render
    values = {"ticket_no": "20260302-000002", "last4": "5678"}
    offered = render(**base, values=values, rate=True, answer_values={}, answer_errors={}, comment_max=300)
    assert 'action="/console/lookup/survey"' in offered
    for words in ("满意", "基本满意", "不满意", "问题是否已解决", 'name="last4" value="5678"'):
        assert words in offered
    assert "survey-form" not in render(**base, values=values, rate=False, answer_values={}, answer_errors={})
    done = render(
        **base,
        values=values,
        answered={"words": "不满意", "after": "已退回承办单位重新办理"},
        answer_errors={},
    )
    assert "您的评价已记录：不满意" in done
    assert "已退回承办单位重新办理" in done
    assert "survey-form" not in done
    closed = render(**base, values=values, rate=False, answer_values={}, answer_errors={"form": "回访已结束"})
    assert "回访已结束" in closed
    assert "survey-form" not in closed


def test_the_survey_on_a_signed_links_page_carries_the_link_not_the_digits():
    """A WeChat resident opened the page by the signed link, with no digits: the survey's form posts
    the link's day and signature (checked again with the answer) and asks for no digits."""
    found = {"ticket_no": "20260302-000002", "status": "已办结，待您评价", "steps": []}
    html = templates.get_template("lookup.html").render(
        request=None, s=None, csrf="x", errors={}, found=found, ratings=RATINGS, comment_max=300,
        values={"ticket_no": "20260302-000002", "last4": ""}, rate=True, answer_values={}, answer_errors={},
        link={"e": "20514", "s": "0123456789abcdef"},
    )  # fmt: skip
    form = re.search(r'<form method="post" action="/console/lookup/survey".*?</form>', html, re.S)
    assert form is not None
    assert '<input type="hidden" name="e" value="20514">' in form[0]
    assert '<input type="hidden" name="s" value="0123456789abcdef">' in form[0]
    assert 'name="last4"' not in form[0]
    assert "公众号" in html  # it says where else they may answer: not the SMS they never had


def test_templates_render_residents_text_as_text():
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    html = templates.get_template("_preview.html").render(
        preview={
            "category": {"names": ["城市管理"], "confidence": 0.9},
            "grid": {"grid": None, "evidence": ""},
            "department": {"name": "区城市管理委员会", "explanation": ""},
            "hint": hostile,
            "duplicates": [
                {"ticket_no": "1", "status": "assigned", "reason": "similar_text", "text": hostile}
            ],
        },
        reply=None,
        status_names={},
    )
    assert "<script>" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def suggests(html: str) -> str:
    """What the preview panel suggests, in the one sentence the script tells when it changes."""
    found = re.findall(r'data-suggests="([^"]*)"', html)
    assert len(found) == 1, found
    return html_unescape(found[0])


def test_the_preview_says_what_it_suggests_in_a_sentence_that_a_confidence_does_not_change():
    preview = {
        "category": {"names": ["城市管理", "路灯"], "confidence": 0.81},
        "grid": {"grid": "g1", "evidence": "阳光花园"},
        "department": {"name": "区城市管理委员会", "explanation": "路灯归城管"},
        "hint": "该问题可能已在办理中，工单号1（已派单）",
        "duplicates": [{"ticket_no": "1", "status": "assigned", "reason": "similar_text", "text": "路灯"}],
        "history": {"last_30_days": 2, "last_365_days": 3, "tickets": [PAST["tickets"][0]]},
        "answers": [{"question": "路灯坏了找谁", "answer": "城管"}],
    }
    render = templates.get_template("_preview.html").render
    names = {"g1": "阳光花园网格"}
    said = suggests(render(preview=preview, reply=None, status_names={}, grid_names=names))
    assert said == (
        "智能提示：建议分类城市管理/路灯；所属网格阳光花园网格；承办单位区城市管理委员会；"
        "请告知来电人：该问题可能已在办理中，工单号1（已派单）；可能重复的工单1件；"
        "来电历史：近30天来电2次；知识库参考答复1条"
    )
    surer = {**preview, "category": {"names": ["城市管理", "路灯"], "confidence": 0.93}}
    assert suggests(render(preview=surer, reply=None, status_names={}, grid_names=names)) == said
    other = {**preview, "department": {"name": "阳光街道办事处", "explanation": ""}}
    assert suggests(render(preview=other, reply=None, status_names={}, grid_names={})) != said
    patrol = render(preview=preview, reply=None, status_names={}, grid_names={}, patrol=True)
    assert "请先核实：" in suggests(patrol)
    assert "知识库" not in suggests(patrol)  # not shown to a grid worker, so not said
    hostile = {**preview, "hint": '"><script>alert(1)</script>'}
    assert '"><script>' not in render(preview=hostile, reply=None, status_names={}, grid_names={})
    away = render(preview=None, reply=SimpleNamespace(message="智能提示暂不可用，可直接提交"))
    assert suggests(away) == "智能提示：智能提示暂不可用，可直接提交"


def test_the_preview_says_where_the_grid_and_the_address_disagree_before_the_report_is_sent(city):
    """定位与地址不一致 in a grid worker's preview: the worker may correct the address before reporting,
    and is told what happens to the report sent as it is: the desk places it when it will wait
    there (`review`), else it goes out by the position. Said in the sentence too."""
    located = {"grid": "s01c01g02", "method": "patrol", "address_grid": "s01c01g01", "evidence": ""}
    preview = {
        "category": {"names": ["城市管理", "路灯"], "confidence": 0.9},
        "grid": located,
        "department": {"name": "区城市管理委员会", "explanation": ""},
        "review": True,
    }
    apart = present.grid_disputed(city, preview)
    assert apart == "上报网格与地址不一致：网格员所属和平里社区第二网格，地址在和平里社区第一网格"
    render = templates.get_template("_preview.html").render

    def told(p: dict, apart: str) -> str:
        html = render(preview=p, reply=None, status_names={}, patrol=True, grid_apart=apart)
        said = re.search(r'<dd id="pv-grid-apart" class="warning">([^<]*)</dd>', html)
        assert said is not None
        assert f"；{apart}" in suggests(html)
        return said[1].removeprefix(apart)

    assert told(preview, apart) == "，请核实地址；按原样上报的，由派单中心确定事发网格"
    by_position = {**preview, "grid": {**located, "method": "coordinates"}, "review": False}
    apart = present.grid_disputed(city, by_position)
    assert apart == "定位与地址不一致：定位在和平里社区第二网格，地址在和平里社区第一网格"
    assert told(by_position, apart) == "，请核实地址；按原样上报的，按定位所在网格派单"
    agree = {**preview, "grid": {**located, "address_grid": None}}
    assert present.grid_disputed(city, agree) == ""
    assert 'id="pv-grid-apart"' not in render(preview=agree, reply=None, status_names={}, grid_apart="")


def test_the_preview_offers_an_operator_to_urge_each_duplicate_and_a_grid_worker_not():
    preview = {
        "category": {"names": ["城市管理"], "confidence": 0.9},
        "grid": {"grid": None, "evidence": ""},
        "department": {"name": "区城市管理委员会", "explanation": ""},
        "duplicates": [
            {
                "ticket_no": "20261123-000001",
                "status": "assigned",
                "reason": "same_caller",
                "text": "路灯",
                "urges": 2,
            },
            {"ticket_no": "20261123-000002", "status": "review", "reason": "similar_text", "text": "路灯"},
        ],
    }
    render = templates.get_template("_preview.html").render
    html = render(preview=preview, reply=None, status_names={})
    assert html.count('formaction="/console/operator/urge"') == 2
    assert 'id="urge-20261123-000002"' in html
    assert "已催办2次" in html
    assert "不会新建工单" in html  # the confirmation says so before anything happens
    assert "/console/operator/urge" not in render(preview=preview, reply=None, status_names={}, patrol=True)
    # The caller's open ticket of another problem: shown as such, not told to the caller.
    other = {**preview, "duplicates": [{**preview["duplicates"][0], "reason": "caller_other"}]}
    assert "同一来电人反映的其他问题" in render(preview=other, reply=None, status_names={})
    # Departments contesting the lead: the operator hears a joint meeting will settle it.
    contested = {**preview, "department": {**preview["department"], "contested_by": ["区供电公司"]}}
    html = render(preview=contested, reply=None, status_names={})
    assert "区供电公司同样可能承办，受理后将召集联席会议确定承办单位" in html
    assert "区供电公司同样可能承办，将召集联席会议" in html  # in the sentence a screen reader is told
    # A joint meeting named the lead for this category in this grid (先例): said, and until when.
    settled = {
        **preview,
        "department": {
            **preview["department"],
            "precedent": {"meeting_id": "M0123456789abcde", "until": "2026-12-23T10:00:00+08:00"},
        },
    }
    html = render(preview=settled, reply=None, status_names={})
    assert (
        "本网格此类诉求已由联席会议（会议编号M0123456789abcde）确定由区城市管理委员会主办，2026-12-23前按此派单"
        in html
    )
    assert "承办单位区城市管理委员会（联席会议已确定）" in html
    assert 'id="pv-precedent"' not in render(preview=preview, reply=None, status_names={})
    # Urgent by the classifier (a gas leak): said, in the panel and in the sentence.
    urgent = render(preview={**preview, "urgent": True}, reply=None, status_names={})
    assert 'id="pv-urgent"' in urgent
    assert "城市管理，紧急；" in urgent
    assert 'id="pv-urgent"' not in render(preview=preview, reply=None, status_names={})
    # No grid for a place several grids have: which they are, to ask the caller.
    tied = {
        **preview,
        "grid": {"grid": None, "evidence": "多个网格都有：幸福里（和平里社区第一网格、建设社区第一网格）"},
    }
    assert (
        "未识别（多个网格都有：幸福里（和平里社区第一网格、建设社区第一网格），请向来电人确认具体位置）"
        in render(preview=tied, reply=None, status_names={})
    )


def test_daily_bars_scale_to_the_busiest_day():
    chart = present.daily_bars([("2026-03-01", 0), ("2026-03-02", 4), ("2026-03-03", 2)], width=300)
    heights = [b["h"] for b in chart["bars"]]
    assert heights == [0, present.CHART_HEIGHT, present.CHART_HEIGHT / 2]
    # Three days: each bar in the middle of its third, no wider than a fortnight's bar.
    w = 300 / present.CHART_WIDEST_DAYS - 2
    assert [b["w"] for b in chart["bars"]] == [round(w, 1)] * 3
    assert [b["x"] for b in chart["bars"]] == [round(i * 100 + (100 - w) / 2, 1) for i in range(3)]
    # A month: the bars fill their days, a point apart.
    month = present.daily_bars([(f"2026-03-{d:02d}", d) for d in range(1, 31)], width=300)
    assert [(b["x"], b["w"]) for b in month["bars"][:2]] == [(1.0, 8.0), (11.0, 8.0)]


def test_desk_suggestions_name_a_department_even_without_a_grid(city):
    leaves = [c for c in city.leaf_categories if c.startswith("city.")][:2]
    ticket = {
        "grid": {"grid": None},
        "top_categories": [
            {"category": leaves[0], "probability": 0.4},
            {"category": leaves[1], "probability": 0.3},
        ],
    }
    suggested = present.suggestions(city, ticket)
    assert [s["category"] for s in suggested] == leaves
    for s in suggested:
        assert s["department"] in city.department_by_id
        assert city.department_by_id[s["department"]].kind != "dispatch_desk"


def test_desk_suggestions_mark_a_department_that_returned_the_ticket(city):
    """A returned ticket back at the desk: the department that returned it is marked (the card then
    offers it only in 其他单位); the categories keep the classifier's order."""
    ticket = {
        "grid": {"grid": None},
        "top_categories": [
            {"category": "city.facility.streetlight", "probability": 0.4},
            {"category": "utility.water", "probability": 0.3},
        ],
    }
    fresh = present.suggestions(city, ticket)
    first, second = (s["department"] for s in fresh)
    assert first != second
    assert [s["returned"] for s in fresh] == [False, False]
    returned = present.suggestions(city, {**ticket, "returned_by": [first]})
    assert [s["category"] for s in returned] == [s["category"] for s in fresh]
    assert [(s["department"], s["returned"]) for s in returned] == [(first, True), (second, False)]


def test_desk_suggestions_leave_out_a_category_returned_as_wrong_and_a_reading_near_zero(city):
    """A department said the ticket is not what its category says (诉求分类有误): that category is no
    suggestion, nor a reading too unlikely to be one (one Enter would send it)."""
    ticket = {
        "grid": {"grid": None},
        "category": "city.facility.manhole",
        "top_categories": [
            {"category": "city.facility.manhole", "probability": 0.98},
            {"category": "utility.water", "probability": 0.015},
        ],
    }
    assert [s["category"] for s in present.suggestions(city, ticket)] == ["city.facility.manhole"]
    wrong = {**ticket, "return_reasons": [{"reason": "wrong_category", "reason_name": "诉求分类有误"}]}
    assert present.suggestions(city, wrong) == []  # the desk picks one from 其他分类
    other = {**ticket, "return_reasons": [{"reason": "not_ours", "reason_name": "不属于本单位职责"}]}
    assert [s["category"] for s in present.suggestions(city, other)] == ["city.facility.manhole"]


def test_a_tickets_returns_are_read_from_its_history_whatever_the_reason():
    """Each 退单 with its department, the reason's name as the event carries it (a reason the console
    has never heard of reads as well), the rule disputed and the note; a record from before events
    carried `returned` kept it all in `data`."""
    water = {"id": "water", "name": "区水务局"}
    history = [
        {"topic": "appeal.received"},
        {
            "topic": "ticket.updated",
            "action": "returned",
            "department": water,
            "note": "井盖属燃气公司",
            "returned": {
                "reason": "not_ours",
                "reason_name": "不属于本单位职责",
                "disputed_rule": "窨井规则",
            },
        },
        {"topic": "ticket.updated", "action": "accepted", "department": water},
        {
            "topic": "ticket.updated",
            "action": "returned",
            "actor": "urban_mgmt",
            "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
            "returned": {"reason": "brand_new", "reason_name": "一个新的退单理由"},
        },
        {
            "topic": "ticket.updated",
            "action": "returned",
            "department": water,
            "data": {"reason": "needs_other", "reason_name": "需其他部门办理", "disputed_rule": "旧规则"},
        },
    ]
    got = present.returns_of(history)
    assert [(r["department"], r["reason_name"], r["disputed_rule"], r["note"]) for r in got] == [
        ("water", "不属于本单位职责", "窨井规则", "井盖属燃气公司"),
        ("urban_mgmt", "一个新的退单理由", "", ""),
        ("water", "需其他部门办理", "旧规则", ""),
    ]
    assert [r["words"] for r in got] == [
        "区水务局退单：不属于本单位职责（争议规则：窨井规则）；说明：井盖属燃气公司",
        "区城市管理委员会退单：一个新的退单理由",
        "区水务局退单：需其他部门办理（争议规则：旧规则）",
    ]
    assert present.returns_of([]) == []


def test_the_lists_refusals_go_beside_their_field_or_above_the_list():
    bad_keyword = Reply(422, {"code": "invalid_filter", "field": "q", "message": "q: 搜索词至少两个字"})
    assert list_errors(bad_keyword) == ({"q": "搜索词至少两个字"}, "")
    too_many = Reply(422, {"code": "too_many_rows", "message": "符合条件的工单有9条，超过单次导出上限5条"})
    assert list_errors(too_many) == ({"form": "符合条件的工单有9条，超过单次导出上限5条"}, "")
    down = Reply(503, {"code": "records_unavailable", "message": "工单档案库（PostgreSQL）暂时无法访问"})
    assert list_errors(down) == ({}, "工单档案库（PostgreSQL）暂时无法访问")


def test_a_listed_tickets_place_is_named(city):
    gid, info = next(iter(city.grids.items()))
    # As every page writes a grid (the grid's own name says its community: not written twice).
    assert place_of({"grid": gid}, city) == city.place_name(gid) == f"{info.street_name}/{info.full_name}"
    assert place_of({"street": info.street_id, "community": info.community_id}, city) == (
        f"{info.street_name}/{info.community_name}"
    )
    assert place_of({"street": info.street_id}, city) == info.street_name
    assert place_of({}, city) == "未定位"


def test_the_ticket_list_renders_residents_text_as_text_and_offers_no_department_to_departments(city):
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    item = {
        "ticket_no": "20260302-000001",
        "status": "assigned",
        "channel": "hotline",
        "title": "",
        "address": hostile,
        "urgent": True,
        "overdue": False,
        "received_at": "2026-03-02T08:00:00+00:00",
    }
    filters = dict.fromkeys(LIST_FILTERS, "")
    department = SimpleNamespace(
        principal=SimpleNamespace(role="department", is_admin=False, department="d1", operator=None), csrf="x"
    )
    html = templates.get_template("tickets.html").render(
        request=None,
        s=department,
        filters={**filters, "q": hostile},
        query={"q": hostile},
        urlencode=urlencode,
        rows=[list_row(item, TZ, city)],
        total=1,
        page_no=1,
        pages=1,
        errors={"q": hostile},
        notice="",
        **list_choices(city),
    )
    assert "<script>" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'id="f-department"' not in html
    assert "/console/tickets/export?q=%3Cscript%3E" in html  # the export keeps the filters, encoded


@pytest.mark.parametrize(("role", "heading"), [("grid_worker", "本网格工单"), ("admin", "工单查询")])
def test_the_ticket_lists_tab_and_heading_say_what_its_menu_entry_says(city, role, heading):
    who = SimpleNamespace(
        principal=SimpleNamespace(role=role, is_admin=role == "admin", department=None, operator=None),
        csrf="x",
    )
    html = templates.get_template("tickets.html").render(
        request=None,
        s=who,
        filters=dict.fromkeys(LIST_FILTERS, ""),
        query={},
        urlencode=urlencode,
        rows=[],
        total=0,
        page_no=1,
        pages=1,
        errors={},
        notice="",
        **list_choices(city),
    )
    assert re.search(r"<title>([^<]*)</title>", html).group(1).startswith(f"{heading} · ")
    assert f"<h1>{heading}</h1>" in html


@pytest.mark.parametrize("role", ["admin", "department", "grid_worker"])
def test_the_ticket_lists_empty_row_spans_the_columns_shown(city, role):
    who = SimpleNamespace(
        principal=SimpleNamespace(role=role, is_admin=role == "admin", department=None, operator=None),
        csrf="x",
    )
    html = templates.get_template("tickets.html").render(
        request=None, s=who, filters=dict.fromkeys(LIST_FILTERS, ""), query={}, urlencode=urlencode,
        rows=[], total=0, page_no=1, pages=1, errors={}, notice="", **list_choices(city),
    )  # fmt: skip
    table = re.search(r'<table class="[^"]*" id="ticket-list">(.*?)</table>', html, re.S)
    assert table is not None
    columns = re.search(r"<thead>(.*?)</thead>", table[1], re.S)[1].count("<th ")
    # 承办单位 for all but a department (its own); the place for all but a grid worker (its grid).
    assert columns == (9 if role == "admin" else 8)
    assert ('<th scope="col">承办单位</th>' in html) == (role != "department")
    assert ('<th scope="col">街道/社区/网格</th>' in html) == (role != "grid_worker")
    assert f'<td colspan="{columns}">没有符合条件的工单</td>' in table[1]
    # A caller's tickets by their number: the desk's search (others see numbers masked).
    assert ('id="f-phone"' in html) == (role == "admin")


def test_the_desks_search_by_number_posts_the_number_and_its_links_carry_only_the_hash(city):
    """The filters are posted (the number typed in no URL: the browser's history, a proxy's log);
    the list of a caller's tickets keeps the caller's hash and the masked number in its links and
    in the form, with a way back to every caller's."""
    from services.console.views import by_caller

    wanted = by_caller("138 1234 5678")
    assert wanted["caller_shown"] == "138****5678"
    assert "13812345678" not in wanted["caller"]
    who = SimpleNamespace(
        principal=SimpleNamespace(role="admin", is_admin=True, department=None, operator=None), csrf="x"
    )
    filters = {**dict.fromkeys(LIST_FILTERS, ""), "caller": wanted["caller"], "status": "closed"}
    query = {"caller": wanted["caller"], "status": "closed", "caller_shown": "138****5678"}
    html = templates.get_template("tickets.html").render(
        request=None, s=who, filters=filters, query=query, caller_shown="138****5678", urlencode=urlencode,
        rows=[], total=0, page_no=1, pages=1, errors={}, notice="", **list_choices(city),
    )  # fmt: skip
    form = re.search(r'<form method="post" action="/console/tickets/search"[^>]*>(.*?)</form>', html, re.S)
    assert form is not None
    assert '<input type="hidden" name="csrf" value="x">' in form[1]
    assert f'<input type="hidden" name="caller" value="{wanted["caller"]}">' in form[1]
    assert 'name="phone"' in form[1]
    assert "当前只查来电号码138****5678的工单" in html
    assert 'href="/console/tickets?status=closed">不限来电号码</a>' in html
    assert "筛选（已选2项）" in html  # the caller and the status, not the masked number beside it


def test_the_grid_dropdowns_group_the_grids_by_community_and_name_each_once(city):
    """和平里社区/和平里社区第一网格 said the community twice: the grids are grouped by community
    (<optgroup>), each by its own name, which already names it; a grid whose name does not (第一网格)
    keeps its community's before it, as the closed list shows the option alone."""
    groups = present.grid_choices(city)
    assert [gid for _, grids in groups for gid, _ in grids] == list(city.grids)  # each grid, once
    gid, info = next(iter(city.grids.items()))
    assert groups[0][0] == f"{info.street_name}/{info.community_name}"
    assert groups[0][1][0] == (gid, info.grid.name)
    for _, grids in groups:
        for g, name in grids:
            assert name.count(city.grids[g].community_name) == 1
    bare = SimpleNamespace(
        grid=SimpleNamespace(name="第一网格"), community_id="c9", community_name="幸福社区"
    )
    plain_city = SimpleNamespace(grids={"g9": SimpleNamespace(**vars(bare), street_name="和平街道")})
    assert present.grid_choices(plain_city) == [("和平街道/幸福社区", [("g9", "幸福社区/第一网格")])]

    department = SimpleNamespace(
        principal=SimpleNamespace(role="department", is_admin=False, department="d1", operator=None),
        csrf="x",
    )
    listed = templates.get_template("tickets.html").render(
        request=None, s=department, filters={**dict.fromkeys(LIST_FILTERS, ""), "grid": gid}, query={},
        urlencode=urlencode, rows=[], total=0, page_no=1, pages=1, errors={}, notice="", **list_choices(city),
    )  # fmt: skip
    queue = templates.get_template("department.html").render(
        request=None, s=department, rows=[], total=0, page_no=1, pages=1, page_query=lambda n: "",
        filters={"grid": gid}, department="区水务局", done="", statuses=[], grids=list_choices(city)["grids"],
    )  # fmt: skip
    for html in (listed, queue):
        select = re.search(r'<select id="f-grid" name="grid"[^>]*>(.*?)</select>', html, re.S)
        assert select is not None
        assert f'<optgroup label="{info.street_name}/{info.community_name}">' in select[1]
        assert select[1].count("<optgroup") == len(groups)
        assert f'<option value="{gid}" selected>{info.grid.name}</option>' in select[1]
        assert f"{info.community_name}/{info.community_name}" not in select[1]


def meeting(city, **changes):
    summoned = [d for d in city.departments if d.kind != "dispatch_desk"][:2]
    leaf = city.leaf_categories[0]
    grid = next(iter(city.grids))
    return {
        "meeting_id": "M1",
        "reason_name": "同一网格同类诉求集中（热点）",
        "status": "open",
        "summoned": [{"id": d.id, "name": d.name, "checked_in": False} for d in summoned],
        "tickets": ["20260302-000001"],
        "category": leaf,
        "grid": grid,
        "deadline": "2026-03-05T08:00:00+00:00",
        "lead": None,
        "note": "",
        **changes,
    }


def render_meetings(city, meetings, role="admin", department=None):
    desk = SimpleNamespace(
        principal=SimpleNamespace(role=role, is_admin=role == "admin", department=department, operator=None),
        csrf="x",
    )
    return templates.get_template("meetings.html").render(
        request=None,
        s=desk,
        meetings=[present.meeting_row(m, city, TZ) for m in meetings],
        total=len(meetings),
        open_count=len(meetings),
        page_no=1,
        pages=1,
        error="",
        done="",
    )


def test_a_meetings_lead_is_chosen_among_those_summoned_and_named_once_decided(city):
    open_meeting = meeting(city)
    html = render_meetings(city, [open_meeting])
    options = re.findall(r'<option value="([^"]*)">', html)
    # No department chosen for the desk: an empty choice first, then only those summoned.
    assert options == ["", *(d["id"] for d in open_meeting["summoned"])]
    assert "2026-03-05 16:00" in html  # the deadline in local time
    assert "/".join(city.category_names(open_meeting["category"])) in html

    lead = open_meeting["summoned"][1]
    decided = render_meetings(city, [meeting(city, status="decided", lead=lead["id"], note="牵头处理")])
    assert f"主办单位：{lead['name']}（牵头处理）" in decided
    assert f"主办单位：{lead['id']}" not in decided
    assert "记录决定" not in decided  # decided once: no second decision offered


def test_a_decided_meeting_says_the_precedent_it_set_and_until_when(city):
    """先例: a decision names the lead for the meeting's category in its grid, and the router sends
    the next confident appeals of that cluster to it for `meeting_precedent_days` (30 in the demo
    city): the meeting's card, on the list and on its own page, says so, and until when."""
    lead = meeting(city)["summoned"][1]
    decided = meeting(
        city,
        status="decided",
        lead=lead["id"],
        decided_at="2026-03-02T02:00:00+00:00",
        tickets=["20260302-000001"],
    )
    assert city.sla.supervision.meeting_precedent_days == 30
    said = f"先例：此后30天内本网格同类诉求直接派给{lead['name']}（至2026-04-01）"
    shown = f'<p class="precedent" id="precedent-M1">{said}</p>'
    now = datetime(2026, 3, 3, tzinfo=UTC)
    own = templates.get_template("meeting.html").render(
        request=None,
        s=staff("admin"),
        m=present.meeting_row(decided, city, TZ, now),
        page_no=1,
        own_page=True,
    )
    assert shown in own
    assert shown in render_meetings(city, [decided])
    # Its days up: said as over, not as a rule still in force.
    over = present.precedent_words(decided, city, TZ, datetime(2026, 4, 2, tzinfo=UTC))
    assert over == f"先例：决定后30天内本网格同类诉求直接派给{lead['name']}（已于2026-04-01到期）"
    # None set: an open meeting, one with no grid or category, a city that keeps no precedents.
    assert 'class="precedent"' not in render_meetings(city, [meeting(city)])
    assert present.precedent_words({**decided, "grid": None}, city, TZ, now) == ""
    assert present.precedent_words({**decided, "category": None}, city, TZ, now) == ""
    sla = city.sla.model_copy(
        update={"supervision": city.sla.supervision.model_copy(update={"meeting_precedent_days": 0})}
    )
    assert present.precedent_words(decided, city.model_copy(update={"sla": sla}), TZ, now) == ""


def test_a_ticket_routed_by_a_meetings_precedent_says_so_in_its_history(city):
    """The next appeal of the cluster, routed by the precedent, says in its history (its 派单 line)
    which meeting decided its lead, as the router's explanation gives it."""
    from services.router import workflow
    from services.router.rules import Precedent, routing_for
    from services.router.sla import deadlines
    from shared.events import CategoryScore
    from tests.router_factory import T0, classified

    smoke = "env.air"
    appeal = classified(city, smoke, "s01c01g01", confidence=0.9)
    set_by = Precedent(
        category=smoke,
        grid="s01c01g01",
        lead="urban_enforcement",
        meeting_id="M0123456789abcde",
        decided_at=T0 - timedelta(days=2),
    )
    top = (CategoryScore(category=smoke, probability=0.9),)
    routing, _ = routing_for(city, smoke, appeal.grid, 0.9, 0.5, top, precedent=set_by, now=T0)
    due = deadlines(city, smoke, False, T0, TZ, department=routing.lead)
    out = workflow.assign(None, appeal, routing, due, city, tz=TZ)
    (assigned,) = [e for e in out.publish if e.topic == "ticket.assigned"]
    line = present.describe({**assigned.model_dump(mode="json"), "topic": assigned.topic}, city)
    lead = city.department_by_id["urban_enforcement"].name
    assert line.startswith(f"派单至{lead}（")
    assert f"：按联席会议（会议编号M0123456789abcde）确定的主办单位派单：{lead}（" in line


def test_a_meetings_forms_return_to_the_page_they_were_used_on(city):
    """On its own page a meeting's forms say so (`back`), and what came of them is said there, in
    its card; on the list they keep the list's page."""
    from services.console.views import meeting_back

    m = present.meeting_row(meeting(city), city, TZ)
    own = templates.get_template("meeting.html").render(
        request=None, s=staff("admin"), m=m, page_no=1, own_page=True, said_in="M1", done="已记录"
    )
    assert '<input type="hidden" name="back" value="meeting">' in own
    assert 'name="page"' not in own
    assert re.search(r'<p class="ok" id="meeting-done"[^>]*>已记录', own)
    listed = render_meetings(city, [meeting(city)])
    assert '<input type="hidden" name="page" value="1">' in listed
    assert 'name="back"' not in listed
    back = meeting_back("M1", {"back": "meeting"}, done="联席会议M1已记录决定")
    assert (
        back.headers["location"]
        == f"/console/meetings/M1?{urlencode({'done': '联席会议M1已记录决定'})}#meeting-done"
    )
    refused = meeting_back("M1", {"back": "meeting"}, error="请先选择主办单位")
    assert refused.headers["location"].startswith("/console/meetings/M1?error=")
    assert (
        meeting_back("M1", {"page": "2"}, done="x")
        .headers["location"]
        .startswith("/console/meetings?page=2&")
    )


def test_a_meeting_is_named_by_what_it_is_about(city):
    hot = meeting(city, reason="hotspot")
    grid = city.grids[hot["grid"]].grid.name
    leaf = city.category_names(hot["category"])[-1]
    assert present.meeting_title(hot, city) == f"{grid}{leaf}热点"
    contested = meeting(city, reason="ambiguous", tickets=["20260302-000001", "20260302-000002"])
    assert present.meeting_title(contested, city) == "工单20260302-000001等2件"
    assert (
        present.meeting_title({**contested, "tickets": contested["tickets"][:1]}, city)
        == "工单20260302-000001"
    )
    html = render_meetings(city, [hot])
    assert f"<h2>{grid}{leaf}热点 · 同一网格同类诉求集中（热点） · 召集中" in html
    assert "编号M1" in html  # said on the phone as a last resort, and searched for


def test_a_meeting_of_many_tickets_lists_its_first_few_and_its_own_page_all(city):
    """A hotspot's meeting may gather hundreds of appeals: the list shows the first 12 and the way
    to all of them, on the meeting's own page."""
    many = [f"20260302-{i:06d}" for i in range(1, 301)]
    listed = render_meetings(city, [meeting(city, tickets=many)])
    assert re.findall(r'href="/console/tickets/(\d{8}-\d{6})"', listed) == many[:12]
    assert "关联工单（300件）" in listed
    assert '<a href="/console/meetings/M1" id="all-tickets-M1">查看全部300件关联工单</a>' in listed
    desk = SimpleNamespace(
        principal=SimpleNamespace(role="admin", is_admin=True, department=None, operator=None), csrf="x"
    )
    m = present.meeting_row(meeting(city, tickets=many), city, TZ)
    own = templates.get_template("meeting.html").render(request=None, s=desk, m=m, page_no=1)
    assert re.findall(r'href="/console/tickets/(\d{8}-\d{6})"', own) == many
    assert "查看全部" not in own
    few = render_meetings(city, [meeting(city)])
    assert "关联工单（1件）" in few
    assert "查看全部" not in few


def test_a_meeting_read_from_the_record_says_so_on_its_own_page(city):
    """A meeting that has left Redis with its tickets is read from the record (`archived`): its page
    shows it as the list did, and says where it comes from."""
    desk = SimpleNamespace(
        principal=SimpleNamespace(role="admin", is_admin=True, department=None, operator=None), csrf="x"
    )
    lead = meeting(city)["summoned"][0]

    def render(**changes) -> str:
        m = present.meeting_row(meeting(city, status="decided", lead=lead["id"], **changes), city, TZ)
        return templates.get_template("meeting.html").render(request=None, s=desk, m=m, page_no=1)

    archived = render(archived=True)
    assert 'id="meeting-archived"' in archived
    assert 'id="meeting-M1"' in archived
    assert f"主办单位：{lead['name']}" in archived
    assert 'href="/console/tickets/20260302-000001"' in archived
    assert "记录决定" not in archived
    assert 'id="meeting-archived"' not in render()


def test_a_department_that_checked_in_is_told_so_and_offered_no_second_check_in(city):
    open_meeting = meeting(city)
    first, second = open_meeting["summoned"]
    waiting = render_meetings(city, [open_meeting], role="department", department=first["id"])
    assert 'action="/console/meetings/M1/checkin"' in waiting
    assert "本单位已报到" not in waiting

    checked = meeting(city, summoned=[{**first, "checked_in": True}, second])
    done = render_meetings(city, [checked], role="department", department=first["id"])
    assert 'action="/console/meetings/M1/checkin"' not in done
    assert "本单位已报到" in done
    # Another department's check-in is not this one's.
    other = render_meetings(city, [checked], role="department", department=second["id"])
    assert 'action="/console/meetings/M1/checkin"' in other
    # The check-in comes back to the page it was made on.
    assert '<input type="hidden" name="page" value="1">' in other


def test_a_refusal_by_the_apis_schema_tells_staff_what_to_fill_in():
    fields = {"reason": "延期理由", "days": "延长工作日数"}
    schema = "请求参数reason不符合要求（String should have at least 1 character），请按接口文档填写"
    assert present.refusal("reason", "invalid_request", schema, fields, {"reason": " "}, "reason") == {
        "reason": "请填写延期理由"
    }
    too_many = present.refusal("days", "invalid_request", "请求参数days…", fields, {"days": "99"}, "reason")
    assert too_many == {"days": "延长工作日数不符合要求，请检查后重新填写"}
    # What the value should be, when the API says it: the range a form without the browser's checks
    # (an old page, a script) was refused by.
    said = present.refusal(
        "days", "invalid_request", "请求参数days…", fields, {"days": "45"}, "reason", expected="不能大于30"
    )
    assert said == {"days": "延长工作日数不能大于30"}
    # The API's own refusals are already in words for staff: shown as they are.
    late = "已超过签收时限，不能退单；请签收办理或申请延期"
    assert present.refusal(None, "window_closed", late, fields, {}, "reason") == {"reason": late}


def test_every_field_the_api_found_at_fault_is_said_beside_its_own():
    from services.console.backend import Reply
    from services.console.views import KNOWLEDGE_FIELDS, field_errors

    problems = [
        {"error": "question_required", "field": "question", "message": "请填写问题"},
        {"error": "answer_required", "field": "answer", "message": "请填写答复内容"},
        {"error": "department_required", "field": "department", "message": "请选择负责单位"},
    ]
    refused = Reply(
        422,
        {"error": "question_required", "field": "question", "message": "请填写问题", "problems": problems},
    )
    assert field_errors(refused, KNOWLEDGE_FIELDS, "form") == {
        "question": "请填写问题",
        "answer": "请填写答复内容",
        "department": "请选择负责单位",
    }


def test_a_residents_ticket_number_is_read_as_typed_on_a_phone():
    for typed in (
        "20261201-000123",
        " 20261201 - 000123 ",
        "20261201000123",
        "２０２６１２０１－０００１２３",
        "20261201—000123",
    ):
        assert clean_ticket_no(typed) == "20261201-000123"
    assert clean_ticket_no("") == ""
    assert clean_last4(" ５６７８ ") == "5678"


def test_a_departments_queue_pages_keep_its_filters():
    from urllib.parse import urlencode

    dept = SimpleNamespace(
        principal=SimpleNamespace(
            role="department", is_admin=False, department="water", operator=None, grid=None
        ),
        csrf="x",
    )
    filters = {"grid": "s01c01g02", "overdue": "1"}
    html = templates.get_template("department.html").render(
        request=None,
        s=dept,
        rows=[],
        total=120,
        page_no=2,
        pages=3,
        page_query=lambda n: urlencode([*sorted(filters.items()), ("page", n)]),
        filters=filters,
        department="区水务局",
        done="",
        statuses=[],
        grids=[],
    )
    assert "共 120 件，按办理时限排序，第 2/3 页" in html
    assert 'href="/console/department?grid=s01c01g02&amp;overdue=1&amp;page=1" rel="prev"' in html
    assert 'href="/console/department?grid=s01c01g02&amp;overdue=1&amp;page=3" rel="next"' in html


def test_a_check_on_the_spot_in_words_for_staff_and_for_the_resident(city):
    """现场核查: staff read who checked, what was seen and where it went; the resident the outcome
    alone (the worker's words are for staff)."""
    base = {"topic": "ticket.updated", "action": "verified", "actor": "W017", "occurred_at": NOW.isoformat()}
    dept = {"id": "urban_mgmt", "name": "区城市管理委员会"}
    solved = {**base, "verification": {"solved": True}, "note": "", "department": dept}
    assert present.describe(solved, city) == "网格员W017现场核查：已解决"
    unsolved = {**solved, "verification": {"solved": False}, "note": "灯还是不亮", "photos": ["a" * 32]}
    assert present.describe(unsolved, city) == (
        "网格员W017现场核查未解决：灯还是不亮（附照片1张），退回区城市管理委员会重新办理"
    )
    ticket = {"verification": "not_solved", "verified_by": "W017", "verified_at": NOW.isoformat()}
    assert present.verified_line(ticket, TZ) == "未解决，已退回重办（网格员W017，2026-03-02 16:00）"
    assert present.verified_line({"verification": None}, TZ) == ""
    done = Ticket(
        ticket_no="20260302-000002",
        status=Status.ASSIGNED,
        channel="patrol",
        text="巡查发现路灯不亮",
        received_at=NOW,
    )
    shown = str(public_view(done, [solved, unsolved], city, TZ))
    assert "网格员已现场核查，问题已解决" in shown
    assert "网格员现场核查发现问题未解决，已退回承办单位重新办理" in shown
    assert "灯还是不亮" not in shown


def test_a_residents_lookup_shows_a_mediations_outcome_but_not_its_agreement(city):
    mediated = Ticket(
        ticket_no="20260302-000003",
        status=Status.RESOLVED,
        channel="hotline",
        text="楼上邻居深夜噪音",
        received_at=NOW,
        resolution_note="调解员分别听取双方意见后组织面对面调解",
        mediation_outcome="agreed",
        mediation_agreement="楼上住户22时后不再大声放音乐",
    )
    shown = public_view(mediated, [], city, TZ)
    assert shown["mediation"] == "调解成功，达成协议"
    assert "22时后" not in str(shown)  # the terms name the parties: staff read them, not the page
    assert (
        public_view(mediated.model_copy(update={"mediation_outcome": None}), [], city, TZ)["mediation"] == ""
    )


def test_an_answer_taken_on_the_phone_names_the_operator(city):
    by_sms = {"topic": "survey.answered", "rating": 1, "outcome": "answered"}
    assert present.describe(by_sms, city) == "市民回复回访：满意"
    assert present.describe({**by_sms, "rating": 3, "by": "op09"}, city) == "电话回访（话务员op09）：不满意"


def test_an_answer_says_whether_the_problem_is_solved_as_its_confirmation_did(city):
    answered = {"topic": "survey.answered", "rating": 1, "outcome": "answered"}
    assert present.describe({**answered, "solved": True}, city) == "市民回复回访：满意"
    assert present.describe({**answered, "solved": False}, city) == "市民回复回访：满意，问题未解决"
    unsatisfied = {**answered, "rating": 3, "solved": True, "via": "lookup"}
    assert present.describe(unsatisfied, city) == "市民在查询页评价：不满意，问题已解决"


def test_a_desk_card_names_the_tickets_of_its_grid_and_category_already_being_handled():
    """并案 from the desk's queue: the tickets it may repeat, before it is dispatched again."""
    desk = SimpleNamespace(
        principal=SimpleNamespace(role="admin", is_admin=True, department=None, operator=None, grid=None),
        csrf="x",
    )
    card = {
        "ticket_no": "20261201-000009",
        "text": "8号楼西侧路灯坏了",
        "flags": [],
        "suggestions": [],
        "handled_nearby": [
            {
                "ticket_no": "20261201-000003",
                "status_name": "办理中",
                "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
                "text": "和平里小区8号楼西侧的路灯坏了三天了",
            }
        ],
    }
    plain = {**card, "ticket_no": "20261201-000010", "handled_nearby": []}
    section = {"items": [card, plain], "total": 2, "page_no": 1, "pages": 1}
    html = templates.get_template("desk.html").render(
        request=None,
        s=desk,
        sections={"low": section, "unrouted": {"items": [], "total": 0, "page_no": 1, "pages": 1}},
        extensions=[],
        returned={"items": [], "total": 0, "page_no": 1, "pages": 1},
        categories=[],
        departments=[],
        grid_names={},
    )
    hint = re.search(r'<p class="warning" id="nearby-20261201-000009">(.*?)</p>', html, re.S)
    assert hint is not None
    assert "同网格、同分类正在办理1件" in hint.group(1)
    assert 'href="/console/tickets/20261201-000003"' in hint.group(1)
    assert "（办理中，区城市管理委员会）" in hint.group(1)
    assert 'href="/console/tickets/20261201-000009#merge-title"' in hint.group(1)
    assert 'id="nearby-20261201-000010"' not in html  # nothing being handled nearby: no hint


class _DeskApi:
    """The API as the dispatch desk sees it: one card waiting, nothing else; what was posted kept."""

    def __init__(self, card: dict, assign: Reply, reasons: dict[str, list[dict]] | None = None) -> None:
        self.card, self.assign, self.posted = card, assign, []
        self.reasons, self.asked_why = reasons or {}, []

    def waiting(self) -> list[dict]:
        return [self.card]

    def asking(self) -> list[dict]:
        """The departments' tickets with an extension request waiting for the desk."""
        return []

    async def followed(self, *, page: int, size: int) -> Reply:
        """As the API picks them out: every extension request, and a page of the returned tickets
        (those waiting at the desk, here)."""
        returned = [t for t in self.waiting() if t.get("returns")]
        shown = returned[(page - 1) * size : page * size]
        body = {"tickets": shown, "total": len(returned), "page": page, "size": size}
        return Reply(200, {"extensions": self.asking(), "returned": body})

    async def dispatch_section(self, *, low: bool, page: int, size: int, ticket: str = "") -> Reply:
        """As the API splits and pages them (the settings' threshold below is 0.6)."""
        items = [
            t for t in self.waiting() if (t.get("confidence") is not None and t["confidence"] < 0.6) == low
        ]
        at = next((i for i, t in enumerate(items) if t["ticket_no"] == ticket), None)
        page = at // size + 1 if at is not None else min(page, max(1, -(-len(items) // size)))
        return Reply(
            200, {"tickets": items[(page - 1) * size : page * size], "total": len(items), "page": page}
        )

    async def post(self, path: str, body=None, headers=None):
        self.posted.append(path)
        if path.endswith("/assign"):
            return self.assign
        return Reply(200, {"results": []})  # the cards' merge candidates

    async def get(self, path: str, **params):
        return Reply(200, {"total": 0})  # the menu's count of callbacks due

    async def return_reasons(self, no: str) -> list[dict]:
        self.asked_why.append(no)
        return self.reasons.get(no, [])


async def test_a_returned_tickets_card_says_why_and_offers_its_department_only_in_the_full_list(
    monkeypatch, city
):
    """退单 back at the desk: its card says who returned it, why, the rule disputed and the note
    (read from its history once, for the card and the 退单工单 table alike), and the department
    that returned it is no one-click button, only a choice in 其他单位 marked 已退回; a card no
    department returned asks nothing and offers its departments as ever."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    tops = [
        {"category": "city.facility.streetlight", "probability": 0.4},
        {"category": "utility.water", "probability": 0.3},
    ]
    waiting = {"status": "review", "text": "路灯坏了，井盖也松了", "confidence": 0.3, "top_categories": tops}
    first, second = (sg["department"] for sg in present.suggestions(city, waiting))
    no, plain = "20261201-000031", "20261201-000032"
    returned = {**waiting, "ticket_no": no, "returns": 1, "returned_by": [first]}
    why = {
        "department": first,
        "department_name": city.department_by_id[first].name,
        "reason_name": "一个新的退单理由",
        "disputed_rule": "路灯归属规则",
        "note": "灯杆属供电公司",
    }
    words = present.return_words(why)

    class TwoCards(_DeskApi):
        def waiting(self) -> list[dict]:
            return [returned, {**waiting, "ticket_no": plain}]

    fake = TwoCards(returned, Reply(200, {}), reasons={no: [{**why, "words": words}]})
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    state = SimpleNamespace(city=city, settings=settings)
    request = SimpleNamespace(query_params={}, app=SimpleNamespace(state=state))
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    html = (await views.desk_page(request, s)).body.decode()

    assert fake.asked_why == [no]  # once, for its card and its row; the other card asks nothing
    card = html[html.index(f'id="desk-{no}"') : html.index(f'id="desk-{plain}"')]
    told = re.search(rf'<div class="warning" id="returns-{no}">(.*?)</div>', card, re.S)
    assert told is not None
    assert html_escape(words, quote=False) in told[1]
    for said in ("一个新的退单理由", "路灯归属规则", "灯杆属供电公司"):  # the reason, the rule, the note
        assert said in words
    name = city.department_by_id[first].name
    hint = re.search(rf'<p class="muted" id="returned-hint-{no}">([^<]*)</p>', card)
    assert hint is not None
    assert hint[1].startswith(f"{name}已退回此工单")
    buttons = re.findall(r'<button type="submit" name="department" value="([^"]+)" class="dept"[^>]*>', card)
    assert buttons == [second]
    assert f'<option value="{first}">{name}（已退回）</option>' in card
    # The other card: nothing returned, every suggested department a button, none marked.
    other = html[html.index(f'id="desk-{plain}"') : html.index('id="extensions"')]
    assert f'id="returns-{plain}"' not in other
    assert "returned-hint" not in other
    assert re.findall(r'name="department" value="([^"]+)" class="dept"[^>]*>', other) == [first, second]
    assert "（已退回）" not in other
    # The 退单工单 table says it too.
    table = html[html.index('id="returned"') :]
    assert html_escape(words, quote=False) in table


@pytest.mark.parametrize(
    ("kept", "first"),
    [
        ({}, 0),  # the page as it opens: the first category checked, its department first
        ({"category": "utility.water"}, 1),  # a refused dispatch back with the second one picked
        ({"category": "city.facility.streetlight", "category_other": "utility.water"}, 1),  # 其他分类
        ({"category": "utility.water", "category_other": "env.noise"}, None),  # no button: as it was
    ],
)
async def test_the_desks_first_department_button_is_the_chosen_categorys(monkeypatch, city, kept, first):
    """Tab then Enter sends a ticket to the first department button (the desk's keyboard path): the
    server puts first the department suggested for the category the form would send (其他分类's
    over the radio's), the rest in the classifier's order; a category with no button leaves that
    order. Each button names its category (console.js reorders by it as the choice changes)."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    no = "20261201-000041"
    tops = [
        {"category": "city.facility.streetlight", "probability": 0.4},
        {"category": "utility.water", "probability": 0.3},
    ]
    card = {"ticket_no": no, "status": "review", "text": "路灯不亮，水也停了", "confidence": 0.3}
    card["top_categories"] = tops
    suggested = present.suggestions(city, card)
    departments = [sg["department"] for sg in suggested]
    assert len(set(departments)) == 2
    fake = _DeskApi(card, Reply(200, {}))
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    state = SimpleNamespace(city=city, settings=settings)
    query = {"error": "未派出", "ticket": no, **kept} if kept else {}
    request = SimpleNamespace(query_params=query, app=SimpleNamespace(state=state))
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    html = (await views.desk_page(request, s)).body.decode()

    card_html = html[html.index(f'id="desk-{no}"') :]
    buttons = re.findall(
        r'<button type="submit" name="department" value="([^"]+)" class="dept" data-category="([^"]+)"[^>]*>'
        r"([^<]*)</button>",
        card_html,
    )
    order = [0, 1] if first in (0, None) else [1, 0]
    assert [(d, c) for d, c, _ in buttons] == [(departments[i], suggested[i]["category"]) for i in order]
    for dept, category, label in buttons:  # each names the category it is for, wherever it stands
        assert label == f"{city.department_by_id[dept].name}（{city.category_names(category)[-1]}）"
    checked = re.findall(r'<input type="radio"[^>]*value="([^"]*)" checked>', card_html)
    assert checked == [kept.get("category", tops[0]["category"])]


async def test_a_stale_button_refusal_offers_the_button_of_the_category_chosen_in_other(monkeypatch, city):
    """The desk chose a category in 其他分类 that has no button of its own (none of the classifier's
    readings), a grid, and a department for it as the card was drawn (a button the card came back
    with, or the script's answer for another grid): `stale_suggestion` refuses it, saying the
    buttons now follow the grid. They must: the card comes back with that category's department at
    that grid first (focused: Enter sends it), not with the same buttons, whose first is refused
    again and again. The radios stay the classifier's readings."""
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    no, grid, other = "20261201-000042", "s01c01g01", "city.appearance.street_vending"
    tops = [
        {"category": "housing.property.service", "probability": 0.16},
        {"category": "city.facility.road_damage", "probability": 0.09},
    ]
    card = {"ticket_no": no, "status": "review", "text": "小区门口的事一直没人管", "confidence": 0.16}
    card["top_categories"] = tops
    first = present.suggestions(city, card)[0]["department"]
    form = FormData(
        {"category": tops[0]["category"], "category_other": other, "grid": grid, "department": first}
    )
    said = views.stale_suggestion(city, no, form, other)
    expected = present.likely_department(city, other, present.grid_match(city, grid))
    assert city.department_by_id[expected].name in said

    fake = _DeskApi(card, Reply(200, {}))
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    state = SimpleNamespace(city=city, settings=settings)
    query = {"error": said, "ticket": no, "field": "suggested", "category": tops[0]["category"]}
    query |= {"category_other": other, "grid": grid}
    request = SimpleNamespace(query_params=query, app=SimpleNamespace(state=state))
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    html = (await views.desk_page(request, s)).body.decode()

    card_html = html[html.index(f'id="desk-{no}"') :]
    buttons = re.findall(
        r'<button type="submit" name="department" value="([^"]+)" class="dept" '
        r'data-category="([^"]+)"([^>]*)>',
        card_html,
    )
    assert buttons[0][:2] == (expected, other)
    assert f'id="dept-first-{no}"' in buttons[0][2]
    assert "autofocus" in buttons[0][2]
    radios = re.findall(r'<input type="radio" id="cat-[^"]+" name="category" value="([^"]+)"', card_html)
    assert radios == [t["category"] for t in tops]
    # Pressed again, the new first button is what the grid's rules name: nothing stale to refuse.
    again = FormData(
        {"category": tops[0]["category"], "category_other": other, "grid": grid, "department": expected}
    )
    assert views.stale_suggestion(city, no, again, other) == ""


async def test_the_desk_lists_calls_answered_on_the_spot_that_were_reopened(monkeypatch, city):
    """A call answered on the spot (直接答复) whose resident answered 不满意 is reopened at the desk,
    as 已派单: in neither of its lists of tickets to dispatch, and no department has it. The desk's
    page lists it under 当场答复重办, linked to the ticket's 改派, and counts it in the page's menu."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    no = "20261203-000006"
    card = {"ticket_no": "20261201-000043", "status": "review", "text": "路灯不亮", "confidence": 0.3}
    reopened = {
        "ticket_no": no,
        "status": "assigned",
        "text": "我的社保卡丢了，想问一下怎么补办",
        "category_names": ["劳动社保", "社保医保"],
        "received_at": "2026-12-03T11:28:20Z",
        "respond_by": "2099-12-03T11:33:12Z",
        "flags": ["重办"],
        "reopens": 1,
    }

    class Reopened(_DeskApi):
        async def followed(self, *, page: int, size: int) -> Reply:
            reply = await super().followed(page=page, size=size)
            return Reply(200, {**reply.body, "reopened": [reopened]})

    monkeypatch.setattr(views, "api", lambda request, s: Reopened(card, Reply(200, {})))
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    request = SimpleNamespace(
        query_params={}, app=SimpleNamespace(state=SimpleNamespace(city=city, settings=settings))
    )
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    html = (await views.desk_page(request, s)).body.decode()

    assert '<a href="#reopened">当场答复重办（1）</a>' in html
    section = html[html.index('<section id="reopened">') : html.index('<section id="extensions">')]
    assert f'<a href="/console/tickets/{no}#redispatch-department">{no}</a>' in section
    assert "改派" in section
    assert "劳动社保/社保医保" in section
    # Nothing reopened: said so, and the menu counts none.
    monkeypatch.setattr(views, "api", lambda request, s: _DeskApi(card, Reply(200, {})))
    html = (await views.desk_page(request, s)).body.decode()
    assert '<a href="#reopened">当场答复重办（0）</a>' in html
    assert "没有需要重办的当场答复工单" in html


@pytest.mark.parametrize(
    ("form", "assign", "said"),
    [  # a suggestion picked, no department chosen: refused by the console, the API not asked
        ({"category": "city.facility.road_damage"}, None, "请先在“其他单位”中选择承办单位"),
        # one from 其他分类 and a department the API refuses (the ticket moved on meanwhile)
        (
            {
                "category": "city.facility.streetlight",
                "category_other": "env.noise",
                "department_other": "water",
            },
            Reply(409, {"error": "conflict", "message": "工单20261201-000009当前状态为“已派单”，不能派单"}),
            "不能派单",
        ),
    ],
)
async def test_a_refused_dispatch_comes_back_to_its_card_with_the_category_picked(
    monkeypatch, city, form, assign, said
):
    """派单 is two steps, a category then a department: a refusal (the department forgotten, or the
    API's) comes back to the card with the refusal there and the category still picked."""
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    no = "20261201-000009"
    card = {
        "ticket_no": no,
        "status": "review",
        "text": "8号楼西侧路灯坏了",
        "confidence": 0.3,
        "top_categories": [
            {"category": "city.facility.streetlight", "probability": 0.4},
            {"category": "city.facility.road_damage", "probability": 0.3},
        ],
    }
    fake = _DeskApi(card, assign)
    monkeypatch.setattr(views, "api", lambda request, s: fake)

    async def posted(request, s):
        return FormData(list(form.items()))

    monkeypatch.setattr(views, "checked_form", posted)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    state = SimpleNamespace(city=city, settings=settings)
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    back = await views.desk_assign(SimpleNamespace(query_params={}, app=SimpleNamespace(state=state)), no, s)
    assert back.status_code == 303
    assert (f"/api/v1/dispatch/{no}/assign" in fake.posted) is (assign is not None)
    where = urlsplit(back.headers["location"])
    # To the card's department select, which the fragment focuses (the card's would take the focus).
    assert (where.path, where.fragment) == ("/console/desk", f"dept-{no}")

    query = dict(parse_qsl(where.query))
    request = SimpleNamespace(query_params=query, app=SimpleNamespace(state=state))
    html = (await views.desk_page(request, s)).body.decode()
    card_html = html[html.index(f'id="desk-{no}"') :]
    refusal = re.search(rf'(<p class="error" role="alert" id="assign-error-{no}"[^>]*>)([^<]*)<', card_html)
    assert refusal is not None
    assert said in refusal[2]
    # Read with the department list it describes (below), which takes the focus: said only if not.
    assert refusal[1] == told(html, html_unescape(refusal[2]))
    assert "autofocus" not in refusal[1]
    assert html.count('role="alert"') == 1  # said on the card, not again above the page
    assert unread(html) == []
    radios = re.findall(r'<input type="radio"[^>]*value="([^"]*)" ?(checked)?>', card_html)
    assert [v for v, checked in radios if checked] == [form["category"]]
    other = re.search(rf'<select id="cat-{no}-other".*?</select>', card_html, re.S)[0]
    assert re.findall(r'<option value="([^"]*)" selected>', other) == (
        [form["category_other"]] if "category_other" in form else []
    )
    assert f'aria-describedby="assign-error-{no}" autofocus' in card_html  # the department next


class _PlacingDeskApi(_DeskApi):
    """The desk's API, keeping what each dispatch posted."""

    def __init__(self, card: dict, assign: Reply) -> None:
        super().__init__(card, assign)
        self.bodies: list[dict] = []

    async def post(self, path: str, body=None, headers=None):
        if path.endswith("/assign"):
            self.bodies.append(body)
        return await super().post(path, body, headers)


class _DeskPages:
    """The desk as an admin sees it, over `_PlacingDeskApi` holding one card: its page (with the
    address's query) and a dispatch (with the posted form)."""

    def __init__(self, monkeypatch, city, card: dict, reply: Reply) -> None:
        from services.console import views
        from services.console.session import Session
        from shared.auth import Principal

        self.views, self.monkeypatch = views, monkeypatch
        self.api = _PlacingDeskApi(card, reply)
        monkeypatch.setattr(views, "api", lambda request, s: self.api)
        settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
        self.state = SimpleNamespace(city=city, settings=settings)
        self.session = Session(token="t", principal=Principal(role="admin"), csrf="c")

    async def page(self, query: dict | None = None) -> str:
        request = SimpleNamespace(query_params=query or {}, app=SimpleNamespace(state=self.state))
        return (await self.views.desk_page(request, self.session)).body.decode()

    async def assign(self, no: str, form: list[tuple[str, str]], query: dict | None = None):
        """`query`: the address posted to (a one-click button's `?for=`, its category)."""
        from starlette.datastructures import FormData

        async def posted(request, s):
            return FormData(form)

        self.monkeypatch.setattr(self.views, "checked_form", posted)
        request = SimpleNamespace(query_params=query or {}, app=SimpleNamespace(state=self.state))
        return await self.views.desk_assign(request, no, self.session)


@pytest.mark.parametrize("grid", [None, "s02c01g02"])
async def test_the_desk_card_offers_the_grids_by_street_and_community(monkeypatch, city, grid):
    """事发网格 on each card: a ticket the classifier could not place says so and offers the city's
    grids, grouped by street and community (none chosen until the desk chooses one); a placed one
    names its grid as the choice that changes nothing. What the desk chooses goes to the API."""
    no = "20261201-000051"
    card = {"ticket_no": no, "status": "review", "text": "那边路灯不亮", "confidence": 0.3}
    card |= {"top_categories": [{"category": "city.facility.streetlight", "probability": 0.4}]}
    card["grid"] = {"grid": grid, "method": "gazetteer" if grid else "none"}
    desk = _DeskPages(monkeypatch, city, card, Reply(200, {"department": {"name": "区城市管理委员会"}}))
    html = await desk.page()
    card_html = html[html.index(f'id="desk-{no}"') : html.index('id="extensions"')]
    select = re.search(rf'<select id="grid-{no}" name="grid"[^>]*>(.*?)</select>', card_html, re.S)
    assert select is not None
    label = re.search(rf'<label for="grid-{no}">([^<]*)</label>', card_html)
    assert label is not None
    first = re.search(r'<option value="">([^<]*)</option>', select[1])
    assert first is not None
    if grid is None:
        assert (label[1], first[1]) == ("网格未定位，请按地址选择", "暂不选择（仍为未定位）")
    else:
        assert (label[1], first[1]) == ("网格（如有误，请按地址改选）", "（不改：建设社区第二网格）")
    groups = re.findall(r'<optgroup label="([^"]*)">', select[1])
    assert groups[:2] == ["和平街道/和平里社区", "和平街道/东湖社区"]
    assert len(groups) == sum(len(c.communities) for c in city.district.streets)
    assert len(re.findall(r'<option value="s\d\dc\d\dg\d\d"', select[1])) == len(city.grids)
    assert "selected" not in select[1]  # nothing chosen for the desk
    assert "aria-invalid" not in select[0]

    form = [("category", "city.facility.streetlight"), ("department", "urban_mgmt"), ("grid", "s03c02g01")]
    done = await desk.assign(no, form)
    assert done.status_code == 303
    assert desk.api.bodies[-1]["grid"] == "s03c02g01"


async def test_a_one_click_department_of_another_place_than_the_grid_chosen_comes_back(monkeypatch, city):
    """The buttons name the departments of the place the card was drawn for. Choosing 事发网格 where
    the responsibility list names another department (南苑's market: 光明街道's cleaners, not the
    city's) and pressing the button sends nothing: the card comes back with that grid's department
    first, focused, saying why. 其他单位 stays the desk's own choice, sent as chosen."""
    no = "20261201-000054"
    card = {"ticket_no": no, "status": "review", "text": "市场旁边垃圾没人收", "confidence": 0.3}
    card |= {"top_categories": [{"category": "city.appearance.garbage", "probability": 0.4}]}
    card["grid"] = {"grid": None, "method": "none"}
    desk = _DeskPages(monkeypatch, city, card, Reply(200, {"department": {"name": "光明街道办事处"}}))
    html = await desk.page()
    first = re.search(rf'<button [^>]*value="([^"]+)"[^>]*id="dept-first-{no}"', html)
    assert first is not None
    assert first[1] == "urban_mgmt"  # garbage, anywhere but 南苑's market
    form = [("category", "city.appearance.garbage"), ("grid", "s03c02g03")]
    back = await desk.assign(no, [*form, ("department", "urban_mgmt")])
    assert desk.api.bodies == []  # nothing sent
    where = urlsplit(back.headers["location"])
    assert (where.path, where.fragment) == ("/console/desk", f"dept-first-{no}")
    html = await desk.page(dict(parse_qsl(where.query)))
    card_html = html[html.index(f'id="desk-{no}"') : html.index('id="extensions"')]
    assert "“垃圾清运”由光明街道办事处承办，一键派单按钮已按该网格更新" in html_unescape(card_html)
    button = re.search(rf'<button [^>]*value="([^"]+)"[^>]*id="dept-first-{no}"([^>]*)>', card_html)
    assert button is not None
    assert button[1] == "street_s03"
    assert button[2].strip() == f'aria-describedby="assign-error-{no}" autofocus'
    assert html.count("autofocus") == 1
    await desk.assign(no, [*form, ("department", "street_s03")])  # the grid's own: sent
    await desk.assign(no, [*form, ("department", ""), ("department_other", "urban_mgmt")])  # 其他单位
    assert [(b["department"], b["grid"]) for b in desk.api.bodies] == [
        ("street_s03", "s03c02g03"),
        ("urban_mgmt", "s03c02g03"),
    ]


async def test_a_department_button_dispatches_under_the_category_it_names(monkeypatch, city):
    """Each one-click button names a department with the category it is for (住建局（物业服务）).
    The desk picked 占道经营 in 其他分类, chose no grid, and pressed the (物业服务) button: the
    ticket goes under 物业服务, as the button said, not to 住建局 as 占道经营; what was done says the
    category used and that the one picked was not. 其他单位 (no button of a category) sends the
    category picked, as ever; a button of the category picked says nothing more."""
    no, other = "20261201-000055", "city.appearance.street_vending"
    service, road = "housing.property.service", "city.facility.road_damage"
    card = {"ticket_no": no, "status": "review", "text": "小区门口的事一直没人管", "confidence": 0.16}
    card["top_categories"] = [
        {"category": service, "probability": 0.16},
        {"category": road, "probability": 0.09},
    ]
    housing = present.suggestions(city, card)[0]["department"]
    names = city.category_names(service)
    sent = Reply(200, {"department": {"name": "区住房和城乡建设局"}, "category_names": list(names)})
    desk = _DeskPages(monkeypatch, city, card, sent)
    html = await desk.page()
    card_html = html[html.index(f'id="desk-{no}"') : html.index('id="extensions"')]
    buttons = re.findall(
        r'<button type="submit" name="department" value="([^"]+)" class="dept" data-category="([^"]+)" '
        r'formaction="([^"]+)"[^>]*>([^<]*)</button>',
        card_html,
    )
    assert buttons[0] == (
        housing,
        service,
        f"/console/desk/{no}/assign?for={service}",
        "区住房和城乡建设局（物业服务）",
    )
    assert all(action.endswith(f"?for={category}") for _, category, action, _ in buttons)

    picked = [("category", service), ("category_other", other)]
    done = await desk.assign(no, [*picked, ("department", housing)], {"for": service})
    assert desk.api.bodies[-1]["category"] == service  # the button's, not 占道经营
    said = dict(parse_qsl(urlsplit(done.headers["location"]).query))["done"]
    assert (
        said
        == f"工单{no}已派至区住房和城乡建设局（分类：物业服务），按所按按钮的分类派出，未采用所选的“占道经营”"
    )
    # The button of the category picked: nothing more to say.
    done = await desk.assign(no, [("category", service), ("department", housing)], {"for": service})
    assert desk.api.bodies[-1]["category"] == service
    assert dict(parse_qsl(urlsplit(done.headers["location"]).query))["done"] == (
        f"工单{no}已派至区住房和城乡建设局（分类：物业服务）"
    )
    # 其他单位: any department, under the category picked (其他分类's over the radio's).
    await desk.assign(no, [*picked, ("department", ""), ("department_other", housing)])
    assert (desk.api.bodies[-1]["department"], desk.api.bodies[-1]["category"]) == (housing, other)
    # A category the city does not have in the address is no button's: the category picked.
    await desk.assign(no, [*picked, ("department", housing)], {"for": "no.such"})
    assert desk.api.bodies[-1]["category"] == other

    # Refused by the API: the card comes back with the button's category chosen, the desk's last
    # choice, in 其他分类 (where a category with no reading of its own has its button offered).
    desk.api.assign = Reply(409, {"error": "conflict", "message": f"工单{no}当前状态为“已派单”，不能派单"})
    back = await desk.assign(
        no, [("category", road), ("category_other", other), ("department", housing)], {"for": service}
    )
    query = dict(parse_qsl(urlsplit(back.headers["location"]).query))
    assert (query["category"], query["category_other"]) == (road, service)
    html = await desk.page(query)
    card_html = html[html.index(f'id="desk-{no}"') : html.index('id="extensions"')]
    chosen = re.search(rf'<select id="cat-{no}-other".*?</select>', card_html, re.S)[0]
    assert re.findall(r'<option value="([^"]*)" selected>', chosen) == [service]
    first = re.search(rf'data-category="([^"]+)"[^>]*id="dept-first-{no}"', card_html)
    assert first is not None
    assert first[1] == service


async def test_a_stale_button_is_judged_by_the_category_it_names(monkeypatch, city):
    """A button pressed with a grid chosen whose responsibility list names another department for
    the button's category is stale, whatever was picked above: the refusal names the button's
    category, and the card comes back with it chosen, its department at that grid first."""
    no, grid = "20261201-000056", "s03c02g03"  # 南苑's market: 光明街道 clears its garbage
    garbage, other = "city.appearance.garbage", "city.appearance.street_vending"
    card = {"ticket_no": no, "status": "review", "text": "市场旁边垃圾没人收", "confidence": 0.3}
    card |= {
        "top_categories": [{"category": garbage, "probability": 0.4}],
        "grid": {"grid": None, "method": "none"},
    }
    desk = _DeskPages(monkeypatch, city, card, Reply(200, {"department": {"name": "光明街道办事处"}}))
    form = [("category", garbage), ("category_other", other), ("grid", grid), ("department", "urban_mgmt")]
    back = await desk.assign(no, form, {"for": garbage})
    assert desk.api.bodies == []
    query = dict(parse_qsl(urlsplit(back.headers["location"]).query))
    assert "“垃圾清运”由光明街道办事处承办" in query["error"]
    assert query["category_other"] == garbage
    html = await desk.page(query)
    button = re.search(
        rf'<button [^>]*value="([^"]+)" class="dept" data-category="([^"]+)"[^>]*id="dept-first-{no}"', html
    )
    assert button is not None
    assert (button[1], button[2]) == ("street_s03", garbage)


async def test_the_desk_card_says_where_the_coordinates_and_the_address_disagree(monkeypatch, city):
    """A ticket held at the desk because its address names another grid than its coordinates says
    so on its card, by the grids' names, and 事发网格 is described by it: the desk picks the grid
    there. A card without a disagreement says nothing of the kind."""
    no = "20261201-000053"
    card = {"ticket_no": no, "status": "review", "text": "楼上邻居半夜吵闹", "confidence": 0.95}
    card |= {"top_categories": [{"category": "safety.disputes", "probability": 0.95}]}
    card["address"] = "建设街道建设里小区"
    card["grid"] = {"grid": "s01c01g01", "method": "coordinates", "address_grid": "s02c01g01"}
    desk = _DeskPages(monkeypatch, city, card, Reply(200, {"department": {"name": "和平街道人民调解委员会"}}))
    html = await desk.page()
    card_html = html[html.index(f'id="desk-{no}"') : html.index('id="extensions"')]
    apart = re.search(rf'<p class="warning" id="apart-{no}">([^<]*)</p>', card_html)
    assert apart is not None
    assert html_unescape(apart[1]) == (
        "定位与地址不一致：定位在和平里社区第一网格，地址在建设社区第一网格，请核实后在“事发网格”中选定"
    )
    select = re.search(rf'<select id="grid-{no}" name="grid"([^>]*)>', card_html)
    assert select is not None
    assert select[1].strip() == f'aria-describedby="apart-{no}"'
    assert unread(html) == []

    card["grid"] = {"grid": "s01c01g01", "method": "coordinates"}
    html = await desk.page()
    assert f'id="apart-{no}"' not in html
    assert re.search(rf'<select id="grid-{no}" name="grid">', html)


async def test_a_grid_the_api_refuses_comes_back_to_the_cards_grid_select(monkeypatch, city):
    """A grid the API does not know (the page was older than the city's areas) is refused in words
    beside 事发网格, which takes the focus, marked and described by why; the category picked stays."""
    no = "20261201-000052"
    card = {"ticket_no": no, "status": "review", "text": "那边路灯不亮", "confidence": 0.3}
    card |= {"top_categories": [{"category": "city.facility.streetlight", "probability": 0.4}]}
    said = "没有编号为“s09c09g09”的网格，请在“事发网格”中按街道、社区选择一个网格"
    refusal = Reply(422, {"error": "unknown_grid", "field": "grid", "message": said})
    desk = _DeskPages(monkeypatch, city, card, refusal)
    form = [("category", "city.facility.streetlight"), ("department", "urban_mgmt"), ("grid", "s09c09g09")]
    back = await desk.assign(no, form)
    where = urlsplit(back.headers["location"])
    assert (where.path, where.fragment) == ("/console/desk", f"grid-{no}")
    html = await desk.page(dict(parse_qsl(where.query)))
    card_html = html[html.index(f'id="desk-{no}"') : html.index('id="extensions"')]
    assert html_escape(said, quote=False) in card_html
    # Beside the select it is about, not at the top of the form two fieldsets away.
    between = card_html[card_html.index(f'id="grid-{no}"') : card_html.index("第二步")]
    assert html_escape(said, quote=False) in between
    grid = re.search(rf'<select id="grid-{no}" name="grid"([^>]*)>', card_html)
    assert grid is not None
    assert grid[1].strip() == f'aria-invalid="true" aria-describedby="assign-error-{no}" autofocus'
    dept = re.search(rf'<select id="dept-{no}" name="department_other"([^>]*)>', card_html)
    assert dept is not None
    assert dept[1].strip() == ""
    assert html.count("autofocus") == 1
    assert unread(html) == []


async def test_a_dispatch_sends_the_focus_on_to_the_next_card_or_to_what_was_done(monkeypatch, city):
    """派单 and an extension's verdict from the keyboard: each card names the card after it (the one
    before, for the last), the action goes back to the page holding that card, and that card takes
    the focus; with no card left, the message saying what was done takes it."""
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    streetlight = "city.facility.streetlight"

    def card(no: str) -> dict:
        top = [{"category": streetlight, "probability": 0.4}]
        waiting = {"ticket_no": no, "status": "review", "text": "路灯坏了", "confidence": 0.3}
        return {**waiting, "top_categories": top}

    first, middle, last = "20261201-000011", "20261201-000012", "20261201-000013"
    queue = [card(first), card(middle), card(last)]

    water, extension = {"id": "water", "name": "区水务局"}, {"days": 5, "reason": "等材料"}
    asking = [
        {"ticket_no": no, "status": "in_progress", "department": water, "extension_request": extension}
        for no in ("20261201-000021", "20261201-000022")
    ]

    class Queue(_DeskApi):  # the cards still waiting: a dispatched one leaves the queue
        def waiting(self) -> list[dict]:
            return queue

        def asking(self) -> list[dict]:
            return asking

    lit = {"category": streetlight, "category_names": list(city.category_names(streetlight))}
    fake = Queue(card(first), Reply(200, {"department": water, **lit}))
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    state = SimpleNamespace(city=city, settings=settings)
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")

    async def desk(query: dict[str, str]) -> str:
        request = SimpleNamespace(query_params=query, app=SimpleNamespace(state=state))
        return (await views.desk_page(request, s)).body.decode()

    html = await desk({})
    nexts = re.findall(r'action="/console/desk/([^/]+)/assign".*?name="next" value="([^"]*)"', html, re.S)
    assert nexts == [(first, middle), (middle, last), (last, middle)]
    verdicts = re.findall(
        r'action="/console/desk/([^/]+)/extension/\w+".*?name="next" value="([^"]*)"', html, re.S
    )
    ext_first, ext_last = (t["ticket_no"] for t in asking)
    assert verdicts == [(ext_first, ext_last)] * 2 + [(ext_last, ext_first)] * 2  # 批准, 驳回
    assert "autofocus" not in html  # a page opened, not come back to: the focus is the desk's

    async def dispatched(no: str, after: str) -> str:
        async def posted(request, s):
            return FormData([("category", streetlight), ("department", "water"), ("next", after)])

        monkeypatch.setattr(views, "checked_form", posted)
        queue[:] = [t for t in queue if t["ticket_no"] != no]
        back = await views.desk_assign(
            SimpleNamespace(query_params={}, app=SimpleNamespace(state=state)), no, s
        )
        assert back.status_code == 303
        where = urlsplit(back.headers["location"])
        assert where.path == "/console/desk"
        assert where.fragment == (f"desk-{after}" if after else "")
        return await desk(dict(parse_qsl(where.query)))

    html = await dispatched(first, middle)
    assert re.search(rf'<article [^>]*id="desk-{middle}"[^>]*autofocus>', html)
    assert html.count("autofocus") == 1
    # Said, the focus on the card: the department and the category, which need not be its own.
    assert 'data-announce="工单20261201-000011已派至区水务局（分类：路灯故障）"' in html
    queue[:] = [card(last)]
    html = await dispatched(last, "")
    assert re.search(r'<p class="ok" id="done" [^>]*tabindex="-1" autofocus>', html)
    assert html.count("autofocus") == 1

    async def verdict(request, s):
        return FormData([("note", "材料已齐"), ("next", ext_last)])

    monkeypatch.setattr(views, "checked_form", verdict)
    back = await views.desk_extension(
        SimpleNamespace(app=SimpleNamespace(state=state)), ext_first, "refuse", s
    )
    where = urlsplit(back.headers["location"])
    assert where.fragment == f"ext-{ext_last}"
    html = await desk(dict(parse_qsl(where.query)))
    assert re.search(rf'<article [^>]*id="ext-{ext_last}"[^>]*autofocus>', html)
    assert html.count("autofocus") == 1


class _DecidingDeskApi(_DeskApi):
    """The desk with an extension request and a grid worker's request to correct the grid waiting
    (nothing to dispatch), whose verdicts the API answers with `verdict`."""

    def __init__(self, city, verdict: Reply) -> None:
        super().__init__({}, Reply(200, {}))
        water = {"id": "water", "name": "区水务局"}
        self.verdict, self.sent = verdict, []
        self.extension = {
            "ticket_no": "20261201-000031",
            "status": "accepted",
            "department": water,
            "extension_request": {"days": 5, "reason": "等材料"},
        }
        self.placing = {
            "ticket_no": "20261201-000032",
            "status": "assigned",
            "department": water,
            "grid": {"grid": "s01c01g01"},
            "place_request": {"grid": "s02c01g02", "reason": "路灯在建设社区", "by": "W091"},
        }

    def waiting(self) -> list[dict]:
        return []

    async def followed(self, *, page: int, size: int) -> Reply:
        body = {"tickets": [], "total": 0, "page": page, "size": size}
        return Reply(
            200, {"extensions": [self.extension], "place_requests": [self.placing], "returned": body}
        )

    async def post(self, path: str, body=None, headers=None):
        if "/extension/" in path or "/place-request/" in path:
            self.sent.append((path, body))
            return self.verdict
        return await super().post(path, body, headers)


@pytest.mark.parametrize(
    ("card", "verdict", "field"),
    [
        ("placereq", "refuse", "placereq-refuse-20261201-000032"),
        ("ext", "refuse", "ext-refuse-20261201-000031"),
        ("ext", "approve", "ext-approve-20261201-000031"),
    ],
)
async def test_a_refused_verdict_comes_back_beside_its_reason_on_its_card(
    monkeypatch, city, card, verdict, field
):
    """An extension's verdict or a place request's refused by the API (不同意 with no reason) comes
    back as a refused dispatch does: to its card, the refusal beside the reason field of the verdict
    sent, which takes the focus, marked and described by it, with what was typed; not at the top of
    the page, and no other card's field marked."""
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from services.router.workflow import REQUIRED
    from shared.auth import Principal

    said = REQUIRED["decide_extension.reason" if card == "ext" else "decide_place.reason"]
    fake = _DecidingDeskApi(
        city, Reply(422, {"error": "reason_required", "field": "reason", "message": said})
    )
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    state = SimpleNamespace(city=city, settings=settings)
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    no = fake.extension["ticket_no"] if card == "ext" else fake.placing["ticket_no"]
    typed = "不 <对>"  # too short, and kept as typed (escaped in the markup)

    async def posted(request, s):
        return FormData([("note", typed), ("next", "")])

    monkeypatch.setattr(views, "checked_form", posted)
    decide = views.desk_extension if card == "ext" else views.desk_place_request
    back = await decide(SimpleNamespace(app=SimpleNamespace(state=state)), no, verdict, s)
    assert back.status_code == 303
    assert fake.sent == [
        (
            f"/api/v1/tickets/{no}/{'extension' if card == 'ext' else 'place-request'}/{verdict}",
            {"note": typed},
        )
    ]
    where = urlsplit(back.headers["location"])
    assert (where.path, where.fragment) == ("/console/desk", field)
    request = SimpleNamespace(query_params=dict(parse_qsl(where.query)), app=SimpleNamespace(state=state))
    html = (await views.desk_page(request, s)).body.decode()

    assert 'id="desk-error"' not in html  # not at the top of the page
    card_html = html[html.index(f'id="{card}-{no}"') :]
    card_html = card_html[: card_html.index("</article>")]
    tag = re.search(rf'<input id="{field}" name="note"[^>]*>', card_html)
    assert tag is not None
    assert f'value="{html_escape(typed)}"' in tag[0]
    assert 'aria-invalid="true"' in tag[0]
    assert "autofocus" in tag[0]
    assert described_by(html, field) == [f"{field}-error"]
    # The words right after the field, before the verdict's button.
    after = card_html[card_html.index(tag[0]) + len(tag[0]) :]
    assert after.index(html_escape(said, quote=False)) < after.index("<button")
    assert f'id="{field}-error"' in after
    assert html.count("autofocus") == 1
    assert html.count("aria-invalid") == 1
    assert unread(html) == []


async def test_a_refused_verdict_whose_card_is_gone_is_said_at_the_top(monkeypatch, city):
    """Another desk decided the request first: the card is no longer shown, so the refusal is said
    at the top of the page, where it takes the focus."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    said = "工单20261201-000039没有待审核的延期申请"
    fake = _DecidingDeskApi(city, Reply(409, {"message": said}))
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    state = SimpleNamespace(city=city, settings=settings)
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    query = {"error": said, "ticket": "20261201-000039", "card": "ext", "field": "refuse", "note": "不同意"}
    request = SimpleNamespace(query_params=query, app=SimpleNamespace(state=state))
    html = (await views.desk_page(request, s)).body.decode()
    assert re.search(r'<p class="error" role="alert" id="desk-error"[^>]*autofocus>', html)
    assert "aria-invalid" not in html
    assert html.count("autofocus") == 1


async def test_the_desk_asks_for_a_reason_to_refuse_an_extension_and_none_to_approve_it(monkeypatch, city):
    """驳回 an extension request says why to the department (the API refuses it without): its field
    is named for that and marked required; 批准's note stays optional. A place request's 不同意 alike."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    fake = _DecidingDeskApi(city, Reply(200, {}))
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    state = SimpleNamespace(city=city, settings=settings)
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    request = SimpleNamespace(query_params={}, app=SimpleNamespace(state=state))
    html = (await views.desk_page(request, s)).body.decode()
    ext, placing = fake.extension["ticket_no"], fake.placing["ticket_no"]

    def field(fid: str) -> tuple[str, str]:
        tag = re.search(rf'<input id="{fid}" name="note"[^>]*>', html)
        label = re.search(rf'<label for="{fid}">([^<]*)</label>', html)
        assert tag is not None, fid
        assert label is not None, fid
        return tag[0], label[1]

    refuse, refuse_label = field(f"ext-refuse-{ext}")
    assert 'aria-required="true"' in refuse
    assert refuse_label == "驳回的理由（承办单位将看到）"
    approve, approve_label = field(f"ext-approve-{ext}")
    assert "aria-required" not in approve
    assert approve_label == "批准说明"
    assert 'aria-required="true"' in field(f"placereq-refuse-{placing}")[0]


async def test_a_refused_extension_says_why_and_the_done_line_says_the_department_is_told(monkeypatch, city):
    """驳回 with a reason: back to the desk, saying the department is told (the history has it)."""
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    fake = _DecidingDeskApi(city, Reply(200, {}))
    monkeypatch.setattr(views, "api", lambda request, s: fake)

    async def posted(request, s):
        return FormData([("note", "灯杆库存充足，请按期办结"), ("next", "")])

    monkeypatch.setattr(views, "checked_form", posted)
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    no = fake.extension["ticket_no"]
    back = await views.desk_extension(SimpleNamespace(), no, "refuse", s)
    assert fake.sent == [(f"/api/v1/tickets/{no}/extension/refuse", {"note": "灯杆库存充足，请按期办结"})]
    assert dict(parse_qsl(urlsplit(back.headers["location"]).query))["done"] == (
        f"工单{no}的延期申请已驳回，已告知承办单位"
    )


class _CountApi:
    """The API as the menu's count sees it: answers `reply`, raises it, or never answers."""

    def __init__(self, reply: Reply | Exception | None) -> None:
        self.reply, self.asked = reply, []

    async def get(self, path: str, **params):
        self.asked.append(path)
        if self.reply is None:
            await asyncio.sleep(60)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


async def _menu(
    monkeypatch, role: str, reply: Reply | Exception | None, department: str | None = None, **context
) -> tuple[str, list[str]]:
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    fake = _CountApi(reply)
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    monkeypatch.setattr(views, "MENU_COUNT_SECONDS", 0.05)
    request = SimpleNamespace(
        app=SimpleNamespace(state=SimpleNamespace(console_names={"department_names": {}, "grid_names": {}}))
    )
    s = Session(token="t", principal=Principal(role=role, operator="op09", department=department), csrf="c")
    response = await views.page(request, "message.html", s=s, title="标题", message="内容", **context)
    assert response.status_code == 200  # whatever the count did, the page is shown
    return response.body.decode(), fake.asked


async def test_the_menu_says_how_many_phone_callbacks_are_due_or_nothing(monkeypatch):
    """电话回访 (N) in the menu of those who call: the API's count, one small call per page; when
    that call fails, is refused or is slow, the page is shown without a count."""
    html, asked = await _menu(monkeypatch, "operator", Reply(200, {"total": 3}))
    assert asked == ["/api/v1/callbacks/count"]
    assert re.search(r'电话回访 <span id="callbacks-due">\(3<span class="sr-only">件待回访</span>\)', html)
    html, _ = await _menu(monkeypatch, "admin", Reply(200, {"total": 0}))
    assert 'id="callbacks-due">(0<' in html  # none due is an answer too
    for failure in (Reply(503, {"message": "服务暂不可用"}), ConnectionError("redis"), None):
        html, asked = await _menu(monkeypatch, "operator", failure)
        assert asked == ["/api/v1/callbacks/count"]
        assert ">电话回访</a>" in html
        assert "callbacks-due" not in html
    # The callbacks page knows the total already (its list's): no second call.
    html, asked = await _menu(monkeypatch, "operator", Reply(200, {"total": 9}), callbacks_due=4)
    assert (asked, 'id="callbacks-due">(4<' in html) == ([], True)
    # Roles without the link do not ask.
    html, asked = await _menu(monkeypatch, "department", Reply(200, {"total": 3}))
    assert (asked, "电话回访" in html) == ([], False)


async def test_a_departments_menu_says_how_many_joint_meetings_wait_for_it_to_check_in(monkeypatch):
    """联席会议 (N) in a department's menu: the open meetings it is summoned to and has not checked
    in to (吹哨报到: it may hold none of their tickets, so nothing else on its pages tells it); none
    waiting, or no answer in time, shows no number."""
    html, asked = await _menu(monkeypatch, "department", Reply(200, {"to_check_in": 2}), department="water")
    assert asked == ["/api/v1/meetings/count"]
    assert re.search(
        r'联席会议 <span id="meetings-to-check-in">\(2<span class="sr-only">个会议待本单位报到</span>\)', html
    )
    for quiet in (Reply(200, {"to_check_in": 0}), Reply(503, {"message": "服务暂不可用"}), None):
        html, asked = await _menu(monkeypatch, "department", quiet, department="water")
        assert asked == ["/api/v1/meetings/count"]
        assert ">联席会议</a>" in html
        assert "meetings-to-check-in" not in html
    # The desk checks in to nothing: it does not ask (its own count is of callbacks).
    html, asked = await _menu(monkeypatch, "admin", Reply(200, {"total": 1}))
    assert (asked, "meetings-to-check-in" in html) == (["/api/v1/callbacks/count"], False)


def test_a_typed_main_ticket_is_confirmed_by_what_it_is(city):
    """并案 with a typed number: the confirmation names both tickets, the main one by its title (or
    the start of its text), grid, department and status, so a mistyped number is caught."""
    grid, info = next(iter(city.grids.items()))
    main = {
        "ticket_no": "20261201-000003",
        "title": "",
        "text": "和平里小区8号楼西侧的路灯\n坏了三天了",
        "grid": {"grid": grid},
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
        "status_name": "办理中",
    }
    c = present.merge_confirmation("20261201-000009", {"into": main, "moved": []}, city)
    assert c == {
        "into": "20261201-000003",
        "moved": [],
        "sentence": "将工单20261201-000009并入工单20261201-000003"
        f"（和平里小区8号楼西侧的路灯 坏了三天了，{info.grid.name}，区城市管理委员会，办理中）",
    }
    long = {**main, "text": "路" * 40, "grid": None, "department": None, "status_name": "待人工派单"}
    c = present.merge_confirmation("20261201-000009", {"into": long, "moved": ["20261201-000001"]}, city)
    assert (
        c["sentence"]
        == f"将工单20261201-000009并入工单20261201-000003（{'路' * 29}…，未定位网格，未派单，待人工派单）"
    )
    assert c["moved"] == ["20261201-000001"]
    titled = {**main, "title": "路灯报修"}
    assert "（路灯报修，" in present.merge_confirmation("20261201-000009", {"into": titled}, city)["sentence"]


def test_the_dashboards_trend_lists_and_links():
    def group(gid: str, name: str, count: int, previous: int) -> dict:
        return {"group": gid, "name": name, "count": count, "previous": previous, "last_year": 0}

    groups = ranked(
        [
            group("utility.heating", "公共事业/供暖", 40, 4),
            group("unknown", "未分类", 3, 0),
            group("env.noise", "环境保护/噪音扰民", 10, 25),
            group("transport.bus", "交通运输/公交", 5, 5),
        ]
    )
    day = {"from": "2026-11-01", "to": "2026-11-02", "total": 0, "days": []}
    body = {
        "from": "2026-11-01",
        "to": "2026-11-02",
        "summary": "本期受理53件，环比上升55.9%，同比新增",
        "periods": {
            "current": {
                **day,
                "days": [{"day": "2026-11-01", "count": 0}, {"day": "2026-11-02", "count": 53}],
            },
            "previous": day,
            "last_year": day,
        },
        "groups": groups,
    }
    view = present.trend_view(body)
    assert [(g["name"], g["change"]) for g in view["rising"]] == [
        ("公共事业/供暖", "+36（+900.0%）"),
        ("未分类", "+3（新增）"),
    ]
    assert (
        view["rising"][0]["link"] == "/console/tickets?category=utility.heating&from=2026-11-01&to=2026-11-02"
    )
    assert view["rising"][1]["link"] is None  # no category to filter by
    assert [(g["name"], g["change"]) for g in view["falling"]] == [("环境保护/噪音扰民", "−15（−60.0%）")]
    assert [b["h"] for b in view["chart"]["bars"]] == [0, 120]  # the empty day drawn, at zero height


def trend_body(group_by: str, groups: list[dict]) -> dict:
    day = {"from": "2033-07-04", "to": "2033-07-10", "total": 0, "days": []}
    return {
        "group_by": group_by,
        "from": "2033-07-04",
        "to": "2033-07-10",
        "summary": "本期受理6件，环比上升50.0%，同比上升200.0%",
        "periods": {"current": day, "previous": day, "last_year": day},
        "groups": ranked(
            {"group": gid, "name": name, "count": count, "previous": previous, "last_year": 0}
            for gid, name, count, previous in groups
        ),
    }


def dashboard_html(city, trend: dict, trend_by: str) -> str:
    desk = SimpleNamespace(
        principal=SimpleNamespace(role="admin", is_admin=True, department=None, operator=None), csrf="x"
    )
    return templates.get_template("dashboard.html").render(
        request=None,
        s=desk,
        start="2033-07-04",
        end="2033-07-10",
        error="",
        tables={},
        dimension_names={},
        overall=dict.fromkeys(
            ("response_rate", "resolution_rate", "satisfaction_rate", "direct_answer_rate", "score")
        ),
        figure_lists=present.figure_lists(city, "2033-07-04", "2033-07-10"),
        map=present.grid_map(city, {}),
        trend=trend,
        trend_by=trend_by,
        trend_error="",
        top_categories=[],
        top_max=0,
        overdue=[],
        overdue_total=0,
        urlencode=urlencode,
        bases=present.rate_bases({}),
        min_answers=3,
        tickets_link=present.tickets_link,
    )


@pytest.mark.parametrize(
    ("group_by", "groups", "rising", "falling", "heading", "note"),
    [
        (
            "category",
            [("utility.heating", "公共事业/供暖", 3, 1), ("env.noise", "环境保护/噪音扰民", 1, 3)],
            [("公共事业/供暖", "/console/tickets?category=utility.heating&from=2033-07-04&to=2033-07-10")],
            [("环境保护/噪音扰民", "/console/tickets?category=env.noise&from=2033-07-04&to=2033-07-10")],
            "上升最快的诉求分类",
            False,
        ),
        (
            "street",
            [("s02", "建设街道", 3, 0), ("unknown", "未定位街道", 1, 0), ("s03", "光明街道", 1, 3)],
            [
                ("建设街道", "/console/tickets?street=s02&from=2033-07-04&to=2033-07-10"),
                ("未定位街道", None),  # the list has no filter for tickets without a street
            ],
            [("光明街道", "/console/tickets?street=s03&from=2033-07-04&to=2033-07-10")],
            "上升最快的街道",
            False,
        ),
        (
            "department",
            [("d_water", "区水务局", 2, 0), ("unknown", "未派单", 4, 6)],
            [("区水务局", "/console/tickets?department=d_water&from=2033-07-04&to=2033-07-10")],
            [("未派单", None)],
            "上升最快的承办单位",
            True,  # the list also has the tickets the department co-handles: said beside the lists
        ),
    ],
)
def test_the_dashboards_trend_by_each_grouping(city, group_by, groups, rising, falling, heading, note):
    view = present.trend_view(trend_body(group_by, groups))
    assert [(g["name"], g["link"]) for g in view["rising"]] == rising
    assert [(g["name"], g["link"]) for g in view["falling"]] == falling
    # The choice keeps the period; the categories are the default, so their link has no trend_by.
    assert [(c["name"], c["link"], c["current"]) for c in view["choices"]] == [
        ("按分类", "/console/dashboard?from=2033-07-04&to=2033-07-10#trend", group_by == "category"),
        (
            "按街道",
            "/console/dashboard?from=2033-07-04&to=2033-07-10&trend_by=street#trend",
            group_by == "street",
        ),
        (
            "按承办单位",
            "/console/dashboard?from=2033-07-04&to=2033-07-10&trend_by=department#trend",
            group_by == "department",
        ),
    ]
    assert view["export"]["csv"] == (
        f"/console/dashboard/trend/export?group_by={group_by}&from=2033-07-04&to=2033-07-10&format=csv"
    )

    html = dashboard_html(city, view, group_by)
    current = re.findall(r'<a href="([^"]*)" aria-current="page">([^<]*)</a>', html)
    assert current == [(html_escape(c["link"]), c["name"]) for c in view["choices"] if c["current"]]
    assert f"<h3>{heading}</h3>" in html
    assert f'id="export-trend">导出Excel（按{present.TREND_GROUPS[group_by]}趋势）' in html
    assert f"group_by={group_by}&amp;from=2033-07-04" in html
    assert ('id="trend-note"' in html) is note
    # The period form keeps the grouping when the dates change.
    hidden = f'<input type="hidden" name="trend_by" value="{group_by}">'
    assert (hidden in html) is (group_by != "category")


def test_the_dashboards_trend_grouping_is_one_of_the_three():
    assert [present.trend_group(raw) for raw in ("street", "department", "category")] == [
        "street",
        "department",
        "category",
    ]
    # Anything else (an old link, a typo, none): by category, not a refusal.
    assert [present.trend_group(raw) for raw in (None, "", "grid", "STREET")] == ["category"] * 4


def privacy_html(**context) -> str:
    desk = SimpleNamespace(
        principal=SimpleNamespace(role="admin", is_admin=True, department=None, operator=None), csrf="x"
    )
    defaults = {"errors": {}, "preview": None, "erased": None, "audit": [], "audit_notice": ""}
    return templates.get_template("privacy.html").render(
        request=None, s=desk, page_no=1, pages=1, role_names={}, **{**defaults, **context}
    )


def test_the_erasure_form_sends_only_the_chosen_way_to_find_the_resident():
    form = {"by": "ticket_no", "phone": " 13912345678 ", "ticket_no": " 20260302-000001 ", "reason": "申请"}
    values = erasure_of(form)
    assert erasure_body(values) == {"ticket_no": "20260302-000001", "reason": "申请"}
    assert erasure_body(erasure_of({**form, "by": "phone"})) == {"phone": "13912345678", "reason": "申请"}
    assert erasure_of({**form, "by": "email"})["by"] == "phone"
    # A number without its dash, as /console/lookup takes it: read by the same function, and shown
    # and sent as the ticket has it.
    bare = erasure_of({**form, "ticket_no": "20261203000012"})
    assert erasure_body(bare) == {"ticket_no": "20261203-000012", "reason": "申请"}

    html = privacy_html(values=values, errors={"ticket_no": "工单档案库中没有工单号为20260302-000001的工单"})
    # The audit entry is kept for good: the reason's hint asks for no name or number (the API masks
    # the numbers anyway; a name it cannot tell from the other words).
    assert '<small id="reason-hint">写入审计记录，请勿填写市民姓名、电话</small>' in html
    assert re.search(r'id="by-ticket"[^>]*checked', html)
    assert re.search(r'id="ticket_no"[^>]*aria-invalid="true"', html)
    assert 'id="ticket_no-error"' in html


def test_the_preview_by_ticket_shows_the_channel_and_the_masked_openid_and_confirms_by_number():
    preview = {
        "by": "ticket_no",
        "ticket_no": "20260302-000001",
        "channel": "wechat",
        "channel_name": "微信公众号",
        "contact": {"kind": "wechat", "masked": "oWx1****0123"},
        "masked_phone": None,
        "count": 1,
        "tickets": [{"ticket_no": "20260302-000001", "channel_name": "微信公众号", "status_name": "已派单"}],
    }
    values = {"by": "ticket_no", "phone": "", "ticket_no": "20260302-000001", "reason": "申请"}
    html = privacy_html(values=values, preview=preview)
    assert "工单 20260302-000001（微信公众号）的居民：微信用户 oWx1****0123" in html
    assert '<input type="hidden" name="by" value="ticket_no">' in html
    assert '<input type="hidden" name="ticket_no" value="20260302-000001">' in html
    assert 'name="phone"' not in html


def test_the_preview_of_unfinished_tickets_says_that_notes_written_later_go_too():
    """By design the notes typed on an erased ticket are scrubbed as they are saved: the desk is told
    before it confirms, beside what departments lose, so that it can tell the resident."""
    preview = {
        "by": "phone", "ticket_no": None, "contact": {"kind": "phone", "masked": "139****5678"},
        "count": 1, "tickets": [{"ticket_no": "20260302-000001", "status_name": "已签收"}],
        "unfinished": ["20260302-000001"],
    }  # fmt: skip
    values = {"by": "phone", "phone": "13912345678", "ticket_no": "", "reason": "申请"}
    warning = re.search(
        r'<p class="warning" id="unfinished">(.*?)</p>', privacy_html(values=values, preview=preview)
    )
    assert warning is not None
    assert "承办单位将看不到诉求内容" in warning[1]
    assert "此后在这些工单上填写的办理说明、理由等也将随即删除" in warning[1]


class _ErasureApi:
    """The API as the erasure's preview sees it: the preview answers `preview`; the audit is empty."""

    def __init__(self, preview: dict) -> None:
        self.preview, self.sent = preview, []

    async def get(self, path: str, **params):
        return Reply(200, {"items": [], "total": 0} if path.endswith("/audit") else {"total": 0})

    async def post(self, path: str, body=None, headers=None):
        self.sent.append((path, body))
        return Reply(200, self.preview)


@pytest.mark.parametrize("masked", [True, False])
async def test_the_erasure_is_confirmed_with_its_reason_as_the_audit_will_keep_it(monkeypatch, city, masked):
    """A number typed into the reason is masked before the audit keeps it: the confirmation shows the
    reason so, says that a number was hidden (only when one was), and confirms it so, so the page
    holds no number the audit will not."""
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal
    from shared.privacy import mask_personal_data

    typed = "居民13912345678来电申请删除" if masked else "居民来电申请删除"
    kept = mask_personal_data(typed)
    assert (kept != typed) is masked
    fake = _ErasureApi(
        {
            "by": "phone",
            "ticket_no": None,
            "contact": {"kind": "phone", "masked": "139****5678"},
            "count": 0,
            "tickets": [],
            "reason": kept,
            "reason_masked": masked,
        }
    )
    monkeypatch.setattr(views, "api", lambda request, s: fake)

    async def posted(request, s):
        return FormData([("by", "phone"), ("phone", "13912345678"), ("reason", typed)])

    monkeypatch.setattr(views, "checked_form", posted)
    settings = SimpleNamespace(timezone="Asia/Shanghai")
    request = SimpleNamespace(
        query_params={}, app=SimpleNamespace(state=SimpleNamespace(city=city, settings=settings))
    )
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    html = (await views.privacy_preview(request, s)).body.decode()
    assert fake.sent == [
        ("/api/v1/records/privacy/erasures/preview", {"phone": "13912345678", "reason": typed})
    ]
    shown = re.search(r'<p id="preview-reason">(.*?)</p>', html)
    assert shown is not None
    assert shown[1] == f"删除原因（写入审计记录）：{kept}"
    assert f'<input type="hidden" name="reason" value="{kept}">' in html  # confirmed as it will be kept
    line = re.search(r'<p class="muted" id="preview-reason-masked">(.*?)</p>', html)
    if masked:
        assert line is not None
        assert line[1].startswith("删除原因中的电话号码/身份证号已隐藏")
        assert "13912345678" not in html.replace('name="phone" value="13912345678"', "")
    else:
        assert line is None


def test_a_batch_form_names_the_ticked_tickets_or_with_select_all_the_pages_new_ones_once():
    page = ["20261123-000001", "20261123-000002", "20261123-000003"]
    assert present.batch_picked(["20261123-000002"], page, False) == ["20261123-000002"]
    # 全选 without the script sends the page's list; with it, the ticked boxes too: each once.
    assert present.batch_picked([], page, True) == page
    assert present.batch_picked(["20261123-000003", "20261123-000001"], page, True) == page
    assert present.batch_picked([], page, False) == []  # nothing ticked: the API says so in words


def test_a_batch_outcome_counts_the_accepted_and_lists_the_refused_with_their_reasons():
    body = {
        "accepted": 2,
        "refused": 1,
        "tickets": [
            {"ticket_no": "1", "outcome": "accepted", "on_time": True},
            {
                "ticket_no": "2",
                "outcome": "refused",
                "code": "illegal_transition",
                "message": "工单2已签收（本单位已有人先签收），无需再签收",
            },
            {"ticket_no": "3", "outcome": "accepted", "on_time": False},
        ],
    }
    assert present.batch_outcome(body) == {
        "accepted": 2,
        "late": 1,
        "refused": [{"ticket_no": "2", "reason": "工单2已签收（本单位已有人先签收），无需再签收"}],
        "error": "",
    }


def test_the_department_queue_offers_its_new_tickets_for_a_batch_with_labelled_boxes():
    rows = [
        {
            "ticket_no": "20261123-000001",
            "status": "assigned",
            "status_name": "已派单",
            "flags": [],
            "text": "路灯",
        },
        {
            "ticket_no": "20261123-000002",
            "status": "accepted",
            "status_name": "办理中",
            "flags": [],
            "text": "路灯",
        },
    ]
    context = {
        "s": SimpleNamespace(csrf="c", principal=SimpleNamespace(role="department")),
        "rows": rows,
        "total": 2,
        "page_no": 1,
        "pages": 1,
        "page_query": lambda n: f"page={n}",
        "filters": {},
        "department": "区城市管理委员会",
        "done": "",
        "statuses": [],
        "grids": [],
        "status_names": {},
        "idem": "k",
    }
    render = templates.get_template("department.html").render
    html = render(**context, to_accept=["20261123-000001"], batch=None)
    assert html.count('name="ticket_nos"') == 1  # only the new ticket can be signed for
    assert 'aria-label="选择工单20261123-000001批量签收"' in html
    assert '<input type="hidden" name="page_nos" value="20261123-000001">' in html
    assert "全选本页已派单工单（1件）" in html
    none = render(**context, to_accept=[], batch=None)
    assert 'action="/console/department/accept"' not in none  # nothing to sign for: no form
    told = render(
        **context,
        to_accept=[],
        batch={
            "accepted": 2,
            "late": 0,
            "refused": [{"ticket_no": "9", "reason": "工单9不存在"}],
            "error": "",
        },
    )
    assert "已签收2件" in told
    assert "以下1件未签收" in told
    assert "工单9</a>：工单9不存在" in told


class _QueueApi:
    """The API as a department's queue sees it: a page of its tickets, narrowed by the filters the
    page asked for (kept in `asked`) as `QueueFilter` narrows them."""

    def __init__(self, tickets: list[dict], city) -> None:
        self.tickets, self.city, self.asked = tickets, city, []

    async def department_page(self, dept: str, page: int, size: int, **filters) -> Reply:
        self.asked.append(filters)
        city = self.city
        where = QueueFilter(
            status=filters["status"],
            categories=city.branch(filters["category"]) if filters["category"] else None,
            grid=filters["grid"],
        )
        found = [t for t in self.tickets if where.admits(t)]
        return Reply(200, {"total": len(found), "tickets": found[(page - 1) * size : page * size]})

    async def get(self, path: str, **params):
        return Reply(200, {"to_check_in": 0})  # the menu's count of meetings to check in to


async def _department_page(monkeypatch, city, tickets: list[dict], **query: str) -> tuple[str, list[dict]]:
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    fake = _QueueApi(tickets, city)
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    state = SimpleNamespace(city=city, settings=SimpleNamespace(timezone="Asia/Shanghai"))
    request = SimpleNamespace(query_params=query, app=SimpleNamespace(state=state))
    s = Session(token="t", principal=Principal(role="department", department="urban_mgmt"), csrf="c")
    response = await views.department_page(request, s)
    assert response.status_code == 200
    return response.body.decode(), fake.asked


async def test_a_departments_queue_is_narrowed_by_a_category_chosen_as_on_the_ticket_list(monkeypatch, city):
    """分类 is the ticket list's dropdown of categories (ids), not a text box: a branch takes the
    tickets of the categories under it; a value that is not a category narrows nothing. The API
    narrows the queue (only the page shown comes to the console)."""

    def ticket(no: str, category: str) -> dict:
        names = list(city.category_names(category))
        return {"ticket_no": no, "status": "accepted", "category": category, "category_names": names}

    tickets = [
        ticket("20261201-000001", "city.facility.streetlight"),
        ticket("20261201-000002", "city.facility.road_damage"),
        ticket("20261201-000003", "env.noise"),
    ]

    def listed(html: str) -> list[str]:
        return re.findall(r'<a href="/console/tickets/(\d{8}-\d{6})">', html)

    html, asked = await _department_page(monkeypatch, city, tickets, category="city.facility")
    assert listed(html) == ["20261201-000001", "20261201-000002"]
    assert asked[0]["category"] == "city.facility"
    select = re.search(r'<select id="f-category" name="category">(.*?)</select>', html, re.S)
    assert select is not None  # the same choices as the ticket list's, the chosen one selected
    options = re.findall(r'<option value="([^"]*)"', select[1])
    everything = [cid for cid, _ in list_choices(city)["categories"]]
    assert sorted(options) == sorted(["", *everything])  # every category still offered, once
    # Those the responsibility list gives the department first, the others after them.
    own, others = re.findall(r'<optgroup label="([^"]+)">(.*?)</optgroup>', select[1], re.S)
    assert (own[0], others[0]) == ("本单位权责清单内的分类", "其他分类")
    given = {
        r.category for r in city.responsibilities.rules if r.lead == "urban_mgmt" or "urban_mgmt" in r.co
    }
    assert given <= set(re.findall(r'value="([^"]*)"', own[1]))
    assert "labor.wage_arrears" in re.findall(r'value="([^"]*)"', others[1])  # not its to lead
    assert '<option value="city.facility" selected>城市管理/市政设施</option>' in select[1]
    html, _ = await _department_page(monkeypatch, city, tickets, category="city.facility.streetlight")
    assert listed(html) == ["20261201-000001"]
    html, asked = await _department_page(monkeypatch, city, tickets, category="路灯")  # an old text link
    assert listed(html) == ["20261201-000001", "20261201-000002", "20261201-000003"]
    assert asked[0]["category"] is None
    assert " selected>" not in re.search(r'<select id="f-category".*?</select>', html, re.S)[0]


async def test_a_departments_queue_asks_for_the_page_shown_and_its_last_past_the_end(monkeypatch, city):
    """The console asks the API for one page of 50 with the page's filters (a malformed day narrows
    nothing); a page past the end (the queue shrank since the link was made) shows the last."""
    tickets = [{"ticket_no": f"20261201-{i:06d}", "status": "accepted"} for i in range(1, 121)]
    html, asked = await _department_page(
        monkeypatch, city, tickets, page="9", overdue="1", grid="s01c01g02", date="2026-12"
    )
    assert [a["overdue"] for a in asked] == [True, True]  # page 9, then the last, page 3
    assert asked[0] == {"status": None, "overdue": True, "category": None, "grid": "s01c01g02", "date": None}
    html, asked = await _department_page(monkeypatch, city, tickets, page="9", date="2026-12-01")
    assert asked[0]["date"] == "2026-12-01"
    assert "共 120 件，按办理时限排序，第 3/3 页" in html
    assert re.findall(r'<a href="/console/tickets/(\d{8}-\d{6})">', html)[:1] == ["20261201-000101"]


def test_a_queue_filter_reads_the_tickets_as_the_store_keeps_them(city):
    """`QueueFilter.admits` looks at a ticket's JSON (only a page's tickets are made models)."""
    from tests.router_factory import assigned_ticket

    t = assigned_ticket(city, no="20261201-000001")
    kept = json.loads(t.model_dump_json())
    assert t.category
    assert t.grid
    assert t.grid.grid
    day = t.received_at.astimezone(ZoneInfo("Asia/Shanghai")).date()
    for where, admitted in [
        (QueueFilter(), True),
        (QueueFilter(status=t.status), True),
        (QueueFilter(status="closed"), False),
        (QueueFilter(overdue=False), True),
        (QueueFilter(overdue=True), False),
        (QueueFilter(categories=city.branch(t.category.rsplit(".", 1)[0])), True),
        (QueueFilter(categories=frozenset({"env.noise"})), t.category == "env.noise"),
        (QueueFilter(grid=t.grid.grid), True),
        (QueueFilter(grid="elsewhere"), False),
        (QueueFilter(received_on=day, tz=ZoneInfo("Asia/Shanghai")), True),
        (QueueFilter(received_on=date(2000, 1, 1), tz=ZoneInfo("Asia/Shanghai")), False),
        (QueueFilter(desk=True), False),
        (QueueFilter(desk=False), True),
    ]:
        assert where.admits(kept) is admitted, where
    asking = json.loads(t.model_copy(update={"extension_request": {"days": 3}}).model_dump_json())
    returned = json.loads(t.model_copy(update={"returns": 1}).model_dump_json())
    assert QueueFilter(desk=True).admits(asking)
    assert QueueFilter(desk=True).admits(returned)
    assert not QueueFilter().narrows()
    assert not QueueFilter(status="closed").narrows()
    assert QueueFilter(status="accepted").narrows()
    assert QueueFilter(desk=True).narrows()


def form_page(name: str, role: str, errors: dict[str, str]) -> str:
    who = SimpleNamespace(
        principal=SimpleNamespace(
            role=role, is_admin=role == "admin", department=None, operator=None, grid=None
        ),
        csrf="x",
    )
    lists = {"recent": [], "recent_total": 0, "to_verify": [], "to_verify_total": 0, "check_hours": "24"}
    return templates.get_template(name).render(
        request=None, s=who, values={"by": "phone"}, errors=errors, idem="k", kept=[], **lists,
        category_choices=[], department_choices=[], audit=[], page_no=1, pages=1, preview=None, erased=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "role", "fields"),
    [
        ("operator.html", "operator", ("text", "direct_answer", "caller_phone", "address")),
        ("patrol.html", "grid_worker", ("text", "address", "caller_phone", "direct_answer")),
        ("privacy.html", "admin", ("phone", "ticket_no", "reason")),
        ("knowledge_new.html", "admin", ("question", "answer", "category", "keywords", "department", "id")),
    ],
)
def test_a_refused_field_is_described_by_its_hint_and_its_error(name, role, fields):
    """Beside an error a field's hint still says how to fill it in (诉求内容: 回车换行，Ctrl+回车提交):
    a screen reader is told both, not the error alone."""
    for field in fields:
        calm = described_by(form_page(name, role, {}), field)
        html = form_page(name, role, {field: "请填写"})
        assert described_by(html, field) == [*calm, f"{field}-error"], (name, field)
        assert 'aria-invalid="true"' in re.search(rf'<(?:input|textarea|select) id="{field}"[^>]*>', html)[0]
    assert described_by(form_page(name, role, {}), fields[0]) == [f"{fields[0]}-hint"]


class _IntakeApi:
    """The API as the intake pages see it: `refused` for every post (the report, the preview: a
    refusal, or the preview itself), its lists empty."""

    def __init__(self, refused: Reply) -> None:
        self.refused = refused

    async def attach_photos(self, form):
        return [], None

    async def post(self, path: str, body=None, headers=None):
        return self.refused

    async def get(self, path: str, **params):
        return Reply(200, {"items": [], "total": 0})


@pytest.mark.parametrize("typed", ["", "灯坏"])
async def test_a_patrol_reports_refused_text_is_named_by_the_forms_label(monkeypatch, city, typed):
    """The patrol form asks for 问题描述; intake's refusal (the same for every channel) says 诉求内容:
    beside the field and in the preview panel, the page's own word."""
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from services.intake.domain import InvalidAppeal, validate
    from shared.auth import Principal

    with pytest.raises(InvalidAppeal) as refused:
        validate(channel="patrol", text=typed)
    assert refused.value.message.startswith("诉求内容")  # intake's words, which the page replaces
    body = {"error": refused.value.code, "field": refused.value.field, "message": refused.value.message}
    monkeypatch.setattr(views, "api", lambda request, s: _IntakeApi(Reply(422, body)))

    async def posted(request, s):
        return FormData([("text", typed), ("address", "阳光花园")])

    monkeypatch.setattr(views, "checked_form", posted)
    state = SimpleNamespace(city=city, settings=SimpleNamespace(timezone="Asia/Shanghai"))
    request = SimpleNamespace(query_params={}, headers={}, app=SimpleNamespace(state=state))
    s = Session(token="t", principal=Principal(role="grid_worker", grid=next(iter(city.grids))), csrf="c")
    html = (await views.patrol_submit(request, s)).body.decode()
    error = re.search(r'<p class="error" role="alert" id="text-error"[^>]*>([^<]*)</p>', html)
    assert error is not None
    assert error[1] == "问题描述" + refused.value.message.removeprefix("诉求内容")
    panel = (await views.patrol_preview(request, s)).body.decode()
    assert "诉求内容" not in panel
    assert error[1] in panel


class _PatrolApi(_IntakeApi):
    """The API as the patrol form sees it: the report accepted, its preview `judged` (or refused)."""

    def __init__(self, judged: Reply) -> None:
        super().__init__(Reply(200, {}))
        self.judged, self.asked = judged, []

    async def post(self, path: str, body=None, headers=None):
        self.asked.append(path)
        if path == "/api/v1/appeals/preview":
            return self.judged
        return Reply(201, {"ticket_no": "20261201-000077", "message": "诉求已受理"})


@pytest.mark.parametrize(
    ("review", "grid", "address_grid", "direct", "said"),
    [
        (False, "s01c01g01", None, "", "问题已上报，将派给责任单位办理"),
        (True, None, None, "", "问题已上报，派单中心确定事发网格后派给责任单位办理"),  # none found
        (True, "s01c01g02", "s01c01g01", "", "问题已上报，派单中心确定事发网格后派给责任单位办理"),  # 不一致
        (True, "s01c01g01", None, "", "问题已上报，派单中心确认分类后派给责任单位办理"),  # unsure
        (None, "s01c01g01", None, "", "问题已上报，将派给责任单位办理"),  # no preview to be had
        (True, None, None, "已现场处置", "已登记现场处置，工单直接办结"),  # handled: no desk
    ],
)
async def test_a_patrol_reports_accepted_message_says_what_happens_next(
    monkeypatch, city, review, grid, address_grid, direct, said
):
    """The accepted message says what the report waits for, as its preview judged it: the dispatch
    desk deciding its grid (none found where the place decides the department, or an address in
    another grid than the worker's), or its category; else the department at once. A report
    handled on the spot is not previewed: it goes to no one."""
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    placed = sorted(city.placed_categories)[0]
    judged = {
        "review": review,
        "category": {"id": placed, "names": list(city.category_names(placed)), "confidence": 0.9},
        "grid": {"grid": grid, "method": "patrol" if grid else "none", "address_grid": address_grid},
    }
    fake = _PatrolApi(Reply(200, judged) if review is not None else Reply(503, {"message": "系统繁忙"}))
    monkeypatch.setattr(views, "api", lambda request, s: fake)

    async def posted(request, s):
        return FormData(
            [("text", "路灯灯杆倾斜，灯罩脱落"), ("address", "和平里小区"), ("direct_answer", direct)]
        )

    monkeypatch.setattr(views, "checked_form", posted)
    state = SimpleNamespace(city=city, settings=SimpleNamespace(timezone="Asia/Shanghai"))
    request = SimpleNamespace(query_params={}, headers={}, app=SimpleNamespace(state=state))
    s = Session(token="t", principal=Principal(role="grid_worker", grid="s01c01g02"), csrf="c")
    html = (await views.patrol_submit(request, s)).body.decode()
    assert f'<p id="accepted-next">{said}。工单号：</p>' in html
    assert f'data-announce="{said}，工单号20261201-000077"' in html
    assert ("/api/v1/appeals/preview" in fake.asked) == (not direct)


BAD_PHONE = "不是有效的手机号或固话号码，请填写11位手机号或带区号的固话"
SUGGESTED = {
    "category": {"names": ["城市管理", "路灯"], "confidence": 0.81},
    "grid": {"grid": None, "evidence": ""},
    "department": {"name": "区城市管理委员会", "explanation": "路灯归城管"},
    "duplicates": [
        {"ticket_no": "20260301-000001", "status": "assigned", "reason": "similar_text", "text": "路灯"}
    ],
    "answers": [{"question": "路灯坏了找谁", "answer": "城管"}],
    "problems": [{"error": "invalid_appeal", "field": "caller_phone", "message": BAD_PHONE}],
}  # fmt: skip


def test_a_preview_judges_the_fields_it_validates_and_leaves_the_others_as_they_are():
    """What the preview says of each field the script marks or clears: a problem it went on without
    (the phone), "" for each other field it validates, so a submission's mark on one put right since
    goes; a refused preview, only the field it names (intake stops at the first problem); the
    name, the answer and the photos, which a preview does not judge, never."""
    from starlette.datastructures import FormData

    from services.console.views import INTAKE_FIELDS, INTAKE_WORDS, PATROL_FIELDS, preview_fields

    form = FormData([("caller_phone", "12345"), ("text", "路灯坏了一个星期")])
    assert preview_fields(Reply(200, SUGGESTED), INTAKE_FIELDS, form) == {
        "text": "",
        "address": "",
        "caller_phone": BAD_PHONE,
    }
    fine = {**SUGGESTED, "problems": []}
    assert preview_fields(Reply(200, fine), INTAKE_FIELDS, form) == dict.fromkeys(
        ("text", "address", "caller_phone"), ""
    )
    short = {
        "error": "invalid_appeal",
        "field": "text",
        "message": "诉求内容太短（2字），请至少写5个字说明问题",
    }
    assert preview_fields(Reply(422, short), INTAKE_FIELDS, form) == {"text": short["message"]}
    assert preview_fields(Reply(422, short), PATROL_FIELDS, form, INTAKE_WORDS) == {
        "text": "问题描述太短（2字），请至少写5个字说明问题"
    }
    busy = {"error": "unavailable", "field": None, "message": "系统繁忙，请稍后重试"}
    assert preview_fields(Reply(503, busy), INTAKE_FIELDS, form) == {}
    channel = {"error": "invalid_appeal", "field": "channel", "message": "渠道由登录凭证决定"}
    assert preview_fields(Reply(422, channel), INTAKE_FIELDS, form) == {}


async def _previewed(monkeypatch, city, handler: str, role: str, reply: Reply, fetch: bool) -> str:
    from starlette.datastructures import FormData

    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    monkeypatch.setattr(views, "api", lambda request, s: _IntakeApi(reply))  # the preview, to every post

    async def posted(request, s):
        return FormData(
            [("caller_phone", "12345"), ("text", "阳光花园3号楼的路灯坏了"), ("address", "阳光花园")]
        )

    monkeypatch.setattr(views, "checked_form", posted)
    state = SimpleNamespace(city=city, settings=SimpleNamespace(timezone="Asia/Shanghai"))
    headers = {"X-Requested-With": "fetch"} if fetch else {}
    request = SimpleNamespace(query_params={}, headers=headers, app=SimpleNamespace(state=state))
    grid = next(iter(city.grids)) if role == "grid_worker" else None
    s = Session(token="t", principal=Principal(role=role, operator="op01", grid=grid), csrf="c")
    return (await getattr(views, handler)(request, s)).body.decode()


@pytest.mark.parametrize(
    ("handler", "role"), [("operator_preview", "operator"), ("patrol_preview", "grid_worker")]
)
async def test_a_mistyped_phone_leaves_the_suggestions_in_view_and_is_named_for_its_field(
    monkeypatch, city, handler, role
):
    """The panel keeps the category, department, duplicates (and, for an operator, the knowledge
    base's answers), says they came without the number, and tells the script the phone's problem,
    for the field, and that the text and the address are fine."""
    html = await _previewed(monkeypatch, city, handler, role, Reply(200, SUGGESTED), fetch=True)
    assert 'id="pv-category"' in html
    assert "区城市管理委员会" in html
    assert "20260301-000001" in html
    assert ('id="pv-answers"' in html) is (role == "operator")
    fields = re.search(r"data-fields='([^']*)'", html)
    assert fields is not None
    assert json.loads(html_unescape(fields[1])) == {"text": "", "address": "", "caller_phone": BAD_PHONE}
    assert "有误，以下提示未含按该号码查找的" in html
    assert BAD_PHONE not in re.sub(r"data-fields='[^']*'", "", html)  # beside the field, not in the panel


async def test_without_the_script_the_previewed_call_comes_back_with_the_phone_marked(monkeypatch, city):
    """The form's own preview button (no script): the page shows the suggestions beside the call as
    typed, and the phone's problem at the phone, as a refused submission shows it."""
    html = await _previewed(
        monkeypatch, city, "operator_preview", "operator", Reply(200, SUGGESTED), fetch=False
    )
    assert 'id="pv-category"' in html
    assert re.search(
        r'<p class="error" role="alert" id="caller_phone-error"[^>]*>' + BAD_PHONE + "</p>", html
    )
    assert 'aria-invalid="true"' in re.search(r'<input id="caller_phone"[^>]*>', html)[0]
    assert described_by(html, "caller_phone") == ["caller_phone-error"]
    assert 'aria-invalid="true"' not in re.search(r'<textarea id="text"[^>]*>', html)[0]


@pytest.mark.parametrize(
    ("name", "role", "action", "label"),
    [
        ("operator.html", "operator", "/console/operator", "清空（新来电）"),
        ("patrol.html", "grid_worker", "/console/patrol", "清空（新上报）"),
    ],
)
def test_an_intake_form_has_a_button_for_a_new_empty_one(name, role, action, label):
    """清空 is a button of a form of its own, which asks for the page afresh (a GET: nothing typed
    goes into an address): it works without the script, whose draft it drops first (console.js)."""
    html = form_page(name, role, {"text": "请填写诉求内容"})
    button = re.search(
        rf'<button type="submit" form="([^"]+)" class="secondary" id="clear-form">{label}</button>', html
    )
    assert button is not None
    fresh = re.search(rf'<form method="get" action="{action}" id="{button[1]}"></form>', html)
    assert fresh is not None
    intake = re.search(r'<form method="post"[^>]*data-fresh="([^"]+)"', html)
    assert intake is not None
    assert intake[1] == button[1]


def test_a_refusal_is_said_with_the_pages_label_only_where_the_api_names_the_field_otherwise():
    fields = {"text": "问题描述", "address": "位置说明"}
    said_as = {"text": "诉求内容"}
    short = "诉求内容太短（2字），请至少写5个字说明问题"
    assert present.refusal("text", "invalid_appeal", short, fields, {}, "form", said_as) == {
        "text": "问题描述太短（2字），请至少写5个字说明问题"
    }
    assert present.refusal("text", "invalid_appeal", short, fields, {}, "form") == {"text": short}
    long = "地址太长，请控制在200字以内"
    assert present.refusal("address", "invalid_appeal", long, fields, {}, "form", said_as) == {
        "address": long
    }


def test_every_console_page_is_awaited():
    """`page()` is a coroutine (the menu asks how many callbacks are due): a handler returning it
    unawaited answers with an error, and mypy cannot see it (the handlers declare no return type)."""
    import ast
    from pathlib import Path

    import services.console as console

    unawaited = []
    for path in Path(console.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        awaited = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Await)}
        for n in ast.walk(tree):
            if (
                isinstance(n, ast.Call)
                and getattr(n.func, "id", getattr(n.func, "attr", None)) in ("page", "anonymous_form")
                and id(n) not in awaited
            ):
                unawaited.append(f"{path.name}:{n.lineno}")
    assert unawaited == []


# --- the knowledge base's list ---------------------------------------------------------------------


class _KnowledgeApi:
    """The API as the knowledge page sees it: answers `reply`, keeps what it was asked."""

    def __init__(self, reply: Reply) -> None:
        self.reply, self.asked = reply, []

    async def get(self, path: str, **params):
        self.asked.append((path, params))
        return self.reply


async def _knowledge_page(monkeypatch, city, reply: Reply, **query: str) -> tuple[int, str, list]:
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    fake = _KnowledgeApi(reply)
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    request = SimpleNamespace(query_params=query, app=SimpleNamespace(state=SimpleNamespace(city=city)))
    s = Session(token="t", principal=Principal(role="department", department="urban_mgmt"), csrf="c")
    response = await views.knowledge_page(request, s)
    return response.status_code, response.body.decode(), fake.asked


async def test_the_knowledge_list_narrows_to_a_category_and_keeps_it_in_its_links(monkeypatch, city):
    light = {
        "id": "kb-light",
        "question": "路灯坏了找谁修？",
        "category": "city.facility.streetlight",
        "category_names": ["城市管理", "市政设施", "路灯故障"],
        "department_name": "区城市管理委员会",
        "reviewed": "2026-10-01",
        "review_due": False,
    }
    gone = {**light, "id": "kb-gone", "category": "city.lamps", "category_names": []}  # since removed
    loose = {**light, "id": "kb-loose", "category": None, "category_names": []}
    reply = Reply(200, {"total": 45, "review_days": 180, "entries": [light, gone, loose]})
    status, html, asked = await _knowledge_page(
        monkeypatch, city, reply, q="路灯", category="city.facility", page="2"
    )
    assert status == 200
    assert asked[0][1]["category"] == "city.facility"
    assert '<option value="city.facility" selected>城市管理/市政设施</option>' in html
    assert html.count(" selected>") == 1
    row = html[html.index('id="entry-kb-light"') :]
    assert row[: row.index("</tr>")].count("城市管理/市政设施/路灯故障") == 1
    row = html[html.index('id="entry-kb-gone"') :]
    assert ">city.lamps</td>" in row[: row.index("</tr>")]
    row = html[html.index('id="entry-kb-loose"') :]
    assert ">未分类</td>" in row[: row.index("</tr>")]
    # The pages keep the category (and the words) in their links.
    query = urlencode({"q": "路灯", "category": "city.facility"}).replace("&", "&amp;")
    assert f'href="/console/knowledge?{query}&amp;page=1" rel="prev"' in html
    assert f'href="/console/knowledge?{query}&amp;page=3" rel="next"' in html

    # No category: the API is not asked to narrow, and the list offers 全部分类.
    _, html, asked = await _knowledge_page(monkeypatch, city, reply)
    assert asked[0][1]["category"] is None
    assert '<option value="">全部分类</option>' in html
    assert " selected>" not in html


async def test_a_category_the_api_refuses_is_said_beside_the_select(monkeypatch, city):
    refused = Reply(
        422,
        {"error": "unknown_category", "field": "category", "message": "分类“no.such”不存在，请填写编号"},
    )
    status, html, _ = await _knowledge_page(monkeypatch, city, refused, category="no.such")
    assert status == 422
    error = told(html, "分类“no.such”不存在，请填写编号")
    assert 'id="category-error"' in error
    assert 'role="alert"' in error
    # The select comes back focused, read with the reason (its description): not announced too.
    assert 'id="category"' in focused(html)
    assert 'aria-describedby="category-error"' in focused(html)


# --- the signed link of a WeChat notice ---------------------------------------------------------


class CountingRedis:
    """What of Redis the lookup uses: the hour's counters (set nx, incr, get)."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def pipeline(self, transaction: bool = True) -> CountingRedis.Pipeline:
        return CountingRedis.Pipeline(self)

    async def get(self, key: str) -> int | None:
        return self.values.get(key)

    class Pipeline:
        def __init__(self, redis: CountingRedis) -> None:
            self.redis, self.ops = redis, []

        async def __aenter__(self) -> CountingRedis.Pipeline:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def set(self, key: str, value: int, ex: int, nx: bool) -> None:
            self.ops.append(("set", key, value))

        def incr(self, key: str) -> None:
            self.ops.append(("incr", key, 1))

        async def execute(self) -> list[object]:
            out: list[object] = []
            for op, key, value in self.ops:
                if op == "set":
                    out.append(self.redis.values.setdefault(key, value) == value)
                else:
                    self.redis.values[key] = self.redis.values.get(key, 0) + value
                    out.append(self.redis.values[key])
            return out


class OneTicketStore:
    def __init__(self, ticket: Ticket, history: list[dict]) -> None:
        self.ticket, self.steps = ticket, history

    async def get(self, no: str) -> Ticket | None:
        return self.ticket if no == self.ticket.ticket_no else None

    async def history(self, no: str) -> list[dict]:
        return self.steps if no == self.ticket.ticket_no else []


LINK_SALT = "a-long-random-secret-for-these-tests-0123456789"
WECHAT_TICKET = Ticket(
    ticket_no="20260302-000007",
    status=Status.ACCEPTED,
    channel="wechat",
    text="我叫李四，住幸福里5号，楼道灯不亮",
    address="幸福里5号",
    caller=Caller(caller_id="wx-abc"),  # WeChat: no phone, no last four digits
    received_at=NOW,
    category_names=("城市管理", "市政设施", "路灯故障"),
    department=DepartmentRef(id="urban_mgmt", name="区城市管理委员会"),
)


@pytest.fixture
def lookup_app(city):
    from fastapi import FastAPI

    from services.console import views
    from shared.settings import Settings

    app = FastAPI()
    views.mount(app)
    app.state.settings = Settings(caller_id_salt=LINK_SALT)
    app.state.city = city
    app.state.redis = CountingRedis()
    history = [
        {"topic": "appeal.received", "occurred_at": NOW.isoformat()},
        {"topic": "ticket.updated", "action": "accepted", "occurred_at": NOW.isoformat()},
    ]
    app.state.store = OneTicketStore(WECHAT_TICKET, history)
    return app


async def get_lookup(app, **params: str):
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        return await client.get("/console/lookup", params=params)


def found_section(html: str) -> str:
    return html[html.index('id="found"') :] if 'id="found"' in html else ""


def signed(no: str, *, days_ago: int = 0, days: int = 30, salt: str = LINK_SALT) -> dict[str, str]:
    """The query of a link to `no` made `days_ago` days ago (today's, by the clock the view reads)."""
    from shared.lookup_link import day_number, link_key, params

    today = day_number(datetime.now(UTC).timestamp())
    return params(no, today - days_ago, days, link_key(salt))


async def test_a_signed_link_shows_its_ticket_without_the_digits(lookup_app):
    no = WECHAT_TICKET.ticket_no
    r = await get_lookup(lookup_app, **signed(no))
    assert r.status_code == 200, r.text
    found = found_section(r.text)
    assert f"工单 {no}" in found
    assert "办理中" in found
    assert "承办单位已签收，正在办理" in found
    assert "李四" not in r.text  # the same view as the form's: nothing personal
    assert "幸福里" not in r.text
    assert "链接无效" not in r.text
    assert "链接已过期" not in r.text
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Cache-Control"] == "no-store"
    # Typed as a resident might copy it: the same number.
    again = await get_lookup(lookup_app, **{**signed(no), "t": no.replace("-", "")})
    assert f"工单 {no}" in found_section(again.text)
    # On its last day it still opens.
    last = await get_lookup(lookup_app, **signed(no, days_ago=29))
    assert f"工单 {no}" in found_section(last.text)


@pytest.mark.parametrize(
    "params",
    [
        {"t": "20260302-000008", "e": "__e__", "s": "__sig__"},  # the number changed, the signature kept
        {"t": "20260302-000007", "e": "__later__", "s": "__sig__"},  # the day moved on
        {"t": "20260302-000007", "e": "0__e__", "s": "__sig__"},  # the day spelt another way
        {"t": "20260302-000007", "e": "__e__", "s": "0123456789abcdef"},  # a signature made up
        {"t": "20260302-000007", "e": "__e__", "s": "__cut__"},  # cut short by one
        {"t": "20260302-000007", "e": "__e__", "s": ""},  # no signature
        {"t": "20260302-000007", "e": "__e__"},
        {"e": "__e__", "s": "__sig__"},  # no number
        {"t": "<script>alert(1)</script>", "e": "__e__", "s": "__sig__"},
    ],
)
async def test_a_bad_link_shows_the_form_saying_so(lookup_app, params):
    from services.console.lookup import BAD_LINK

    link = signed(WECHAT_TICKET.ticket_no)
    later = str(int(link["e"]) + 365)
    shown = {"__sig__": link["s"], "__cut__": link["s"][:-1], "__e__": link["e"], "__later__": later}
    params = {k: re.sub("__[a-z]+__", lambda m: shown[m.group()], v) for k, v in params.items()}
    r = await get_lookup(lookup_app, **params)
    assert r.status_code == 403, r.text
    assert BAD_LINK in r.text
    assert "链接无效，可能不完整或被改动。请回到公众号对话中发送“查询”获取新链接" in BAD_LINK
    assert 'name="last4"' in r.text  # the normal form, to look it up the usual way
    assert found_section(r.text) == ""
    assert "<script>alert(1)</script>" not in r.text
    if re.fullmatch(r"[0-9-]+", params.get("t", "")):
        # The number stays in the form: only the digits are left to type.
        assert f'value="{params["t"]}"' in r.text


@pytest.mark.parametrize(
    "params",
    [
        "expired",  # signed by us, its last day was yesterday
        "long_expired",
        {"t": "20260302-000007", "s": "__old__"},  # made before links had a day: `e` absent
        {"t": "20260302-000007", "e": "", "s": "__old__"},
    ],
)
async def test_an_expired_link_shows_the_form_saying_how_to_get_a_new_one(lookup_app, params):
    import hashlib
    import hmac

    from services.console.lookup import EXPIRED_LINK
    from shared.lookup_link import link_key

    no = WECHAT_TICKET.ticket_no
    if params == "expired":
        params = signed(no, days_ago=30)
    elif params == "long_expired":
        params = signed(no, days_ago=400, days=7)
    else:  # the signature such a link carried: the number alone
        old = hmac.new(link_key(LINK_SALT), no.encode(), hashlib.sha256).hexdigest()[:16]
        params = {k: old if v == "__old__" else v for k, v in params.items()}
    r = await get_lookup(lookup_app, **params)
    assert r.status_code == 410, r.text
    assert EXPIRED_LINK in r.text
    # What a resident can do about it, in their words: ask in the chat for a new link.
    assert "链接已过期。请回到公众号对话中发送“查询”获取新链接" in EXPIRED_LINK
    assert "链接无效" not in r.text
    assert 'name="last4"' in r.text  # the normal form
    assert f'value="{no}"' in r.text
    assert found_section(r.text) == ""
    assert "幸福里" not in r.text


async def test_a_signed_link_signed_with_another_salt_is_refused(lookup_app):
    no = WECHAT_TICKET.ticket_no
    r = await get_lookup(lookup_app, **signed(no, salt=LINK_SALT + "-old"))
    assert r.status_code == 403
    assert "链接无效" in r.text
    # An expired one of another salt is not ours to call expired.
    r = await get_lookup(lookup_app, **signed(no, days_ago=60, salt=LINK_SALT + "-old"))
    assert r.status_code == 403
    assert "链接无效" in r.text


async def test_link_visits_count_against_the_address_like_the_forms_tries(lookup_app):
    from services.console.lookup import TRIES_PER_IP_PER_HOUR

    no = WECHAT_TICKET.ticket_no
    for _ in range(TRIES_PER_IP_PER_HOUR):
        r = await get_lookup(lookup_app, **{**signed(no), "s": "0" * 16})
        assert r.status_code == 403
    # The address's hour is spent: even the right link waits, as the form would.
    r = await get_lookup(lookup_app, **signed(no))
    assert r.status_code == 429
    assert "查询过于频繁，请一小时后再试" in r.text
    assert found_section(r.text) == ""
    # A bad signature is not a wrong last four: the ticket's own tries are untouched.
    assert not any(k.startswith("console:lookup:wrong:") for k in lookup_app.state.redis.values)


class LookupSurveys:
    """What of the survey book the lookup page uses: whether the ticket's survey is open, and the
    answer given there (kept, to see what was recorded)."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, int, bool, str]] = []

    async def ticket_survey(self, no: str, now: datetime) -> tuple[object, bool] | None:
        return (object(), not self.answers) if no == WECHAT_TICKET.ticket_no else None

    async def answer_on_lookup(self, no: str, rating, solved: bool, comment: str, now: datetime):
        self.answers.append((no, rating, solved, comment))
        return SurveyAnswered(
            ticket_no=no, survey_id="s", rating=rating, solved=solved, text=comment, via="lookup"
        )


async def test_a_wechat_resident_rates_the_ticket_on_the_page_its_signed_link_opened(lookup_app):
    """回访中, the page a signed link opened offers the survey without asking for digits; the answer
    is checked against the link again (still valid, for that ticket), with the page's token, counted
    against the address's tries as the link's visit is, and recorded as the digits' answer is."""
    from services.console.lookup import BAD_LINK, EXPIRED_LINK

    no = WECHAT_TICKET.ticket_no
    lookup_app.state.store.ticket = WECHAT_TICKET.model_copy(update={"status": Status.SURVEYED})
    surveys = LookupSurveys()
    lookup_app.state.notifier = SimpleNamespace(surveys=surveys, clock=lambda: NOW)
    redis = lookup_app.state.redis
    link = signed(no)
    import httpx

    transport = httpx.ASGITransport(app=lookup_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        page = await client.get("/console/lookup", params=link)
        assert page.status_code == 200, page.text
        form = re.search(r'<form method="post" action="/console/lookup/survey".*?</form>', page.text, re.S)
        assert form is not None, "the survey is offered on the link's page"
        assert f'name="s" value="{link["s"]}"' in form[0]
        assert 'name="last4"' not in form[0]
        assert page.headers["Referrer-Policy"] == "no-referrer"
        answer = {"ticket_no": no, "rating": "3", "solved": "no", "comment": "楼道灯还是不亮"}
        last = page

        async def post(**fields: str) -> httpx.Response:
            """The form posted with the token of the last page shown (each page sets its own)."""
            nonlocal last
            csrf = re.findall(r'name="csrf" value="([^"]+)"', last.text)[0]
            last = await client.post("/console/lookup/survey", data={**answer, "csrf": csrf, **fields})
            return last

        # The link no good, expired, or for another ticket: refused as the page would be, nothing
        # recorded, and digits posted beside a link are not read in its place.
        assert (await post(e=link["e"], s="0" * 16, last4="0000")).status_code == 403
        assert (await post(**signed(no, days_ago=30))).status_code == 410
        other = signed("20260302-000008")
        refused = await post(e=other["e"], s=other["s"])
        assert refused.status_code == 403
        assert BAD_LINK in refused.text
        assert EXPIRED_LINK not in refused.text
        # Without the page's token: refused, as the digits' post is.
        assert (await post(e=link["e"], s=link["s"], csrf="forged")).status_code == 403
        assert surveys.answers == []
        tries = redis.values[next(k for k in redis.values if k.startswith("console:lookup:ip:"))]

        done = await post(e=link["e"], s=link["s"])
        assert done.status_code == 200, done.text
        assert "您的评价已记录：不满意" in done.text
        assert "已评价，将重新办理" in done.text
        assert surveys.answers == [(no, 3, False, "楼道灯还是不亮")]
        # Counted against the address's hour like a visit of the link, or a post of the digits.
        assert redis.values[next(k for k in redis.values if k.startswith("console:lookup:ip:"))] == tries + 1
        assert not any(k.startswith("console:lookup:wrong:") for k in redis.values)
        assert "李四" not in done.text
        assert "幸福里" not in done.text
        # Opened again once answered: nothing to rate.
        again = await client.get("/console/lookup", params=link)
        assert "survey-form" not in again.text


async def test_the_lookup_page_open_in_two_tabs_takes_the_answer_from_either(lookup_app):
    """A resident who opened the link twice (two tabs, or 查看详情 tapped twice) answers from the
    first: every view keeps the browser's token instead of making a new one, so the older tab's
    form is not refused as expired. A token not of ours in form is replaced."""
    import httpx

    from services.console import session

    no = WECHAT_TICKET.ticket_no
    lookup_app.state.store.ticket = WECHAT_TICKET.model_copy(update={"status": Status.SURVEYED})
    surveys = LookupSurveys()
    lookup_app.state.notifier = SimpleNamespace(surveys=surveys, clock=lambda: NOW)
    link = signed(no)
    transport = httpx.ASGITransport(app=lookup_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        first = await client.get("/console/lookup", params=link)
        second = await client.get("/console/lookup", params=link)
        tokens = [re.findall(r'name="csrf" value="([^"]+)"', p.text)[0] for p in (first, second)]
        assert tokens[0] == tokens[1] == client.cookies[session.LOGIN_CSRF_COOKIE]
        answer = {"ticket_no": no, "rating": "1", "solved": "yes", "comment": "", **link}
        done = await client.post("/console/lookup/survey", data={**answer, "csrf": tokens[0]})
        assert done.status_code == 200, done.text
        assert surveys.answers == [(no, 1, True, "")]
        client.cookies.set(session.LOGIN_CSRF_COOKIE, "<script>", path="/console")
        fresh = await client.get("/console/lookup", params=link)
        assert "&lt;script&gt;" not in fresh.text
        assert re.findall(r'name="csrf" value="([^"]+)"', fresh.text)[0] != "<script>"


@pytest.mark.parametrize("field", ["ticket_no", "last4"])
def test_a_residents_lookup_announces_what_is_wrong_with_a_field(field):
    """A resident on a phone's screen reader hears the refusal, not only sees it in red: with the
    field it describes, which takes the focus, or announced if the focus is elsewhere."""
    html = templates.get_template("lookup.html").render(
        request=None, s=None, csrf="x", values={}, errors={field: "手机号后四位不对"}, found=None
    )
    error = told(html, "手机号后四位不对")
    assert re.search(rf'<p class="error" role="alert" id="{field}-error"[^>]*>手机号后四位不对</p>', html)
    assert "autofocus" not in error
    assert f"{field}-error" in described_by(html, field)
    assert unread(html) == []


def focused(html: str) -> str:
    """The one element of a page that takes the focus when it loads (autofocus)."""
    assert html.count("autofocus") == 1, html.count("autofocus")
    return re.search(r"<[^<>]*\bautofocus\b[^<>]*>", html)[0]


def test_a_refusal_with_no_field_of_its_own_takes_the_focus_to_be_read(city):
    """A form refused as a whole (a ticket checked meanwhile, a report sent too often, a lookup's
    wrong digits) has no field to put the focus on: the reason takes it, so that a screen reader
    reads it (an alert already there when the page loads is not read out) and a phone scrolls to it."""
    said = "请稍后再试"
    ticket = {
        "ticket_no": "20260302-000002",
        "status": "resolved",
        "text": "光明路的路灯不亮",
        "caller": {"caller_id": None, "masked_phone": None},
        "confidence": None,
        "received_at": "2026-03-02T08:00:00+00:00",
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
    }
    principal = SimpleNamespace(role="grid_worker", is_admin=False, department=None)
    worker = SimpleNamespace(principal=principal, csrf="x")
    pages = {
        "ticket.html": templates.get_template("ticket.html").render(
            request=None, s=worker, t=row(ticket, TZ, NOW), history=[], map=present.grid_map(city, {}),
            grid_name="未定位", departments=[], errors={"verify": {"form": said}}, values={}, kept={},
            can_verify=False,
        ),
        "patrol.html": form_page("patrol.html", "grid_worker", {"form": said}),
        "operator.html": form_page("operator.html", "operator", {"form": said}),
        "lookup.html": templates.get_template("lookup.html").render(
            request=None, s=None, csrf="x", values={}, errors={"form": said}, found=None
        ),
    }  # fmt: skip
    for name, html in pages.items():
        element = focused(html)
        assert 'role="alert"' in element, name
        assert 'tabindex="-1"' in element, name
        assert html.split(element)[1].startswith(said), name
        assert element == told(html, said), name  # marked, for the script to leave to the focus
    # The patrol form's position refused (in hidden fields, nothing to focus): its reason takes the
    # focus, and the status the script rewrites as the phone locates stays a polite one.
    html = form_page("patrol.html", "grid_worker", {"location": "位置有误"})
    assert told(html, "位置有误") == focused(html)
    assert 'id="location-error"' in focused(html)
    assert re.search(r'<p id="location-state" aria-live="polite">\s*未定位', html)


@pytest.mark.parametrize("field", ["ticket_no", "last4"])
def test_a_residents_refused_field_takes_the_focus_and_the_answer_found_it(field):
    """On a phone, the page comes back scrolled to what needs the resident: the field at fault, or
    the answer below the form, which the focus reads: its number, and where the appeal is."""
    render = templates.get_template("lookup.html").render
    refused = render(request=None, s=None, csrf="x", values={}, errors={field: "请填写"}, found=None)
    assert f'id="{field}"' in focused(refused)
    assert 'aria-invalid="true"' in focused(refused)
    found = {"ticket_no": "20260302-000001", "status": "办理中", "received": "", "category": "", "steps": []}
    answered = render(request=None, s=None, csrf="x", values={}, errors={}, found=found)
    assert 'id="found"' in focused(answered)
    assert 'data-announce="工单20260302-000001，办理状态：办理中"' in focused(answered)
    assert 'aria-describedby="lookup-status-label lookup-status"' in focused(answered)
    assert '<dt id="lookup-status-label">办理状态</dt><dd id="lookup-status">办理中</dd>' in answered


def told(html: str, message: str) -> str:
    """The one element of a page that marks `message` as what the page came back to say
    (data-announce: once the page has loaded, the script writes it into the page's empty #announcer
    unless the focus reads it), which is no live region already holding it (one present at load is
    not read out): a done message has none, a refusal stays an alert."""
    said = re.escape(html_escape(message, quote=False))
    found = re.findall(rf'<[^<>]*\bdata-announce="{said}"[^<>]*>', html)
    assert len(found) == 1, (message, found)
    assert '<div id="announcer" class="sr-only" role="status"></div>' in html  # empty on load
    # In a status region: its words, or the words of an element it opens, not those after it closes
    # (a photo field's empty 已拍 status before the field's refusal).
    assert not re.search(rf'role="status"[^<>]*>(\s*<[^/<>][^<>]*>)*\s*{said}', html), message
    return found[0]


def staff(role: str, department: str | None = None) -> SimpleNamespace:
    principal = SimpleNamespace(
        role=role, is_admin=role == "admin", department=department, operator=None, grid=None
    )
    return SimpleNamespace(principal=principal, csrf="x")


def department_html(**context) -> str:
    defaults = {
        "s": staff("department", "urban_mgmt"), "rows": [], "total": 0, "page_no": 1, "pages": 1,
        "page_query": lambda n: f"page={n}", "filters": {}, "department": "区城市管理委员会",
        "done": "", "statuses": [], "grids": [], "status_names": {}, "idem": "k", "to_accept": [],
        "batch": None,
    }  # fmt: skip
    return templates.get_template("department.html").render(request=None, **{**defaults, **context})


def test_a_departments_queue_tells_what_left_it_and_what_a_batch_came_to():
    """Back in the queue after a return or 转人民调解 (the ticket's page is no longer the
    department's) or a 批量签收: what came of it takes the focus and is read out."""
    returned = present.DONE["return"].format(no="20261201-000001")
    html = department_html(done=returned)
    assert told(html, returned) == focused(html)
    assert 'id="done"' in focused(html)

    refused = [
        {
            "ticket_no": "20261201-000002",
            "reason": "工单20261201-000002已签收（本单位已有人先签收），无需再签收",
        }
    ]
    html = department_html(batch={"accepted": 2, "late": 1, "refused": refused, "error": ""})
    said = "已签收2件（其中1件超过签收时限），请在办结时限内办理。1件未签收，原因见列表。"
    assert told(html, said) == focused(html)
    assert 'id="batch-result"' in focused(html)
    assert 'id="batch-accepted">已签收2件（其中1件超过签收时限），请在办结时限内办理。</p>' in html
    assert "工单20261201-000002</a>：工单20261201-000002已签收" in html  # the reasons, to read
    html = department_html(batch={"accepted": 0, "late": 0, "refused": [], "error": "请勾选要签收的工单"})
    assert told(html, "批量签收未完成：请勾选要签收的工单") == focused(html)
    assert "autofocus" not in department_html()  # the queue opened, not come back to


def test_callbacks_tell_what_was_recorded_or_why_not():
    lists = {"s": staff("operator"), "calls": [], "total": 0, "attempts": 3, "after": "24"}
    render = templates.get_template("callbacks.html").render
    done = "工单20261201-000001回访已记录：不满意"
    html = render(request=None, done=done, error="", **lists)
    assert told(html, done) == focused(html)
    assert 'id="callback-done"' in focused(html)
    taken = "该市民正由话务员0231回访"
    html = render(request=None, done="", error=taken, **lists)
    assert told(html, taken) == focused(html)
    assert 'role="alert"' in focused(html)
    call = {"survey_id": "s1", "ticket_no": "20261201-000001", "phone": "13900000000", "attempts": 0,
            "category_names": [], "text": "路灯", "resolution_note": "已修"}  # fmt: skip
    left_out = "请记录市民的评价"
    html = templates.get_template("callback.html").render(
        request=None, s=staff("operator"), call=call, ratings={1: "满意"}, values={}, error=left_out,
        answer_wanted=CALL_ANSWER_REQUIRED,
    )  # fmt: skip
    assert told(html, left_out) == focused(html)


def test_knowledge_pages_tell_what_was_done_or_refused():
    entry = {
        "id": "kb-1", "question": "社保卡丢了怎么补办？", "answer": "先挂失", "keywords": [],
        "category": None, "category_names": [], "department_name": "区人力资源和社会保障局",
        "reviewed": "2026-03-01", "review_due": False, "retired_at": None,
        "allowed": {"confirm": True, "edit": True, "retire": True},
    }  # fmt: skip
    context = {
        "s": staff("admin"), "entry": entry, "revisions": [], "values": {}, "updated_local": "",
        "retired_local": "", "review_days": 180, "category_choices": [], "department_choices": [],
    }  # fmt: skip
    render = templates.get_template("knowledge_entry.html").render
    for done in KNOWLEDGE_DONE.values():
        html = render(request=None, done=done, errors={}, **context)
        assert told(html, done) == focused(html)
    html = render(request=None, done="", errors={"form": "条目已停用，不能确认"}, **context)
    assert told(html, "条目已停用，不能确认") == focused(html)
    html = form_page("knowledge_new.html", "admin", {"form": "编号已被占用"})
    assert told(html, "编号已被占用") == focused(html)


def test_a_meetings_check_in_or_decision_is_told_in_its_card_or_at_the_top(city):
    """The message is in the meeting's card when the card is on the page (its form below it, to
    correct a refusal), else at the top; either way the redirect's fragment and the focus are on it."""
    from services.console.views import meeting_back

    back = urlsplit(meeting_back("M1", {"page": "2"}, done="已在联席会议M1报到").headers["location"])
    assert dict(parse_qsl(back.query)) == {"page": "2", "done": "已在联席会议M1报到", "meeting": "M1"}
    assert back.fragment == "meeting-done"
    back = urlsplit(meeting_back("M1", {}, error="联席会议M1未记录：请先选择主办单位").headers["location"])
    assert back.fragment == "meeting-error"

    listed = render_meetings(city, [meeting(city)], role="department", department="street_s02")
    assert "autofocus" not in listed
    done = "已在联席会议M1报到"
    render = templates.get_template("meetings.html").render
    context = {
        "request": None, "s": staff("department", "street_s02"), "total": 1, "open_count": 1, "page_no": 1,
        "pages": 1, "meetings": [present.meeting_row(meeting(city), city, TZ)],
    }  # fmt: skip
    html = render(**context, done=done, error="", said_in="M1")
    card = html[html.index('id="meeting-M1"') :]
    assert told(html, done) == focused(html)
    assert 'id="meeting-done"' in focused(card)
    refusal = "联席会议M1未记录：请先选择主办单位"
    html = render(**context, done="", error=refusal, said_in="M1")
    assert 'id="meeting-error"' in focused(html[html.index('id="meeting-M1"') :])
    assert told(html, refusal) == focused(html)
    html = render(**context, done=done, error="", said_in="")  # its card has left the page
    assert 'id="meeting-done"' in focused(html[: html.index('id="meeting-M1"')])


def test_the_desks_returned_tickets_are_paged_like_its_cards():
    """退单工单 grows with every return still open: a page of them (each one's reasons are read from
    its history), the count of all, and the pages, back at the section."""
    empty = {"items": [], "total": 0, "pages": 1, "page_no": 1}
    rows = [
        {
            "ticket_no": f"20261201-{i:06d}",
            "returns": 1,
            "return_reasons": [{"words": f"区水务局退单：非本单位职责（{i}）"}],
        }
        for i in range(1, 21)
    ]
    html = templates.get_template("desk.html").render(
        request=None, s=staff("admin"), sections={"low": empty, "unrouted": empty}, extensions=[],
        returned={"items": rows, "total": 45, "page_no": 2, "pages": 3}, categories=[], departments=[],
        grid_names={}, kept={}, focus="", done="", error="",
    )  # fmt: skip
    assert "退单工单（45）" in html
    assert html.count("区水务局退单：非本单位职责") == 20
    assert '<nav aria-label="退单工单翻页" class="pager">' in html
    assert 'href="/console/desk?returned=1#returned" rel="prev"' in html
    assert 'href="/console/desk?returned=3#returned" rel="next"' in html
    assert "第 2/3 页" in html


async def test_the_desk_reads_only_the_page_of_returned_tickets_it_shows(monkeypatch, city):
    """退单工单 grows with every return still open (thousands in a big city): the desk's page asks the
    API for the page it shows, with how many there are, and reads the reasons of that page's tickets
    alone, rather than every returned ticket of every department's queue to page them itself."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    water = {"id": "water", "name": "区水务局"}
    held = [
        {"ticket_no": f"20261201-{i:06d}", "status": "accepted", "department": water, "returns": 1}
        for i in range(1, 46)
    ]

    class Returned(_DeskApi):
        """Every way the page may read tickets hands them out here, counted."""

        def __init__(self) -> None:
            super().__init__({}, Reply(200, {}))
            self.handed, self.pages = 0, []

        def waiting(self) -> list[dict]:
            return []

        async def followed(self, *, page: int, size: int) -> Reply:
            self.pages.append((page, size))
            shown = held[(page - 1) * size : page * size]
            self.handed += len(shown)
            body = {"tickets": shown, "total": len(held), "page": page, "size": size}
            return Reply(200, {"extensions": [], "returned": body})

        async def open_tickets(self, departments: list[str], **filters) -> list[dict]:
            self.handed += len(held)  # every department's returned ones, as its queue gives them
            return held

        async def dispatch_queue(self, **filters) -> list[dict]:
            return []

    fake = Returned()
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    request = SimpleNamespace(
        query_params={"returned": "2"},
        app=SimpleNamespace(state=SimpleNamespace(city=city, settings=settings)),
    )
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    html = (await views.desk_page(request, s)).body.decode()

    assert fake.handed == views.DESK_PAGE_SIZE  # the page shown, not the 45
    assert fake.pages == [(2, views.DESK_PAGE_SIZE)]
    page_two = [t["ticket_no"] for t in held[20:40]]
    assert fake.asked_why == page_two  # each shown ticket's reasons, from its history
    table = html[html.index('id="returned"') :]
    assert re.findall(r'<tr><td><a href="/console/tickets/([^"]+)">', table) == page_two
    assert "退单工单（45）" in table
    assert "第 2/3 页" in table


def test_a_returned_ticket_a_joint_meeting_holds_is_listed_with_its_meeting():
    """退单工单 counts and lists every open returned ticket (Queues.followed): one a meeting took says
    so, linking the meeting that is to send it out again."""
    empty = {"items": [], "total": 0, "pages": 1, "page_no": 1}
    held = {
        "ticket_no": "20261201-000009", "department": {"id": "dispatch_desk", "name": "12345派单中心"},
        "returns": 1, "returned_by": ["water"], "return_reasons": [], "status": "meeting",
        "status_name": "联席会议", "meeting_id": "M-hot-1",
    }  # fmt: skip
    returned = {"items": [held], "total": 1, "pages": 1, "page_no": 1}
    html = templates.get_template("desk.html").render(
        request=None, s=staff("admin"), sections={"low": empty, "unrouted": empty}, extensions=[],
        returned=returned, categories=[], departments=[], grid_names={}, kept={}, focus="", done="",
        error="", department_names={"water": "区水务局"},
    )  # fmt: skip
    table = html[html.index('<section id="returned">') :]
    assert "<h2>退单工单（1）</h2>" in table
    rows = re.findall(r'<tr><td><a href="/console/tickets/([^"]+)">', table)
    assert rows == ["20261201-000009"]  # counted and listed
    assert '联席会议（<a href="/console/meetings/M-hot-1">会议M-hot-1</a>，待确定主办单位）' in table


def test_a_desks_refusal_with_no_card_to_go_back_to_is_told_and_focused():
    """An extension's verdict refused (the request was withdrawn meanwhile): no card to go back to."""
    empty = {"items": [], "total": 0, "pages": 1, "page_no": 1}
    html = templates.get_template("desk.html").render(
        request=None, s=staff("admin"), sections={"low": empty, "unrouted": empty}, extensions=[],
        returned=empty, categories=[], departments=[], grid_names={}, kept={}, focus="", done="",
        error="工单20261201-000001没有待审核的延期申请",
    )  # fmt: skip
    assert told(html, "工单20261201-000001没有待审核的延期申请") == focused(html)
    assert 'role="alert"' in focused(html)


def access_html(**context) -> str:
    defaults = {
        "s": staff("admin"), "values": {"role": "", "days": "90"}, "errors": {}, "issued": None, "idem": "k",
        "revoked_id": "", "revoked": "", "notice": "", "filters": {}, "query": "", "list_query": "",
        "role_links": [], "tokens": [], "total": 0, "list_notice": "", "page_no": 1, "pages": 1,
        "audit": [], "audit_notice": "", "role_choices": [], "department_choices": [], "grid_groups": [],
        "default_days": 90,
    }  # fmt: skip
    return templates.get_template("access.html").render(request=None, **{**defaults, **context})


def test_the_desks_erasure_and_credentials_tell_what_was_done():
    erased = privacy_html(values={"by": "phone"}, erased=2)
    said = "已删除2件工单中的个人信息，审计记录已写入。"
    assert told(erased, said) == focused(erased)  # not the emptied form's phone field
    assert 'id="erased"' in focused(erased)
    assert 'id="phone"' in focused(privacy_html(values={"by": "phone"}))  # the form opened: typed into
    refused = privacy_html(values={"by": "phone"}, errors={"form": "工单档案库暂时不可用，请稍后再试"})
    assert told(refused, "工单档案库暂时不可用，请稍后再试") == focused(refused)

    html = access_html(revoked_id="0123456789abcdef", revoked="话务员 0231")
    said = "已吊销话务员 0231的凭证 0123456789abcdef：此凭证即刻失效，用它登录的控制台随即退出登录。"
    assert told(html, said) == focused(html)
    html = access_html(notice="凭证不存在或已吊销")
    assert told(html, "凭证不存在或已吊销") == focused(html)
    issued = {"held_by": "话务员 0231", "token_id": "0123456789abcdef", "expires": "2027-03-01 08:00",
              "token": "t" * 43, "role": "operator", "signin_url": "http://x/console/signin"}  # fmt: skip
    html = access_html(issued=issued)
    told(html, "已为话务员 0231签发凭证。")  # whose: that it is shown once, the focus reads (below)
    assert 'id="new-token"' in focused(html)  # the credential, to copy
    assert 'aria-describedby="shown-once"' in focused(html)
    html = access_html(errors={"form": "签发过于频繁"})
    assert told(html, "签发过于频繁") == focused(html)


def test_a_refused_sign_in_is_told_while_the_field_keeps_the_focus():
    render = templates.get_template("signin.html").render
    html = render(request=None, s=None, csrf="x", error="登录凭证无效或已吊销，请向管理员重新申领")
    assert 'role="alert"' in told(html, "登录凭证无效或已吊销，请向管理员重新申领")
    assert 'id="token"' in focused(html)
    assert 'aria-describedby="token-error"' in focused(html)
    assert "data-announce" not in render(request=None, s=None, csrf="x", error="")


def test_the_credentials_days_offer_the_range_a_grant_is_checked_against():
    """有效天数: its bounds are the grant's (shared.access), on the field and in its hint."""
    from shared import access

    html = access_html()
    field = re.search(r'<input id="days"[^>]*>', html)
    assert field is not None
    assert f'min="{access.MIN_DAYS}"' in field[0]
    assert f'max="{access.MAX_DAYS}"' in field[0]
    assert f"可填{access.MIN_DAYS}到{access.MAX_DAYS}天" in html
    city = load_city()
    for days in (access.MIN_DAYS, access.MAX_DAYS):  # the bounds the page shows are those applied
        access.checked_grant(city, role="admin", days=days, default_days=90)
    for days in (access.MIN_DAYS - 1, access.MAX_DAYS + 1):
        with pytest.raises(access.InvalidGrant):
            access.checked_grant(city, role="admin", days=days, default_days=90)


def test_a_browser_whose_credential_ended_is_told_why_at_sign_in():
    render = templates.get_template("signin.html").render
    ended = "您的登录凭证已被吊销或已过期，请联系派单中心重新签发"
    html = render(request=None, s=None, csrf="x", error="", ended=ended)
    assert told(html, ended)
    assert 'id="token"' in focused(html)
    assert 'aria-describedby="session-ended"' in focused(html)
    assert "aria-invalid" not in html  # nothing typed is at fault
    assert unread(html) == []
    assert "session-ended" not in render(request=None, s=None, csrf="x", error="", ended="")


def unread(html: str) -> list[str]:
    """The live regions (role alert or status) a page loads with words in that nothing will read: a
    live region reads what changes in it, not what it was loaded with; these carry no data-announce
    for the script to say, and are not what the focus reads (the element focused, or one it is
    described by, as a refused field by its reason)."""
    first = re.search(r"<[^<>]*\bautofocus\b[^<>]*>", html)
    read: set[str] = set()
    if first:
        read |= ids_of(first[0]) if "tabindex" in first[0] else set()
        described = re.search(r'aria-describedby="([^"]*)"', first[0])
        read |= set(described[1].split()) if described else set()
    return [
        tag
        for tag, words in re.findall(r'(<[^<>]*\brole="(?:alert|status)"[^<>]*>)([^<]*)', html)
        if words.strip() and "data-announce" not in tag and not read & ids_of(tag)
    ]


def ids_of(tag: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]*)"', tag))


def tickets_html(city, **context) -> str:
    defaults = {
        "s": staff("admin"), "filters": dict.fromkeys(LIST_FILTERS, ""), "query": {}, "urlencode": urlencode,
        "rows": [], "total": 0, "page_no": 1, "pages": 1, "errors": {}, "notice": "",
    }  # fmt: skip
    return templates.get_template("tickets.html").render(
        request=None, **list_choices(city), **{**defaults, **context}
    )


@pytest.mark.parametrize("field", ["q", "status", "from"])
def test_a_refused_filter_of_the_ticket_list_comes_back_focused_read_with_its_reason(city, field):
    """The reason beside a refused filter was an alert on the page at load, which nothing read: the
    filter now takes the focus, read with the reason that describes it, which is not announced too."""
    html = tickets_html(city, errors={field: "搜索词至少两个字"})
    assert f'id="f-{field}"' in focused(html)
    assert f'aria-describedby="f-{field}-error"' in focused(html)
    assert 'aria-invalid="true"' in focused(html)
    error = told(html, "搜索词至少两个字")  # marked, for the script to leave to the focus
    assert f'id="f-{field}-error"' in error
    assert "autofocus" not in error
    assert unread(html) == []
    assert "autofocus" not in tickets_html(city)  # a list opened, not come back to


@pytest.mark.parametrize(("context", "at"), [
    ({"notice": "工单档案库（PostgreSQL）暂时无法访问，请稍后重试；受理诉求不受影响"}, "list-notice"),
    ({"errors": {"form": "每页最多200件"}}, "f-form-error"),
])  # fmt: skip
def test_a_ticket_list_refused_as_a_whole_says_why_where_the_focus_is(city, context, at):
    """The list the page is for could not be had (the record away) or the search was refused with no
    filter of its own at fault: the reason takes the focus, and is read by it alone."""
    message = context.get("notice") or context["errors"]["form"]
    html = tickets_html(city, **context)
    assert told(html, message) == focused(html)
    assert f'id="{at}"' in focused(html)
    assert 'role="alert"' in focused(html)
    assert unread(html) == []


async def test_a_knowledge_search_refused_is_read_once_by_the_focus(monkeypatch, city):
    """Its search term refused: the field, focused, is read with the reason; refused as a whole, or
    the entries away (503): the reason takes the focus. Each was an alert nothing read."""
    refused = Reply(422, {"error": "invalid_query", "field": "q", "message": "关键字至少两个字"})
    status, html, _ = await _knowledge_page(monkeypatch, city, refused, q="灯")
    assert status == 422
    assert 'id="q"' in focused(html)
    assert 'aria-describedby="q-error"' in focused(html)
    assert 'id="q-error"' in told(html, "关键字至少两个字")
    assert unread(html) == []
    refused = Reply(422, {"error": "invalid_request", "field": "size", "message": "size: too large"})
    _, html, _ = await _knowledge_page(monkeypatch, city, refused)
    assert told(html, "size: too large") == focused(html)
    assert 'id="form-error"' in focused(html)
    away = Reply(
        503,
        {
            "error": "unavailable",
            "message": "工单档案库（PostgreSQL）暂时无法访问，请稍后重试；受理诉求不受影响",
        },
    )
    status, html, _ = await _knowledge_page(monkeypatch, city, away)
    assert status == 503
    assert told(html, "工单档案库（PostgreSQL）暂时无法访问，请稍后重试；受理诉求不受影响") == focused(html)
    assert 'id="notice"' in focused(html)
    assert unread(html) == []


def test_a_list_or_record_that_could_not_be_read_is_told_once_the_page_has_loaded(city):
    """Part of a page that could not be read (the record or Redis away) while the rest is there to
    use: an alert there at load, which nothing read, is now told by the announcer once the page has
    loaded, and does not take the focus (which would take the page past the form above it)."""
    away = "工单档案库（PostgreSQL）暂时无法访问，请稍后重试；受理诉求不受影响"
    pages = {
        "access list": (access_html(list_notice=away), "list-notice"),
        "access record": (access_html(audit_notice=away), "audit-notice"),
        "privacy record": (privacy_html(values={"by": "phone"}, audit_notice=away), "audit-notice"),
        "patrol to verify": (patrol_html(to_verify=None, to_verify_error=away), "to-verify-error"),
        "patrol recent": (patrol_html(recent=None, recent_error=away), "recent-error"),
        "dashboard trend": (period_html(city, trend_error=away), "trend-error"),
    }
    for name, (html, at) in pages.items():
        element = told(html, away)
        assert f'id="{at}"' in element, name
        assert 'role="alert"' in element, name
        assert "autofocus" not in element, name
        assert "tabindex" not in element, name
        assert unread(html) == [], name
    assert 'id="phone"' in focused(pages["privacy record"][0])  # the form, typed into, as before
    # Both of the access page's, in the page's order, in the one announcement the script makes.
    html = access_html(list_notice="系统繁忙，请稍后重试", audit_notice=away)
    assert html.index('data-announce="系统繁忙') < html.index(f'data-announce="{away}"')


def patrol_html(**context) -> str:
    defaults = {
        "s": staff("grid_worker"), "values": {}, "errors": {}, "idem": "k", "kept": [],
        "grid_name": "第一网格", "recent": [], "recent_total": 0, "to_verify": [], "to_verify_total": 0,
        "check_hours": "24",
    }  # fmt: skip
    return templates.get_template("patrol.html").render(request=None, **{**defaults, **context})


def test_the_dashboard_lists_the_longest_overdue_and_says_how_many_there_are(city):
    """A city behind on hundreds of tickets: the dashboard counts them all, lists the worst and
    links to the whole list."""
    late = [
        {"ticket_no": f"20261201-{i:06d}", "department_name": "区城市管理委员会", "left": "已超期1天",
         "category_label": "城市管理"}
        for i in range(1, 51)
    ]  # fmt: skip
    link = "/console/tickets?overdue=true"
    html = period_html(city, overdue=late, overdue_total=321, overdue_link=link, trend_error="趋势暂不可用")
    assert "超期工单（321）" in html
    assert '<p class="muted" id="overdue-shown">列出超期最久的50件。</p>' in html
    assert len(re.findall(r'<tr class="late">', html)) == 50
    assert '<td data-label="承办单位">区城市管理委员会</td>' in html
    assert f'<a href="{link}" id="overdue-all">在工单查询中查看全部321件超期工单</a>' in html
    few = period_html(city, overdue=late[:3], overdue_total=3, trend_error="趋势暂不可用")
    assert "超期工单（3）" in few
    assert 'id="overdue-shown"' not in few
    none = period_html(city, overdue=[], overdue_total=0, trend_error="趋势暂不可用")
    assert "没有超期工单" in none
    assert 'id="overdue-all"' not in none


def period_html(city, **context) -> str:
    """The dashboard as rendered for a period (its figures, or the period's refusal)."""
    defaults = {
        "s": staff("admin"), "start": "2033-07-04", "end": "2033-07-10", "error": "", "error_at": "",
        "tables": {}, "dimension_names": {}, "map": present.grid_map(city, {}), "trend": None,
        "trend_by": "category", "trend_error": "", "top_categories": [], "top_max": 0, "overdue": [],
        "overdue_total": 0, "urlencode": urlencode, "bases": present.rate_bases({}), "min_answers": 3,
        "tickets_link": present.tickets_link,
        "figure_lists": present.figure_lists(city, "2033-07-04", "2033-07-10"),
        "overall": dict.fromkeys(
            ("response_rate", "resolution_rate", "satisfaction_rate", "direct_answer_rate", "score")
        ),
    }  # fmt: skip
    return templates.get_template("dashboard.html").render(request=None, **{**defaults, **context})


LATER = "起始日期2033-07-10晚于结束日期2033-07-04"


def test_a_period_counted_to_today_says_so_under_the_dates(city):
    """1 to 10 December asked on the 3rd: the API counts it to today, and the page says so (the
    trend below compares as many days); a period counted as asked says nothing."""
    said = present.counted_to("2026-12-10", "2026-12-03")
    assert said == "结束日期2026-12-10尚未到来，统计至今天（2026-12-03）；环比、同比按同样的天数比较。"
    assert present.counted_to("2026-12-03", "2026-12-03") == ""
    html = period_html(city, counted_to=said, trend_error="趋势暂不可用")
    assert f'<p class="muted" id="period-counted">{said}</p>' in html
    assert 'id="period-counted"' not in period_html(city, counted_to="", trend_error="趋势暂不可用")
    assert 'id="period-counted"' not in period_html(city, error=LATER, error_at="from", counted_to=said)


def test_a_trend_with_nothing_rising_or_falling_says_so_in_a_sentence_not_a_numbered_list(city):
    """A period with no category up (or none down) said 1. 本期没有下降的诉求分类: a list of one."""
    view = present.trend_view(trend_body("category", [("utility.heating", "公共事业/供暖", 3, 1)]))
    html = dashboard_html(city, view, "category")
    assert '<ol id="trend-rising">' in html
    assert '<p id="trend-falling">本期没有下降的诉求分类</p>' in html
    assert '<ol id="trend-falling">' not in html
    assert "<li>本期没有" not in html
    flat = present.trend_view(trend_body("street", [("s01", "和平街道", 2, 2)]))
    html = dashboard_html(city, flat, "street")
    assert '<p id="trend-rising">本期没有上升的街道</p>' in html
    assert '<p id="trend-falling">本期没有下降的街道</p>' in html
    assert "<ol" not in html[html.index('id="trend"') : html.index("</section>", html.index('id="trend"'))]


@pytest.mark.parametrize("at", ["from", "to"])
def test_a_refused_period_comes_back_with_the_date_at_fault_focused(city, at):
    said = LATER
    html = period_html(city, error=said, error_at=at)
    assert f'id="{at}"' in focused(html)
    assert 'aria-describedby="period-error"' in focused(html)
    assert 'aria-invalid="true"' in focused(html)
    assert 'id="period-error"' in told(html, said)
    assert "autofocus" not in told(html, said)
    assert unread(html) == []
    # Naming neither date (the statistics away): the reason takes the focus itself.
    html = period_html(city, error="系统繁忙，请稍后重试", error_at="")
    assert told(html, "系统繁忙，请稍后重试") == focused(html)
    assert "aria-invalid" not in html
    assert "autofocus" not in period_html(city, trend_error="趋势暂不可用")  # a period counted


class _PeriodApi:
    """The API as the dashboard sees it: the rankings refused as `refused`, nothing open."""

    def __init__(self, refused: Reply) -> None:
        self.refused = refused

    async def get(self, path: str, **params):
        return self.refused if path == "/api/v1/stats" else Reply(200, {"total": 0, "items": []})


@pytest.mark.parametrize(
    ("body", "at", "said"),
    [
        ({"error": "invalid_period", "field": "from", "message": LATER}, "from", LATER),
        ({"error": "invalid_request", "field": "to", "message": "to: Input should be a valid date"}, "to",
         "结束日期不符合要求，请检查后重新填写"),
        ({"error": "unavailable", "message": "系统繁忙，请稍后重试"}, "", "系统繁忙，请稍后重试"),
    ],
)  # fmt: skip
async def test_the_dashboard_puts_a_period_refused_beside_the_date_the_api_names(
    monkeypatch, city, body, at, said
):
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    monkeypatch.setattr(views, "api", lambda request, s: _PeriodApi(Reply(422, body)))
    state = SimpleNamespace(
        city=city, settings=SimpleNamespace(timezone="Asia/Shanghai"),
        console_names={"department_names": {}, "grid_names": {}},
    )  # fmt: skip
    request = SimpleNamespace(
        query_params={"from": "2033-07-10", "to": "2033-07-04"}, app=SimpleNamespace(state=state)
    )
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    html = (await views.dashboard_page(request, s)).body.decode()
    element = told(html, said)
    if at:
        assert f'id="{at}"' in focused(html)
        assert 'aria-describedby="period-error"' in focused(html)
    else:
        assert element == focused(html)
    assert unread(html) == []


class _CountsApi:
    """The API as the dashboard sees it for a period: the rankings count dispatches (派单), the record
    counts appeals (受理); the trend by street is away."""

    def __init__(self, city) -> None:
        lamp, grid = "city.facilities.streetlight", next(iter(city.grids))
        self.grid = grid
        dispatched = scoring.rates({"assigned": 14, "responded_on_time": 1}, scoring.Weights())
        answered = scoring.rates(
            {"assigned": 8, "due_counted": 8, "due": 8, "due_on_time": 7, "answered": 8, "solved": 4,
             "satisfied": 6, "basically_satisfied": 1, "unsatisfied": 1},
            scoring.Weights(),
        )  # fmt: skip
        water = scoring.rates({"assigned": 2, "responded_on_time": 2}, scoring.Weights())
        self.stats = {
            "category": [{"group": lamp, "name": "路灯故障", **dispatched}],
            "grid": [{"group": grid, "name": "网格", **dispatched}],
            # One with answers enough, one with none (its score, the response rate alone, is 100).
            "department": scoring.rank(
                [
                    {"group": "urban_mgmt", "name": "区城市管理委员会", **answered},
                    {"group": "water", "name": "区水务局", **water},
                ],
                3,
            ),
        }
        self.trend = {
            "category": [
                {"group": lamp, "name": "城市管理/市政设施/路灯故障", "count": 8},
                {"group": "unknown", "name": "未分类", "count": 3},
                {"group": "city.appearance.garbage", "name": "城市管理/市容环境/垃圾清运", "count": 0},
            ],
            "grid": [{"group": grid, "name": "网格", "count": 11}],
        }
        self.overdue = Reply(200, {"total": 0, "page": 1, "size": 50, "items": []})
        self.asked: list[dict] = []

    async def get(self, path: str, **params):
        if path == "/api/v1/stats":
            weights = {"basically_satisfied": 0.9, "response": 0.1, "resolution": 0.5, "satisfaction": 0.4}
            return Reply(200, {"groups": self.stats.get(params["group_by"], []), "weights": weights})
        if path == "/api/v1/tickets":  # the overdue ones, from the record
            self.asked.append(params)
            return self.overdue
        if path != "/api/v1/stats/trend":
            return Reply(200, {"count": 0})  # the menu's counts
        if params["group_by"] == "street":
            return Reply(503, {"error": "unavailable", "message": "统计库暂不可用"})
        return Reply(200, {"groups": self.trend[params["group_by"]]})

    async def figures(self, start, end):
        total: dict[str, int] = {}
        for g in self.stats["department"]:
            scoring.add(total, g)
        return scoring.rates(total, scoring.Weights())


async def counted_dashboard(monkeypatch, city, fake: _CountsApi) -> str:
    """The dashboard of 4-10 July 2033 by street, as the desk sees it, on `fake`'s counts."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    monkeypatch.setattr(views, "api", lambda request, s: fake)
    state = SimpleNamespace(
        city=city, settings=SimpleNamespace(timezone="Asia/Shanghai"),
        console_names={"department_names": {}, "grid_names": {}},
    )  # fmt: skip
    request = SimpleNamespace(
        query_params={"from": "2033-07-04", "to": "2033-07-10", "trend_by": "street"},
        app=SimpleNamespace(state=state),
    )
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    return (await views.dashboard_page(request, s)).body.decode()


class _CountedToToday(_CountsApi):
    """The API of 6 July 2033: asked for 4 to 10 July, it counts 4 to 6 July (`to`)."""

    async def get(self, path: str, **params):
        reply = await super().get(path, **params)
        if path == "/api/v1/stats" and reply.ok:
            return Reply(200, reply.body | {"from": params["from"], "to": "2033-07-06"})
        return reply


async def test_the_dashboard_says_a_period_ending_after_today_is_counted_to_today(monkeypatch, city):
    html = await counted_dashboard(monkeypatch, city, _CountedToToday(city))
    said = "结束日期2033-07-10尚未到来，统计至今天（2033-07-06）；环比、同比按同样的天数比较。"
    assert f'<p class="muted" id="period-counted">{said}</p>' in html
    assert 'value="2033-07-10"' in html  # the end asked for stays in its field: tomorrow counts one more day
    assert 'id="period-counted"' not in await counted_dashboard(monkeypatch, city, _CountsApi(city))


async def test_the_dashboards_map_and_top_ten_count_appeals_received_not_dispatches(monkeypatch, city):
    """A meeting's decision dispatches its tickets again: the category's 派单 (14) is not its appeals
    (8). The map and the top ten say how many appeals came in, as the trend beside them does."""
    fake = _CountsApi(city)
    html = await counted_dashboard(monkeypatch, city, fake)
    bars = re.findall(
        r'<span class="bar-label">(?:<a href="([^"]*)">)?([^<]*)(?:</a>)?</span>'
        r'.*?<span class="bar-value">(\d+)</span>',
        html,
    )
    # none received: not listed; each links to its tickets of the period (未分类 has no filter)
    period = "from=2033-07-04&amp;to=2033-07-10"
    lamp = f"/console/tickets?category=city.facilities.streetlight&amp;{period}"
    assert bars == [(lamp, "城市管理/市政设施/路灯故障", "8"), ("", "未分类", "3")]
    assert present.most_received(fake.trend["category"], 1) == [fake.trend["category"][0]]
    counts = re.findall(r'font-weight="bold">(\d+)</text>', html)
    assert counts == ["11"]  # the one grid that received appeals, by what it received
    assert "各网格受理诉求量" in html
    # Each grid opens its tickets of the period, named for whoever cannot see the shading.
    links = re.findall(r'<a href="(/console/tickets\?grid=[^"]*)" aria-label="([^"]*)">', html)
    assert len(links) == len([g for g in city.grids.values() if g.grid.polygon])
    assert all(href.endswith(f"&amp;{period}") for href, _ in links)
    assert any(label.endswith("：11件，查看工单") for _, label in links)
    # The trend by street away: said where the trend goes; the appeals' counts still shown.
    assert "统计库暂不可用" in html


async def test_the_dashboard_ranks_only_those_with_answers_enough_links_each_and_gives_each_rate_its_base(
    monkeypatch, city
):
    """样本不足: a department with no answers (no score: its response rate alone would be 100) comes
    after the one with answers and is not numbered; each name links to its tickets of the period;
    the top cards say what each rate is counted over; the period rule is said."""
    html = await counted_dashboard(monkeypatch, city, _CountsApi(city))
    start = html.index('id="rank-department"')
    table = html[start : html.index("</table>", start)]
    rows = re.findall(r'<tr[^>]*><td>([^<]*)</td><td><a href="([^"]*)">([^<]*)</a>', table)
    period = "from=2033-07-04&amp;to=2033-07-10"
    assert rows == [
        ("1", f"/console/tickets?department=urban_mgmt&amp;{period}", "区城市管理委员会"),
        ("样本不足", f"/console/tickets?department=water&amp;{period}", "区水务局"),
    ]
    # Its rates, and no score in brackets: one made of the response rate alone reads as 100.
    water = table[table.index("区水务局") :]
    assert re.findall(r"<td>([^<]*)</td>", water)[1:5] == ["100.0%", "—", "—", "—"]
    assert "（100.0）" not in table
    assert "回访答复少于3件的为“样本不足”" in html
    # 解决率 50.0%（4/8）: the city's figures with what they are counted over.
    assert (
        'data-figure="resolution_rate">50.0%</span><span class="base" data-figure="resolution_base">（4/8）'
        in html
    )
    assert 'data-figure="response_base">（7/8）' in html  # on time of the responses due
    assert "（满意6、基本满意1／8）" in html
    assert "点开的工单列表按受理日期筛选" in html


async def test_each_top_card_of_the_dashboard_opens_the_tickets_it_counts(monkeypatch, city):
    """响应率, 解决率, 满意率 ... each open the ticket list of the period and the city's scope, filtered
    as close to what the figure counts as the list's filters go: the link reads as the figure and
    the list it opens, and the page says where the list and the figure differ."""
    html = await counted_dashboard(monkeypatch, city, _CountsApi(city))
    period = "from=2033-07-04&amp;to=2033-07-10"
    cards = re.findall(
        r'<a class="figure" href="([^"]*)" id="opens-(\w+)"><span class="label">([^<]*)</span>(.*?)</a>', html
    )
    assert [(key, href) for href, key, _, _ in cards] == [
        ("response_rate", f"/console/tickets?response=late&amp;{period}"),  # 签收: 超时 (or never)
        ("resolution_rate", f"/console/tickets?reopened=true&amp;{period}"),  # 未解决 reopens: 重办
        ("satisfaction_rate", f"/console/tickets?answer=3&amp;{period}"),  # 回访评价: 不满意
        ("score", f"/console/tickets?{period}"),  # made of the three rates: no filter of its own
        ("answered", f"/console/tickets?answered=true&amp;{period}"),  # 回访答复: 已答复
        ("direct_answer_rate", f"/console/tickets?department=dispatch_desk&amp;{period}"),
        ("handled_on_spot", f"/console/tickets?channel=patrol&amp;{period}"),
    ]
    # The link's text, as a screen reader reads it: the figure, its base, and the list it opens.
    named = {key: re.sub(r"<[^>]+>", " ", f"{label}{inside}").split() for _, key, label, inside in cards}
    assert named["resolution_rate"] == ["解决率", "50.0%", "（4/8）", "查看本期重办过的工单"]
    assert named["response_rate"][-1] == "查看本期签收超时的工单"
    assert named["answered"][-1] == "查看本期已答复回访的工单"
    assert named["satisfaction_rate"][-1] == "查看本期评价过不满意的工单"
    assert named["direct_answer_rate"][-1] == "查看本期12345派单中心承办的工单"
    # Each filter is one the list offers, so the list shows what it was opened with.
    for href, _, _, _ in cards:
        asked = dict(parse_qsl(urlsplit(href.replace("&amp;", "&")).query))
        assert set(asked) <= set(LIST_FILTERS)
    # Where the list is not exactly what the figure counts, the page says so, card by card.
    said = re.search(r'<div class="muted" id="figure-lists">(.*?)</div>', html, re.S)
    assert said is not None
    items = re.findall(r"<li>([^<]*)</li>", said[1])
    assert len(items) == len(cards)
    assert "解决率：列出重办过的工单，答复未解决或不满意的工单会重办" in items[1]
    assert "满意、基本满意的可在列表的“回访评价”中改选" in items[2]
    # A response and an answer are counted each time, the list names a ticket once: said.
    assert items[0].startswith(
        "响应率：列出签收超时的工单，含逾期仍未签收的，按时签收的可在列表的“签收”中改选"
    )
    assert "列表每件工单只列一次" in items[0]
    assert "重办后再次答复的计两次，列表每件工单只列一次" in items[4]
    assert "没有对应的筛选条件" in items[3]  # the score alone opens the whole period
    assert "也有待人工派单的" in items[5]


async def test_the_dashboard_reads_a_page_of_the_longest_overdue_and_their_count_from_the_record(
    monkeypatch, city
):
    """超期工单: a city behind on thousands no longer has every overdue ticket read to show fifty.
    The record counts them (SQL) and sends the fifty longest overdue, ordered by the deadline that
    runs now; the section links to the whole list, filtered and sorted as the page asked."""
    fake = _CountsApi(city)
    past = datetime.now(UTC) - timedelta(days=1, hours=2)
    worst = {
        "ticket_no": "20330701-000007", "status": "assigned", "overdue": True, "urges": 2,
        "respond_by": (past - timedelta(days=1)).isoformat(), "resolve_by": None, "meeting_by": None,
        "department": "urban_mgmt", "department_name": "区城市管理委员会",
        "category_names": ["城市管理", "市政设施", "路灯故障"],
    }  # fmt: skip
    next_ = {**worst, "ticket_no": "20330702-000001", "status": "accepted", "urges": 0,
             "respond_by": None, "resolve_by": past.isoformat(), "department_name": "区水务局",
             "category_names": []}  # fmt: skip
    fake.overdue = Reply(200, {"total": 321, "page": 1, "size": 50, "items": [worst, next_]})
    html = await counted_dashboard(monkeypatch, city, fake)
    assert fake.asked == [{"overdue": "true", "status": NOT_CLOSED, "sort": "due", "size": 50}]
    assert NOT_CLOSED.split(",") == [s.value for s in Status if s != Status.CLOSED]
    assert "超期工单（321）" in html  # the record's count, not the rows sent
    section = html[html.index('id="overdue-tickets"') :]
    rows = re.findall(
        r'<tr class="late"><td data-label="工单号"><a href="/console/tickets/([^"]+)">', section
    )
    assert rows == ["20330701-000007", "20330702-000001"]  # in the record's order
    assert '<td data-label="承办单位">区城市管理委员会</td>' in section
    assert '<strong class="overdue">超期</strong> 已超期2天2小时' in section
    assert '<td data-label="分类">城市管理/市政设施/路灯故障</td>' in section
    assert '<td data-label="分类">未分类</td>' in section
    link = "/console/tickets?" + urlencode({"overdue": "true", "status": NOT_CLOSED, "sort": "due"})
    assert f'<a href="{html_escape(link)}" id="overdue-all">在工单查询中查看全部321件超期工单</a>' in section
    # The record away: said where the list goes, not "none overdue".
    fake.overdue = Reply(
        503, {"error": "records_unavailable", "message": "工单档案库（PostgreSQL）暂时无法访问"}
    )
    away = await counted_dashboard(monkeypatch, city, fake)
    section = away[away.index('id="overdue-tickets"') :]
    assert '<h2 id="overdue-title">超期工单</h2>' in section
    assert '<p class="muted" id="overdue-error">工单档案库（PostgreSQL）暂时无法访问</p>' in section
    assert "没有超期工单" not in section


def test_the_ticket_list_offers_what_the_dashboards_cards_and_overdue_tickets_open(city):
    """签收 and 回访答复 as the rates count them, 未关闭 among the statuses and the deadline that
    runs now among the sorts: the list opened from the dashboard shows what it was opened with, and
    sending the form again keeps it."""
    chosen = {"response": "late", "answered": "true", "status": NOT_CLOSED, "sort": "due"}
    html = tickets_html(city, filters={**dict.fromkeys(LIST_FILTERS, ""), **chosen})

    def picked(name: str) -> list[tuple[str, str]]:
        select = re.search(rf'<select id="f-{name}" name="{name}"[^>]*>(.*?)</select>', html, re.S)
        assert select is not None, name
        return re.findall(r'<option value="([^"]*)" selected>([^<]*)</option>', select[1])

    assert picked("response") == [("late", "超时签收或逾期未签收")]
    assert picked("answered") == [("true", "已答复")]
    assert picked("status") == [(NOT_CLOSED, "未关闭（含已办结、回访中）")]
    assert picked("sort") == [("due", "当前时限（近→远）")]
    assert '<label for="f-response">签收</label>' in html
    assert '<label for="f-answered">回访答复</label>' in html
    assert '<option value="on_time" >按时签收</option>' in html
    assert '<option value="false" >未答复</option>' in html


def test_an_extension_request_shows_the_deadline_now_after_approval_and_the_time_given(city):
    # Thursday 2026-12-03 18:00 in Beijing, 3 working days more: Tuesday 2026-12-08 18:00.
    asked = {
        "ticket_no": "20261201-000001", "category": "city.facility.streetlight", "urgent": False,
        "resolve_by": "2026-12-03T10:00:00+00:00", "extension_request": {"days": 3, "reason": "需采购灯杆"},
    }  # fmt: skip
    dates = present.extension_dates(asked, city, TZ)
    assert (dates["resolve_by"], dates["extended_to"]) == ("2026-12-03 18:00", "2026-12-08 18:00")
    assert dates["given"] == "一般，7个工作日"  # the demo city's default class
    utility = {**asked, "category": "utility.power"}
    assert present.extension_dates(utility, city, TZ)["given"] == "水电气热，24小时"
    # A committee's ticket is given mediation's time, whatever its category (sla.yaml department_kinds).
    mediated = {**asked, "department": {"id": "mediation_s01", "name": "和平街道人民调解委员会"}}
    assert present.extension_dates(mediated, city, TZ)["given"] == "人民调解，20个工作日"
    assert present.extension_dates({**asked, "extension_request": None}, city, TZ) == {}


def test_a_message_page_says_what_could_not_be_shown_where_the_focus_is():
    html = templates.get_template("message.html").render(
        request=None, s=staff("admin"), title="工单不存在", message="工单20260302-000009不存在"
    )
    assert told(html, "工单20260302-000009不存在") == focused(html)
    assert 'role="alert"' in focused(html)
    assert unread(html) == []


REFUSED = "请填写"  # a field's refusal, as the pages say it


def refused_page(city, page: str, errors: dict) -> str:
    """A form's page come back with `errors` (field: reason), as its template renders it; a ticket's
    page is `ticket:<action>`, its errors those of that action's form."""
    if page in ("operator", "patrol", "privacy", "knowledge_new"):
        role = {"operator": "operator", "patrol": "grid_worker"}.get(page, "admin")
        return form_page(f"{page}.html", role, errors)
    if page == "access":
        return access_html(errors=errors)
    if page == "lookup":
        return templates.get_template("lookup.html").render(
            request=None, s=None, csrf="x", values={}, errors=errors, found=None
        )
    if page == "knowledge_entry":
        entry = {
            "id": "kb-1", "question": "社保卡丢了怎么补办？", "answer": "先挂失", "keywords": [],
            "category": None, "category_names": [], "department_name": "区人力资源和社会保障局",
            "reviewed": "2026-03-01", "review_due": False, "retired_at": None,
            "allowed": {"confirm": True, "edit": False, "retire": True},
        }  # fmt: skip
        return templates.get_template("knowledge_entry.html").render(
            request=None, s=staff("admin"), entry=entry, revisions=[], values={}, errors=errors,
            updated_local="", retired_local="", review_days=180, done="",
        )  # fmt: skip
    action = page.removeprefix("ticket:")
    role, department, status = {
        "verify": ("grid_worker", None, "resolved"),
        "resolve": ("department", "street_s01_mediation", "accepted"),
        "redispatch": ("admin", None, "assigned"),
        "merge": ("admin", None, "review"),
        "place": ("admin", None, "assigned"),
    }[action]
    ticket = {
        "ticket_no": "20260302-000002", "status": status, "text": "楼上漏水", "confidence": None,
        "caller": {"caller_id": None, "masked_phone": None}, "received_at": "2026-03-02T08:00:00+00:00",
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
    }  # fmt: skip
    return templates.get_template("ticket.html").render(
        request=None, s=staff(role, department), t=row(ticket, TZ, NOW), history=[],
        map=present.grid_map(city, {}), grid_name="未定位", departments=present.departments_of(city),
        errors={action: errors}, values={}, kept={}, handles=True, can_verify=True, is_committee=True,
        can_merge=True, merge_candidates=[], return_reasons={},
        can_place=action == "place", grid_groups=present.grid_choices(city),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("page", "name", "field", "error"),
    [
        ("operator", "caller_phone", "caller_phone", "caller_phone-error"),
        ("operator", "text", "text", "text-error"),
        ("operator", "photos", "photos", "photos-error"),
        ("patrol", "text", "text", "text-error"),
        ("patrol", "caller_phone", "caller_phone", "caller_phone-error"),
        ("patrol", "photos", "photos", "photos-error"),
        ("privacy", "phone", "phone", "phone-error"),
        ("privacy", "reason", "reason", "reason-error"),
        ("access", "role", "role", "role-error"),
        ("access", "days", "days", "days-error"),
        ("knowledge_new", "question", "question", "question-error"),
        ("knowledge_new", "department", "department", "department-error"),
        ("knowledge_entry", "reason", "reason", "reason-error"),
        ("lookup", "ticket_no", "ticket_no", "ticket_no-error"),
        ("lookup", "last4", "last4", "last4-error"),
        ("ticket:verify", "note", "verify-note", "verify-note-error"),
        ("ticket:verify", "photos", "verify-photos", "verify-photos-error"),
        ("ticket:redispatch", "reason", "redispatch-reason", "redispatch-reason-error"),
        ("ticket:merge", "into", "merge-into-typed", "merge-into-error"),
        ("ticket:place", "grid", "place-grid", "place-grid-error"),
        ("ticket:resolve", "mediation.agreement", "resolve-agreement", "resolve-mediation.agreement-error"),
        # The API's schema names the radio's own field: the radio is still the one at fault.
        ("ticket:resolve", "mediation.outcome", "resolve-agreed", "resolve-mediation.outcome-error"),
    ],
)
def test_a_refused_fields_reason_is_read_with_the_field_which_keeps_the_focus(city, page, name, field, error):
    """The field at fault comes back focused and described by its reason, which the focus therefore
    reads: the reason, an alert still, carries its words for the script (data-announce) only to be
    said should the focus be elsewhere, and takes no focus of its own (_said.html: focus=false)."""
    html = refused_page(city, page, {name: REFUSED})
    assert f'id="{field}"' in focused(html)
    assert 'aria-invalid="true"' in focused(html)
    assert error in described_by(html, field)
    reason = told(html, REFUSED)
    assert f'id="{error}"' in reason
    assert 'role="alert"' in reason
    assert "autofocus" not in reason
    assert "tabindex" not in reason
    assert unread(html) == []


@pytest.mark.parametrize(
    ("page", "first", "second"),
    [
        ("operator", "caller_phone", "text"),
        ("patrol", "text", "caller_phone"),
        ("privacy", "phone", "reason"),
        ("access", "role", "days"),
    ],
)
def test_the_reason_of_a_second_refused_field_is_announced(city, page, first, second):
    """Two fields refused: the first takes the focus, read with its reason; the second's autofocus
    loses, and its reason, which the focus does not read, is one the script says (data-announce)."""
    html = refused_page(city, page, {first: "第一项有误", second: "第二项有误"})
    autofocus = re.findall(r"<[^<>]*\bautofocus\b[^<>]*>", html)
    assert [ids_of(tag) for tag in autofocus] == [{first}, {second}]  # the first one wins
    assert f"{first}-error" in described_by(html, first)
    assert f'id="{second}-error"' in told(html, "第二项有误")
    assert f"{second}-error" not in described_by(html, first)
    assert unread(html) == []


def test_a_tickets_page_tells_what_was_done_with_the_link_back_after_it(city):
    ticket = {
        "ticket_no": "20260302-000002", "status": "accepted", "text": "光明路的路灯不亮",
        "caller": {"caller_id": "c1", "masked_phone": "138****0000"}, "confidence": None,
        "received_at": "2026-03-02T08:00:00+00:00",
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
    }  # fmt: skip
    who = staff("department", "urban_mgmt")
    html = templates.get_template("ticket.html").render(
        request=None, s=who, t=row(ticket, TZ, NOW), history=[], map=present.grid_map(city, {}),
        grid_name="未定位", departments=[], errors={}, values={}, kept={}, handles=True,
        done=present.DONE["accept"],
    )  # fmt: skip
    assert told(html, present.DONE["accept"]) == focused(html)
    assert html.split(focused(html))[1].startswith(
        present.DONE["accept"] + ' <a href="/console/department">返回本单位工单</a></p>'
    )
    # 并案 to a typed number: the button takes the focus, the sentence it confirms is read out.
    sentence = "将工单20260302-000002并入工单20260302-000001（光明路路灯，未定位网格，办理中）"
    html = templates.get_template("ticket.html").render(
        request=None, s=staff("admin"), t=row(ticket, TZ, NOW), history=[], map=present.grid_map(city, {}),
        grid_name="未定位", departments=[], errors={}, values={}, kept={}, can_merge=True,
        merge_confirm={"into": "20260302-000001", "moved": [], "sentence": sentence},
    )  # fmt: skip
    assert 'id="merge-confirm"' in told(html, sentence)
    assert 'id="merge-confirmed"' in focused(html)


def history_preview(history: dict | None) -> dict:
    return {
        "category": {"names": ["城市管理"], "confidence": 0.9},
        "grid": {"grid": None, "evidence": ""},
        "department": {"name": "区城市管理委员会", "explanation": ""},
        "duplicates": [],
        **({"history": history} if history is not None else {}),
    }


PAST = {
    "last_30_days": 2,
    "last_365_days": 5,
    "tickets": [
        {
            "ticket_no": "20261102-000007",
            "received_on": "2026-11-02",
            "category_names": ["城市管理", "市政设施", "路灯故障"],
            "status": "closed",
            "status_name": "已关闭",
            "department": "阳光街道办事处",
            "survey": "满意",
        },
        {
            "ticket_no": "20261030-000002",
            "received_on": "2026-10-30",
            "category_names": [],
            "status": "review",
            "status_name": "待人工派单",
            "department": None,
            "survey": None,
        },
    ],
}


def test_the_preview_shows_the_callers_history_compactly_and_links_only_for_readers():
    render = templates.get_template("_preview.html").render
    html = render(preview=history_preview(PAST), reply=None, ticket_links=True)
    assert "<h3>来电历史</h3>" in html
    assert "近30天来电2次，近一年5次" in html
    assert '<a href="/console/tickets/20261102-000007">20261102-000007</a>' in html
    assert "2026-11-02，路灯故障，已关闭（阳光街道办事处），回访：满意" in html
    assert "2026-10-30，未分类，待人工派单\n" in html  # no department, no survey yet: not named
    # 补发受理短信 beside each, a button of the intake form; not on a grid worker's report (no caller).
    resend = 'formaction="/console/operator/resend"'
    assert html.count(resend) == html.count("<li>") == len(PAST["tickets"])
    assert 'value="20261102-000007" class="secondary resend"' in html
    assert resend not in render(preview=history_preview(PAST), reply=None, ticket_links=False, patrol=True)
    # An operator's token opens no ticket page: the numbers, to read out, without a link.
    html = render(preview=history_preview(PAST), reply=None, ticket_links=False)
    assert "/console/tickets/" not in html
    assert "<strong>20261102-000007</strong>" in html
    # Nothing when the caller has no history, none was asked for, or the record was away (null).
    for history in ({"last_30_days": 0, "last_365_days": 0, "tickets": []}, None):
        assert "来电历史" not in render(preview=history_preview(history), reply=None, ticket_links=True)
    away = {**history_preview(None), "history": None}
    html = render(preview=away, reply=None, ticket_links=True)
    assert "来电历史" not in html


def test_the_department_filter_offers_the_dispatch_desk_once(city):
    """The trend links to 12345派单中心 (department=dispatch_desk): the list's 承办单位 offers it, so the
    page shows what it filters by and a new search keeps it; each department once."""
    choices = views_module().list_choices(city)["departments"]
    ids = [d for d, _ in choices]
    assert ("dispatch_desk", "12345派单中心") in choices
    assert len(ids) == len(set(ids)) == len(city.departments)
    link = present.tickets_link("department", "dispatch_desk", "2033-07-04", "2033-07-10")
    assert link == "/console/tickets?department=dispatch_desk&from=2033-07-04&to=2033-07-10"
    assert present.tickets_link("category", "unknown", "2033-07-04", "2033-07-10") is None


def views_module():
    from services.console import views

    return views


def test_no_choice_of_the_ticket_lists_filters_is_offered_twice(city):
    """The empty choice of a filter is a choice too (受理时间（新→旧） is the order when none is
    given): listed again as an option, it read as two orders."""
    html = tickets_html(city)
    for select in re.finditer(r'<select id="(f-[a-z_]+)".*?</select>', html, flags=re.S):
        texts = re.findall(r"<option[^>]*>([^<]*)</option>", select.group(0))
        assert len(texts) == len(set(texts)), f"{select[1]}: {sorted(t for t in texts if texts.count(t) > 1)}"


def test_the_response_rates_base_is_counted_as_the_rate_is():
    """A department with no dispatch in the period but responses due in it (a ticket dispatched the
    day before, accepted today; another overdue today): 50.0% of 2, not — over 0 assigned; the base
    under the card and the rate take their counters from the one `scoring.response_measure`."""
    counts = {"responded": 1, "responded_on_time": 1, "due": 2, "due_on_time": 1}
    figures = scoring.rates(counts, scoring.Weights())
    shown = present.shown_figures(figures)
    assert (shown["response_rate"], shown["response_base"]) == ("50.0%", "（1/2）")
    old = scoring.rates({"assigned": 10, "responded_on_time": 8}, scoring.Weights())  # before `due`
    assert present.percent(old["response_rate"]) == "80.0%"
    assert present.rate_bases(old)["response_base"] == "（8/10）"
    assert present.rate_bases({"responded": 1})["response_base"] == ""  # nothing came due: —
    # In the middle of a move (统计中) the rate is —, and so is its base.
    settling = scoring.rates(counts | {"due_on_time": 3}, scoring.Weights())
    assert settling["response_rate"] is None
    assert set(present.rate_bases(settling).values()) == {""}


def test_the_direct_answer_rates_base_is_the_tickets_dispatched_each_once():
    """直接答复率 25.0%（1/4）: of the tickets first dispatched, not of every dispatch (8 here); a
    period counted before assignments said which is the first shows its share of all of them."""
    counts = {"assigned": 8, "first_assigned": 4, "answered_directly": 1}
    shown = present.shown_figures(scoring.rates(counts, scoring.Weights()))
    assert (shown["direct_answer_rate"], shown["direct_answer_base"]) == ("25.0%", "（1/4）")
    old = present.shown_figures(scoring.rates({"assigned": 8, "answered_directly": 1}, scoring.Weights()))
    assert (old["direct_answer_rate"], old["direct_answer_base"]) == ("12.5%", "（1/8）")
    assert present.rate_bases({})["direct_answer_base"] == ""  # nothing dispatched: —


def test_the_live_dashboard_shows_the_score_as_the_page_does():
    """The page wrote 100.0 and its live update 100 (a number through the page's script): both now
    take the score's text from the server."""
    figures = {"score": 100.0, "response_rate": 0.5, "assigned": 3}
    shown = present.shown_figures(figures)
    assert shown["score"] == present.score_text(100.0) == "100.0"
    assert shown["response_rate"] == present.percent(0.5) == "50.0%"
    assert shown["assigned"] == 3
    assert present.shown_figures({"score": None})["score"] == "—"


def test_a_ticket_not_yet_accepted_shows_its_resolution_deadline_beside_the_one_to_accept(city):
    """A department (a mediation committee, whose time is 20 working days) reads how long it will
    have before it signs for the ticket, not only once it has."""
    ticket = {
        "ticket_no": "20260302-000002", "status": "assigned", "text": "楼上噪音", "confidence": None,
        "caller": {"caller_id": None, "masked_phone": None}, "received_at": "2026-03-02T08:00:00+00:00",
        "department": {"id": "urban_mgmt", "name": "区城市管理委员会"},
        "respond_by": (NOW + timedelta(hours=20)).isoformat(), "resolve_by": "2026-03-30T08:00:00+00:00",
    }  # fmt: skip
    html = render_ticket(city, ticket)
    assert "<dt>签收时限</dt>" in html
    assert '<dd id="resolve-ahead">2026-03-30 16:00前办结</dd>' in html
    accepted = render_ticket(city, {**ticket, "status": "accepted"})
    assert 'id="resolve-ahead"' not in accepted  # the countdown says it: 办结时限 剩余…


def test_a_department_is_told_where_the_ticket_it_returned_went():
    """A first return goes back to routing; a second one to a joint meeting, which is said."""
    first = present.left_queue("return", "20261123-000001", to="", to_meeting=False)
    assert first == "工单20261123-000001已退单，将改派其他单位或由派单中心人工派单。"  # where: not known
    rerouted = present.left_queue("return", "20261123-000001", to="区水务局", to_meeting=False)
    assert rerouted == "工单20261123-000001已退单，已按权责清单改派至区水务局。"
    desk = present.left_queue("return", "20261123-000001", to="12345派单中心", to_meeting=False, to_desk=True)
    assert desk == "工单20261123-000001已退单，已转派单中心重新派单。"
    second = present.left_queue("return", "20261123-000001", to="", to_meeting=True)
    assert "将召集联席会议确定承办单位" in second
    assert "改派其他单位" not in second
    referred = present.left_queue("mediate", "20261123-000002", to="阳光街道人民调解委员会", to_meeting=False)
    assert referred == "工单20261123-000002已转阳光街道人民调解委员会调解，本单位不再承办此工单。"


def test_a_category_the_desk_chose_is_not_shown_with_the_classifiers_confidence(city):
    """The confidence is the classifier's in its own reading; a category a person chose instead
    (the desk's dispatch) is said to be so."""
    classified = {
        **DEPARTMENTS_TICKET,
        "category": "city.facility.streetlight",
        "category_names": ["城市管理", "市政设施", "路灯故障"],
        "confidence": 0.17,
        "top_categories": [{"category": "city.facility.streetlight", "probability": 0.17}],
    }
    html = render_ticket(city, classified)
    assert "路灯故障（置信度 17%）" in html
    chosen = {**classified, "category": "utility.power", "category_names": ["公共事业", "供电"]}
    html = render_ticket(city, chosen)
    assert "供电（人工选定）" in html
    assert "置信度" not in re.search(r'<dd id="ticket-category">(.*?)</dd>', html)[1]


# --- 我上报的 ---------------------------------------------------------------------------------------


def reported_html(city, **context) -> str:
    from services.console.reported import report_row
    from services.records.query import REPORTED_STATE_NAMES

    rows = context.pop("items", [])
    now = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    state = context.get("state", "all")
    defaults = {
        "s": staff("grid_worker"), "state": state, "state_name": REPORTED_STATE_NAMES[state],
        "states": [(k, n, f"/console/reported?state={k}") for k, n in REPORTED_STATE_NAMES.items()],
        "rows": [report_row(i, TZ, city, now, context.pop("worker_grid", None)) for i in rows],
        "total": len(rows), "page_no": 1, "pages": 1,
        "error": "", "urlencode": urlencode,
    }  # fmt: skip
    return templates.get_template("reported.html").render(request=None, **{**defaults, **context})


REPORT = {
    "ticket_no": "20261202-000007", "status": "accepted", "channel": "patrol", "urgent": False,
    "text": "巡查发现翠竹苑东门外人行道井盖破损下陷，行人容易绊倒，夜间尤其危险，请尽快派人维修更换井盖",
    "received_at": "2026-12-02T00:30:00+00:00", "grid": "s01c01g01", "overdue": False,
    "department_name": "区城市管理委员会", "respond_by": "2026-12-02T02:00:00+00:00",
    "resolve_by": "2026-12-02T12:00:00+00:00", "grid_chosen": True, "category_names": [],
}  # fmt: skip


def test_a_workers_report_says_where_it_stands_where_it_is_and_its_deadline(city):
    """Each report: its number linked to its page, the opening words, the status, the department, the
    grid it is in now with 人工选定 when the desk placed it there, and the deadline that runs now."""
    html = reported_html(city, items=[REPORT])
    row = re.search(r'<tr class="" id="reported-20261202-000007">.*?</tr>', html, re.S)
    assert row, html
    cells = row[0]
    assert '<a href="/console/tickets/20261202-000007">20261202-000007</a>' in cells
    assert f">{REPORT['text'][:40]}…</td>" in cells  # its opening words
    assert '<td data-label="状态" class="status">办理中</td>' in cells
    assert "区城市管理委员会" in cells
    assert f"{city.place_name('s01c01g01')}（人工选定）" in cells
    assert '<td data-label="时限" class="deadline">办结时限 2026-12-02 20:00（剩余2小时0分）</td>' in cells
    assert 'aria-current="page">全部</a>' in html
    assert "autofocus" not in html  # a list opened, nothing come back to say


def test_a_report_resolved_in_the_workers_own_grid_links_to_its_check(city):
    """待核查 in 我上报的: resolved in the worker's grid and not checked yet, a link to the check on
    its page; not once checked, not in another grid, not for the worker's own 现场处置."""
    resolved = {**REPORT, "status": "resolved", "resolved_at": "2026-12-02T08:00:00+00:00"}

    def check_link(item: dict, worker_grid: str | None = "s01c01g01") -> bool:
        html = reported_html(city, items=[item], worker_grid=worker_grid)
        return 'id="check-20261202-000007"' in html

    assert check_link(resolved)
    html = reported_html(city, items=[resolved], worker_grid="s01c01g01")
    assert 'href="/console/tickets/20261202-000007#verify-title"' in html
    assert not check_link({**resolved, "verified_at": "2026-12-02T09:00:00+00:00", "verification": "solved"})
    assert not check_link(resolved, worker_grid="s01c01g02")
    assert not check_link({**resolved, "assigned_via": "on_spot"})
    assert check_link({**resolved, "assigned_via": "on_spot", "reopens": 1})
    assert not check_link(REPORT)  # not resolved yet


def test_a_late_report_says_so_in_words_and_a_finished_one_how_it_ended(city):
    from services.console.reported import deadline_state

    now = datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
    said, late = deadline_state(REPORT, TZ, now)
    assert (said, late) == ("办结时限 2026-12-02 20:00（已超期1小时0分）", True)
    # Marked overdue by the router while its current deadline has not passed (accepted late).
    said, late = deadline_state({**REPORT, "overdue": True}, TZ, now - timedelta(hours=5))
    assert (said.startswith("超期：办结时限"), late) == (True, True)
    done = {**REPORT, "status": "closed", "resolved_at": "2026-12-02T08:00:00+00:00"}
    assert deadline_state(done, TZ, now) == ("办结于2026-12-02 16:00", False)
    assert deadline_state({**done, "overdue": True}, TZ, now) == ("超期办结于2026-12-02 16:00", True)
    merged = {**done, "merged_into": "20261201-000001"}
    assert deadline_state(merged, TZ, now) == ("已并入工单20261201-000001", False)
    waiting = {**REPORT, "status": "review", "respond_by": None, "resolve_by": None}
    assert deadline_state(waiting, TZ, now) == ("待人工派单，时限自派单起算", False)
    overdue = reported_html(city, items=[{**REPORT, "resolve_by": "2026-12-02T09:00:00+00:00"}])
    assert '<tr class="late" id="reported-20261202-000007">' in overdue
    cell = '<td data-label="时限" class="deadline overdue">办结时限 2026-12-02 17:00（已超期1小时0分）'
    assert cell in overdue


def test_an_empty_or_unreadable_list_of_reports_says_why(city):
    assert "还没有上报记录" in reported_html(city)
    assert "没有已办结的上报" in reported_html(city, state="done")
    away = "工单档案库（PostgreSQL）暂时无法访问，请稍后重试；受理诉求不受影响"
    html = reported_html(city, rows=None, error=away)
    assert told(html, away) == focused(html)  # what the page is for is the reason now
    assert 'id="reported"' not in html


async def test_a_grid_whose_counts_are_moving_to_another_says_so_and_shows_no_rate(monkeypatch, city):
    """A ticket's counts moved into its new grid before a count they move was read: for a moment
    the old grid's counters do not add up (a part above its whole). Its row says 统计中 instead of a
    rank or 样本不足, with no rate nor score (not 150%), and the page says why and what to do."""
    fake = _CountsApi(city)
    moving = scoring.rates(
        {"assigned": 1, "due_counted": 1, "answered": 2, "solved": 3, "satisfied": 3}, scoring.Weights()
    )
    fake.stats["grid"] = scoring.rank([{"group": fake.grid, "name": "网格", **moving}], 3)
    html = await counted_dashboard(monkeypatch, city, fake)
    start = html.index('id="rank-grid"')
    table = html[start : html.index("</table>", start)]
    [row] = re.findall(r"<tr[^>]*><td>([^<]*)</td>.*?</tr>", table)
    assert row == "统计中"
    assert "150.0%" not in table
    assert "%" not in table.split("</thead>")[1]
    assert 'id="rank-grid-settling"' in html
    assert "暂不计算比率和得分，请稍后刷新" in html
    assert 'id="rank-department-settling"' not in html  # only where a group is settling


# --- the working-day calendar running out ----------------------------------------------------------


def calendar_to(city, last_year: int | None):
    """`city` with its working-day calendar moved to end on 31 December of `last_year` (None: none)."""
    if last_year is None:
        sla = city.sla.model_copy(update={"holidays": (), "workdays": ()})
    else:
        shift = last_year - max(city.sla.holidays).year
        moved = {
            k: tuple(d.replace(year=d.year + shift) for d in getattr(city.sla, k))
            for k in ("holidays", "workdays")
        }
        sla = city.sla.model_copy(update=moved)
    return city.model_copy(update={"sla": sla})


def test_the_calendar_notice_shows_while_the_calendar_ends_within_60_days(city):
    """sla.yaml lists 2026 only: from 2 November the desk and the dashboard say that 2027 is missing,
    and go on saying it once the calendar has ended; a calendar that covers next year says nothing,
    nor does a city that lists no holidays at all (weekends only, by its choice)."""
    soon = calendar_to(city, 2026)
    said = "工作日历只到2026-12-31：请在sla.yaml中补充2027年的节假日和调休安排"
    assert present.calendar_notice(soon, date(2026, 10, 31)) == ""  # 61 days before its end
    assert present.calendar_notice(soon, date(2026, 11, 1)).startswith(said)  # 60 days
    assert (
        present.calendar_notice(soon, date(2026, 12, 3))
        == f"{said}；此后到期的工作日期限暂按周末计算，未计节假日和调休。"
    )
    assert present.calendar_notice(soon, date(2027, 1, 20)).startswith(said)  # ended: still said
    assert present.calendar_notice(calendar_to(city, 2027), date(2026, 12, 3)) == ""
    assert present.calendar_notice(calendar_to(city, None), date(2026, 12, 3)) == ""


def test_a_deadline_past_the_calendar_is_counted_by_weekends_only():
    """What the banner warns of: ten working days from 24 December 2026 end on 7 January 2027 by
    weekends alone, on the 8th once 元旦 (1 January 2027) is in the calendar."""
    from services.router.sla import add_working_days

    sla = load_city().sla
    start = datetime(2026, 12, 24, 10, 0, tzinfo=TZ)
    assert sla.calendar_ends == date(2026, 12, 31)
    assert add_working_days(start, 10, sla, TZ).date() == date(2027, 1, 7)
    with_new_year = sla.model_copy(update={"holidays": (*sla.holidays, date(2027, 1, 1))})
    assert with_new_year.calendar_ends == date(2027, 12, 31)
    assert add_working_days(start, 10, with_new_year, TZ).date() == date(2027, 1, 8)


def test_an_extension_past_the_calendar_says_how_its_days_were_counted(city):
    """The desk's preview of an extension request (延至…) says when the new deadline falls after the
    working-day calendar's end (the demo city's: 2026-12-31), counted there as the router counts it
    on approval: by weekends only, 元旦 not in it (7 January, not the 8th)."""
    asked = {
        "ticket_no": "20261201-000001", "category": "city.facility.streetlight", "urgent": False,
        "resolve_by": "2026-12-24T02:00:00+00:00", "extension_request": {"days": 10, "reason": "需采购灯杆"},
    }  # fmt: skip
    dates = present.extension_dates(asked, city, TZ)
    assert (dates["resolve_by"], dates["extended_to"]) == ("2026-12-24 10:00", "2027-01-07 10:00")
    assert dates["calendar"] == (
        "延期后的期限超出工作日历（只到2026-12-31）：此后的工作日暂按周末计算，未计节假日和调休。"
    )
    # 5 working days end on 31 December, the calendar's last day: counted by it, nothing to say.
    inside = present.extension_dates({**asked, "extension_request": {"days": 5}}, city, TZ)
    assert (inside["extended_to"], inside["calendar"]) == ("2026-12-31 10:00", "")
    assert present.extension_dates(asked, calendar_to(city, 2027), TZ)["calendar"] == ""
    assert present.extension_dates(asked, calendar_to(city, None), TZ)["calendar"] == ""  # weekends only


async def test_the_desk_shows_the_note_beside_the_extended_deadline(monkeypatch, city):
    """The note is on the request's card, under 延至…, whether or not the page's banner is up."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    fake = _DecidingDeskApi(city, Reply(200, {}))
    fake.extension = {
        **fake.extension, "category": "city.facility.streetlight", "urgent": False,
        "resolve_by": "2026-12-24T02:00:00+00:00", "extension_request": {"days": 10, "reason": "需采购灯杆"},
    }  # fmt: skip
    monkeypatch.setattr(views, "api", lambda request, s: fake)
    monkeypatch.setattr(views, "today_of", lambda request: date(2026, 9, 1))  # no banner: the note alone
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    request = SimpleNamespace(
        query_params={}, app=SimpleNamespace(state=SimpleNamespace(city=city, settings=settings))
    )
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    html = (await views.desk_page(request, s)).body.decode()
    no = fake.extension["ticket_no"]
    assert "批准后延至2027-01-07 10:00" in html
    note = re.search(rf'<p class="warning" id="ext-{no}-calendar">(.*?)</p>', html)
    assert note is not None
    assert (
        note.group(1)
        == "延期后的期限超出工作日历（只到2026-12-31）：此后的工作日暂按周末计算，未计节假日和调休。"
    )
    assert 'id="calendar-notice"' not in html


async def test_the_desk_and_the_dashboard_say_the_calendar_runs_out(monkeypatch, city):
    """The banner, first in the page, on the dispatch desk and the manager's dashboard, on the city's
    today (`views.today_of`)."""
    from services.console import views
    from services.console.session import Session
    from shared.auth import Principal

    soon = calendar_to(city, 2026)
    card = {"ticket_no": "20261201-000043", "status": "review", "text": "路灯不亮", "confidence": 0.3}
    settings = SimpleNamespace(timezone="Asia/Shanghai", review_confidence_threshold=0.6)
    request = SimpleNamespace(
        query_params={}, app=SimpleNamespace(state=SimpleNamespace(city=soon, settings=settings))
    )
    s = Session(token="t", principal=Principal(role="admin"), csrf="c")
    banner = re.compile(r'<main id="main"[^>]*>\s*<p class="warning" id="calendar-notice">(.*?)</p>', re.S)
    for today, shown in ((date(2026, 12, 3), True), (date(2026, 9, 1), False)):
        monkeypatch.setattr(views, "today_of", lambda request, today=today: today)
        monkeypatch.setattr(views, "api", lambda request, s: _DeskApi(card, Reply(200, {})))
        desk = (await views.desk_page(request, s)).body.decode()
        dashboard = await counted_dashboard(monkeypatch, soon, _CountsApi(soon))
        for html in (desk, dashboard):
            found = banner.search(html)
            assert (found is not None) is shown
            if found:
                assert "工作日历只到2026-12-31：请在sla.yaml中补充2027年的节假日和调休安排" in found.group(1)


def test_a_tickets_notices_say_when_what_to_whom_and_what_became_of_each() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    made = "2026-12-03T14:05:00+00:00"
    sms = {"phone": "138****5678", "created_at": made, "text": "【12345】您的诉求已受理"}
    rows = present.notices(
        [
            {**sms, "kind": "ack", "state": "delivered", "receipt_error": "", "message_id": "a" * 32},
            {
                **sms,
                "kind": "survey",
                "state": "held",
                "until": "2026-12-04T00:00:00+00:00",
                "held_for": "quiet_hours",
            },
            {
                **sms,
                "kind": "progress",
                "state": "held",
                "until": "2026-12-03T16:00:00+00:00",
                "held_for": "daily_cap",
            },
            {**sms, "kind": "result", "state": "failed", "error": "号码不存在"},
            {
                **sms,
                "kind": "reminder",
                "state": "undelivered",
                "receipt_error": "用户关机",
                "message_id": "c" * 32,
            },
            {
                "kind": "progress",
                "state": "undelivered",
                "channel": "wechat",
                "openid": "oAbc****xyz",
                "kept": "until the resident writes to the account again",
                "error": "超过48小时",
                "created_at": made,
            },
            # Written before records said when their message was made: when it was sent.
            {"kind": "merged", "state": "sent", "phone": "138****5678", "sent_at": made},
        ],
        tz,
    )
    assert [(r["at"], r["kind"], r["channel"], r["to"]) for r in rows] == [
        ("2026-12-03 22:05", "受理告知", "短信", "138****5678"),
        ("2026-12-03 22:05", "回访评价", "短信", "138****5678"),
        ("2026-12-03 22:05", "进度告知", "短信", "138****5678"),
        ("2026-12-03 22:05", "办理结果", "短信", "138****5678"),
        ("2026-12-03 22:05", "评价提醒", "短信", "138****5678"),
        ("2026-12-03 22:05", "进度告知", "微信", "oAbc****xyz"),
        ("2026-12-03 22:05", "merged", "短信", "138****5678"),
    ]
    assert [(r["state"], r["detail"]) for r in rows] == [
        ("已送达", ""),
        ("暂缓发送", "夜间免打扰时段，将于2026-12-04 08:00发出"),
        ("暂缓发送", "该号码今日通知已达上限，将于2026-12-04 00:00发出"),
        ("发送失败", "号码不存在"),
        ("未送达", "用户关机"),
        ("未送达", "市民再次发来消息时补发；超过48小时"),
        ("已发送", ""),
    ]
    assert rows[0]["text"] == "【12345】您的诉求已受理"
    assert rows[-1]["text"] == ""
    # 补发 for an acknowledgement, a progress notice or a result with its text; not a reminder.
    assert [r["resendable"] for r in rows] == [True, False, False, False, False, False, False]
    (resent,) = present.notices([{**sms, "kind": "ack", "state": "sent", "resent_from": "a" * 32}], tz)
    assert (resent["kind"], resent["resent"]) == ("受理告知", "（补发）")
    waiting, cancelled, opted = present.notices(
        [
            {**sms, "kind": "ack", "state": "held", "until": made, "replaced_by": "b" * 32},
            {**sms, "kind": "ack", "state": "cancelled", "reason": "resent", "replaced_by": "b" * 32},
            {**sms, "kind": "survey", "state": "cancelled", "reason": "opted out while it was held"},
        ],
        tz,
    )
    assert (waiting["state"], waiting["detail"]) == ("暂缓发送", "已补发，到时不再发送")
    assert (cancelled["state"], cancelled["detail"]) == ("已取消", "已补发，原定发送取消")
    assert (opted["state"], opted["detail"]) == ("已取消", "市民已退订回访")


@pytest.mark.parametrize(
    ("path", "strays"),
    [
        ("/api/v1/tickets/20261205-000001", False),
        ("/api/v1/tickets/20261205-000001/messages/0123456789abcdef0123456789abcdef/resend", False),
        ("/api/v1/knowledge/entries/社保卡补办", False),
        # a segment decoded from the browser's URL: %3F and %23 end the path, . and .. climb out
        ("/api/v1/tickets/20261205-000001?/urge", True),
        ("/api/v1/tickets/20261205-000001/messages/x#/resend", True),
        ("/api/v1/tickets/../dispatch/20261205-000001/assign", True),
        ("/api/v1/tickets/20261205-000001/messages/./resend", True),
    ],
)
def test_a_path_built_from_the_browsers_segments_may_not_leave_its_resource(path, strays):
    from services.console import backend

    assert backend.strays(path) is strays


async def test_a_stray_path_is_answered_not_found_without_asking_the_api():
    from services.console import backend

    class NoApp:  # the in-process transport would need these: reaching them fails the test
        def __getattr__(self, name):
            raise AssertionError(f"the API was asked ({name})")

    api = backend.Api(request=NoApp(), token="t")
    reply = await api.post("/api/v1/tickets/20261205-000001?/messages/x/resend")
    assert (reply.status, reply.code) == (404, "not_found")
    assert "找不到" in reply.message
