"""The knowledge base kept in the record (PostgreSQL): the entries, their history, and how the API
process follows them.

The city's `knowledge.yaml` seeds the table (`seed`: an id not in it yet is inserted; a row already
there, edited or retired, is never replaced from the file): the file seeds, the system keeps. Every
change writes the entry and a revision (who, when, what) in one transaction, asking the pure rules
(shared/knowledge.py) first, then bumps `knowledge:version` in Redis, which every API replica's
`Follower` checks every few seconds to reload the entries it suggests to operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.records.db import Pool
from services.records.query import containing
from shared import knowledge as rules
from shared.auth import Principal
from shared.city import City, KnowledgeEntry
from shared.errors import DomainError

log = logging.getLogger("records.knowledge")

VERSION_KEY = "knowledge:version"  # bumped on every change: the API replicas reload when it moves
SEED_ACTOR = "city"  # the revisions the seed writes name the city's file, not a person
ACTION_NAMES = {"created": "新增", "edited": "编辑", "confirmed": "确认有效", "retired": "停用"}
PAGE_SIZE_MAX = 100
COLUMNS = (
    "id, question, answer, category, keywords, department, reviewed, updated_at, updated_by, "
    "retired_at, retired_reason"
)

# A new entry, unless its id is taken (RETURNING nothing then).
INSERT_NEW = (
    "INSERT INTO knowledge (id, question, answer, category, keywords, department, reviewed, updated_by) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id"
)


def entry_of(row: Mapping[str, Any]) -> KnowledgeEntry:
    return KnowledgeEntry(
        id=row["id"],
        question=row["question"],
        answer=row["answer"],
        category=row["category"],
        keywords=tuple(row["keywords"] or ()),
        department=row["department"],
        reviewed=row["reviewed"],
    )


class KnowledgeService:
    def __init__(
        self,
        pool: Pool,
        redis: Redis,
        city: City,
        *,
        timezone: str,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.city = city
        self.tz = ZoneInfo(timezone)
        self.review_days = city.sla.supervision.knowledge_review_days
        self.on_change = on_change

    def today(self) -> date:
        return datetime.now(self.tz).date()

    # --- reading ---------------------------------------------------------------------------------

    async def active(self) -> list[KnowledgeEntry]:
        """Every entry not retired: what operators are suggested."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"SELECT {COLUMNS} FROM knowledge WHERE retired_at IS NULL ORDER BY id")
            return [entry_of(r) for r in await cur.fetchall()]

    async def search(
        self,
        principal: Principal,
        *,
        q: str = "",
        department: str | None = None,
        category: str | None = None,
        due: bool = False,
        retired: bool = False,
        page: int = 1,
        size: int = 20,
    ) -> dict[str, Any]:
        """Entries matching the filters, those longest without a review first, a page at a time;
        `category` takes a branch's categories with it (shared/knowledge.py: category_filter)."""
        within = rules.category_filter(self.city, category)
        if department and department not in self.city.department_by_id:
            raise DomainError(
                "unknown_department", f"单位“{department[:40]}”不存在", kind="invalid", field="department"
            )
        today = self.today()
        where = ["retired_at IS NOT NULL" if retired else "retired_at IS NULL"]
        params: list[Any] = []
        q = " ".join(rules.clean(q).split())
        if q:
            like = containing(q)
            where.append(
                "(question ILIKE %s OR answer ILIKE %s OR array_to_string(keywords, ' ') ILIKE %s OR id = %s)"
            )
            params += [like, like, like, q]
        if department:
            where.append("department = %s")
            params.append(department)
        if within is not None:
            where.append("category = ANY(%s)")
            params.append(sorted(within))
        if due:
            where.append("(reviewed IS NULL OR reviewed < %s)")
            params.append(rules.review_cutoff(today, self.review_days))
        sql_where = " AND ".join(where)
        async with self.pool.connection() as conn:
            total = await (
                await conn.execute(f"SELECT count(*) AS n FROM knowledge WHERE {sql_where}", params)
            ).fetchone()
            cur = await conn.execute(
                f"SELECT {COLUMNS} FROM knowledge WHERE {sql_where} "
                "ORDER BY reviewed ASC NULLS FIRST, id LIMIT %s OFFSET %s",
                [*params, size, (page - 1) * size],
            )
            rows = await cur.fetchall()
        return {
            "total": total["n"] if total else 0,
            "page": page,
            "size": size,
            "review_days": self.review_days,
            "entries": [self.view(r, principal, today) for r in rows],
        }

    async def get(self, entry_id: str, principal: Principal) -> dict[str, Any]:
        """One entry, retired or not, with its revisions, newest first."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(f"SELECT {COLUMNS} FROM knowledge WHERE id = %s", (entry_id,))
            ).fetchone()
            if row is None:
                raise self._missing(entry_id)
            cur = await conn.execute(
                "SELECT at, actor, action, entry, note FROM knowledge_revisions WHERE entry_id = %s "
                "ORDER BY at DESC, id DESC",
                (entry_id,),
            )
            revisions = await cur.fetchall()
        return {
            **self.view(row, principal, self.today()),
            "revisions": [
                {
                    "at": r["at"].isoformat(),
                    "actor": r["actor"],
                    "action": r["action"],
                    "action_name": ACTION_NAMES[r["action"]],
                    "note": r["note"],
                    "entry": r["entry"],
                }
                for r in revisions
            ],
        }

    def view(self, row: Mapping[str, Any], principal: Principal, today: date) -> dict[str, Any]:
        """An entry as the API gives it, with what this caller may do with it."""
        entry = entry_of(row)
        dept = self.city.department_by_id.get(entry.department or "")
        category = entry.category
        live = row["retired_at"] is None
        role, own = principal.role, principal.department
        return {
            "id": entry.id,
            "question": entry.question,
            "answer": entry.answer,
            "category": category,
            "category_names": list(self.city.category_names(category))
            if category in self.city.category_path
            else [],
            "keywords": list(entry.keywords),
            "department": entry.department,
            "department_name": dept.name if dept else None,
            "reviewed": entry.reviewed.isoformat() if entry.reviewed else None,
            "review_due": live and rules.review_due(entry.reviewed, today, self.review_days),
            "updated_at": row["updated_at"].isoformat(),
            "updated_by": row["updated_by"],
            "retired_at": row["retired_at"].isoformat() if row["retired_at"] else None,
            "retired_reason": row["retired_reason"],
            "allowed": {
                "edit": live and rules.may_edit(role, own, entry),
                "confirm": live and rules.may_confirm(role, own, entry),
                "retire": live and rules.may_retire(role),
            },
        }

    # --- changing ---------------------------------------------------------------------------------

    async def seed(self, entries: Sequence[KnowledgeEntry]) -> list[str]:
        """Insert the file's entries whose id is not in the table; returns their ids. A row already
        there is kept as it is (edited in the system, or retired: a retired id is not re-added)."""
        added: list[str] = []
        async with self.pool.connection() as conn, conn.transaction():
            for e in entries:
                cur = await conn.execute(
                    INSERT_NEW,
                    (
                        e.id,
                        e.question,
                        e.answer,
                        e.category,
                        list(e.keywords),
                        e.department,
                        e.reviewed,
                        SEED_ACTOR,
                    ),
                )
                if await cur.fetchone() is not None:
                    await self._revision(conn, e, SEED_ACTOR, "created")
                    added.append(e.id)
        if added:
            await self._changed()
        return added

    async def add(self, raw: Mapping[str, Any], principal: Principal) -> dict[str, Any]:
        """A new entry (the desk); its answer counts as confirmed today."""
        if not rules.may_add(principal.role):
            raise DomainError("forbidden", "只有派单中心可以新增知识库条目", kind="forbidden")
        entry_id = rules.checked_id(raw.get("id")) or f"kb-{uuid.uuid4().hex[:12]}"
        entry = rules.checked_entry(self.city, entry_id, raw, reviewed=self.today())
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                INSERT_NEW,
                (
                    entry.id,
                    entry.question,
                    entry.answer,
                    entry.category,
                    list(entry.keywords),
                    entry.department,
                    entry.reviewed,
                    principal.scope,
                ),
            )
            if await cur.fetchone() is None:
                raise DomainError(
                    "entry_exists",
                    f"编号{entry.id}已被使用，请换一个编号或留空自动生成",
                    kind="conflict",
                    field="id",
                )
            await self._revision(conn, entry, principal.scope, "created")
        await self._changed()
        return await self.get(entry.id, principal)

    async def edit(self, entry_id: str, raw: Mapping[str, Any], principal: Principal) -> dict[str, Any]:
        """The desk edits any entry, a department its own (and that counts as its review)."""
        async with self.pool.connection() as conn, conn.transaction():
            current = await self._locked(conn, entry_id, "修改")
            entry = rules.edited(
                self.city,
                current,
                raw,
                role=principal.role,
                department=principal.department,
                today=self.today(),
            )
            await self._write(conn, entry, principal.scope)
            await self._revision(conn, entry, principal.scope, "edited")
        await self._changed()
        return await self.get(entry_id, principal)

    async def confirm(self, entry_id: str, principal: Principal) -> dict[str, Any]:
        """确认有效: the answer is still right as of today (the owning department, or the desk)."""
        async with self.pool.connection() as conn, conn.transaction():
            current = await self._locked(conn, entry_id, "确认")
            if not rules.may_confirm(principal.role, principal.department, current):
                raise DomainError(
                    "forbidden", "只有负责此答复的单位或派单中心可以确认此条目有效", kind="forbidden"
                )
            entry = current.model_copy(update={"reviewed": self.today()})
            await self._write(conn, entry, principal.scope)
            await self._revision(conn, entry, principal.scope, "confirmed")
        await self._changed()
        return await self.get(entry_id, principal)

    async def retire(self, entry_id: str, reason: object, principal: Principal) -> dict[str, Any]:
        """停用 (the desk): operators are no longer offered it; it stays, with its history."""
        if not rules.may_retire(principal.role):
            raise DomainError("forbidden", "只有派单中心可以停用知识库条目", kind="forbidden")
        why = rules.checked_reason(reason)
        async with self.pool.connection() as conn, conn.transaction():
            current = await self._locked(conn, entry_id, "停用")
            await conn.execute(
                "UPDATE knowledge SET retired_at = now(), retired_reason = %s, updated_at = now(), "
                "updated_by = %s WHERE id = %s",
                (why, principal.scope, entry_id),
            )
            await self._revision(conn, current, principal.scope, "retired", note=why)
        await self._changed()
        return await self.get(entry_id, principal)

    async def _locked(self, conn: psycopg.AsyncConnection[Any], entry_id: str, doing: str) -> KnowledgeEntry:
        """The entry, locked for this transaction; a missing or retired one is refused."""
        row = await (
            await conn.execute(f"SELECT {COLUMNS} FROM knowledge WHERE id = %s FOR UPDATE", (entry_id,))
        ).fetchone()
        if row is None:
            raise self._missing(entry_id)
        if row["retired_at"] is not None:
            raise DomainError(
                "entry_retired",
                f"条目{entry_id}已停用，不能再{doing}；如政策恢复，请由派单中心新增条目",
                kind="conflict",
            )
        return entry_of(row)

    async def _write(self, conn: psycopg.AsyncConnection[Any], e: KnowledgeEntry, actor: str) -> None:
        await conn.execute(
            "UPDATE knowledge SET question = %s, answer = %s, category = %s, keywords = %s, department = %s, "
            "reviewed = %s, updated_at = now(), updated_by = %s WHERE id = %s",
            (e.question, e.answer, e.category, list(e.keywords), e.department, e.reviewed, actor, e.id),
        )

    async def _revision(
        self, conn: psycopg.AsyncConnection[Any], e: KnowledgeEntry, actor: str, action: str, note: str = ""
    ) -> None:
        await conn.execute(
            "INSERT INTO knowledge_revisions (entry_id, actor, action, entry, note) "
            "VALUES (%s, %s, %s, %s, %s)",
            (e.id, actor, action, Jsonb(e.model_dump(mode="json")), note),
        )

    async def _changed(self) -> None:
        """Tell every API replica the base changed. The change is saved already: a Redis away now
        only delays the others (they reload on their own every FULL_RELOAD_SECONDS)."""
        if self.on_change is not None:
            self.on_change()
        try:
            await self.redis.incr(VERSION_KEY)
        except RedisError as e:
            log.warning("knowledge changed, but %s could not be bumped: %r", VERSION_KEY, e)

    @staticmethod
    def _missing(entry_id: str) -> DomainError:
        return DomainError("not_found", f"知识库中没有条目{entry_id}，请检查编号", kind="not_found")


# --- following the base in the API process ----------------------------------------------------------

CHECK_SECONDS = 2.0  # how often a replica looks at the version key: an edit reaches every replica by then
FULL_RELOAD_SECONDS = 300.0  # reload anyway: a bump lost to a Redis outage is made up for
LOG_EVERY_SECONDS = 300.0  # while the record stays away, one log line per this interval


class Follower:
    """Seeds the base from the city's file, then keeps `install` fed with the entries not retired:
    at once, and whenever `knowledge:version` moves (or this process changed the base). Until the
    record answers, what was installed before (the city's file) is served; the failure is logged
    once, then once every LOG_EVERY_SECONDS, never once per try."""

    def __init__(
        self,
        service_of: Callable[[], Awaitable[KnowledgeService]],
        redis: Redis,
        seed: Sequence[KnowledgeEntry],
        install: Callable[[Sequence[KnowledgeEntry]], None],
        *,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.service_of = service_of
        self.redis = redis
        self.seed_entries = seed
        self.install = install
        self.check_seconds = check_seconds
        self._wake = asyncio.Event()
        self._seeded = False
        self._version: bytes | str | None = None
        self._loaded_at: float | None = None
        self._failing_since: float | None = None
        self._logged_at = 0.0

    def wake(self) -> None:
        """This process changed the base: reload now rather than at the next check."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.check_seconds)

    async def step(self) -> bool:
        """One check: seed if not done yet, reload if the base changed. False: the record is away."""
        forced = self._wake.is_set()
        self._wake.clear()
        try:
            service = await self.service_of()
            if not self._seeded:
                added = await service.seed(self.seed_entries)
                if added:
                    log.info("knowledge base: %d entries of the city's file added", len(added))
                self._seeded = True
            # Read before loading: a change made meanwhile moves it again, and is loaded next time.
            version = await self.redis.get(VERSION_KEY)
            stale = self._loaded_at is None or time.monotonic() - self._loaded_at > FULL_RELOAD_SECONDS
            if forced or stale or version != self._version:
                self.install(await service.active())
                self._version, self._loaded_at = version, time.monotonic()
        except Exception as e:  # the record away (UNAVAILABLE) or anything else: the loop must go on
            self._failed(e)
            return False
        if self._failing_since is not None:
            log.warning("knowledge base: the record and Redis answer again, its entries are served")
            self._failing_since = None
        return True

    def _failed(self, e: BaseException) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._logged_at < LOG_EVERY_SECONDS:
            return
        self._logged_at = now
        log.warning(
            "knowledge base: %s is not reachable (%r); serving the %s and retrying",
            "Redis" if isinstance(e, RedisError) else "the record (PostgreSQL)",  # the version is Redis's
            e,
            "last entries loaded" if self._loaded_at is not None else "city's knowledge.yaml",
        )
