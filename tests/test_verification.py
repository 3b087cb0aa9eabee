"""The grid worker's check on the spot of a resolution (现场核查), through the running processes: a
patrol report a resident left a phone for is resolved by its department while the survey goes out;
the worker of the grid confirms one (once), and finds another not solved, which goes back to the
department's queue with the worker's note; the resident's later answer to the survey about that
resolution changes nothing; the record and the scorecard count the checks. Other grids' workers
get 404, departments and the desk 403."""

from __future__ import annotations

import io
import uuid
from datetime import datetime

import pytest
from PIL import Image

from shared.auth import issue_token
from tests.conftest import as_sms_gateway, days_since, eventually, local_today
from tests.test_pipeline_e2e import ticket_when

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]

GRID = "s01c01g02"  # the worker's grid (和平里社区第二网格)
NEIGHBOUR = "s01c01g01"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def fresh_phone() -> str:
    return "137" + str(uuid.uuid4().int)[:8]


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 90, 200)).save(out, "JPEG")
    return out.getvalue()


async def resolved_report(api, redis, worker: dict, text: str, phone: str | None) -> tuple[dict, dict]:
    """A patrol report (with a resident's phone, or none), held by a department (the desk dispatches
    it or a meeting names the lead, if routing did not), then resolved by it; returns the ticket once
    its survey went out (or, with no phone, was skipped), and the department's headers."""
    body = {"text": text, **({"caller_phone": phone} if phone else {})}
    r = await api.post("/api/v1/appeals", json=body, headers=worker)
    assert r.status_code == 201, r.text
    no = r.json()["ticket_no"]
    ticket = await ticket_when(api, no, lambda t: t["status"] in ("assigned", "review", "meeting"))
    if ticket["status"] == "review":
        r = await api.post(f"/api/v1/dispatch/{no}/assign", json={"department": "urban_mgmt"})
        assert r.status_code == 200, r.text
    elif ticket["status"] == "meeting":
        meeting = await eventually(lambda: _meeting(api, ticket["meeting_id"]))
        lead = meeting["summoned"][0]["id"]
        r = await api.post(f"/api/v1/meetings/{ticket['meeting_id']}/decide", json={"lead": lead})
        assert r.status_code == 200, r.text
    ticket = await ticket_when(api, no, lambda t: t["status"] == "assigned")
    department = bearer(await issue_token(redis, "department", ticket["department"]["id"]))
    r = await api.post(
        f"/api/v1/tickets/{no}/resolve", json={"note": "已更换灯泡，恢复照明"}, headers=department
    )
    assert r.status_code == 200, r.text
    if phone is None:  # nobody to ask: the survey's skip is recorded, the ticket stays resolved

        def skipped(t: dict) -> bool:
            return any(h.get("outcome") == "skipped_anonymous" for h in t["history"])

        return await ticket_when(api, no, skipped), department
    return await ticket_when(api, no, lambda t: t["status"] == "surveyed"), department


async def _meeting(api, mid: str) -> dict | None:
    r = await api.get(f"/api/v1/meetings/{mid}")
    return r.json() if r.status_code == 200 else None


async def test_the_grid_worker_confirms_one_resolution_and_sends_another_back(api, redis, pool, settings):
    first_day = local_today(settings.timezone)  # the counters' local day may turn meanwhile
    worker = bearer(await issue_token(redis, "grid_worker", operator="W017", grid=GRID))
    elsewhere = bearer(await issue_token(redis, "grid_worker", operator="W018", grid=NEIGHBOUR))
    light = "巡查发现路边一盏路灯灯杆倾斜，灯罩脱落，夜间不亮，居民反映多日"
    first, department = await resolved_report(api, redis, worker, light, fresh_phone())
    no = first["ticket_no"]
    dept = first["department"]["id"]
    url = f"/api/v1/tickets/{no}/verify"

    # Only the grid's own worker: a department and the desk 403, another grid's worker 404.
    r = await api.post(url, json={"solved": True}, headers=department)
    assert r.status_code == 403
    assert "网格员" in r.json()["message"]
    assert (await api.post(url, json={"solved": True})).status_code == 403  # the desk (admin)
    r = await api.post(url, json={"solved": True}, headers=elsewhere)
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await api.post(url, json={"solved": False, "note": "  "}, headers=worker)
    assert (r.status_code, r.json()["field"]) == (422, "note")
    assert "现场看到的情况" in r.json()["message"]

    # Confirmed, with a photo from the spot: the status stays, the ticket says who checked and when.
    up = await api.post(
        "/api/v1/photos", files=[("photos", ("spot.jpg", jpeg(), "image/jpeg"))], headers=worker
    )
    assert up.status_code == 200, up.text
    photo = up.json()["photos"][0]["photo_id"]
    r = await api.post(url, json={"solved": True, "note": "路灯已亮", "photos": [photo]}, headers=worker)
    assert r.status_code == 200, r.text
    t = r.json()
    assert (t["status"], t["verification"], t["verified_by"]) == ("surveyed", "solved", "W017")
    assert (t["verification_note"], t["verification_photos"]) == ("路灯已亮", [photo])
    check = t["history"][-1]
    assert (check["action"], check["actor"], check["verification"]["solved"]) == ("verified", "W017", True)
    r = await api.post(url, json={"solved": False, "note": "又不亮了"}, headers=worker)
    assert r.status_code == 409
    assert "无需重复核查" in r.json()["message"]

    # Another one not solved: back in the department's queue, with what the worker saw.
    phone = fresh_phone()
    second, department = await resolved_report(
        api, redis, worker, "巡查发现小区路灯坏了好几盏，晚上一片漆黑", phone
    )
    other = second["ticket_no"]
    seen = "现场查看，3号楼东侧两盏路灯仍不亮，灯杆底部有积水"
    r = await api.post(
        f"/api/v1/tickets/{other}/verify", json={"solved": False, "note": seen}, headers=worker
    )
    assert r.status_code == 200, r.text
    back = r.json()
    assert (back["status"], back["department"], back["reopens"]) == ("assigned", second["department"], 1)
    assert back["respond_by"] > second["respond_by"]  # 重办: the category's time again
    assert {"重办", "核查未解决"} <= set(back["flags"])
    queue = await api.get(
        f"/api/v1/departments/{second['department']['id']}/tickets",
        params={"status": "assigned", "size": 200},
        headers=department,
    )
    assert queue.status_code == 200, queue.text
    assert other in [x["ticket_no"] for x in queue.json()["tickets"]]
    read = (await api.get(f"/api/v1/tickets/{other}", headers=department)).json()
    assert (read["verification_note"], read["history"][-1]["note"]) == (seen, seen)

    # The resident answers the survey about that resolution afterwards: nothing closes or reopens.
    r = await api.post(
        "/api/v1/sms/inbound", json={"phone": phone, "text": "3 没解决"}, headers=await as_sms_gateway(redis)
    )
    assert r.status_code == 200, r.text
    answered = await ticket_when(
        api, other, lambda t: any(h["topic"] == "survey.answered" for h in t["history"])
    )
    assert (answered["status"], answered["reopens"]) == ("assigned", 1)
    assert [h.get("action") for h in answered["history"]].count("reopened") == 0
    # The department resolves it again: a new resolution, to be checked anew.
    r = await api.post(
        f"/api/v1/tickets/{other}/resolve", json={"note": "更换灯杆并排除积水"}, headers=department
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["verification"]) == ("resolved", None)

    # The record: the checks on the rows; the worker's list to check holds the second, not the first.
    async def listed():
        r = await api.get(
            "/api/v1/tickets",
            params={"status": "resolved,surveyed", "verified": "false", "size": 500},
            headers=worker,
        )
        assert r.status_code == 200, r.text
        nos = [i["ticket_no"] for i in r.json()["items"]]
        return nos if other in nos and no not in nos else None

    await eventually(listed)
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT verification, verified_by, verification_photos FROM tickets WHERE ticket_no = %s",
                (no,),
            )
        ).fetchone()
        taken = await (
            await conn.execute("SELECT photo_id FROM ticket_photos WHERE ticket_no = %s", (no,))
        ).fetchall()
    assert (row["verification"], row["verified_by"], row["verification_photos"]) == (
        "solved",
        "W017",
        [photo],
    )
    assert photo in [p["photo_id"] for p in taken]  # kept: the sweep of unattached uploads spares it

    async def counted():
        period = days_since(first_day, settings.timezone)
        r = await api.get("/api/v1/stats", params={"group_by": "department", **period})
        group = next((g for g in r.json()["groups"] if g["group"] == dept), None)
        return group if group and group["verified"] >= 1 else None

    assert (await eventually(counted))["verified"] >= 1
    failed_dept = second["department"]["id"]

    async def failed():
        period = days_since(first_day, settings.timezone)
        r = await api.get("/api/v1/stats", params={"group_by": "department", **period})
        group = next((g for g in r.json()["groups"] if g["group"] == failed_dept), None)
        return group if group and group["verification_failed"] >= 1 else None

    await eventually(failed)


async def test_a_report_no_resident_can_rate_waits_resolved_until_the_worker_checks_it(api, redis):
    """A patrol report with no resident: nobody answers a survey, so the grid worker's check closes
    it (核查结案) instead of the skipped survey; until then it stays in the grid's list to check."""
    worker = bearer(await issue_token(redis, "grid_worker", operator="W021", grid=GRID))
    ticket, _ = await resolved_report(api, redis, worker, "巡查发现人行道井盖松动，踩上去晃动响声很大", None)
    no = ticket["ticket_no"]
    assert ticket["status"] == "resolved"  # the skip came, and closed nothing
    # ... and the check has its clock: overdue (督办 to the street office) 48 hours after the resolution.
    resolved_at = datetime.fromisoformat(ticket["resolved_at"]).timestamp()
    clocks = {
        m.decode().split("|")[2]: due
        for m, due in await redis.zrange("timers", 0, -1, withscores=True)
        if m.decode().startswith(f"{no}|check|")
    }
    assert clocks == {
        "warning": pytest.approx(resolved_at + 48 * 3600 * 0.8),
        "overdue": pytest.approx(resolved_at + 48 * 3600),
    }

    async def to_check():
        r = await api.get(
            "/api/v1/tickets", params={"status": "resolved", "verified": "false", "size": 500}, headers=worker
        )
        return no in [i["ticket_no"] for i in r.json()["items"]]

    await eventually(to_check)
    r = await api.post(
        f"/api/v1/tickets/{no}/verify", json={"solved": True, "note": "已更换井盖"}, headers=worker
    )
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["status"], done["verification"]) == ("closed", "solved")
    assert [h.get("action") for h in done["history"][-2:]] == ["verified", "closed"]
