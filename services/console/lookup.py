"""Residents look their appeal up by its ticket number and the last four digits of the phone they
called from. They see where it is, and nothing personal: not the text, not the address, not the
number. Guessing is bounded: a few wrong tries per ticket and per address each hour."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from services.console import present
from services.router.workflow import STATUS_NAMES
from shared.city import City
from shared.store import TicketStore
from shared.tickets import Ticket

WRONG_TRIES_PER_HOUR = 5  # per ticket: 5 of 10,000 last-four combinations
TRIES_PER_IP_PER_HOUR = 60
_TICKET_NO = re.compile(r"^[0-9A-Za-z-]{4,40}$")
# What a resident is told happened, in their words; the rest of the history is internal.
_SHOWN = {
    "appeal.received": "诉求已受理",
    "ticket.assigned": "已转交承办单位",
    "accepted": "承办单位已签收，正在办理",
    "extension_approved": "办理期限已延长",
    "resolved": "承办单位已办结",
    "surveyed": "已发送回访短信",
    "closed": "工单已关闭",
    "reopened": "工单重新办理",
    "urged": "已收到您的催办，已转告承办单位",
    "survey.answered": "已收到您的评价",
}


@dataclass(frozen=True)
class Refused:
    status: int
    field: str
    message: str


@dataclass(frozen=True)
class Found:
    ticket: Ticket
    history: list[dict[str, Any]]


async def _count(redis: Redis, key: str) -> int:
    async with redis.pipeline(transaction=True) as p:
        p.set(key, 0, ex=3600, nx=True)  # the hour starts at the first try
        p.incr(key)
        _, n = await p.execute()
    return int(n)


def clean_ticket_no(raw: str) -> str:
    """The number as a resident may type it on a phone: full-width digits, spaces, a long dash, or
    no dash at all (20261201000123) are the same number as 20261201-000123."""
    text = re.sub(r"\s", "", unicodedata.normalize("NFKC", raw))
    text = re.sub(r"[—–‐_]", "-", text)
    return f"{text[:8]}-{text[8:]}" if re.fullmatch(r"\d{14}", text) else text


def clean_last4(raw: str) -> str:
    return re.sub(r"\s", "", unicodedata.normalize("NFKC", raw))


async def find(redis: Redis, store: TicketStore, ticket_no: str, last4: str, ip: str) -> Found | Refused:
    if not ticket_no:
        return Refused(422, "ticket_no", "请填写工单号（受理短信或话务员告知的编号）")
    if not _TICKET_NO.match(ticket_no):
        return Refused(422, "ticket_no", "工单号应为受理短信中的编号，由数字和“-”组成，如20261201-000123")
    if not re.fullmatch(r"\d{4}", last4):
        return Refused(422, "last4", "请填写来电手机号的后四位数字")
    if await _count(redis, f"console:lookup:ip:{ip}") > TRIES_PER_IP_PER_HOUR:
        return Refused(429, "form", "查询过于频繁，请一小时后再试")
    wrong_key = f"console:lookup:wrong:{ticket_no}"
    if int(await redis.get(wrong_key) or 0) >= WRONG_TRIES_PER_HOUR:
        return Refused(429, "form", "该工单号的查询错误次数过多，请一小时后再试或拨打12345")
    ticket = await store.get(ticket_no)
    masked = ticket.caller.masked_phone if ticket else None
    if ticket is None or not masked or masked[-4:] != last4:
        await _count(redis, wrong_key)
        # The same answer whether the ticket exists or not: the form reveals nothing.
        return Refused(404, "form", "没有找到与工单号和手机号后四位相符的诉求，请核对后再试")
    return Found(ticket, await store.history(ticket_no))


def public_view(ticket: Ticket, history: list[dict[str, Any]], city: City, tz: ZoneInfo) -> dict[str, Any]:
    steps = []
    for record in history:
        key = record.get("action") or record.get("topic", "")
        if key == "ticket.assigned" and record.get("via") == "dispatch_desk":
            steps.append({"at": present.local(record.get("occurred_at"), tz), "text": "正在人工分派承办单位"})
        elif key == "verified":  # 现场核查: the outcome, not the worker's words (they are for staff)
            solved = (record.get("verification") or {}).get("solved")
            text = (
                "网格员已现场核查，问题已解决"
                if solved
                else "网格员现场核查发现问题未解决，已退回承办单位重新办理"
            )
            steps.append({"at": present.local(record.get("occurred_at"), tz), "text": text})
        elif key in _SHOWN:
            dept = (record.get("department") or {}).get("name", "") if key == "ticket.assigned" else ""
            steps.append(
                {
                    "at": present.local(record.get("occurred_at"), tz),
                    "text": _SHOWN[key] + (f"：{dept}" if dept else ""),
                }
            )
    return {
        "ticket_no": ticket.ticket_no,
        "status": STATUS_NAMES.get(ticket.status, ticket.status),
        "received": present.local(ticket.received_at, tz),
        "category": "/".join(ticket.category_names) or "分类中",
        "department": ticket.department.name if ticket.department and ticket.status != "review" else "",
        "resolution": ticket.resolution_note,
        "steps": steps,
    }
