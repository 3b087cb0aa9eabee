"""The notifier inside the running system (real processes, real broker and Redis): reopening on an
unsatisfied reply with the resident's words, opt-out, the outbox and receipt endpoints, and the three
rates from a known sequence of events checked against hand-computed figures."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import re
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import openpyxl
import pytest
from openpyxl.cell import Cell

from services.notifier.scorecard import Scorecard
from services.notifier.scoring import Weights
from shared.auth import issue_token
from shared.bus import EventPublisher, publish
from shared.events import DeadlineNotice, DepartmentRef, SurveyAnswered, TicketAssigned, TicketUpdated
from shared.spreadsheets import BRACKETED
from tests.cities import demo_city
from tests.conftest import as_department, as_sms_gateway, eventually, local_today
from tests.test_pipeline_e2e import LIGHT, outbox_for, resolve_when_assigned, submit, ticket_when
from tests.test_records_reads import sign_in

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]
SH = ZoneInfo("Asia/Shanghai")


# A ticket number no test makes (the tests number today's tickets): a neighbour of a test's own number
# may be another test's ticket, running at the same time.
NO_SUCH_TICKET = "20000103-000001"


def new_phone() -> str:
    return "137" + "".join(random.choices("0123456789", k=8))


@pytest.fixture
async def admin(redis) -> dict[str, str]:
    return {"Authorization": f"Bearer {await issue_token(redis, 'admin')}"}


NO_TOKEN = {"Authorization": ""}


async def resolved_with_survey(api: httpx.AsyncClient, redis, phone: str) -> str:
    no = await submit(api, phone, address="阳光花园3号楼")
    await resolve_when_assigned(api, redis, no)
    return no


async def test_not_solved_reopens_with_the_residents_words(api, redis):
    phone = new_phone()
    no = await resolved_with_survey(api, redis, phone)
    await eventually(lambda: outbox_for(redis, phone, "survey"))
    await ticket_when(api, no, lambda t: t["status"] == "surveyed")
    r = await api.post(
        "/api/v1/sms/inbound", json={"phone": phone, "text": "谢谢"}, headers=await as_sms_gateway(redis)
    )
    assert r.json() == {"kind": "comment", "ticket_no": no, "clarification": True}
    r = await api.post(
        "/api/v1/sms/inbound",
        json={"phone": phone, "text": "没解决，路灯晚上还是不亮"},
        headers=await as_sms_gateway(redis),
    )
    assert r.json()["rating"] == 3
    assert r.json()["solved"] is False
    reopened = await ticket_when(api, no, lambda t: t["reopens"] == 1)
    assert reopened["status"] == "assigned"
    assert reopened["solved"] is False
    assert reopened["history"][-1]["action"] == "reopened"
    assert "路灯晚上还是不亮" in reopened["history"][-1]["note"]
    comments = [
        h for h in reopened["history"] if h["topic"] == "survey.answered" and h["outcome"] == "comment"
    ]
    assert [c["text"] for c in comments] == ["谢谢"]


async def test_opted_out_phone_gets_the_result_and_the_ticket_closes_without_a_survey(api, redis):
    phone = new_phone()
    r = await api.post(
        "/api/v1/sms/inbound", json={"phone": phone, "text": "退订"}, headers=await as_sms_gateway(redis)
    )
    assert r.json() == {"kind": "opt_out", "closed_surveys": []}
    no = await resolved_with_survey(api, redis, phone)
    closed = await ticket_when(api, no, lambda t: t["status"] == "closed")
    assert closed["history"][-1]["answer"]["outcome"] == "opted_out"
    assert closed["rating"] is None
    assert await outbox_for(redis, phone, "result")
    assert await outbox_for(redis, phone, "survey") == []


async def test_sms_callbacks_need_the_gateway_token_and_it_opens_nothing_else(api, redis):
    """A forged "1" from a resident's number would close a ticket as satisfied: the provider's
    callbacks are not open, and the provider's token reaches nothing but them."""
    gateway = {"Authorization": f"Bearer {await issue_token(redis, 'sms_gateway')}"}
    phone = new_phone()
    text = {"phone": phone, "text": "幸福路公交站的站牌被撞坏了，请派人修一下"}
    assert (await api.post("/api/v1/sms/inbound", json=text, headers=NO_TOKEN)).status_code == 401
    no = await submit(api, new_phone(), text=LIGHT)
    ticket = await ticket_when(api, no, lambda t: t["status"] == "assigned")
    department = await as_department(redis, ticket)
    r = await api.post("/api/v1/sms/inbound", json=text, headers=department)
    assert r.status_code == 403
    assert "短信服务商网关" in r.json()["message"]
    r = await api.post("/api/v1/sms/inbound", json=text, headers=gateway)
    assert r.status_code == 201
    assert r.json()["kind"] == "appeal"
    receipt = {"message_id": "nope", "status": "delivered"}
    assert (await api.post("/api/v1/sms/receipts", json=receipt, headers=gateway)).status_code == 404
    assert (await api.post("/api/v1/sms/receipts", json=receipt, headers=department)).status_code == 403
    assert (await api.get("/api/v1/sms/outbox", headers=gateway)).status_code == 403
    assert (await api.get(f"/api/v1/tickets/{no}", headers=gateway)).status_code == 404
    assert (await api.get("/api/v1/stats", headers=gateway)).status_code == 403


async def test_outbox_and_receipts_need_the_admin_token(api, redis, admin):
    phone = new_phone()
    no = await submit(api, phone, text=LIGHT)
    await eventually(lambda: outbox_for(redis, phone, "ack"))
    assert (await api.get("/api/v1/sms/outbox", params={"phone": phone}, headers=NO_TOKEN)).status_code == 401
    r = await api.get("/api/v1/sms/outbox", params={"phone": phone}, headers=admin)
    assert r.status_code == 200
    (ack,) = r.json()["messages"]
    assert ack["ticket_no"] == no
    assert no in ack["text"]
    assert (await api.get("/api/v1/sms/outbox", params={"phone": "123"}, headers=admin)).status_code == 422
    receipt = {"message_id": ack["message_id"], "status": "delivered"}
    assert (await api.post("/api/v1/sms/receipts", json=receipt, headers=NO_TOKEN)).status_code == 401
    r = await api.post("/api/v1/sms/receipts", json=receipt, headers=admin)
    assert r.json() == {"message_id": ack["message_id"], "state": "delivered"}
    assert json.loads(await redis.get(f"sms:msg:{ack['message_id']}"))["state"] == "delivered"
    missing = await api.post("/api/v1/sms/receipts", json=receipt | {"message_id": "nope"}, headers=admin)
    assert missing.status_code == 404


async def test_the_desk_reads_on_the_ticket_what_its_resident_was_sent_and_what_became_of_it(
    api, redis, admin, system
):
    """A resident calls to say no SMS came: the desk opens the ticket and reads each message, its
    text, when it was made and whether the provider delivered it; no one else reads them."""
    phone = new_phone()
    no = await resolved_with_survey(api, redis, phone)
    (ack,) = await eventually(lambda: outbox_for(redis, phone, "ack"))
    await eventually(lambda: outbox_for(redis, phone, "survey"))
    receipt = {"message_id": ack["message_id"], "status": "delivered"}
    assert (await api.post("/api/v1/sms/receipts", json=receipt, headers=admin)).status_code == 200

    r = await api.get(f"/api/v1/tickets/{no}/messages", headers=admin)
    assert r.status_code == 200, r.text
    messages = r.json()["messages"]
    assert [m["kind"] for m in messages] == ["ack", "survey"]
    first, survey = messages
    assert first["message_id"] == ack["message_id"]
    assert (first["state"], first["text"]) == ("delivered", ack["text"])
    assert first["phone"] == f"{phone[:3]}****{phone[-4:]}"
    assert first["created_at"] <= first["receipt_at"]
    assert (survey["state"], survey["ticket_no"]) == ("sent", no)
    assert no in survey["text"]
    assert phone not in r.text
    ticket = await ticket_when(api, no, lambda t: t["status"] in ("surveyed", "resolved"))
    department = await as_department(redis, ticket)
    assert (await api.get(f"/api/v1/tickets/{no}/messages", headers=department)).status_code == 403
    other = await api.get(f"/api/v1/tickets/{NO_SUCH_TICKET}/messages", headers=admin)
    assert other.json()["messages"] == []

    # On the ticket's page: the desk's, not the department's.
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as console:
        await sign_in(console, redis)
        page = (await console.get(f"/console/tickets/{no}")).text
        assert 'id="notices-title">短信与微信通知<' in page
        assert f"受理告知 · 短信 {first['phone']} · <strong>已送达</strong>" in page
        assert "回访评价 · 短信" in page
        assert ack["text"] in page
        # 补发: the resident lost the ticket number; the desk sends the acknowledgement again.
        resend = f"/console/tickets/{no}/messages/{first['message_id']}/resend"
        assert f'action="{resend}"' in page
        assert (
            f"/console/tickets/{no}/messages/{survey['message_id']}/resend" not in page
        )  # a survey: by phone
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        r = await console.post(resend, data={"csrf": csrf.group(1)})
        assert r.status_code == 303, r.text
        assert r.headers["location"] == f"/console/tickets/{no}?done=resent"
        page = (await console.get(r.headers["location"])).text
        assert "已向市民补发通知" in page
        assert f"受理告知（补发） · 短信 {first['phone']} · <strong>已发送</strong>" in page
        assert len(await outbox_for(redis, phone, "ack")) == 2
        await sign_in(console, redis, ticket["department"]["id"])
        page = (await console.get(f"/console/tickets/{no}")).text
        assert f'id="ticket-no">{no}<' in page
        assert "notices-title" not in page
        assert (await console.post(resend, data={"csrf": csrf.group(1)})).status_code in (403, 404)

    # The API: the desk's alone; a double click sends one; a survey, a wrong id, are refused.
    url = f"/api/v1/tickets/{no}/messages/{first['message_id']}/resend"
    assert (await api.post(url, headers=department)).status_code == 403
    r = await api.post(url, headers=admin)
    assert r.status_code == 201, r.text
    again = await api.post(url, headers=admin)
    # The console's click, this and the next are within a second or two: a minute turns between
    # two of them at most, so one of the last two repeats one before it, and sends nothing.
    states = [r.json()["state"], again.json()["state"]]
    assert "duplicate" in states, states
    assert len(await outbox_for(redis, phone, "ack")) == 2 + states.count("sent")
    r = await api.post(f"/api/v1/tickets/{no}/messages/{survey['message_id']}/resend", headers=admin)
    assert (r.status_code, r.json()["error"]) == (409, "not_resendable")
    r = await api.post(f"/api/v1/tickets/{no}/messages/nope/resend", headers=admin)
    assert (r.status_code, r.json()["error"]) == (404, "message_not_found")
    elsewhere = f"/api/v1/tickets/{NO_SUCH_TICKET}/messages/{first['message_id']}/resend"
    r = await api.post(elsewhere, headers=admin)
    assert r.status_code == 404


async def test_an_operator_resends_a_callers_acknowledgement_to_the_number_calling_only(api, redis, admin):
    """补发受理短信 from the hotline: the caller's number must be the ticket's, the message goes to it
    again, and a department, another number or a ticket without one are refused in words."""
    phone = new_phone()
    no = await submit(api, phone, address="阳光花园3号楼")
    (ack,) = await eventually(lambda: outbox_for(redis, phone, "ack"))
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', operator='0231')}"}
    url = f"/api/v1/tickets/{no}/acknowledgement/resend"

    r = await api.post(url, json={"caller_phone": f"+86 {phone}"}, headers=operator)
    assert r.status_code == 201, r.text
    assert (r.json()["resent_from"], r.json()["state"]) == (ack["message_id"], "sent")
    resent = await outbox_for(redis, phone, "ack")
    assert [m["text"] for m in resent] == [ack["text"], ack["text"]]

    r = await api.post(url, json={"caller_phone": new_phone()}, headers=operator)
    assert (r.status_code, r.json()["error"]) == (403, "not_the_caller")
    assert "不是从这个来电号码登记的" in r.json()["message"]
    r = await api.post(url, json={"caller_phone": "12345"}, headers=operator)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_phone")
    other = f"/api/v1/tickets/{NO_SUCH_TICKET}/acknowledgement/resend"
    r = await api.post(other, json={"caller_phone": phone}, headers=admin)
    assert r.status_code == 404
    ticket = await ticket_when(api, no, lambda t: t["status"] == "assigned")
    department = await as_department(redis, ticket)
    assert (await api.post(url, json={"caller_phone": phone}, headers=department)).status_code == 403
    assert len(await outbox_for(redis, phone, "ack")) == 2  # none of the refusals sent anything


# --- the three rates ---------------------------------------------------------------------------

DAY = datetime(2020, 2, 3, 10, 0, tzinfo=SH)  # a day nothing else in the tests happens on


def _sequence(a: str, b: str, day: datetime = DAY) -> list[TicketAssigned | TicketUpdated | SurveyAnswered]:
    """Department a: 5 assigned, 3 accepted in time (1 late, 1 never: its deadline's notice), 3
    answers (1 satisfied solved, 1 basically satisfied solved, 1 unsatisfied unsolved, that one on an
    operator's call), 1 no answer.
    Department b: 2 assigned, 1 in time; 2 answers (basically satisfied solved, satisfied unsolved).
    Plus events that must not count: a dispatch-desk wait, a comment. No ticket is stored: each
    event carries its ticket's department, category and grid, as the router and notifier write them."""
    grid = {a: "s01c01g01", b: "s02c01g01"}
    events: list[TicketAssigned | TicketUpdated | SurveyAnswered] = []
    first = ""
    run = uuid.uuid4().hex[:6]
    plan = [
        (a, True, (1, True)),
        (a, True, (2, True)),
        (a, False, (3, False, "op09")),  # 电话回访: the operator took the answer on the phone
        (a, True, "no_answer"),
        (a, None, None),
        (b, True, (2, True)),
        (b, False, (1, False)),
    ]
    for n, (dept, on_time, answer) in enumerate(plan):
        no = f"{day:%Y%m%d}-{run}{n}"
        ref = DepartmentRef(id=dept, name=dept)
        first = first or no
        facts = {"department": ref, "category": f"cat-{dept}", "grid": grid[dept]}
        events.append(
            TicketAssigned(
                ticket_no=no,
                department=ref,
                via="rule",
                explanation="test",
                category=f"cat-{dept}",
                grid=grid[dept],
                respond_by=day,
                resolve_by=day,
                occurred_at=day,
            )
        )
        if on_time is not None:
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="accepted",
                    status="accepted",
                    actor=dept,
                    on_time=on_time,
                    occurred_at=day,
                    **facts,
                )
            )
        else:  # its response deadline passed, and the router's timer said so: due, and missed
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="overdue",
                    status="assigned",
                    actor="system",
                    supervision=DeadlineNotice(stage="respond", stage_name="签收", deadline=day),
                    occurred_at=day,
                    **facts,
                )
            )
        if answer == "no_answer":
            events.append(
                SurveyAnswered(
                    ticket_no=no,
                    survey_id=no,
                    rating=None,
                    text="",
                    outcome="no_answer",
                    occurred_at=day + timedelta(days=2),
                    **facts,
                )
            )
        elif answer:
            events.append(
                SurveyAnswered(
                    ticket_no=no,
                    survey_id=no,
                    rating=answer[0],
                    solved=answer[1],
                    text=str(answer[0]),
                    occurred_at=day + timedelta(days=1),
                    by=answer[2] if len(answer) > 2 else None,
                    **facts,
                )
            )
            events.append(
                SurveyAnswered(
                    ticket_no=no,
                    survey_id=no,
                    rating=None,
                    text="谢谢",
                    outcome="comment",
                    occurred_at=day + timedelta(days=1),
                    **facts,
                )
            )
    events.append(
        TicketAssigned(
            ticket_no=first,
            department=DepartmentRef(id=a, name=a),
            via="dispatch_desk",
            explanation="low confidence",
            category=f"cat-{a}",
            grid=grid[a],
            respond_by=day,
            resolve_by=day,
            occurred_at=day,
        )
    )
    return events


EXPECTED_A = {
    "assigned": 5,
    "responded": 4,
    "responded_on_time": 3,
    "answered": 3,
    "solved": 2,
    "satisfied": 1,
    "basically_satisfied": 1,
    "unsatisfied": 1,
    "no_answer": 1,
    "skipped": 0,
    "answered_by_phone": 1,  # of the 3 answered
    "response_rate": 0.6,  # 3 / 5 due
    "resolution_rate": 0.6667,  # 2 / 3
    "satisfaction_rate": 0.6333,  # (1 + 0.9 × 1) / 3
    "score": 64.67,
}  # 100 × (0.1 × 0.6 + 0.5 × 2/3 + 0.4 × 1.9/3) = 6 + 33.333 + 25.333
EXPECTED_B = {
    "assigned": 2,
    "responded": 2,
    "responded_on_time": 1,
    "answered": 2,
    "solved": 1,
    "satisfied": 1,
    "basically_satisfied": 1,
    "unsatisfied": 0,
    "no_answer": 0,
    "skipped": 0,
    "answered_by_phone": 0,
    "response_rate": 0.5,
    "resolution_rate": 0.5,
    "satisfaction_rate": 0.95,  # (1 + 0.9) / 2
    "score": 68.0,
}  # 5 + 25 + 38


async def test_the_three_rates_from_a_known_sequence_of_events(api, redis, settings, admin, system):
    a, b = f"test-a-{uuid.uuid4().hex[:6]}", f"test-b-{uuid.uuid4().hex[:6]}"
    events = _sequence(a, b)
    broker = EventPublisher(settings, client_id="test-rates")
    await broker.start()
    try:
        await publish(broker, events)
        await publish(broker, events)  # everything twice: a consumer re-reading after a restart
    finally:
        await broker.stop()

    async def by(group_by: str) -> dict[str, dict]:
        r = await api.get(
            "/api/v1/stats",
            params={"group_by": group_by, "from": "2020-02-01", "to": "2020-02-29"},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        return {g["group"]: g for g in r.json()["groups"]}

    def figures(row: dict) -> dict:
        return {k: row[k] for k in EXPECTED_A}

    async def settled():
        rows = await by("department")
        return (
            rows
            if a in rows and b in rows and figures(rows[b]) == EXPECTED_B and figures(rows[a]) == EXPECTED_A
            else None
        )

    rows = await eventually(settled, timeout=30)
    await asyncio.sleep(1.0)  # the duplicates had time to arrive: still counted once
    rows = await by("department")
    assert figures(rows[a]) == EXPECTED_A
    assert figures(rows[b]) == EXPECTED_B
    # Best score first among those with enough answers (sla.yaml's ranking.min_answers, 3): b's
    # better score rests on 2 answers (样本不足), so a, with 3, is ranked and comes first.
    assert (rows[a]["ranked"], rows[b]["ranked"]) == (True, False)
    assert rows[b]["score"] > rows[a]["score"]
    assert [g for g in rows if g in (a, b)] == [a, b]
    streets = await by("street")  # nothing else happened on those days: the streets are a and b
    assert figures(streets["s01"]) == EXPECTED_A
    assert streets["s01"]["name"] == "和平街道"
    assert figures(streets["s02"]) == EXPECTED_B
    assert figures((await by("category"))[f"cat-{a}"]) == EXPECTED_A
    assert figures((await by("grid"))["s02c01g01"]) == EXPECTED_B

    # The same ranking as a table for Excel (排名表): CSV and XLSX alike, best score first.
    period = {"group_by": "department", "from": "2020-02-01", "to": "2020-02-29"}
    r = await api.get("/api/v1/stats/export", params={**period, "format": "csv"}, headers=admin)
    assert r.status_code == 200, r.text
    assert 'filename="ranking-department-20200201-20200229.csv"' in r.headers["content-disposition"]
    table = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert table[0][:8] == ["名次", "承办单位", "派单", "回访答复", "响应率", "解决率", "满意率", "综合得分"]
    ours = {row[1]: row for row in table[1:] if row[1] in (a, b)}
    # a ranks; b's better score rests on too few answers, and says so, as in /stats.
    assert (ours[a][0].isdigit(), ours[b][0]) == (True, "样本不足（回访答复少于3件）")
    # Its score is there to read, in brackets as on the page, not a number to sort among the ranked.
    score = table[0].index("综合得分")
    assert (ours[a][score], ours[b][score]) == (f"{EXPECTED_A['score']}", f"（{EXPECTED_B['score']:.1f}）")
    assert ours[a][2:7] == ["5", "3", "60.0%", "66.7%", f"{EXPECTED_A['satisfaction_rate']:.1%}"]
    # Beside them, the answers an operator took on the phone (电话回访), apart from those by SMS.
    by_phone = table[0].index("电话回访")
    assert (ours[a][by_phone], ours[b][by_phone]) == ("1", "0")
    r = await api.get("/api/v1/stats/export", params=period, headers=admin)
    assert r.headers["content-type"].startswith("application/vnd.openxmlformats")
    sheet = openpyxl.load_workbook(io.BytesIO(r.content)).active
    assert sheet.title == "按承办单位排名"

    def same(cell: object) -> object:  # Excel keeps numbers (68 for 68.0), the CSV their text
        try:
            return float(str(cell))
        except ValueError:
            return "" if cell is None else str(cell)

    def shown(cell: Cell) -> object:  # a rate as Excel shows it: the number in its percent format
        if cell.number_format == BRACKETED:  # a score on too few answers: （68.0）
            return f"（{cell.value:.1f}）"
        return f"{cell.value:.1%}" if cell.number_format == "0.0%" else same(cell.value)

    assert [[shown(c) for c in row] for row in sheet.iter_rows()] == [[same(v) for v in row] for row in table]
    # The rates are numbers a manager can sum and sort, shown in percent; the counts integers.
    [mine] = [row for row in sheet.iter_rows(min_row=2) if row[1].value == a]
    rate = mine[table[0].index("响应率")]
    assert (rate.data_type, rate.value, rate.number_format) == ("n", 0.6, "0.0%")
    assert isinstance(mine[table[0].index("派单")].value, int)
    [few] = [row for row in sheet.iter_rows(min_row=2) if row[1].value == b]
    assert (few[score].data_type, few[score].value) == ("n", EXPECTED_B["score"])  # a number, bracketed
    r = await api.get("/api/v1/stats/export", params={**period, "from": "2020-03-01"}, headers=admin)
    assert r.status_code == 422
    assert "晚于" in r.json()["message"]

    # Only the answers fall in a window that starts the day after.
    r = await api.get("/api/v1/stats", params={"from": "2020-02-04", "to": "2020-02-04"}, headers=admin)
    only_answers = {g["group"]: g for g in r.json()["groups"]}[a]
    assert (only_answers["assigned"], only_answers["answered"], only_answers["response_rate"]) == (0, 3, None)

    # Prometheus: the counters per department on the notifier's metrics port.
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{system.metrics_ports['notifier']}/metrics")).text
    assert f'hotline_rate_events_total{{department="{a}",field="assigned"}} 5.0' in text


async def test_stats_refuses_bad_periods_and_anonymous_callers(api, admin):
    assert (await api.get("/api/v1/stats", headers=NO_TOKEN)).status_code == 401
    r = await api.get("/api/v1/stats", params={"from": "2026-03-01", "to": "2026-02-01"}, headers=admin)
    assert r.status_code == 422
    assert "晚于" in r.json()["message"]
    r = await api.get("/api/v1/stats", params={"from": "2024-01-01", "to": "2026-02-01"}, headers=admin)
    assert r.status_code == 422
    assert (await api.get("/api/v1/stats", params={"group_by": "planet"}, headers=admin)).status_code == 422
    # Days to come have nothing to count: a period not started is refused beside its start, one
    # that ends after today is counted to today (its `to`), as the trend counts it.
    today = local_today()
    later = {"from": str(today + timedelta(days=2)), "to": str(today + timedelta(days=7))}
    r = await api.get("/api/v1/stats", params=later, headers=admin)
    assert (r.status_code, r.json()["field"]) == (422, "from")
    said = f"统计期尚未开始（起始日期{later['from']}在今天之后），请选择今天或以前的日期"
    assert r.json()["message"] == said
    r = await api.get("/api/v1/stats", params={**later, "from": str(today)}, headers=admin)
    assert (r.status_code, r.json()["from"], r.json()["to"]) == (200, str(today), str(today))
    r = await api.get("/api/v1/stats", headers=admin)
    assert r.status_code == 200
    assert r.json()["weights"]["basically_satisfied"] == 0.9


async def test_counting_is_idempotent_in_process(redis):
    """The scorecard on the real Redis: the same events twice count once."""
    a = f"test-c-{uuid.uuid4().hex[:6]}"
    day = datetime(2020, 3, 3, 10, 0, tzinfo=SH)  # not the day the system test checks
    events = _sequence(a, f"test-d-{uuid.uuid4().hex[:6]}", day)
    card = Scorecard(redis, demo_city(), SH, Weights())
    first = await card.record(events)
    # assignments (not the desk's), acceptances, a response deadline's notice, answers (not comments)
    assert first == 7 + 6 + 1 + 6
    assert await card.record(events) == 0
    rows = {r["group"]: r for r in await card.query("department", day.date(), day.date() + timedelta(days=3))}
    assert {k: rows[a][k] for k in EXPECTED_A} == EXPECTED_A
    # The Prometheus gauges: the rates month to date.
    from prometheus_client import REGISTRY

    await card.refresh_gauges(day + timedelta(days=3))
    labels = {"group_by": "department", "group": a}
    assert REGISTRY.get_sample_value("hotline_rate", labels | {"rate": "score"}) == 64.67
    assert REGISTRY.get_sample_value("hotline_rate", labels | {"rate": "satisfaction_rate"}) == 0.6333
    assert (
        REGISTRY.get_sample_value(
            "hotline_rate", {"group_by": "street", "group": "s02", "rate": "response_rate"}
        )
        == 0.5
    )
