"""Appeals over time from the record (a real PostgreSQL): a known sequence of appeals, projected as
the records worker projects them, counted per local day (an empty day, a ticket a second before
and one at local midnight), against the week before and the same week a year before, and ranked
by the largest rise; then the endpoint and its export with the desk's token."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import openpyxl
import pytest

from services.classifier.grid import grid_match
from services.records.service import Records
from services.records.trend import appeals_trend
from shared import topics
from shared.auth import issue_token
from shared.city import City
from shared.events import AppealClassified, AppealReceived, CategoryScore
from tests.conftest import local_today

pytestmark = pytest.mark.integration

SH = ZoneInfo("Asia/Shanghai")  # the demo city's timezone: UTC+8, so a local day starts at 16:00 UTC
HEATING, DRAINAGE, NOISE = "utility.heating", "city.facility.drainage", "env.noise"
# A week of 2011 no other test files appeals in: the counts are over the whole record. Long past:
# a period is counted up to today, so a week to come would be refused.
WEEK = (date(2011, 7, 4), date(2011, 7, 10))
# (local time received, category, grid): the grid gives the street (s01 和平, s02 建设, s03 光明).
SEQUENCE = [
    # This week: 4 July twice (the second a second before local midnight, 15:59:59 UTC), 5 July at
    # local midnight (still 4 July in UTC), 8 July twice, 10 July late; 6, 7 and 9 July none.
    (datetime(2011, 7, 4, 10, 0), HEATING, "s01c01g01"),
    (datetime(2011, 7, 4, 23, 59, 59), HEATING, "s01c01g01"),
    (datetime(2011, 7, 5, 0, 0), HEATING, "s02c01g01"),
    (datetime(2011, 7, 8, 9, 30), DRAINAGE, "s02c01g01"),
    (datetime(2011, 7, 8, 16, 0), DRAINAGE, "s02c01g01"),
    (datetime(2011, 7, 10, 23, 30), NOISE, "s03c01g01"),
    # The week before (27 June to 3 July): noise falling since, heating rising.
    (datetime(2011, 6, 28, 8, 0), NOISE, "s03c01g01"),
    (datetime(2011, 6, 30, 12, 0), NOISE, "s03c01g01"),
    (datetime(2011, 7, 1, 12, 0), HEATING, "s01c01g01"),
    (datetime(2011, 7, 3, 23, 59, 59), NOISE, "s03c01g01"),
    # After the week: local midnight ending it counts in no period.
    (datetime(2011, 7, 11, 0, 0), NOISE, "s03c01g01"),
    # The same week a year before.
    (datetime(2010, 7, 5, 9, 0), DRAINAGE, "s02c01g01"),
    (datetime(2010, 7, 10, 9, 0), NOISE, "s03c01g01"),
]


def appeal_events(city: City) -> list[tuple[str, AppealReceived | AppealClassified]]:
    events: list[tuple[str, AppealReceived | AppealClassified]] = []
    for i, (local, category, grid) in enumerate(SEQUENCE):
        at = local.replace(tzinfo=SH)
        appeal = AppealReceived(
            ticket_no=f"{local:%Y%m%d}-{970000 + i}",
            channel="hotline",
            text="趋势统计测试诉求",
            received_at=at,
            occurred_at=at,
        )
        classified = AppealClassified(
            ticket_no=appeal.ticket_no,
            appeal=appeal,
            category=category,
            category_names=city.category_names(category),
            confidence=0.9,
            top=(CategoryScore(category=category, probability=0.9),),
            grid=grid_match(city, grid, "gazetteer", 0.99, "测试"),
            model_version="test",
            occurred_at=at + timedelta(seconds=1),
        )
        events += [(topics.APPEAL_RECEIVED, appeal), (topics.APPEAL_CLASSIFIED, classified)]
    return events


@pytest.fixture
async def recorded(pool, system_city) -> None:
    """The sequence in the record (a ticket's row is the fold of its events: projecting again
    leaves the same rows)."""
    await Records(pool, system_city).project_many(appeal_events(system_city))


@pytest.mark.usefixtures("recorded")
async def test_appeals_per_local_day_against_the_week_before_and_a_year_before(pool, system_city):
    start, end = WEEK
    body = await appeals_trend(pool, system_city, start, end, SH, "category", "leaf")
    current = body["periods"]["current"]
    assert [(d["day"][5:], d["count"]) for d in current["days"]] == [
        ("07-04", 2),  # 23:59:59 local is 15:59:59 UTC: still the 4th
        ("07-05", 1),  # local midnight is 16:00 UTC on the 4th: the 5th here
        ("07-06", 0),
        ("07-07", 0),
        ("07-08", 2),
        ("07-09", 0),
        ("07-10", 1),
    ]
    previous = body["periods"]["previous"]
    assert (previous["from"], previous["to"]) == ("2011-06-27", "2011-07-03")
    assert [d["count"] for d in previous["days"]] == [0, 1, 0, 1, 1, 0, 1]
    last_year = body["periods"]["last_year"]
    assert (last_year["from"], last_year["to"], last_year["total"]) == ("2010-07-04", "2010-07-10", 2)
    assert (body["total"], body["previous_total"], body["last_year_total"]) == (6, 4, 2)
    assert (body["change"], body["change_percent"]) == (2, 50.0)
    assert (body["year_change"], body["year_change_percent"]) == (4, 200.0)
    assert body["summary"] == "本期受理6件，环比上升50.0%，同比上升200.0%"

    # The largest rise first: heating and drainage both +2 (heating, the larger, first), noise -2.
    groups = [
        (g["group"], g["name"], g["count"], g["previous"], g["change"], g["change_percent"])
        for g in body["groups"]
    ]
    assert groups == [
        (HEATING, "公共事业/供暖", 3, 1, 2, 200.0),
        (DRAINAGE, "城市管理/市政设施/排水堵塞", 2, 0, 2, None),  # none the week before: no percent
        (NOISE, "环境保护/噪音扰民", 1, 3, -2, -66.7),
    ]
    assert [g["last_year"] for g in body["groups"]] == [0, 1, 1]

    # Top-level categories: each leaf counted under its root.
    top = await appeals_trend(pool, system_city, start, end, SH, "category", "top")
    assert [(g["group"], g["name"], g["count"], g["previous"]) for g in top["groups"]] == [
        ("utility", "公共事业", 3, 1),
        ("city", "城市管理", 2, 0),
        ("env", "环境保护", 1, 3),
    ]
    streets = await appeals_trend(pool, system_city, start, end, SH, "street")
    assert [(g["name"], g["count"], g["previous"]) for g in streets["groups"]] == [
        ("建设街道", 3, 0),
        ("和平街道", 2, 1),
        ("光明街道", 1, 3),
    ]
    # Not routed yet (no department in the record): counted, and named as such.
    departments = await appeals_trend(pool, system_city, start, end, SH, "department")
    assert [(g["name"], g["count"]) for g in departments["groups"]] == [("未派单", 6)]
    # Per grid (the dashboard's map), each named as the city names it.
    grids = await appeals_trend(pool, system_city, start, end, SH, "grid")
    assert [(g["group"], g["count"], g["previous"]) for g in grids["groups"]] == [
        ("s02c01g01", 3, 0),
        ("s01c01g01", 2, 1),
        ("s03c01g01", 1, 3),
    ]
    assert grids["groups"][0]["name"] == system_city.grids["s02c01g01"].grid.name


@pytest.mark.usefixtures("recorded")
async def test_the_trend_endpoint_its_export_and_its_refusals(api, redis, system_city):
    desk = {"Authorization": f"Bearer {await issue_token(redis, 'admin')}"}
    week = {"from": WEEK[0].isoformat(), "to": WEEK[1].isoformat()}
    r = await api.get("/api/v1/stats/trend", params=week | {"level": "top"}, headers=desk)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"] == "本期受理6件，环比上升50.0%，同比上升200.0%"
    assert [g["group"] for g in body["groups"]] == ["utility", "city", "env"]
    assert body["groups"][1]["change_percent"] is None  # JSON null, not a division by zero

    r = await api.get("/api/v1/stats/trend/export", params=week | {"format": "csv"}, headers=desk)
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="trend-category-20110704-20110710.csv"'
    table = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert table[0][:3] == ["诉求分类", "本期（2011-07-04至2011-07-10）", "上期（2011-06-27至2011-07-03）"]
    assert table[1] == ["合计", "6", "4", "2", "+50.0%", "2", "4", "+200.0%"]
    assert table[3] == ["城市管理/市政设施/排水堵塞", "2", "0", "2", "新增", "1", "1", "+100.0%"]
    assert table[4][0] == "环境保护/噪音扰民"
    r = await api.get("/api/v1/stats/trend/export", params=week, headers=desk)
    assert r.headers["content-type"].startswith("application/vnd.openxmlformats")
    sheet = openpyxl.load_workbook(io.BytesIO(r.content)).active
    total = list(next(sheet.iter_rows(min_row=2, max_row=2)))
    assert [c.value for c in total] == ["合计", 6, 4, 2, 0.5, 2, 4, 2.0]  # numbers to sum and chart
    assert (total[4].data_type, total[4].number_format) == ("n", "+0.0%;-0.0%;0.0%")

    # The period is checked as for the rankings, in Chinese, naming the field.
    r = await api.get("/api/v1/stats/trend", params={"from": "2011-07-10", "to": "2011-07-04"}, headers=desk)
    assert (r.status_code, r.json()["field"]) == (422, "from")
    assert "晚于" in r.json()["message"]
    r = await api.get("/api/v1/stats/trend", params={"from": "2009-01-01", "to": "2011-07-04"}, headers=desk)
    assert r.status_code == 422
    assert "最长366天" in r.json()["message"]
    # A period not started is refused beside its start; one ending after today is counted to today,
    # and compared with as many days before it.
    today = local_today()
    later = {"from": str(today + timedelta(days=2)), "to": str(today + timedelta(days=7))}
    r = await api.get("/api/v1/stats/trend", params=later, headers=desk)
    assert (r.status_code, r.json()["field"]) == (422, "from")
    assert r.json()["message"].startswith("统计期尚未开始")
    ending_later = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=5))}
    body = (await api.get("/api/v1/stats/trend", params=ending_later, headers=desk)).json()
    assert (body["from"], body["to"]) == (ending_later["from"], str(today))
    assert [len(body["periods"][p]["days"]) for p in ("current", "previous")] == [2, 2]
    for edge in ({"from": "0001-01-01", "to": "0001-01-31"}, {"from": "9999-12-01", "to": "9999-12-31"}):
        r = await api.get("/api/v1/stats/trend", params=edge, headers=desk)  # nothing to compare with
        assert (r.status_code, r.json()["error"]) == (422, "invalid_period"), r.text
    r = await api.get("/api/v1/stats/trend", params=week | {"group_by": "caller"}, headers=desk)
    assert (r.status_code, r.json()["field"]) == (422, "group_by")
    # The desk's, as the rankings are: a department's token is refused, and no token at all.
    department = system_city.departments[0].id
    dept = {"Authorization": f"Bearer {await issue_token(redis, 'department', department)}"}
    assert (await api.get("/api/v1/stats/trend", params=week, headers=dept)).status_code == 403
    assert (await api.get("/api/v1/stats/trend", params=week)).status_code == 401
