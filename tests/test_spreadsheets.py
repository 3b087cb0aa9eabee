"""The tables people open in Excel (shared.spreadsheets) and the rows the exports give them: in XLSX
a rate is a number shown in percent, a count an integer, a time a date cell in the city's local
time and no value an empty cell, so that a manager can sum, sort and chart them; the CSV keeps the
text the console shows. The workbooks are opened again with openpyxl and their cells read."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl

from services.notifier.views import RANKING
from services.records.stats_views import COLUMNS
from services.records.views import _cell
from shared.spreadsheets import BRACKETED, Percent, csv_chunks, each, xlsx_chunks

SHANGHAI = ZoneInfo("Asia/Shanghai")
GROUP = {
    "assigned": 5,
    "answered": 3,
    "response_rate": 0.6,
    "resolution_rate": 0.8733,
    "satisfaction_rate": None,  # nobody answered the survey: no rate, not 0
    "score": 71.5,
    "ranked": True,
    "direct_answer_rate": 0.0,
    "urged": 2,
    "verified": 1,
    "verification_failed": 0,
    "mediated": 0,
    "mediation_agreed": 0,
    "merged": 0,
    "answered_by_phone": 1,
}


async def workbook(header: list[str], rows: list[list[Any]]) -> Any:
    data = b"".join([chunk async for chunk in xlsx_chunks(header, each(rows), "表")])
    return openpyxl.load_workbook(io.BytesIO(data))["表"]


async def csv_table(header: list[str], rows: list[list[Any]]) -> list[list[str]]:
    data = b"".join([chunk async for chunk in csv_chunks(header, each(rows))])
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


async def test_the_ranking_writes_rates_as_percent_numbers_and_counts_as_integers():
    header = list(RANKING)
    other = GROUP | {"response_rate": None, "resolution_rate": 0.5}
    sheet = await workbook(header, [[cell(g) for cell in RANKING.values()] for g in (GROUP, other)])
    row = {name: sheet.cell(2, i) for i, name in enumerate(header, 1)}
    for name, value in (("响应率", 0.6), ("解决率", 0.8733), ("直接答复率", 0.0)):
        assert (row[name].data_type, row[name].value, row[name].number_format) == ("n", value, "0.0%")
    assert row["满意率"].value is None  # empty, as — in the console: an average leaves it out
    assert [sheet.cell(3, header.index(n) + 1).value for n in ("响应率", "解决率")] == [None, 0.5]
    assert (row["派单"].value, row["综合得分"].value) == (5, 71.5)
    assert isinstance(row["派单"].value, int)
    assert row["派单"].data_type == "n"
    # Too few answers (样本不足): the score in brackets as on the page, by its format: a number
    # still (the rank's column says it is not ranked). No survey answered: no score, an empty cell.
    unranked = [GROUP | {"ranked": False}, GROUP | {"ranked": False, "answered": 0, "score": None}]
    few = await workbook(header, [[cell(g) for cell in RANKING.values()] for g in unranked])
    score = few.cell(2, header.index("综合得分") + 1)
    assert (score.data_type, score.value, score.number_format) == ("n", 71.5, BRACKETED)
    assert few.cell(3, header.index("综合得分") + 1).value is None
    said = await csv_table(header, [[cell(g) for cell in RANKING.values()] for g in unranked])
    assert [row[header.index("综合得分")] for row in said[1:]] == ["（71.5）", ""]

    table = await csv_table(header, [[cell(GROUP) for cell in RANKING.values()]])
    by_name = dict(zip(table[0], table[1], strict=True))
    assert [by_name[n] for n in ("派单", "响应率", "解决率", "满意率", "综合得分", "直接答复率")] == [
        "5", "60.0%", "87.3%", "", "71.5", "0.0%",
    ]  # fmt: skip


async def test_the_trend_writes_its_changes_as_signed_percent_numbers():
    groups = [
        {"count": 6, "previous": 4, "change": 2, "change_percent": 50.0, "last_year": 2,
         "year_change": 4, "year_change_percent": 200.0},
        {"count": 2, "previous": 0, "change": 2, "change_percent": None, "last_year": 3,
         "year_change": -1, "year_change_percent": -33.3},
        {"count": 0, "previous": 0, "change": 0, "change_percent": None, "last_year": 1,
         "year_change": -1, "year_change_percent": -100.0},
    ]  # fmt: skip
    header = list(COLUMNS)
    rows = [[cell(g) for cell in COLUMNS.values()] for g in groups]
    sheet = await workbook(header, rows)
    at = {name: i for i, name in enumerate(header, 1)}
    rise = sheet.cell(2, at["环比"])
    assert (rise.data_type, rise.value, rise.number_format) == ("n", 0.5, "+0.0%;-0.0%;0.0%")
    assert sheet.cell(3, at["同比"]).value == -0.333
    assert sheet.cell(3, at["环比"]).value == "新增"  # from nothing: no percent, but something new
    assert sheet.cell(4, at["环比"]).value is None  # nothing then, nothing now: no value at all
    assert [sheet.cell(2, at[n]).value for n in ("本期", "上期", "环比增减")] == [6, 4, 2]

    table = await csv_table(header, rows)
    assert [r[3] for r in table[1:]] == ["+50.0%", "新增", ""]
    assert [r[6] for r in table[1:]] == ["+200.0%", "-33.3%", "-100.0%"]


async def test_the_ticket_export_writes_times_as_local_date_cells():
    received = datetime(2033, 7, 4, 16, 5, 42, 123456, tzinfo=UTC)  # 00:05 the next day in Shanghai
    row = [_cell(v, SHANGHAI) for v in ("12345-20330705-0001", received, None, 3, True, "=SUM(A1)")]
    later = [_cell(v, SHANGHAI) for v in ("12345-20330705-0002", received, received, 0, False, "")]
    sheet = await workbook(["工单号", "受理时间", "办结时间", "催办次数", "紧急", "地址"], [row, later])
    when = sheet.cell(2, 2)
    assert when.is_date
    assert (when.value, when.number_format) == (datetime(2033, 7, 5, 0, 5, 42), "yyyy-mm-dd hh:mm")
    assert sheet.cell(2, 3).value is None  # not resolved yet
    assert [sheet.cell(3, i).value for i in (1, 3)] == ["12345-20330705-0002", datetime(2033, 7, 5, 0, 5, 42)]
    assert (sheet.cell(2, 4).data_type, sheet.cell(2, 4).value) == ("n", 3)
    assert [sheet.cell(2, i).value for i in (5, 6)] == ["是", "'=SUM(A1)"]  # no formula to run

    table = await csv_table(["工单号", "受理时间", "办结时间", "催办次数", "紧急", "地址"], [row])
    assert table[1] == ["12345-20330705-0001", "2033-07-05 00:05", "", "3", "是", "'=SUM(A1)"]


def test_a_percent_reads_as_the_console_says_it():
    assert (str(Percent(0.873)), str(Percent(0.125, signed=True)), str(Percent(-0.031, signed=True))) == (
        "87.3%",
        "+12.5%",
        "-3.1%",
    )
