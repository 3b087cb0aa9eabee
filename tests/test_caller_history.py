"""来电历史: the operator's preview with the caller's history from the record, against the started
system and a real PostgreSQL. The counts and the last tickets, closed ones with their survey result;
nothing for another phone; nothing of an erased caller; only for those who take calls; and the
preview still answers, without the history, while the record is away."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.api import create_app
from services.records.service import Records
from shared import topics
from shared.auth import Role, issue_token
from shared.city import City
from shared.embedded import free_port
from shared.events import (
    Answer,
    AppealClassified,
    AppealReceived,
    Caller,
    CategoryScore,
    DepartmentRef,
    Event,
    GridMatch,
    TicketAssigned,
    TicketUpdated,
)
from shared.privacy import caller_id, mask_phone
from shared.settings import Settings
from tests.test_pipeline_e2e import LIGHT
from tests.test_records import made_up_no
from tests.test_records_privacy import fresh_phone, recorded

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]

PREVIEW = "/api/v1/appeals/preview"
ERASE = "/api/v1/records/privacy/erasures"
TZ = ZoneInfo("Asia/Shanghai")
CALL = "上次反映的路灯问题又出现了，晚上还是很黑"
SHOWN = {"ticket_no", "received_on", "category_names", "status", "status_name", "department", "survey"}


def closed_long_ago(
    no: str, phone: str, city: City, days: int, rating: int | None
) -> list[tuple[str, Event]]:
    """A ticket of `phone` received `days` ago and closed the next day, as the router would have
    published it, with the resident's rating (None: the survey got no answer)."""
    at = datetime.now(UTC) - timedelta(days=days)
    category = "city.facility.streetlight"
    dept = DepartmentRef(id=city.departments[0].id, name=city.departments[0].name)
    appeal = AppealReceived(
        ticket_no=no,
        channel="hotline",
        text="幸福里小区5号楼门口的路灯不亮了",
        address="幸福里小区5号楼",
        caller=Caller(caller_id=caller_id(phone), masked_phone=mask_phone(phone)),
        received_at=at,
        occurred_at=at,
    )
    classified = AppealClassified(
        ticket_no=no,
        appeal=appeal,
        category=category,
        category_names=city.category_names(category),
        confidence=0.9,
        top=(CategoryScore(category=category, probability=0.9),),
        grid=GridMatch(grid=None, method="none", confidence=0.0),
        model_version="test",
        occurred_at=at + timedelta(seconds=1),
    )
    assigned = TicketAssigned(
        ticket_no=no,
        caller_id=caller_id(phone),
        department=dept,
        via="rule",
        explanation="路灯归街道",
        category=category,
        grid=None,
        respond_by=at + timedelta(hours=2),
        resolve_by=at + timedelta(days=3),
        occurred_at=at + timedelta(seconds=1),
    )
    outcome = "answered" if rating else "no_answer"
    closed = TicketUpdated(
        ticket_no=no,
        action="closed",
        status="closed",
        actor="resident",
        department=dept,
        caller_id=caller_id(phone),
        answer=Answer(outcome=outcome, rating=rating, solved=bool(rating)),
        occurred_at=at + timedelta(days=1),
    )
    return [
        (topics.APPEAL_RECEIVED, appeal),
        (topics.APPEAL_CLASSIFIED, classified),
        (topics.TICKET_ASSIGNED, assigned),
        (topics.TICKET_UPDATED, closed),
    ]


async def staff(redis, role: Role, operator: str | None = None, grid: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {await issue_token(redis, role, operator=operator, grid=grid)}"}


async def history_of(api: httpx.AsyncClient, phone: str, headers: dict[str, str]) -> dict | None:
    r = await api.post(PREVIEW, json={"caller_phone": phone, "text": CALL}, headers=headers)
    assert r.status_code == 200, r.text
    assert phone not in r.text  # the caller id is the API's business; the phone goes back nowhere
    return r.json().get("history", "absent")


async def test_the_preview_lists_the_callers_last_tickets_closed_ones_too_with_the_counts(
    api, redis, pool, system_city
):
    phone = fresh_phone()
    recent = await recorded(api, pool, phone, LIGHT)  # through the system: assigned, still open
    satisfied, unanswered = made_up_no(), made_up_no()
    records = Records(pool, system_city)
    await records.project_many(closed_long_ago(satisfied, phone, system_city, days=40, rating=1))
    await records.project_many(closed_long_ago(unanswered, phone, system_city, days=400, rating=None))

    operator = await staff(redis, "operator", operator="0231")
    history = await history_of(api, phone, operator)
    assert isinstance(history, dict)
    # Within 30 days: the open one; within a year: and the one of 40 days ago. The list is the last
    # tickets of any age, newest first.
    assert (history["last_30_days"], history["last_365_days"]) == (1, 2)
    assert [t["ticket_no"] for t in history["tickets"]] == [recent, satisfied, unanswered]
    now_open, closed, older = history["tickets"]
    assert now_open["status"] == "assigned"
    assert now_open["survey"] is None  # not surveyed yet: nothing to say
    assert now_open["department"]
    assert closed == {
        "ticket_no": satisfied,
        "received_on": (datetime.now(UTC) - timedelta(days=40)).astimezone(TZ).date().isoformat(),
        "category_names": list(system_city.category_names("city.facility.streetlight")),
        "status": "closed",
        "status_name": "已关闭",
        "department": system_city.departments[0].name,
        "survey": "满意",
    }
    assert older["survey"] == "未回访"
    # Numbers, dates, categories, statuses, departments and survey results: no word of the tickets.
    assert all(set(t) == SHOWN for t in history["tickets"])

    # The desk takes calls too and sees the same; another phone has no history.
    assert await history_of(api, phone, await staff(redis, "admin")) == history
    assert await history_of(api, fresh_phone(), operator) == {
        "last_30_days": 0,
        "last_365_days": 0,
        "tickets": [],
    }
    # A grid worker's report has no caller on the line: its preview goes without.
    worker = await staff(redis, "grid_worker", operator="W041", grid="s01c01g01")
    assert await history_of(api, phone, worker) == "absent"
    # No phone typed yet: nothing to look up.
    r = await api.post(PREVIEW, json={"text": CALL}, headers=operator)
    assert "history" not in r.json()


async def test_an_erased_callers_tickets_are_not_linked_back_to_them(api, redis, pool, system_city):
    phone = fresh_phone()
    recent = await recorded(api, pool, phone, LIGHT)
    closed = made_up_no()
    await Records(pool, system_city).project_many(
        closed_long_ago(closed, phone, system_city, days=40, rating=3)
    )
    operator = await staff(redis, "operator", operator="0232")
    before = await history_of(api, phone, operator)
    assert isinstance(before, dict)
    assert [t["ticket_no"] for t in before["tickets"]] == [recent, closed]
    assert before["tickets"][1]["survey"] == "不满意"

    r = await api.post(ERASE, json={"phone": phone, "reason": "居民来电申请删除个人信息"})
    assert r.status_code == 200, r.text
    assert await history_of(api, phone, operator) == {"last_30_days": 0, "last_365_days": 0, "tickets": []}


async def test_the_preview_answers_without_the_history_while_the_record_is_away(settings: Settings, redis):
    """An API whose PostgreSQL cannot be reached: the operator's preview answers as ever, its
    history null (the console then shows none), at once, and the next one too."""
    away = settings.model_copy(
        update={"database_url": f"postgresql://appeals@127.0.0.1:{free_port()}/appeals"}
    )
    app = create_app(away)
    async with app.router.lifespan_context(app):
        operator = await staff(redis, "operator", operator="0233")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=operator, timeout=60
        ) as client:
            first = await client.post(PREVIEW, json={"caller_phone": fresh_phone(), "text": CALL})
            assert first.status_code == 200, first.text
            assert first.json()["department"]["name"]
            assert first.json()["history"] is None
            started = time.monotonic()
            again = await client.post(PREVIEW, json={"caller_phone": fresh_phone(), "text": LIGHT})
            assert again.status_code == 200, again.text
            assert again.json()["history"] is None
            assert time.monotonic() - started < 5  # the classifier is loaded: no wait for the record
