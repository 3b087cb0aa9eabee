"""The record in a real PostgreSQL, fed by the running records worker: projection, replays and
rebuilds, search and export with the access rules, reading a ticket that left Redis, erasure, and
what happens while PostgreSQL is down."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from openpyxl import load_workbook
from psycopg.rows import dict_row

from services.classifier.grid import grid_match
from services.intake import keys
from services.intake.app import DuplicateIndex
from services.launcher import Launcher
from services.records import db
from services.records.app import until_available
from services.records.projection import fold_ticket
from services.records.query import build
from services.records.retention import Retention
from services.records.service import (
    EVENTS_PER_STATEMENT,
    ROWS_PER_STATEMENT,
    Records,
    insert_events,
    payload,
    upsert_tickets,
)
from services.router.app import RouterHandlers
from shared import topics
from shared.auth import issue_token
from shared.bus import relay_outbox
from shared.embedded import EmbeddedServers, free_port
from shared.events import (
    AppealClassified,
    AppealReceived,
    Caller,
    CategoryScore,
    DepartmentRef,
    Event,
    GeoPoint,
    MeetingConvened,
    MeetingUpdated,
    PersonalDataRemoved,
)
from shared.privacy import REMOVED, caller_id, mask_phone
from shared.store import Change, Outcome, TicketStore
from shared.tickets import Ticket
from tests.cities import demo_city
from tests.conftest import as_department, as_sms_gateway, eventually, settings_env
from tests.numbering import made_up_numbers
from tests.test_pipeline_e2e import LIGHT, resolve_when_assigned, submit, ticket_when
from tests.test_shared_core import Broker

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]


@pytest.fixture
async def records(pool, system_city) -> Records:
    return Records(pool, system_city)


def fresh_phone() -> str:
    return "139" + str(uuid.uuid4().int)[:8]


# Made-up tickets, written to Redis and the record without intake: numbered on a day long past (a
# high number of today's would push today's real counter up, as the record keeps it above the
# highest it has seen), so that no two tests share one.
made_up_no = made_up_numbers("20001201")


async def row(pool: db.Pool, no: str) -> dict | None:
    async with pool.connection() as conn:
        return await (await conn.execute("SELECT * FROM tickets WHERE ticket_no = %s", (no,))).fetchone()


async def close_by_resident(api, redis, no: str, phone: str) -> dict:
    await resolve_when_assigned(api, redis, no)
    await ticket_when(api, no, lambda t: t["status"] == "surveyed")
    r = await api.post(
        "/api/v1/sms/inbound", json={"phone": phone, "text": "1"}, headers=await as_sms_gateway(redis)
    )
    assert r.status_code == 200, r.text
    return await ticket_when(api, no, lambda t: t["status"] == "closed")


async def test_the_worker_projects_a_ticket_through_its_life(api, redis, pool):
    phone = fresh_phone()
    no = await submit(api, phone, address="阳光花园3号楼")
    ticket = await close_by_resident(api, redis, no, phone)

    async def closed_in_record():
        r = await row(pool, no)
        return r if r and r["status"] == "closed" else None

    r = await eventually(closed_in_record)
    assert r["category"] == ticket["category"]
    assert r["department"] == ticket["department"]["id"]
    assert r["grid"] == ticket["grid"]["grid"]
    assert r["street"]
    assert r["rating"] == 1
    assert r["masked_phone"] == ticket["caller"]["masked_phone"]
    assert r["caller_id"] == caller_id(phone)
    assert r["respond_by"] is not None
    assert phone not in str(r)  # the record holds no raw phone either

    async def history_recorded() -> bool:
        # Each topic has its own consumer: a survey's events may be recorded a batch after the
        # closing that the row already shows.
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT event_id FROM ticket_events WHERE ticket_no = %s", (no,))
            ids = {e["event_id"] for e in await cur.fetchall()}
        return {h["event_id"] for h in ticket["history"]} <= ids

    await eventually(history_recorded)


async def test_replays_change_nothing_and_a_rebuild_equals_the_live_projection(api, redis, pool, records):
    phone = fresh_phone()
    no = await submit(api, phone, address="阳光花园3号楼")
    closed = await close_by_resident(api, redis, no, phone)

    async def closed_in_record():
        r = await row(pool, no)
        return r if r and r["status"] == "closed" else None

    async def all_recorded() -> bool:
        # Each topic has its own consumer: the row may show the closing while the survey's events
        # are still on their way, and the comparison below needs every one of them recorded.
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT event_id FROM ticket_events WHERE ticket_no = %s", (no,))
            ids = {e["event_id"] for e in await cur.fetchall()}
        return {h["event_id"] for h in closed["history"]} <= ids

    await eventually(closed_in_record)
    await eventually(all_recorded)
    await asyncio.sleep(6)  # its last events older than the margin below
    # Events other tests wrote to Redis without publishing them: the record takes them too.
    await records.backfill_from_store(TicketStore(redis))

    async def snapshot() -> tuple[datetime, dict[str, dict]]:
        async with pool.connection() as conn:
            # Five seconds of margin: a batch committing now may carry an earlier recorded_at.
            since = (await (await conn.execute("SELECT now() - interval '5 seconds' AS t")).fetchone())["t"]
            rows = await (await conn.execute("SELECT * FROM tickets")).fetchall()
        return since, {r["ticket_no"]: r for r in rows}

    async def compare(before: tuple[datetime, dict[str, dict]]) -> None:
        """Every row as it was, except tickets the running system changed meanwhile (timers)."""
        since, rows = before
        _, now = await snapshot()
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT ticket_no FROM ticket_events WHERE recorded_at >= %s", (since,)
            )
            moved = {r["ticket_no"] for r in await cur.fetchall()}
        assert no not in moved
        assert {k: v for k, v in now.items() if k not in moved} == {
            k: v for k, v in rows.items() if k not in moved
        }

    live = await snapshot()
    text = await searched_text(pool, no)
    assert "阳光花园3号楼" in text
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT topic, payload FROM ticket_events WHERE ticket_no = %s", (no,))
        stored = await cur.fetchall()
    for e in stored:  # the ticket's events delivered once more
        body = {k: v for k, v in e["payload"].items() if k != "topic"}
        await records.project(e["topic"], [topics.EVENT_TYPES[e["topic"]].model_validate(body)])
    await compare(live)
    await records.rebuild(datetime.now(UTC) - timedelta(hours=1))
    await compare(live)
    await records.rebuild()  # from scratch: the tables emptied and folded again
    await compare(live)
    assert await searched_text(pool, no) == text


async def test_search_filters_pages_and_access_rules(api, redis, pool):
    phone = fresh_phone()
    mine = await submit(api, phone, text=LIGHT + "（测试检索甲）", address="阳光花园3号楼")
    ticket = await ticket_when(api, mine, lambda t: t["status"] == "assigned")
    dept = ticket["department"]["id"]

    async def assignment_recorded() -> dict | None:
        # The row appears with the appeal; the department's own searches need the assignment too,
        # which the record reads from another topic, possibly a batch later.
        found = await row(pool, mine)
        return found if found and found["department"] == dept else None

    await eventually(assignment_recorded)

    r = await api.get("/api/v1/tickets", params={"q": "测试检索甲"})
    assert r.status_code == 200, r.text
    assert [t["ticket_no"] for t in r.json()["items"]] == [mine]
    # Several words, each found wherever it is; the number a resident reads out, however typed.
    serial = mine.split("-")[1]
    for q in ("检索甲 阳光花园", "测试检索甲\u3000" + mine, mine.replace("-", ""), f"测试检索甲 {serial}"):
        r = await api.get("/api/v1/tickets", params={"q": q})
        assert [t["ticket_no"] for t in r.json()["items"]] == [mine], q
    r = await api.get("/api/v1/tickets", params={"q": "检索甲 检索乙"})
    assert r.json()["items"] == []
    r = await api.get(
        "/api/v1/tickets",
        params={"department": dept, "status": "assigned,accepted", "street": ticket["grid"]["street"] or ""},
    )
    assert r.status_code == 200
    assert all(t["department"] == dept for t in r.json()["items"])
    r = await api.get("/api/v1/tickets", params={"category": ticket["category"].rsplit(".", 1)[0], "size": 2})
    assert r.status_code == 200
    assert len(r.json()["items"]) <= 2
    assert r.json()["total"] >= 1

    # The desk finds a caller's tickets by the number they called from, however it is typed.
    spaced = f"{phone[:3]} {phone[3:7]}-{phone[7:]}"
    r = await api.get("/api/v1/tickets", params={"phone": spaced})
    assert r.status_code == 200, r.text
    assert [t["ticket_no"] for t in r.json()["items"]] == [mine]
    r = await api.get("/api/v1/tickets", params={"phone": "1381234"})
    assert (r.status_code, r.json()["field"]) == (422, "phone")
    # Or by the caller's hash, which the console's links carry instead of the number.
    r = await api.get("/api/v1/tickets", params={"caller": caller_id(phone)})
    assert [t["ticket_no"] for t in r.json()["items"]] == [mine]
    r = await api.get("/api/v1/tickets", params={"caller": phone})
    assert (r.status_code, r.json()["field"]) == (422, "caller")

    own = await as_department(redis, ticket)
    r = await api.get("/api/v1/tickets", params={"q": "测试检索甲"}, headers=own)
    assert [t["ticket_no"] for t in r.json()["items"]] == [mine]
    # A department sees masked numbers: a lookup by number would unmask them.
    r = await api.get("/api/v1/tickets", params={"phone": phone}, headers=own)
    assert (r.status_code, r.json()["field"]) == (403, "phone")
    r = await api.get("/api/v1/tickets", params={"caller": caller_id(phone)}, headers=own)
    assert (r.status_code, r.json()["field"]) == (403, "caller")
    other_dept = next(d.id for d in demo_city().departments if d.id != dept)
    other = {"Authorization": f"Bearer {await issue_token(redis, 'department', other_dept)}"}
    r = await api.get("/api/v1/tickets", params={"q": "测试检索甲"}, headers=other)
    assert r.json()["items"] == []
    operator = {"Authorization": f"Bearer {await issue_token(redis, 'operator', None, '0231')}"}
    assert (await api.get("/api/v1/tickets", headers=operator)).status_code == 403


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "finished"}, "status"),
        ({"from": "2026-02-30"}, "from"),
        ({"size": "501"}, "size"),
        ({"overdue": "sometimes"}, "overdue"),
    ],
)
async def test_bad_search_parameters_are_422_with_the_field(api, params, field):
    r = await api.get("/api/v1/tickets", params=params)
    assert r.status_code == 422
    assert r.json()["field"] == field


async def test_export_streams_csv_with_a_bom_and_xlsx(api, pool):
    phone = fresh_phone()
    no = await submit(api, phone, text=LIGHT + "（测试导出乙）", address="=阳光花园3号楼")
    await eventually(lambda: row(pool, no))
    r = await api.get("/api/v1/tickets/export", params={"q": "测试导出乙"})
    assert r.status_code == 200, r.text
    assert r.content.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][0] == "工单号"
    assert {"催办次数", "现场核查", "核查时间"} <= set(rows[0])
    assert [x[0] for x in rows[1:]] == [no]
    assert rows[1][-1] == "'=阳光花园3号楼"  # no formula for Excel to run
    r = await api.get("/api/v1/tickets/export", params={"q": "测试导出乙", "format": "xlsx"})
    assert r.status_code == 200
    sheet = load_workbook(io.BytesIO(r.content), read_only=True)["工单"]
    values = [list(v) for v in sheet.iter_rows(values_only=True)]
    assert values[1][0] == no
    # Times are date cells in the city's time, as the CSV writes them; counts are numbers.
    received, urges = values[0].index("受理时间"), values[0].index("催办次数")
    assert isinstance(values[1][received], datetime)
    assert values[1][received].strftime("%Y-%m-%d %H:%M") == rows[1][received]
    assert values[1][urges] == 0


async def test_a_closed_ticket_leaves_redis_and_is_read_from_the_record(api, redis, pool, settings):
    phone = fresh_phone()
    no = await submit(api, phone, address="阳光花园3号楼")
    await close_by_resident(api, redis, no, phone)

    async def recorded_closed():
        r = await row(pool, no)
        history = await redis.llen(f"t:{no}:h")
        if not (r and r["status"] == "closed"):
            return None
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM ticket_events WHERE ticket_no = %s", (no,))
            n = (await cur.fetchone())["n"]
        return n == history

    await eventually(recorded_closed)
    retention = Retention(pool, TicketStore(redis), settings)
    assert await retention.evict_closed(datetime.now(UTC) + timedelta(minutes=1)) >= 1
    assert not await redis.exists(f"t:{no}")
    r = await api.get(f"/api/v1/tickets/{no}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["archived"] is True
    assert body["status"] == "closed"
    assert [h["topic"] for h in body["history"]][:3] == [
        "appeal.received",
        "appeal.classified",
        "ticket.assigned",
    ]


async def test_a_closed_ticket_with_a_meetings_facts_leaves_redis_and_the_record_keeps_them(
    api, redis, pool, settings
):
    # A joint meeting's facts are written into the history of the ticket each names, and travel on
    # no topic: the record has them only from the history, which must not keep the ticket in Redis.
    phone = fresh_phone()
    no = await submit(api, phone, address="锦绣家园7号楼")
    await close_by_resident(api, redis, no, phone)
    store = TicketStore(redis)
    mid = f"m-{uuid.uuid4().hex[:12]}"
    street = DepartmentRef(id="street_s01", name="阳光街道办事处")
    convened = MeetingConvened(
        ticket_no=no,
        meeting_id=mid,
        reason="hotspot",
        lead_street=street,
        summoned=(street,),
        tickets=(no,),
        deadline=datetime.now(UTC) + timedelta(days=3),
        explanation="热点诉求：同一网格同类诉求集中",
    )
    async with redis.pipeline(transaction=True) as p:
        store.record_into(p, [convened])
        await p.execute()
    history_length = await redis.llen(f"t:{no}:h")

    async def recorded_closed():
        r = await row(pool, no)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM ticket_events WHERE ticket_no = %s", (no,))
            n = (await cur.fetchone())["n"]
        # All but the meeting's fact, which only the history holds.
        return r is not None and r["status"] == "closed" and n == history_length - 1

    await eventually(recorded_closed)
    retention = Retention(pool, store, settings)
    assert await retention.evict_closed(datetime.now(UTC) + timedelta(minutes=1)) >= 1
    assert not await redis.exists(f"t:{no}", f"t:{no}:h")
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT tickets FROM meetings WHERE meeting_id = %s", (mid,))
        assert (await cur.fetchone())["tickets"] == [no]
    body = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert body["archived"] is True
    assert "meeting.convened" in [h["topic"] for h in body["history"]]
    assert len(body["history"]) == history_length


async def searched_text(pool, no: str) -> str:
    """What full-text search matches the ticket by (kept apart from its row, by trigger)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT search FROM ticket_search WHERE ticket_no = %s", (no,))
        found = await cur.fetchone()
    assert found is not None
    return found["search"]


async def test_erasing_a_resident_removes_their_personal_data_with_an_audit_entry(api, redis, pool, settings):
    phone = fresh_phone()
    # Signed with a name and no cue (我叫 would have intake mask it): the words keep it until erased.
    no = await submit(api, phone, text=LIGHT + "，王小明", address="阳光花园3号楼")
    await ticket_when(api, no, lambda t: t["status"] == "assigned")

    async def assigned_in_record():
        r = await row(pool, no)
        return r if r and r["department"] else None

    await eventually(assigned_in_record)  # each topic is recorded by its own consumer
    assert "王小明" in await searched_text(pool, no)
    retention = Retention(pool, TicketStore(redis), settings)
    subject = caller_id(phone)
    assert await redis.sismember(keys.caller_index(subject), no)  # intake's duplicate index has it
    assert await retention.erase_caller(subject, actor="0231", reason="居民申请") == [no]
    # Announced: written into the ticket's history (and the outbox) for the router's relay to send.
    history = await TicketStore(redis).history(no)
    # One notice, or two: an event of the ticket that reached the record between the record's
    # erasure and Redis's has the projection erase and announce it in Redis first (`keep_erased`).
    notices = [h for h in history if h["topic"] == topics.PERSONAL_DATA_REMOVED]
    assert 1 <= len(notices) <= 2, notices
    assert all(n["caller_id"] in (subject, None) for n in notices)  # None: relayed, then scrubbed
    assert "王小明" not in await searched_text(pool, no)  # search finds the name no more
    r = await row(pool, no)
    assert r is not None
    assert "王小明" not in r["text"]
    assert r["masked_phone"] is None
    assert r["personal_data_removed_at"] is not None
    assert r["category"]  # the statistics stay
    assert await redis.hgetall(f"contact:{subject}") == {}
    ticket = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert "王小明" not in str(ticket)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM privacy_audit WHERE subject = %s", (subject,))
        audit = await cur.fetchall()
    assert [(a["action"], a["actor"], a["tickets"]) for a in audit] == [("erase", "0231", 1)]
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT payload::text AS p FROM ticket_events WHERE ticket_no = %s", (no,))
        assert all("王小明" not in e["p"] for e in await cur.fetchall())

    # The notice reaches the services: intake drops the ticket from the caller's index, the record
    # keeps the notice without the caller's hash (the ticket is erased), and the relay that sent it
    # scrubbed its copy in the history.
    async def notice_recorded() -> list:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT payload FROM ticket_events WHERE ticket_no = %s AND topic = %s",
                (no, topics.PERSONAL_DATA_REMOVED),
            )
            return await cur.fetchall()

    [recorded] = await eventually(notice_recorded, timeout=60, interval=0.5)
    assert recorded["payload"]["caller_id"] is None

    async def unindexed() -> bool:
        return not await redis.sismember(keys.caller_index(subject), no)

    await eventually(unindexed, timeout=60, interval=0.5)

    async def scrubbed_in_history() -> bool:
        history = await TicketStore(redis).history(no)
        return [h["caller_id"] for h in history if h["topic"] == topics.PERSONAL_DATA_REMOVED] == [None]

    await eventually(scrubbed_in_history, timeout=60, interval=0.5)


async def test_postgres_down_search_503_appeals_taken_projection_catches_up(settings, tmp_path, system_city):
    # A PostgreSQL of its own, to stop and start again.
    own = EmbeddedServers(log_dir=tmp_path, postgres=True).start()
    try:
        api_port = free_port()
        launcher = Launcher(env=settings_env(settings, api_port=api_port, database_url=own.database_url))
        launcher.start("api")
        launcher.wait_for_ports([api_port])
        await db.migrate(own.database_url)
        pool = db.pool(own.database_url)
        await pool.open(wait=True)
        records = Records(pool, system_city)
        [pg] = [p for p in own.processes if p.name == "postgres"]
        pg.stop()  # PostgreSQL goes away
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
            from redis.asyncio import Redis

            redis = Redis.from_url(settings.redis_url)
            client.headers["Authorization"] = f"Bearer {await issue_token(redis, 'admin')}"
            r = await client.get("/api/v1/tickets")
            assert r.status_code == 503
            assert r.headers["Retry-After"]
            no = await submit(client, fresh_phone())  # taking appeals needs no database
            await redis.aclose()

        appeal = AppealReceived(ticket_no=no, channel="hotline", text=LIGHT, caller=Caller())
        projecting = asyncio.create_task(
            until_available(
                lambda: records.project("appeal.received", [appeal]), what="test", give_up_after=120
            )
        )
        await asyncio.sleep(2)
        assert not projecting.done()  # waiting for the server, not failing
        restarted = EmbeddedServers(
            log_dir=tmp_path, postgres=True, postgres_port=own.postgres_port, postgres_dir=own.postgres_dir
        )
        restarted.kafka_port, restarted.redis_port = free_port(), free_port()
        restarted._start_postgres()  # only the database comes back
        own.processes.extend(restarted.processes)
        await asyncio.wait_for(projecting, 120)
        with psycopg.connect(own.database_url, row_factory=dict_row) as conn:
            got = conn.execute("SELECT status FROM tickets WHERE ticket_no = %s", (no,)).fetchone()
        assert got == {"status": "received"}
        await pool.close()
        launcher.stop_all()
    finally:
        own.stop()


async def test_the_three_rates_from_sql_agree_with_the_notifiers_live_figures(
    settings, redis, pool, system_city
):
    """Assignments, acceptances and answers on a day of their own, through the broker to both the
    notifier (Redis counters) and the record; the rates per department and per grid agree."""
    from services.notifier.scorecard import Scorecard
    from services.records.rates import rates
    from shared.bus import EventPublisher, publish
    from shared.events import (
        DeadlineNotice,
        DepartmentRef,
        Mediation,
        Merge,
        SurveyAnswered,
        TicketAssigned,
        TicketUpdated,
        Urge,
        Verification,
    )

    day = datetime(2031, 3, 5, 10, tzinfo=UTC)
    depts = [DepartmentRef(id=d.id, name=d.name) for d in system_city.departments[:2]]
    events: list = []
    for i in range(12):
        no = f"20310305-{900000 + i}"
        dept = depts[i % 2]
        # The waiting room counts nowhere; what ended at first contact counts apart as well.
        via = {11: "dispatch_desk", 10: "on_spot", 9: "answered"}.get(i, "rule")
        events.append(
            TicketAssigned(
                ticket_no=no,
                department=dept,
                via=via,
                explanation="测试",
                category="city.facility.streetlight",
                grid=f"g-{i % 3}",
                respond_by=day,
                resolve_by=day,
                first=via != "dispatch_desk",  # each ticket's first dispatch, as the router says
                occurred_at=day,
            )
        )
        if i == 8:  # 改派: the desk moved it; it counts again, for the department it moved to
            events.append(
                TicketAssigned(
                    ticket_no=no,
                    department=depts[1],
                    via="redispatch",
                    explanation="派单中心改派：测试",
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    respond_by=day,
                    resolve_by=day,
                    first=False,
                    occurred_at=day,
                )
            )
        if i % 4:
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="accepted",
                    status="accepted",
                    actor=dept.id,
                    department=dept,
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    on_time=i % 3 != 0,
                    # Late after its deadline's notice (i = 9): due once, by the notice.
                    marked_overdue=True if i == 9 else None,
                    occurred_at=day,
                )
            )
        if i in (8, 9):  # the response deadline's notice (应响应): i = 8 never accepted, 9 late after it
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="overdue",
                    status="assigned",
                    actor="system",
                    department=dept,
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    supervision=DeadlineNotice(stage="respond", stage_name="签收", deadline=day),
                    occurred_at=day,
                )
            )
        if i % 5 == 0:  # 催办: counted beside the rates, by both alike
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="urged",
                    status="assigned",
                    actor="0231",
                    department=dept,
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    note="还是没人来",
                    urge=Urge(urges=1),
                    occurred_at=day,
                )
            )
        if i % 3 == 1:  # 现场核查: counted beside the rates too, a check found not solved apart
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="verified",
                    status="resolved" if i % 2 else "assigned",
                    actor="W017",
                    department=dept,
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    note="现场查看",
                    verification=Verification(solved=bool(i % 2)),
                    occurred_at=day,
                )
            )
        if i % 6 == 2:  # 人民调解: a committee's resolution (i = 2 agreed, 8 not), beside the rates too
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="resolved",
                    status="resolved",
                    actor=dept.id,
                    department=dept,
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    note="已调解",
                    on_time=True,
                    mediation=Mediation(outcome="agreed", agreement="赔偿")
                    if i == 2
                    else Mediation(outcome="not_agreed"),
                    occurred_at=day,
                )
            )
        if i in (0, 4, 11):  # 并案 before any acceptance: on time, late, and from the desk's waiting room
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="merged",
                    status="closed",
                    actor="dispatch_desk",
                    department=dept,
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    note="并入工单20310305-900001合并办理：同一问题",
                    merge=Merge(
                        into="20310305-900001", duplicate=no, response_on_time={0: True, 4: False}.get(i)
                    ),
                    occurred_at=day,
                )
            )
        if i in (0, 4):  # ... then carried along, its main ticket merged into another: counted nowhere
            events.append(
                TicketUpdated(
                    ticket_no=no,
                    action="remerged",
                    status="closed",
                    actor="dispatch_desk",
                    department=dept,
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    note="随工单20310305-900001并入工单20310305-900002合并办理：同一问题",
                    merge=Merge(into="20310305-900002", duplicate=no, via="20310305-900001"),
                    occurred_at=day,
                )
            )
        rating = (1, 2, 3, None)[i % 4]
        events.append(
            SurveyAnswered(
                ticket_no=no,
                survey_id=f"s{i}",
                rating=rating,
                solved=i % 2 == 0,
                text="1",
                outcome="answered" if rating else "no_answer",
                department=dept,
                category="city.facility.streetlight",
                grid=f"g-{i % 3}",
                occurred_at=day,
                by="op09" if i in (1, 6) else None,  # 电话回访: answered on an operator's call
            )
        )
        if i == 4:  # sent back by its check (现场核查未解决), then its old survey answered 满意: in no rate
            events.append(
                SurveyAnswered(
                    ticket_no=no,
                    survey_id=f"s{i}-sent-back",
                    rating=1,
                    solved=True,
                    text="1",
                    department=dept,
                    category="city.facility.streetlight",
                    grid=f"g-{i % 3}",
                    occurred_at=day,
                    void=True,
                )
            )
    publisher = EventPublisher(settings, client_id="test-rates")
    await publisher.start()
    await publish(publisher, events)
    await publisher.stop()

    book = Scorecard.from_settings(redis, system_city, settings)
    tz = ZoneInfo(settings.timezone)

    async def agree(group_by: str):
        live = [
            {k: v for k, v in r.items() if k != "name"}
            for r in await book.query(group_by, day.date(), day.date())
        ]
        sql = await rates(
            pool, group_by, day.date(), day.date(), tz, book.weights, system_city.sla.ranking.min_answers
        )
        counted = (
            sum(r["assigned"] for r in sql) == 12  # 11 departments' first assignments, 1 re-dispatch
            and sum(r["first_assigned"] for r in sql) == 11  # the re-dispatch is no ticket's first
            and sum(r["answered"] + r["no_answer"] for r in sql) == 12
            and sum(r["urged"] for r in sql) == 3
            and sum(r["verified"] for r in sql) == 4  # i = 1, 4, 7, 10
            and sum(r["verification_failed"] for r in sql) == 2  # the even ones: 4, 10
            and sum(r["mediated"] for r in sql) == 2
            and sum(r["mediation_agreed"] for r in sql) == 1
            and sum(r["merged"] for r in sql) == 3  # the two carried along not again
            and sum(r["answered_by_phone"] for r in sql) == 2  # i = 1, 6, among the answered
            and sum(r["answered_void"] for r in sql) == 1  # i = 4's sent-back survey, apart
            # accepted: i % 4 != 0 (9 of 12); merged while a department held it: i = 0, 4 (one late)
            and sum(r["responded"] for r in sql) == 11
            and sum(r["responded_on_time"] for r in sql)
            == sum(i % 4 != 0 and i % 3 != 0 for i in range(12)) + 1
            # 应响应: those 7 on time; late, i = 3, 6 and the merge of 4; the notices of 8 and 9 (9's
            # late acceptance after its notice counts no second time)
            and sum(r["due_on_time"] for r in sql) == 7
            and sum(r["due"] for r in sql) == 12
        )
        return sql if counted and live == sql else None

    by_department = await eventually(lambda: agree("department"), timeout=60)
    assert {r["group"] for r in by_department} >= {d.id for d in depts}
    assert sum(r["handled_on_spot"] for r in by_department) == 1
    assert sum(r["answered_directly"] for r in by_department) == 1
    # Each department answered fewer surveys than a ranking needs (样本不足) or enough: said alike.
    assert all(r["ranked"] == (r["answered"] >= system_city.sla.ranking.min_answers) for r in by_department)
    assert await eventually(lambda: agree("grid"), timeout=30)


async def test_retention_removes_personal_data_from_tickets_closed_long_enough(api, redis, pool, settings):
    phone = fresh_phone()
    no = await submit(api, phone, text=LIGHT + "，李四", address="阳光花园3号楼")
    await close_by_resident(api, redis, no, phone)

    async def closed():
        r = await row(pool, no)
        return r if r and r["status"] == "closed" else None

    before = await eventually(closed)
    retention = Retention(pool, TicketStore(redis), settings)
    await retention.remove_personal_data(before["closed_at"] - timedelta(seconds=1))
    kept = await row(pool, no)
    assert kept is not None
    assert "李四" in kept["text"]  # closed after the cut-off: kept
    assert await retention.remove_personal_data(datetime.now(UTC) + timedelta(minutes=1)) >= 1
    after = await row(pool, no)
    assert after is not None
    assert "李四" not in after["text"]
    assert after["masked_phone"] is None
    for stat in ("category", "department", "street", "rating", "closed_at"):
        assert after[stat] == before[stat]
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM privacy_audit WHERE action = 'retention'")
        assert (await cur.fetchone())["n"] >= 1


async def test_a_counter_lost_with_redis_starts_above_the_records_highest_number(api, redis, pool, records):
    no = await submit(api, fresh_phone())
    await eventually(lambda: row(pool, no))
    day = datetime.strptime(no[:8], "%Y%m%d").date()
    store = TicketStore(redis)
    await redis.set(f"seq:{no[:8]}", 0)  # Redis came back empty: the counter is gone
    await records.raise_counters(store, day)
    assert await store.next_ticket_no(day) > no


async def scratch_database(settings) -> tuple[str, str]:
    """A new, empty database on the test server (its name, its URL), for an upgrade to start from;
    skips where the DATABASE_URL given may not create one."""
    name = f"upgrade_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the DATABASE_URL given may not create a database (the embedded one may)")
    return name, settings.database_url.rsplit("/", 1)[0] + "/" + name


async def test_a_record_kept_before_search_moved_apart_is_found_after_the_upgrade(
    settings, monkeypatch, system_city
):
    """A database that holds tickets under the first schema gets its search table filled by the
    migration that moved it, and search and the trigger work on it from then on."""
    name, url = await scratch_database(settings)
    everything = db.migration_files()
    monkeypatch.setattr(db, "migration_files", lambda: everything[:1])
    assert await db.migrate(url) == ["0001_records"]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO tickets (ticket_no, status, channel, title, text, address, received_at, updated_at) "
            "VALUES ('20261130-000001', 'closed', 'hotline', '路灯', '升级前的工单', '和平街', now(), now())"
        )
    monkeypatch.setattr(db, "migration_files", lambda: everything)
    assert await db.migrate(url) == [v for v, _ in everything[1:]]
    search = build({"q": "升级前"}, tz=ZoneInfo(settings.timezone), city=system_city, department_scope=None)
    query = f"SELECT ticket_no FROM tickets WHERE {search.where}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert await (await conn.execute(query, search.params)).fetchall() == [("20261130-000001",)]
        await conn.execute("UPDATE tickets SET text = '个人信息已删除' WHERE ticket_no = '20261130-000001'")
        assert await (await conn.execute(query, search.params)).fetchall() == []
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def test_a_row_whose_events_are_still_on_their_way_is_scrubbed_as_it_stands(api, redis, pool, settings):
    """The erasure folds a ticket's row again from its scrubbed events; a row with none stored (the
    record reads each topic on its own, so they may all be on their way) is scrubbed as it stands.
    In a full run the row was found after the erasure with the resident's name still in it."""
    phone = fresh_phone()
    no = await submit(api, phone, text=LIGHT + "，赵小红", address="幸福里小区5号楼")
    await ticket_when(api, no, lambda t: t["status"] == "assigned")

    async def recorded():
        r = await row(pool, no)
        return r if r and "赵小红" in (r["text"] or "") and r["department"] else None

    await eventually(recorded, timeout=60)
    async with pool.connection() as conn:  # as if its events had not been read yet
        await conn.execute("DELETE FROM ticket_events WHERE ticket_no = %s", (no,))
    retention = Retention(pool, TicketStore(redis), settings)
    assert await retention.erase_caller(caller_id(phone), actor="0231", reason="居民申请") == [no]
    r = await row(pool, no)
    assert r is not None
    assert "赵小红" not in str(r)
    assert r["text"] == REMOVED
    assert "赵小红" not in await searched_text(pool, no)
    assert r["personal_data_removed_at"] is not None
    assert r["department"]  # what the statistics need stays


async def test_an_event_recorded_after_the_erasure_is_recorded_without_personal_data(
    api, redis, pool, settings, records
):
    """The record reads each topic on its own, so an event of an erased ticket may still be on its
    way (here: the classification, which carries the appeal's text)."""
    phone = fresh_phone()
    no = await submit(api, phone, text=LIGHT + "，李大伟", address="幸福里小区5号楼")
    await ticket_when(api, no, lambda t: t["status"] == "assigned")

    async def classified_in_record():
        # The ticket's row too, with its assignment: the erasure finds the caller's tickets there
        # (a row held back until the assignment is recorded is found by the late path instead).
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT e.payload FROM ticket_events e JOIN tickets t USING (ticket_no) "
                "WHERE e.ticket_no = %s AND e.topic = %s AND t.department IS NOT NULL",
                (no, topics.APPEAL_CLASSIFIED),
            )
            return await cur.fetchone()

    late = (await eventually(classified_in_record))["payload"]
    assert "李大伟" in str(late)
    async with pool.connection() as conn:  # as if it had not been recorded yet
        await conn.execute("DELETE FROM ticket_events WHERE event_id = %s", (late["event_id"],))
    retention = Retention(pool, TicketStore(redis), settings)
    assert await retention.erase_caller(caller_id(phone), actor="0231", reason="居民申请") == [no]
    body = {k: v for k, v in late.items() if k != "topic"}
    await records.project(
        topics.APPEAL_CLASSIFIED, [topics.EVENT_TYPES[topics.APPEAL_CLASSIFIED].model_validate(body)]
    )
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT payload::text AS p FROM ticket_events WHERE ticket_no = %s", (no,))
        stored = [e["p"] for e in await cur.fetchall()]
    assert any(late["event_id"] in p for p in stored)  # recorded
    assert all("李大伟" not in p for p in stored)
    r = await row(pool, no)
    assert r is not None
    assert "李大伟" not in r["text"]
    assert "李大伟" not in await searched_text(pool, no)


def personal_appeal(no: str, name: str, phone: str, city) -> tuple[AppealReceived, AppealClassified]:
    """An appeal with the resident's name, phone and place, and its classification (which carries
    it), in a grid no other test files appeals in: another test's tickets would make it a hotspot."""
    at = datetime.now(UTC)  # the assignment's timers fall due after this session
    appeal = AppealReceived(
        ticket_no=no,
        channel="hotline",
        text=LIGHT + f"，我叫{name}，电话{phone}",
        address="幸福里小区5号楼",
        location=GeoPoint(lng=116.397, lat=39.909),
        caller=Caller(caller_id=caller_id(phone), masked_phone=mask_phone(phone)),
        received_at=at,
        occurred_at=at,
    )
    classified = AppealClassified(
        ticket_no=no,
        appeal=appeal,
        category="city.facility.streetlight",
        category_names=city.category_names("city.facility.streetlight"),
        confidence=0.9,
        top=(CategoryScore(category="city.facility.streetlight", probability=0.9),),
        grid=grid_match(city, "s01c03g02", "coordinates", 0.99, "116.397,39.909"),
        model_version="test",
        occurred_at=at,
    )
    return appeal, classified


def router_sending_to(sent: list[Event], city, store: TicketStore) -> RouterHandlers:
    """The router's handlers, publishing into `sent` instead of the broker."""

    async def send(events: Sequence[Event]) -> None:
        sent.extend(events)

    async def nothing_to_relay() -> int:
        return 0

    return RouterHandlers(
        city, store, send, nothing_to_relay, tz=ZoneInfo("Asia/Shanghai"), review_threshold=0.5
    )


def personal_of(name: str, phone: str) -> tuple[str, ...]:
    return (name, phone, mask_phone(phone), "阳光花园", "幸福里", "116.397")


async def test_an_appeal_erased_while_it_is_routed_stays_erased_in_the_ticket_store(
    redis, pool, settings, records, system_city
):
    """The erasure lands between intake's write and the router's assignment: the router's write
    (which records the classification, the whole appeal, into the history) keeps the ticket and
    its history without the resident's words, name, phone and place."""
    phone, name = fresh_phone(), "周晓梅"
    no = made_up_no()
    appeal, classified = personal_appeal(no, name, phone, system_city)
    store = TicketStore(redis)
    assert await store.create_many([appeal]) == 1  # intake's write; never published, so only we route it
    await records.project(topics.APPEAL_RECEIVED, [appeal])
    retention = Retention(pool, store, settings)
    assert await retention.erase_caller(caller_id(phone), actor="0231", reason="居民申请") == [no]

    sent: list[Event] = []
    await router_sending_to(sent, system_city, store).classified([classified])
    assert [e.topic for e in sent] == [topics.TICKET_ASSIGNED]  # it was routed

    raw = await redis.get(f"t:{no}")
    history = await redis.lrange(f"t:{no}:h", 0, -1)
    assert [json.loads(h)["topic"] for h in history] == [
        topics.APPEAL_RECEIVED,
        topics.PERSONAL_DATA_REMOVED,  # the erasure's notice, for the outbox relay to send
        topics.APPEAL_CLASSIFIED,
        topics.TICKET_ASSIGNED,
    ]
    personal = personal_of(name, phone)
    assert [p for p in personal if p in raw.decode()] == []
    for h in history:
        assert [p for p in personal if p in h.decode()] == []
    ticket = await store.get(no)
    assert ticket is not None
    assert ticket.category == "city.facility.streetlight"  # the statistics stay
    assert ticket.department is not None
    assert ticket.grid is not None
    assert ticket.grid.grid == "s01c03g02"
    assert ticket.personal_data_removed_at is not None


@pytest.mark.parametrize("reconciled_by", ["projection", "catch_up"])
async def test_a_ticket_redis_lost_and_an_appeal_on_its_way_rebuilt_is_erased_again(
    redis, pool, settings, system_city, reconciled_by
):
    """Redis lost an erased ticket (no persistence, eviction), and its classification, still on
    its way, makes the router rebuild it from the appeal it carries, with the resident's words.
    The record, which keeps the erasure, erases it again: when it records the router's
    assignment (the worker), or when it catches up with Redis's histories. From then on the
    ticket's mark keeps it scrubbed, and the record took nothing personal from it."""
    phone, name = fresh_phone(), "吴海燕"
    no = made_up_no()
    appeal, classified = personal_appeal(no, name, phone, system_city)
    store = TicketStore(redis)
    store.OUTBOX = f"outbox:test-{uuid.uuid4().hex}"  # the running router's relay must not send these
    await store.create_many([appeal])
    # The worker's Records holds the store; catching up is given it.
    records = Records(pool, system_city, store if reconciled_by == "projection" else None)
    await records.project(topics.APPEAL_RECEIVED, [appeal])
    await Retention(pool, store, settings).erase_caller(caller_id(phone), actor="0231", reason="居民申请")
    await redis.delete(f"t:{no}", f"t:{no}:h", store.OUTBOX)  # Redis lost it, the notice with it

    sent: list[Event] = []
    await router_sending_to(sent, system_city, store).classified([classified])
    assert name in (await redis.get(f"t:{no}")).decode()  # rebuilt with the resident's words
    if reconciled_by == "projection":
        await records.project_many([(e.topic, e) for e in (classified, *sent)])
    else:
        assert await records.catch_up_with_store(store) >= 1

    personal = personal_of(name, phone)
    ticket = await store.get(no)
    assert ticket is not None
    assert ticket.personal_data_removed_at is not None
    assert ticket.category == "city.facility.streetlight"  # the statistics stay
    assert [p for p in personal if p in ticket.model_dump_json()] == []
    history = await store.history(no)
    assert [p for p in personal if p in json.dumps(history, ensure_ascii=False)] == []
    # Announced again, with the caller id the rebuilt ticket carried: the first notice was lost.
    # (The running system's records worker, which shares this Redis, may announce it too, into its
    # own outbox: this store's outbox holds the notice of the path under test.)
    assert history[-1]["topic"] == topics.PERSONAL_DATA_REMOVED
    notices = {r["event_id"]: r for r in history if r["topic"] == topics.PERSONAL_DATA_REMOVED}
    assert {r["caller_id"] for r in notices.values()} == {caller_id(phone)}
    entries = [e.decode().split("\t") for e in await redis.zrange(store.OUTBOX, 0, -1)]
    assert len(entries) == 1
    assert entries[0][:2] == [topics.PERSONAL_DATA_REMOVED, no]
    assert entries[0][2] in notices
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT payload::text AS p FROM ticket_events WHERE ticket_no = %s", (no,))
        stored = [e["p"] for e in await cur.fetchall()]
    assert any(classified.event_id in p for p in stored)  # the record has the classification now
    assert [p for p in personal if any(p in e for e in stored)] == []
    assert [p for p in personal if p in str(await row(pool, no))] == []

    def noted(t: Ticket | None) -> Outcome:  # a department's words, naming the resident
        assert t is not None
        return Outcome(t.model_copy(update={"resolution_note": f"已电话联系{name}"}))

    await store.apply_many([Change(no, noted)])
    assert name not in (await redis.get(f"t:{no}")).decode()


async def test_erasure_removes_the_words_of_the_meetings_a_ticket_went_to(redis, pool, settings, records):
    """A meeting's row keeps its explanation and its decision's note, staff's words that may repeat
    the resident's: they go with the erasure, the meeting's course stays."""
    phone, name = fresh_phone(), "郑丽"
    no = made_up_no()
    appeal, _ = personal_appeal(no, name, phone, demo_city())
    street, dept = DepartmentRef(id="s01", name="阳光街道"), DepartmentRef(id="d1", name="市政市容委")
    mid = f"m-{no}"
    convened = MeetingConvened(
        ticket_no=no,
        meeting_id=mid,
        reason="ambiguous",
        lead_street=street,
        summoned=(dept,),
        tickets=(no,),
        deadline=appeal.occurred_at + timedelta(days=2),
        explanation=f"多个单位均有责：{name}家门口",
        occurred_at=appeal.occurred_at,
    )
    decided = MeetingUpdated(
        ticket_no=no,
        meeting_id=mid,
        action="decided",
        actor=street.id,
        department=dept,
        note=f"已联系{name}，由市政市容委主办",
        occurred_at=appeal.occurred_at + timedelta(hours=1),
    )
    await records.project_many([(e.topic, e) for e in (appeal, convened, decided)])

    async def meeting() -> dict:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT * FROM meetings WHERE meeting_id = %s", (mid,))
            found = await cur.fetchone()
        assert found is not None
        return found

    before = await meeting()
    assert name in before["explanation"]
    await Retention(pool, TicketStore(redis), settings).erase_caller(
        caller_id(phone), actor="0231", reason="居民申请"
    )
    after = await meeting()
    assert (after["explanation"], after["decision"]) == (REMOVED, REMOVED)
    assert {k: v for k, v in after.items() if k not in ("explanation", "decision")} == {
        k: v for k, v in before.items() if k not in ("explanation", "decision")
    }


async def test_an_appeal_not_yet_recorded_when_its_caller_is_erased_is_erased_when_it_arrives(
    redis, pool, settings, system_city
):
    """The erasure looks for the caller's tickets in the record; an appeal still on its way there
    (taken seconds before, or while the record was down) is erased when it arrives, in the record
    and in Redis. An appeal the resident makes after the erasure is a new one, and is kept."""
    phone, name = fresh_phone(), "吴佩兰"
    no = made_up_no()
    appeal, classified = personal_appeal(no, name, phone, system_city)
    store = TicketStore(redis)
    store.OUTBOX = f"outbox:test-{uuid.uuid4().hex}"  # the relay below takes only this test's entries
    assert await store.create_many([appeal]) == 1  # intake's write; the record has not seen it
    intake = DuplicateIndex(redis, store)
    await intake.received([appeal])  # the caller's open-ticket index now leads to it
    retention = Retention(pool, store, settings)
    assert await retention.erase_caller(caller_id(phone), actor="0231", reason="居民申请") == []

    records = Records(pool, system_city, store)  # as the worker has it
    await records.project(topics.APPEAL_RECEIVED, [appeal])
    await records.project(topics.APPEAL_CLASSIFIED, [classified])
    personal = personal_of(name, phone)
    r = await row(pool, no)
    assert r is not None
    assert r["personal_data_removed_at"] is not None
    assert r["caller_id"] is None
    assert r["category"] == "city.facility.streetlight"  # the statistics stay
    assert [p for p in personal if p in json.dumps(r, default=str, ensure_ascii=False)] == []
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT payload::text AS p FROM ticket_events WHERE ticket_no = %s", (no,))
        stored = [e["p"] for e in await cur.fetchall()]
    assert len(stored) == 2
    assert [p for p in personal for s in stored if p in s] == []
    ticket = await store.get(no)
    assert ticket is not None
    assert ticket.personal_data_removed_at is not None
    assert [p for p in personal if p in ticket.model_dump_json()] == []
    # Announced like the erasure on request: intake's caller index no longer leads to it.
    broker = Broker()
    await relay_outbox(broker, store, older_than_seconds=0)  # type: ignore[arg-type]
    [(topic, body)] = broker.sent
    assert topic == topics.PERSONAL_DATA_REMOVED
    notice = PersonalDataRemoved.model_validate(body)
    assert (notice.ticket_no, notice.caller_id) == (no, caller_id(phone))
    assert no.encode() in await redis.smembers(keys.caller_index(caller_id(phone)))
    await intake.erased([notice])
    assert no.encode() not in await redis.smembers(keys.caller_index(caller_id(phone)))

    later_no = made_up_no()
    later, _ = personal_appeal(later_no, name, phone, system_city)  # received now, after the erasure
    await records.project(topics.APPEAL_RECEIVED, [later])
    kept = await row(pool, later_no)
    assert kept is not None
    assert kept["personal_data_removed_at"] is None
    assert name in kept["text"]


async def test_an_existing_record_learns_who_filed_its_patrol_reports_on_upgrade(
    settings, monkeypatch, system_city
):
    """我上报的 on a database kept before tickets had `operator_id`: the migration fills it for the
    patrol reports (from the stored appeal, or the classification carrying it), so a worker's list
    is whole at once; the other tickets get it when `appeals records rebuild` folds them again."""
    from psycopg.types.json import Jsonb

    from services.records.query import reported

    name, url = await scratch_database(settings)
    everything = db.migration_files()
    monkeypatch.setattr(db, "migration_files", lambda: [m for m in everything if m[0] < "0011"])
    await db.migrate(url)
    received = {
        "20261130-000001": ("patrol", "W071", True),
        "20261130-000002": ("patrol", "W071", False),  # only its classification was recorded
        "20261130-000003": ("hotline", "0231", True),
    }
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for no, (channel, operator, stored) in received.items():
            appeal, classified = personal_appeal(no, "张三", "13912345678", system_city)
            appeal = appeal.model_copy(update={"channel": channel, "operator_id": operator})
            classified = classified.model_copy(update={"appeal": appeal})
            for e in (appeal, classified) if stored else (classified,):
                await conn.execute(
                    "INSERT INTO ticket_events (event_id, ticket_no, topic, occurred_at, payload) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (
                        e.event_id,
                        no,
                        e.topic,
                        e.occurred_at,
                        Jsonb({"topic": e.topic, **e.model_dump(mode="json")}),
                    ),
                )
            await conn.execute(
                "INSERT INTO tickets (ticket_no, status, channel, text, received_at, updated_at) "
                "VALUES (%s, 'received', %s, %s, now(), now())",
                (no, channel, appeal.text),
            )
    monkeypatch.setattr(db, "migration_files", lambda: everything)
    assert "0011_reporter" in await db.migrate(url)  # on start, by whoever connects first

    async def operators() -> dict[str, str | None]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SELECT ticket_no, operator_id FROM tickets ORDER BY ticket_no")
            return dict(await cur.fetchall())

    numbers = list(received)
    assert await operators() == {numbers[0]: "W071", numbers[1]: "W071", numbers[2]: None}
    mine = reported("W071", "all")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(f"SELECT ticket_no FROM tickets WHERE {mine.where} ORDER BY 1", mine.params)
        assert [r[0] for r in await cur.fetchall()] == numbers[:2]
        cur = await conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'tickets_by_operator'")
        assert "(operator_id, received_at DESC, ticket_no DESC)" in (await cur.fetchone())[0]
    pool = db.pool(url)
    await pool.open(wait=True)
    try:
        await Records(pool, system_city).rebuild()
    finally:
        await pool.close()
    assert await operators() == {numbers[0]: "W071", numbers[1]: "W071", numbers[2]: "0231"}
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def test_a_batch_larger_than_a_statement_is_stored_whole_and_once(pool):
    """The events and rows of a flood's batch go in several statements (`EVENTS_PER_STATEMENT`,
    `ROWS_PER_STATEMENT`): every event is stored, as it came, the ids said to be new are those no
    earlier batch stored, and every row is written."""
    run = uuid.uuid4().hex[:8]
    events = [
        AppealReceived(ticket_no=f"T{run}-{i:06d}", channel="hotline", text=f"第{i}件：路灯坏了")
        for i in range(max(2 * EVENTS_PER_STATEMENT, 2 * ROWS_PER_STATEMENT) + 7)
    ]
    stored_before = [payload(e.topic, e) for e in events[:5]]
    # Rolled back: the other tests' lists and counts share this record.
    async with (
        pool.connection() as conn,
        conn.transaction(force_rollback=True),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        assert set(await insert_events(cur, stored_before)) == {e.event_id for e in events[:5]}
        batch = sorted((payload(e.topic, e) for e in events), key=lambda p: p["event_id"])
        new = await insert_events(cur, batch)
        assert set(new) == {e.event_id for e in events[5:]}
        await cur.execute(
            "SELECT payload FROM ticket_events WHERE event_id = ANY(%s)", ([e.event_id for e in events],)
        )
        rows = await cur.fetchall()
        await upsert_tickets(cur, [fold_ticket([p], {}) for p in batch])
        await cur.execute(
            "SELECT text FROM tickets WHERE ticket_no LIKE %s ORDER BY ticket_no", (f"T{run}-%",)
        )
        texts = [r["text"] for r in await cur.fetchall()]
    assert sorted((r["payload"] for r in rows), key=lambda p: p["ticket_no"]) == [
        {"topic": e.topic, **json.loads(e.json_bytes)} for e in events
    ]
    assert texts == [e.text for e in events]
