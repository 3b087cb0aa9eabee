"""Reading the record (PostgreSQL), against the running system: the list's category filter takes
a category's branch from the city's tree.

The tickets are made up (numbered on a day long past, `made_up_no`) and written to the record only,
as a ticket that has left Redis is; each test finds its own by a marker in their text."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.classifier.grid import grid_match
from services.records.service import Records
from shared.auth import issue_token
from shared.city import City
from shared.events import AppealClassified, AppealReceived, Caller, CategoryScore, Event
from tests.test_records import made_up_no

pytestmark = pytest.mark.integration

DAY = datetime(2000, 12, 1, 2, 0, tzinfo=UTC)  # the made-up tickets' day (20001201-), 10:00 local
GRID = "s03c01g02"


def appeal_events(city: City, no: str, text: str, category: str, names: Sequence[str] = ()) -> list[Event]:
    appeal = AppealReceived(
        ticket_no=no,
        channel="hotline",
        text=text,
        address="光明小区2号楼",
        caller=Caller(caller_id=None, masked_phone=None),
        received_at=DAY,
        occurred_at=DAY,
    )
    classified = AppealClassified(
        ticket_no=no,
        appeal=appeal,
        category=category,
        category_names=tuple(names) or city.category_names(category),
        confidence=0.55,
        top=(CategoryScore(category=category, probability=0.55),),
        grid=grid_match(city, GRID, "gazetteer", 0.9, "光明小区"),
        model_version="test",
        occurred_at=DAY + timedelta(seconds=1),
    )
    return [appeal, classified]


async def record(pool, city: City, events: Sequence[Event]) -> None:
    """Into the record as the records worker writes them; Redis never holds these tickets, as it
    no longer holds one that has left it."""
    await Records(pool, city).project_many([(e.topic, e) for e in events])


async def bearer(redis, dept: str | None = None) -> dict[str, str]:
    token = await issue_token(redis, "department", dept) if dept else await issue_token(redis, "admin")
    return {"Authorization": f"Bearer {token}"}


async def listed(api: httpx.AsyncClient, headers: dict[str, str], **params: str) -> list[str]:
    r = await api.get("/api/v1/tickets", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return sorted(t["ticket_no"] for t in r.json()["items"])


async def test_the_lists_category_filter_takes_a_branch_from_the_citys_tree(api, redis, pool, system_city):
    marker = f"档案分类筛选{made_up_no()}"
    kinds = {
        "fee": ("housing.property.fee", ()),
        "branch": ("housing.property", ()),
        # Recorded under an id the city no longer has, spelled as if under 物业管理: not in its branch.
        "retired": ("housing.property.retired", ("住房保障", "物业管理", "已撤销分类")),
        "sibling": ("housing.elevator", ()),
    }
    nos = {kind: made_up_no() for kind in kinds}
    await record(
        pool,
        system_city,
        [
            e
            for kind, (category, names) in kinds.items()
            for e in appeal_events(system_city, nos[kind], f"{marker}：{kind}", category, names)
        ],
    )
    desk = await bearer(redis)

    def of(*which: str) -> list[str]:
        return sorted(nos[k] for k in which)

    assert await listed(api, desk, q=marker) == of("fee", "branch", "retired", "sibling")
    assert await listed(api, desk, q=marker, category="housing.property") == of("fee", "branch")
    assert await listed(api, desk, q=marker, category="housing") == of("fee", "branch", "sibling")
    assert await listed(api, desk, q=marker, category="housing.property.fee") == of("fee")
    r = await api.get(
        "/api/v1/tickets/export", params={"q": marker, "category": "housing.property"}, headers=desk
    )
    assert r.status_code == 200, r.text
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert sorted(row[0] for row in rows[1:]) == of("fee", "branch")

    for given, said in (
        ("housing.property.retired", "分类“housing.property.retired”不存在"),
        ("物业费", "编号是 housing.property.fee"),
    ):
        r = await api.get("/api/v1/tickets", params={"q": marker, "category": given}, headers=desk)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "category"
        assert said in r.json()["message"]
