"""The dispatch desk's erasure endpoints against the started system and a real PostgreSQL: who may
use them, the Chinese refusals beside their field, a preview that changes nothing, the erasure in
the record and in Redis with its audit entry, and the phone in no answer, audit entry or log; the
resident found by a ticket number instead (a WeChat resident has no phone), and its refusals."""

from __future__ import annotations

import uuid

import pytest

from services.console import present
from services.intake import keys
from services.intake.domain import wechat_caller_id
from services.records import db
from services.records.service import Records
from shared.auth import issue_token
from shared.city import City
from shared.privacy import REMOVED, caller_id, mask_openid
from tests.conftest import System, eventually
from tests.test_intake_batch import csv_file
from tests.test_intake_wechat import URL as WECHAT
from tests.test_intake_wechat import openid, push, signed
from tests.test_pipeline_e2e import LIGHT, submit, ticket_when
from tests.test_wechat_survey import survey_id, surveyed_in_wechat

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]

PREVIEW = "/api/v1/records/privacy/erasures/preview"
ERASE = "/api/v1/records/privacy/erasures"
AUDIT = "/api/v1/records/privacy/audit"


def fresh_phone() -> str:
    return "139" + str(uuid.uuid4().int)[:8]


async def row(pool: db.Pool, no: str) -> dict | None:
    async with pool.connection() as conn:
        return await (await conn.execute("SELECT * FROM tickets WHERE ticket_no = %s", (no,))).fetchone()


async def audit_rows(pool: db.Pool, subject: str) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM privacy_audit WHERE subject = %s ORDER BY id", (subject,))
        return await cur.fetchall()


async def recorded(api, pool: db.Pool, phone: str, text: str) -> str:
    """A ticket of `phone`, assigned, and in the record with its caller (each topic has its consumer)."""
    no = await submit(api, phone, text=text, address="阳光花园3号楼")
    await ticket_when(api, no, lambda t: t["status"] == "assigned")

    async def in_record():
        r = await row(pool, no)
        return r if r and r["department"] and r["caller_id"] else None

    await eventually(in_record, timeout=60)
    return no


@pytest.mark.parametrize("role", ["operator", "department"])
async def test_only_the_dispatch_desk_may_preview_erase_or_read_the_audit(api, redis, role):
    if role == "department":
        token = await issue_token(redis, "department", department="water")
    else:
        token = await issue_token(redis, "operator", operator="0231")
    staff = {"Authorization": f"Bearer {token}"}
    body = {"phone": fresh_phone(), "reason": "居民申请删除个人信息"}
    for r in (
        await api.post(PREVIEW, json=body, headers=staff),
        await api.post(ERASE, json=body, headers=staff),
        await api.get(AUDIT, headers=staff),
    ):
        assert r.status_code == 403, r.text
        assert r.json()["message"] == "只有派单中心（管理员）可以执行此操作"
    r = await api.post(ERASE, json=body, headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401


async def test_a_bad_phone_or_a_blank_reason_is_refused_in_chinese_beside_its_field(api, pool):
    for path in (PREVIEW, ERASE):
        r = await api.post(path, json={"phone": "12345", "reason": "居民申请"})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "phone"
        assert "不是有效的手机号或固话号码" in r.json()["message"]
        r = await api.post(path, json={"phone": "  ", "reason": "居民申请"})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "phone"
        assert r.json()["message"].startswith("请填写居民的来电号码")

    phone = fresh_phone()
    for path in (PREVIEW, ERASE):
        r = await api.post(path, json={"phone": phone, "reason": " \t "})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "reason"
        assert r.json()["message"].startswith("请填写删除原因")
        assert phone not in r.text
    r = await api.post(ERASE, json={"phone": phone})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "reason"
    r = await api.post(ERASE, json={"phone": phone, "reason": "原" * 201})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "reason"
    assert await audit_rows(pool, caller_id(phone)) == []  # nothing refused was erased


async def test_the_preview_changes_nothing_and_the_erasure_scrubs_record_and_redis_with_an_audit_entry(
    api, redis, pool, system: System
):
    phone = fresh_phone()
    subject = caller_id(phone)
    # Signed with a name and no cue (我叫 would have intake mask it): the words keep it until erased.
    no = await recorded(api, pool, phone, LIGHT + "，王小明")
    before = await row(pool, no)
    assert before is not None

    r = await api.post(PREVIEW, json={"phone": phone})
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["count"] == 1
    assert [t["ticket_no"] for t in preview["tickets"]] == [no]
    assert preview["tickets"][0]["status"] == "assigned"
    assert preview["tickets"][0]["received_at"]
    assert preview["masked_phone"] == f"{phone[:3]}****{phone[-4:]}"
    assert preview["contact"] == {"kind": "phone", "masked": preview["masked_phone"]}
    assert (preview["by"], preview["ticket_no"]) == ("phone", None)
    assert phone not in r.text
    # Nothing changed: the row, the Redis ticket, the contact, the audit.
    unchanged = await row(pool, no)
    assert unchanged is not None
    for column in ("text", "caller_id", "masked_phone", "personal_data_removed_at"):
        assert unchanged[column] == before[column]
    assert before["personal_data_removed_at"] is None
    assert "王小明" in (await api.get(f"/api/v1/tickets/{no}")).json()["text"]
    assert await redis.exists(f"contact:{subject}")
    assert await audit_rows(pool, subject) == []

    # The phone as the resident says it: the same resident.
    spoken = f"+86 {phone[:3]} {phone[3:7]}-{phone[7:]}"
    # The clerk wrote the number into the reason too: the audit, kept for good, has it masked.
    reason = f"居民{phone}来电申请删除个人信息"
    masked_reason = f"居民{phone[:3]}****{phone[-4:]}来电申请删除个人信息"
    # The preview answers the reason as the audit will keep it, and says a number was hidden; with
    # none typed (its spaces run together), nothing hidden; without a reason, none answered.
    r = await api.post(PREVIEW, json={"phone": spoken, "reason": f" {reason} "})
    assert r.status_code == 200, r.text
    assert (r.json()["reason"], r.json()["reason_masked"]) == (masked_reason, True)
    assert phone not in r.text
    r = await api.post(PREVIEW, json={"phone": spoken, "reason": "居民来电  申请删除"})
    assert (r.json()["reason"], r.json()["reason_masked"]) == ("居民来电 申请删除", False)
    assert "reason" not in preview
    assert await audit_rows(pool, subject) == []  # still nothing changed
    r = await api.post(ERASE, json={"phone": spoken, "reason": reason})
    assert r.status_code == 200, r.text
    assert r.json() == {"tickets": [no], "count": 1}
    assert phone not in r.text

    after = await row(pool, no)
    assert after is not None
    assert "王小明" not in after["text"]
    assert after["caller_id"] is None
    assert after["masked_phone"] is None
    assert after["personal_data_removed_at"] is not None
    assert after["category"] == before["category"]  # the statistics stay
    ticket = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert ticket["text"] == REMOVED
    assert "王小明" not in str(ticket)
    assert not await redis.exists(f"contact:{subject}")

    entries = await audit_rows(pool, subject)
    assert [(a["action"], a["tickets"], a["detail"]) for a in entries] == [
        ("erase", 1, {"reason": masked_reason, "by": "phone"})
    ]
    assert entries[0]["actor"].startswith("admin:")  # the desk's token, as `appeals token --list` names it
    assert phone not in str(entries)

    r = await api.get(AUDIT, params={"size": 200})
    assert r.status_code == 200, r.text
    listed = [e for e in r.json()["items"] if e["subject_prefix"] == subject[:8]]
    assert [(e["action"], e["action_name"], e["tickets"], e["reason"], e["found_by"]) for e in listed] == [
        ("erase", "依申请删除", 1, masked_reason, "phone")
    ]
    assert subject not in r.text  # shortened
    assert phone not in r.text
    ats = [e["at"] for e in r.json()["items"]]
    assert ats == sorted(ats, reverse=True)  # newest first

    # Once erased, the phone finds nothing more.
    r = await api.post(PREVIEW, json={"phone": phone})
    assert r.json()["count"] == 0
    assert system.log_dir is not None
    assert phone not in (system.log_dir / "api.log").read_text(encoding="utf-8", errors="replace")


async def test_the_audit_is_paged_newest_first(api, pool):
    subjects = []
    for reason in ("第一次申请", "第二次申请"):
        phone = fresh_phone()
        subjects.append(caller_id(phone)[:8])
        r = await api.post(ERASE, json={"phone": phone, "reason": reason})
        assert r.status_code == 200, r.text
        assert r.json() == {"tickets": [], "count": 0}  # no ticket: the contact goes, the entry stays
    first = (await api.get(AUDIT, params={"page": 1, "size": 1})).json()
    second = (await api.get(AUDIT, params={"page": 2, "size": 1})).json()
    assert [e["subject_prefix"] for e in first["items"] + second["items"]] == subjects[::-1]
    assert first["total"] == second["total"]
    assert first["total"] >= 2
    r = await api.get(AUDIT, params={"page": 0})
    assert r.status_code == 422
    assert r.json()["field"] == "page"


async def test_a_rebuild_from_scratch_keeps_the_erasure(api, pool, system_city):
    """The mark is no event's: emptying the tables to fold them again must not forget it (the
    worker scrubs the late events of a marked ticket by it)."""
    phone = fresh_phone()
    no = await recorded(api, pool, phone, LIGHT + "，赵六")
    r = await api.post(ERASE, json={"phone": phone, "reason": "居民申请删除个人信息"})
    assert r.json()["tickets"] == [no]
    erased = await row(pool, no)
    assert erased is not None
    assert erased["personal_data_removed_at"] is not None

    await Records(pool, system_city).rebuild()
    rebuilt = await row(pool, no)
    assert rebuilt is not None
    assert rebuilt["personal_data_removed_at"] == erased["personal_data_removed_at"]
    assert rebuilt["text"] == REMOVED
    assert rebuilt["caller_id"] is None


async def test_an_audit_page_beyond_any_offset_is_refused_not_a_server_error(api):
    r = await api.get(AUDIT, params={"page": 930186793021326464})
    assert r.status_code == 422, r.text
    assert "page" in r.text


async def test_the_erasure_blanks_a_mediation_agreement_and_keeps_its_outcome(api, redis, pool):
    """The terms of a mediation agreement name the parties and what each owes: the erasure blanks
    them in the record's row, its stored events and the Redis ticket; the outcome (a statistic)
    stays."""
    phone = fresh_phone()
    # Noise first (test_classifier_units holds this sentence to 噪音扰民): its department refers it.
    no = await recorded(api, pool, phone, "楼上邻居张大军家每天夜里十一点后还在装修敲打，吵得没法睡")
    holder = (await api.get(f"/api/v1/tickets/{no}")).json()["department"]["id"]
    dept = {"Authorization": f"Bearer {await issue_token(redis, 'department', department=holder)}"}
    r = await api.post(
        f"/api/v1/tickets/{no}/mediate", headers=dept, json={"reason": "邻里之间的噪音纠纷，双方需要调解"}
    )
    assert r.status_code == 200, r.text
    committee_id = r.json()["department"]["id"]
    committee = {"Authorization": f"Bearer {await issue_token(redis, 'department', department=committee_id)}"}
    terms = "张大军家22时后停止施工，赔偿对方隔音窗费用800元"
    r = await api.post(
        f"/api/v1/tickets/{no}/resolve",
        headers=committee,
        json={"note": "组织双方调解，当场签订协议", "mediation": {"outcome": "agreed", "agreement": terms}},
    )
    assert r.status_code == 200, r.text

    async def agreed():
        r = await row(pool, no)
        return r if r and r["mediation_agreement"] == terms and r["department"] == committee_id else None

    await eventually(agreed, timeout=60)
    r = await api.post(ERASE, json={"phone": phone, "reason": "居民申请删除个人信息"})
    assert r.status_code == 200, r.text
    assert r.json()["tickets"] == [no]

    after = await row(pool, no)
    assert after is not None
    assert (after["mediation_outcome"], after["mediation_agreement"]) == ("agreed", REMOVED)
    async with pool.connection() as conn:
        payloads = [
            r["payload"]
            for r in await (
                await conn.execute("SELECT payload FROM ticket_events WHERE ticket_no = %s", (no,))
            ).fetchall()
        ]
    assert payloads
    assert "张大军" not in str(payloads)
    assert any((p.get("mediation") or {}).get("outcome") == "agreed" for p in payloads)
    ticket = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert (ticket["mediation_outcome"], ticket["mediation_agreement"]) == ("agreed", REMOVED)
    assert "张大军" not in str(ticket)


# --- found by a ticket number -------------------------------------------------------------------


async def test_a_wechat_resident_is_erased_by_their_ticket_number_everywhere(
    api, redis, pool, system: System, system_city: City
):
    """A WeChat resident has no phone: the desk finds them by the number on the chat's reply. The
    ticket's record row, its Redis ticket, the contact (the openid), the notifier's survey and
    message states and intake's WeChat keys all go; the audit entry keeps the number."""
    user = openid()
    subject = wechat_caller_id(user)
    no = await surveyed_in_wechat(api, redis, user)  # the survey open in WeChat, by the openid
    sid = await survey_id(api, no)
    assert await redis.zscore(f"survey:open:{user}", sid) is not None
    notifier_records = await redis.smembers(f"sms:ticket:{no}")
    assert notifier_records  # the survey and its message's state
    # A location sent for a next appeal: where the resident was, kept for 30 minutes.
    place = "<Location_X>39.915</Location_X><Location_Y>116.404</Location_Y><Scale>15</Scale>"
    place += "<Label><![CDATA[阳光花园3号楼]]></Label>"
    r = await api.post(WECHAT, params=signed(), content=push(user, "location", place))
    assert r.status_code == 200, r.text
    assert await redis.exists(keys.wechat_location(subject), f"contact:{subject}") == 2

    async def in_record():
        found = await row(pool, no)
        return found if found and found["caller_id"] == subject else None

    before = await eventually(in_record, timeout=60)
    assert before["channel"] == "wechat"

    r = await api.post(PREVIEW, json={"ticket_no": f" {no} "})
    assert r.status_code == 200, r.text
    preview = r.json()
    assert (preview["by"], preview["ticket_no"], preview["count"]) == ("ticket_no", no, 1)
    assert [t["ticket_no"] for t in preview["tickets"]] == [no]
    assert (preview["channel"], preview["channel_name"]) == ("wechat", "微信公众号")
    assert preview["contact"] == {"kind": "wechat", "masked": mask_openid(user)}
    assert preview["masked_phone"] is None
    assert user not in r.text
    assert (await row(pool, no))["personal_data_removed_at"] is None  # the preview changed nothing

    r = await api.post(ERASE, json={"ticket_no": no, "reason": "居民在微信中申请删除个人信息"})
    assert r.status_code == 200, r.text
    assert r.json() == {"tickets": [no], "count": 1}

    after = await row(pool, no)
    assert after is not None
    assert after["text"] == REMOVED
    assert after["caller_id"] is None
    assert after["personal_data_removed_at"] is not None
    assert after["category"] == before["category"]  # the statistics stay
    ticket = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert ticket["text"] == REMOVED
    assert ticket["caller"]["caller_id"] is None
    assert ticket["location"] is None
    assert not await redis.exists(f"contact:{subject}")
    entries = await audit_rows(pool, subject)
    assert [(a["action"], a["tickets"], a["detail"]) for a in entries] == [
        ("erase", 1, {"reason": "居民在微信中申请删除个人信息", "by": "ticket_no", "ticket_no": no})
    ]
    listed = [e for e in (await api.get(AUDIT, params={"size": 200})).json()["items"] if e["ticket_no"] == no]
    assert [(e["found_by"], e["subject_prefix"]) for e in listed] == [("ticket_no", subject[:8])]

    # The notice reaches the notifier and intake (the router's relay sends it): the survey, its
    # message's state and the index go, and so do the chat's last ticket and the waiting location.
    async def forgotten():
        left = await redis.exists(
            *notifier_records, f"sms:ticket:{no}", keys.wechat_location(subject), keys.wechat_last(subject)
        )
        return left == 0 and await redis.zscore(f"survey:open:{user}", sid) is None

    await eventually(forgotten, timeout=60)

    # The open survey ended with the erasure and the ticket closed: its history says the resident's
    # data was removed, never that they opted out (they never replied TD) nor that it was anonymous.
    async def closed():
        found = (await api.get(f"/api/v1/tickets/{no}")).json()
        return found if found["status"] == "closed" else None

    words = [present.describe(h, system_city) for h in (await eventually(closed, timeout=60))["history"]]
    assert "回访结束：市民个人信息已删除，不再回访" in words
    assert [w for w in words if w.startswith("关闭：")][-1].endswith("，市民个人信息已删除，不再回访")
    assert not [w for w in words if "退订" in w or "匿名" in w]

    # Erased: the number finds no one any more, and says why.
    for path in (PREVIEW, ERASE):
        r = await api.post(path, json={"ticket_no": no, "reason": "居民再次申请"})
        assert r.status_code == 409, r.text
        assert (r.json()["error"], r.json()["field"]) == ("already_erased", "ticket_no")
        assert "已经删除" in r.json()["message"]
    assert len(await audit_rows(pool, subject)) == 1
    assert all(user not in p.read_text(errors="replace") for p in system.log_dir.glob("*.log"))


async def test_a_ticket_number_reaches_every_ticket_of_its_caller(api, redis, pool):
    """By number the subject is the ticket's caller: their other tickets go too, as by phone."""
    phone = fresh_phone()
    first = await recorded(api, pool, phone, LIGHT + "，钱七")
    second = await recorded(api, pool, phone, "锦绣家园门口垃圾堆了好几天没人清运，气味很大，钱七")
    bystander = await recorded(api, pool, fresh_phone(), "和平路十字路口的红绿灯不亮了，车辆很乱，孙八")

    # Without the dash, as the resident's lookup page takes it.
    r = await api.post(PREVIEW, json={"ticket_no": second.replace("-", "")})
    assert r.status_code == 200, r.text
    assert r.json()["ticket_no"] == second
    preview = r.json()
    assert sorted(t["ticket_no"] for t in preview["tickets"]) == sorted([first, second])
    assert (preview["channel"], preview["channel_name"]) == ("hotline", "12345热线")
    assert preview["contact"] == {"kind": "phone", "masked": f"{phone[:3]}****{phone[-4:]}"}
    assert phone not in r.text

    r = await api.post(ERASE, json={"ticket_no": second, "reason": "居民来电申请删除个人信息"})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["tickets"]) == sorted([first, second])
    for no in (first, second):
        erased = await row(pool, no)
        assert erased is not None
        assert (erased["text"], erased["caller_id"]) == (REMOVED, None)
        assert (await api.get(f"/api/v1/tickets/{no}")).json()["text"] == REMOVED
    kept = await row(pool, bystander)
    assert kept is not None
    assert "孙八" in kept["text"]
    assert not await redis.exists(f"contact:{caller_id(phone)}")
    [entry] = await audit_rows(pool, caller_id(phone))
    assert (entry["tickets"], entry["detail"]["by"], entry["detail"]["ticket_no"]) == (2, "ticket_no", second)
    r = await api.post(PREVIEW, json={"phone": phone})  # by phone, the same resident: nothing left
    assert r.json()["count"] == 0


async def test_a_ticket_number_is_refused_in_words_when_it_names_no_one(api, pool):
    # Both ways at once, a malformed number: 422 beside the field.
    r = await api.post(ERASE, json={"phone": fresh_phone(), "ticket_no": "20260501-000123", "reason": "申请"})
    assert r.status_code == 422, r.text
    assert (r.json()["error"], r.json()["field"]) == ("phone_or_ticket_no", "ticket_no")
    r = await api.post(PREVIEW, json={"ticket_no": "2026-0501"})
    assert r.status_code == 422, r.text
    assert (r.json()["error"], r.json()["field"]) == ("invalid_ticket_no", "ticket_no")
    r = await api.post(PREVIEW, json={})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "phone"
    assert "工单号" in r.json()["message"]

    # A number the record does not know: 404, in words.
    for path in (PREVIEW, ERASE):
        r = await api.post(path, json={"ticket_no": "19990101-000001", "reason": "居民申请删除个人信息"})
        assert r.status_code == 404, r.text
        assert (r.json()["error"], r.json()["field"]) == ("ticket_not_found", "ticket_no")
        assert "19990101-000001" in r.json()["message"]

    # An anonymous suggestion-box slip has no resident to erase.
    words = f"公园东门的长椅坏了好几张，没法坐{uuid.uuid4().hex[:6]}"
    slips = csv_file([["B-07", "2026-11-20", words, "", ""]])
    r = await api.post("/api/v1/appeals/batch", files={"file": ("box.csv", slips, "text/csv")})
    assert r.status_code == 200, r.text
    [slip] = [row["ticket_no"] for row in r.json()["rows"]]
    await eventually(lambda: row(pool, slip), timeout=60)
    async with pool.connection() as conn:
        before = (await (await conn.execute("SELECT count(*) AS n FROM privacy_audit")).fetchone())["n"]
    for path in (PREVIEW, ERASE):
        r = await api.post(path, json={"ticket_no": slip, "reason": "居民申请删除个人信息"})
        assert r.status_code == 409, r.text
        assert (r.json()["error"], r.json()["field"]) == ("no_caller", "ticket_no")
        assert "匿名" in r.json()["message"]
    async with pool.connection() as conn:
        after = (await (await conn.execute("SELECT count(*) AS n FROM privacy_audit")).fetchone())["n"]
    assert after == before  # nothing refused was erased or audited
