"""Suggestion-box uploads: a real 10,000-row CSV and a real XLSX, through the running API."""

from __future__ import annotations

import csv
import io
import random

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from openpyxl import Workbook

from services.api import create_app
from shared.auth import issue_token
from shared.embedded import EmbeddedServers

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]
URL = "/api/v1/appeals/batch"
PROBLEMS = [
    "{n}号楼门前的路灯坏了，晚上很黑，请尽快修理",
    "{n}号楼下的垃圾桶满了好几天没人清运，味道很大",
    "{n}号楼旁边的井盖松动，车辆经过响声很大",
    "{n}号楼附近有人占道经营摆摊，行人无法通行",
]


def csv_file(rows: list[list[str]], header=("box_id", "date", "text", "phone", "address")) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue().encode("utf-8-sig")


async def test_ten_thousand_rows_in_one_request(settings, tmp_path):
    """On a broker and Redis of its own, with the API in-process and no workers: 10,000 appeals are
    published and recorded without flooding the session's pipeline (its dispatch queue, hotspots)."""
    with EmbeddedServers(log_dir=tmp_path) as own:
        app = create_app(
            settings.model_copy(
                update={
                    "kafka_bootstrap_servers": own.kafka_bootstrap,
                    "redis_url": own.redis_url,
                }
            )
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            token = await issue_token(app.state.redis, "operator", operator="box-clerk")
            operator = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(
                transport=transport, base_url="http://intake", timeout=300, headers=operator
            ) as client:
                tag = random.randint(10**5, 10**6)
                rows = [
                    [
                        f"BOX-{i % 40:02d}",
                        "2026-11-20",
                        PROBLEMS[i % 4].format(n=f"{tag}-{i}"),
                        "",
                        "阳光花园",
                    ]
                    for i in range(10_000)
                ]
                r = await client.post(URL, files={"file": ("slips.csv", csv_file(rows), "text/csv")})
                assert r.status_code == 200, r.text[:500]
                result = r.json()
                assert result["accepted"] == 10_000
                assert result["rejected"] == 0
                nos = [row["ticket_no"] for row in result["rows"]]
                assert len(set(nos)) == 10_000
                assert [row["line"] for row in result["rows"]] == list(range(2, 10_002))
                store = app.state.store
                t = await store.get(nos[-1])
                assert t.channel == "box"
                assert t.caller.caller_id is None
                assert t.title.startswith("意见箱BOX-")
                assert str(tag) in t.text
                # Every one was acknowledged by the broker before its number was given out.
                assert await _tickets_on(own.kafka_bootstrap, "appeal.received") == set(nos)


async def _tickets_on(bootstrap: str, topic: str) -> set[str]:
    """The ticket numbers of every record on the topic, read back from the broker."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: set[str] = set()
    try:
        while batch := await consumer.getmany(timeout_ms=2000, max_records=5000):
            seen.update(record.key.decode() for records in batch.values() for record in records)
    finally:
        await consumer.stop()
    return seen


async def test_csv_rows_are_validated_one_by_one_and_a_retry_returns_the_same_tickets(api):
    tag = random.randint(10**5, 10**6)
    good = f"和平路{tag}号门口的下水道堵了，污水漫到人行道上"
    rows = [
        ["A-01", "2026-11-20", good, "138 1234 5678", "和平路"],
        ["A-01", "2026-11-20", "太短", "", ""],
        ["", "2026-11-20", f"没有箱号的纸条{tag}，内容足够长", "", ""],
        ["A-02", "2026-13-40", f"日期写错的纸条{tag}，内容足够长", "", ""],
        ["A-02", "2026-11-21", f"电话写错的纸条{tag}，内容足够长", "12345", ""],
        ["A-01", "2026-11-20", good, "13812345678", "和平路"],  # the same slip typed twice
    ]
    data = csv_file(rows)
    r = await api.post(URL, files={"file": ("box.csv", data, "text/csv")})
    assert r.status_code == 200, r.text
    by_line = {row["line"]: row for row in r.json()["rows"]}
    assert by_line[3]["field"] == "text"
    assert "太短" in by_line[3]["error"]
    assert by_line[4]["field"] == "box_id"
    assert by_line[5]["field"] == "date"
    assert by_line[6]["field"] == "caller_phone"
    assert by_line[2]["ticket_no"] == by_line[7]["ticket_no"]
    again = await api.post(URL, files={"file": ("box.csv", data, "text/csv")})
    assert again.json()["rows"][0] == {**by_line[2], "duplicate": True}


async def test_invalid_utf8_and_bad_headers_are_refused_with_a_reason(api):
    gbk = "box_id,date,text\nA,2026-11-20,路灯坏了好几天了没人修\n".encode("gbk")
    r = await api.post(URL, files={"file": ("gbk.csv", gbk, "text/csv")})
    assert r.status_code == 400
    assert "UTF-8" in r.json()["message"]
    # Past the first 64 KB (where the file's encoding is judged), a bad line rejects only its row.
    padding = "A,2026-11-20,短\n".encode() * 5000
    mixed = b"box_id,date,text\n" + padding + b"B,2026-11-20,\xff\xfe\xfd bad\n"
    r = await api.post(URL, files={"file": ("mixed.csv", mixed, "text/csv")})
    rows = r.json()["rows"]
    assert rows[-1] == {"line": 5002, "field": "text", "error": "该行不是有效的UTF-8编码"}
    assert {row["field"] for row in rows[:-1]} == {"text"}
    assert r.json()["accepted"] == 0
    r = await api.post(URL, files={"file": ("h.csv", b"a,b,c\n1,2,3\n", "text/csv")})
    assert r.status_code == 400
    assert "box_id" in r.json()["message"]
    r = await api.post(URL, files={"file": ("x.pdf", b"%PDF-1.4", "application/pdf")})
    assert r.status_code == 400


async def test_xlsx_upload(api):
    from datetime import datetime

    tag = random.randint(10**5, 10**6)
    wb = Workbook()
    ws = wb.active
    ws.append(["意见箱编号", "日期", "内容", "联系电话", "地址"])
    ws.append(
        ["XL-1", datetime(2026, 11, 19), f"锦绣家园{tag}栋楼道灯不亮已经一周了", 13900001234, "锦绣家园"]
    )
    ws.append(["XL-1", "2026/11/19", f"幸福里{tag}号附近施工噪音扰民到深夜", None, None])
    ws.append(["XL-2", datetime(2026, 11, 19), "短", None, None])
    buf = io.BytesIO()
    wb.save(buf)
    r = await api.post(
        URL,
        files={
            "file": (
                "slips.xlsx",
                buf.getvalue(),
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            )
        },
    )
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    assert [row["line"] for row in rows] == [2, 3, 4]
    assert "ticket_no" in rows[0]
    assert "ticket_no" in rows[1]
    assert rows[2]["field"] == "text"
    t = (await api.get(f"/api/v1/tickets/{rows[0]['ticket_no']}")).json()
    assert t["caller"]["masked_phone"] == "139****1234"
    assert "2026-11-19" in t["title"]
    r = await api.post(
        URL, files={"file": ("broken.xlsx", b"PK\x03\x04 not really", "application/octet-stream")}
    )
    assert r.status_code == 400
    assert "XLSX" in r.json()["message"]


async def test_upload_slips_command_uses_an_operators_token(system, redis):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "APPEALS_TOKEN"}

    def upload(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli",
                "upload-slips",
                "--demo",
                "20",
                "--api",
                system.base_url,
                *extra,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = upload()
    assert missing.returncode == 2
    assert "APPEALS_TOKEN" in missing.stderr
    department = await issue_token(redis, "department", "urban_mgmt")
    refused = upload("--token", department)
    assert refused.returncode == 2
    assert "HTTP 403" in refused.stderr
    done = upload("--token", await issue_token(redis, "operator", operator="box-clerk"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("20 accepted, 0 rejected")
