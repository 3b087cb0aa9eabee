"""A resident's erasure request as the dispatch desk handles it: which tickets erasing a phone's
personal data would reach (the preview, which changes nothing), the erasure itself
(`Retention.erase_caller`, with its audit entry), and the audit trail a page at a time.

The phone is turned into the caller id at once and goes no further: not into an answer, a log line
or the audit, which keeps the caller id (a keyed hash) and shows only its first characters.
"""

from __future__ import annotations

import logging
from typing import Any

from services.records.db import Pool
from services.records.retention import Retention
from shared.errors import DomainError
from shared.privacy import InvalidPhone, caller_id, mask_phone, normalize_phone

log = logging.getLogger("records.erasure")

REASON_MAX = 200  # characters: a sentence for the audit, not a case file
PREVIEW_MAX = 500  # tickets listed in a preview (the count is always the whole)
SUBJECT_SHOWN = 8  # characters of the caller id an audit listing shows
ACTION_NAMES = {"erase": "依申请删除", "retention": "到期自动清理"}


class Subject:
    """The resident whose data is to go, known by the caller id; the phone is not kept."""

    def __init__(self, phone: str) -> None:
        if not phone.strip():
            raise DomainError(
                "phone_required",
                "请填写居民的来电号码（手机号或带区号的固话）",
                kind="invalid",
                field="phone",
            )
        try:
            normalized = normalize_phone(phone)
        except InvalidPhone as e:
            raise DomainError(
                "invalid_phone", f"{e}，请填写11位手机号或带区号的固话", kind="invalid", field="phone"
            ) from None
        self.caller_id = caller_id(normalized)
        self.masked_phone = mask_phone(normalized)


def checked_reason(reason: str) -> str:
    """The reason goes into the audit entry: required, one sentence."""
    reason = " ".join(reason.split())
    if not reason:
        raise DomainError(
            "reason_required",
            "请填写删除原因（如：居民来电申请删除个人信息），它会写入审计记录",
            kind="invalid",
            field="reason",
        )
    if len(reason) > REASON_MAX:
        raise DomainError(
            "reason_too_long",
            f"删除原因太长（{len(reason)}字），请控制在{REASON_MAX}字以内",
            kind="invalid",
            field="reason",
        )
    return reason


class Erasures:
    def __init__(self, pool: Pool, retention: Retention) -> None:
        self.pool = pool
        self.retention = retention

    async def preview(self, subject: Subject) -> dict[str, Any]:
        """The tickets of this resident in the record, newest first, as an erasure would find them."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ticket_no, status, channel, received_at, category_names, count(*) OVER () AS total "
                "FROM tickets WHERE caller_id = %s ORDER BY received_at DESC, ticket_no DESC LIMIT %s",
                (subject.caller_id, PREVIEW_MAX),
            )
            rows = await cur.fetchall()
        tickets = [{k: v for k, v in r.items() if k != "total"} for r in rows]
        return {
            "masked_phone": subject.masked_phone,
            "count": rows[0]["total"] if rows else 0,
            "tickets": tickets,
        }

    async def erase(self, subject: Subject, actor: str, reason: str) -> dict[str, Any]:
        nos = await self.retention.erase_caller(subject.caller_id, actor, reason)
        log.info("personal data erased on request by %s from %d tickets", actor, len(nos))
        return {"tickets": nos, "count": len(nos)}

    async def audit(self, page: int, size: int) -> dict[str, Any]:
        """The audit entries, newest first: what, who, when, how many tickets, why."""
        async with self.pool.connection() as conn:
            total = await (await conn.execute("SELECT count(*) AS n FROM privacy_audit")).fetchone()
            cur = await conn.execute(
                "SELECT id, at, action, subject, actor, tickets, detail FROM privacy_audit "
                "ORDER BY at DESC, id DESC LIMIT %s OFFSET %s",
                (size, (page - 1) * size),
            )
            rows = await cur.fetchall()
        items = [
            {
                "id": r["id"],
                "at": r["at"],
                "action": r["action"],
                "action_name": ACTION_NAMES.get(r["action"], r["action"]),
                "subject_prefix": r["subject"][:SUBJECT_SHOWN] if r["subject"] else None,
                "actor": r["actor"],
                "tickets": r["tickets"],
                "reason": r["detail"].get("reason"),
                "closed_before": r["detail"].get("closed_before"),
            }
            for r in rows
        ]
        return {"total": total["n"] if total else 0, "page": page, "size": size, "items": items}
