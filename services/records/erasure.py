"""A resident's erasure request as the dispatch desk handles it: which tickets erasing a resident's
personal data would reach (the preview, which changes nothing), the erasure itself
(`Retention.erase_caller`, with its audit entry), and the audit trail a page at a time.

The desk finds the resident by the phone they give or by the number of one of their tickets (on
every SMS and WeChat reply, and the only way to find a resident who appealed by WeChat alone, known
by an openid). Either way the resident becomes a caller id at once, and from there the erasure is
one path. The phone goes no further: not into an answer, a log line or the audit, which keeps the
caller id (a keyed hash, shown by its first characters) and how the resident was found (by phone,
or by which ticket number: a number is no one's personal data).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from services.records.db import Pool
from services.records.retention import Retention
from shared.errors import DomainError
from shared.privacy import (
    InvalidPhone,
    caller_id,
    mask_openid,
    mask_personal_data,
    mask_phone,
    normalize_phone,
)
from shared.tickets import CHANNEL_NAMES, TICKET_NO_PATTERN, clean_ticket_no

log = logging.getLogger("records.erasure")

REASON_MAX = 200  # characters: a sentence for the audit, not a case file
PREVIEW_MAX = 500  # tickets listed in a preview (the count is always the whole)
SUBJECT_SHOWN = 8  # characters of the caller id an audit listing shows
ACTION_NAMES = {"erase": "依申请删除", "retention": "到期自动清理"}
FoundBy = Literal["phone", "ticket_no"]
_TICKET_NO = re.compile(TICKET_NO_PATTERN)


@dataclass(frozen=True)
class Lookup:
    """How the desk asks for the resident: by the phone (normalised) or by a ticket number."""

    by: FoundBy
    value: str


def checked_lookup(phone: str, ticket_no: str) -> Lookup:
    """Exactly one of the phone and the ticket number, each checked as the resident would say it.
    Pure: the ticket's caller is looked up afterwards (`Erasures.subject`)."""
    phone, ticket_no = phone.strip(), ticket_no.strip()
    if phone and ticket_no:
        raise DomainError(
            "phone_or_ticket_no",
            "来电号码和工单号只填一项：按号码删除请清空工单号，按工单删除请清空来电号码",
            kind="invalid",
            field="ticket_no",
        )
    if ticket_no:
        return Lookup("ticket_no", checked_ticket_no(ticket_no))
    if not phone:
        raise DomainError(
            "phone_required",
            "请填写居民的来电号码（手机号或带区号的固话），或居民收到的工单号",
            kind="invalid",
            field="phone",
        )
    try:
        return Lookup("phone", normalize_phone(phone))
    except InvalidPhone as e:
        raise DomainError(
            "invalid_phone", f"{e}，请填写11位手机号或带区号的固话", kind="invalid", field="phone"
        ) from None


def checked_ticket_no(raw: str) -> str:
    """The number as the resident reads it out or copies it, read as the lookup page reads it
    (`clean_ticket_no`: full-width digits, spaces, any dash, or none), or refused beside its field."""
    no = clean_ticket_no(raw)
    if not _TICKET_NO.fullmatch(no):
        raise DomainError(
            "invalid_ticket_no",
            f"“{raw.strip()}”不是有效的工单号：工单号是8位日期和6位以上序号（中间的短横线可省略），"
            "如 20240501-000123，见居民收到的受理短信或微信回复",
            kind="invalid",
            field="ticket_no",
        )
    return no


@dataclass(frozen=True)
class Subject:
    """The resident whose data is to go, known by the caller id, and how the desk found them. The
    phone or openid itself is not kept: only masked, for the desk to check with the resident."""

    caller_id: str
    by: FoundBy
    contact_kind: Literal["phone", "wechat"] | None  # what the masked contact is
    masked_contact: str | None
    ticket_no: str | None = None  # by ticket number: that ticket
    channel: str | None = None  # by ticket number: the channel it came by

    @classmethod
    def of_phone(cls, phone: str) -> Subject:
        """A normalised phone's resident."""
        return cls(caller_id(phone), "phone", "phone", mask_phone(phone))

    @property
    def found_by(self) -> dict[str, str]:
        """How the resident was found, as the audit entry keeps it."""
        return {"by": self.by, **({"ticket_no": self.ticket_no} if self.ticket_no else {})}


def masked_contact(contact: dict[str, str]) -> tuple[Literal["phone", "wechat"] | None, str | None]:
    """A contact record as staff may see it: its phone masked, else its WeChat openid masked."""
    if phone := contact.get("phone"):
        return "phone", mask_phone(phone)
    if openid := contact.get("wechat_openid"):
        return "wechat", mask_openid(openid)
    return None, None


def checked_reason(reason: str) -> str:
    """The reason goes into the audit entry: required, one sentence. The audit is kept for good, and
    a clerk naturally writes who called ("居民张伟13812345678来电要求删除"): the phone, ID and card
    numbers typed into it are masked before it is stored (`mask_personal_data`), and a name where the
    words say it is one (联系人：张伟, 张伟先生); a bare name cannot be told from the other words, so
    the form asks for none."""
    reason = mask_personal_data(" ".join(reason.split()))
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

    async def subject(self, lookup: Lookup) -> Subject:
        """The resident asked for. By ticket number: the caller of that ticket in the record,
        whatever channel it came by; refused in words when the record has no such ticket, or one
        with no caller (an anonymous slip, or one whose personal data is gone already)."""
        if lookup.by == "phone":
            return Subject.of_phone(lookup.value)
        no = lookup.value
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT caller_id, channel, masked_phone, personal_data_removed_at FROM tickets "
                "WHERE ticket_no = %s",
                (no,),
            )
            found = await cur.fetchone()
        if found is None:
            raise DomainError(
                "ticket_not_found",
                f"工单档案库中没有工单号为{no}的工单，请与居民核对工单号（刚受理的工单需稍等片刻才能查到）",
                kind="not_found",
                field="ticket_no",
            )
        if found["personal_data_removed_at"] is not None:
            raise DomainError(
                "already_erased",
                f"工单{no}中的个人信息已经删除（依申请删除或到期自动清理），无需再次删除",
                kind="conflict",
                field="ticket_no",
            )
        if found["caller_id"] is None:
            raise DomainError(
                "no_caller",
                f"工单{no}没有登记居民身份（如意见箱的匿名投递），没有可按居民删除的个人信息",
                kind="conflict",
                field="ticket_no",
            )
        kind, masked = masked_contact(await self.retention.store.contact(found["caller_id"]))
        if masked is None and found["masked_phone"]:  # the contact gone (never kept, or expired)
            kind, masked = "phone", found["masked_phone"]
        return Subject(found["caller_id"], "ticket_no", kind, masked, ticket_no=no, channel=found["channel"])

    async def preview(self, subject: Subject) -> dict[str, Any]:
        """The tickets of this resident in the record, newest first, as an erasure would find them,
        and who the resident is as the desk may see it (masked), to check with them."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ticket_no, status, channel, received_at, category_names, count(*) OVER () AS total "
                "FROM tickets WHERE caller_id = %s ORDER BY received_at DESC, ticket_no DESC LIMIT %s",
                (subject.caller_id, PREVIEW_MAX),
            )
            rows = await cur.fetchall()
        tickets = [{k: v for k, v in r.items() if k != "total"} for r in rows]
        return {
            "by": subject.by,
            "ticket_no": subject.ticket_no,
            "channel": subject.channel,
            "channel_name": CHANNEL_NAMES.get(subject.channel or ""),
            "contact": {"kind": subject.contact_kind, "masked": subject.masked_contact}
            if subject.masked_contact
            else None,
            "masked_phone": subject.masked_contact if subject.contact_kind == "phone" else None,
            "count": rows[0]["total"] if rows else 0,
            "tickets": tickets,
        }

    async def erase(self, subject: Subject, actor: str, reason: str) -> dict[str, Any]:
        nos = await self.retention.erase_caller(subject.caller_id, actor, reason, found_by=subject.found_by)
        log.info(
            "personal data erased on request by %s from %d tickets (found by %s)", actor, len(nos), subject.by
        )
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
                # Entries from before the desk could find a resident by ticket were all by phone.
                "found_by": r["detail"].get("by", "phone" if r["action"] == "erase" else None),
                "ticket_no": r["detail"].get("ticket_no"),
            }
            for r in rows
        ]
        return {"total": total["n"] if total else 0, "page": page, "size": size, "items": items}
