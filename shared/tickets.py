"""The ticket: the state the router keeps for every appeal, as the API shows it.

A ticket is a projection of its events (the history list beside it in the store); it holds no
personal data: the caller is a masked phone and a hashed id.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

from shared.events import (
    AppealReceived,
    AppealType,
    Caller,
    CategoryScore,
    Channel,
    DepartmentRef,
    GeoPoint,
    GridMatch,
    MediationOutcome,
)


class Status(StrEnum):
    """Where a ticket is, in the order it normally moves. Which moves are allowed is one table:
    `services.router.workflow.ALLOWED_STATUS_CHANGES`."""

    RECEIVED = "received"  # numbered and durable, not yet classified
    REVIEW = "review"  # waiting at the dispatch desk for an operator (low confidence)
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    RESOLVED = "resolved"  # the department says it is done; the survey is on its way
    SURVEYED = "surveyed"  # the survey SMS went out; waiting for the resident
    CLOSED = "closed"
    MEETING = "meeting"  # a joint meeting (联席会议) holds it


# The statuses in the words of residents and staff (lists, progress answers, refusals).
STATUS_NAMES: dict[Status, str] = {
    Status.RECEIVED: "已受理",
    Status.REVIEW: "待人工派单",
    Status.ASSIGNED: "已派单",
    Status.ACCEPTED: "办理中",
    Status.RESOLVED: "已办结",
    Status.SURVEYED: "回访中",
    Status.CLOSED: "已关闭",
    Status.MEETING: "联席会议",
}

# The channels and the survey's ratings in the words of the staff who read lists and exports.
CHANNEL_NAMES: dict[str, str] = {
    "hotline": "12345热线",
    "wechat": "微信公众号",
    "box": "意见箱",
    "sms": "短信",
    "open311": "Open311",
    "web": "网站",
    "patrol": "网格巡查",
}
RATING_NAMES: dict[int, str] = {1: "满意", 2: "基本满意", 3: "不满意"}
MEDIATION_OUTCOME_NAMES: dict[str, str] = {"agreed": "调解成功，达成协议", "not_agreed": "调解不成"}


# Short names for the members, as the workflow code reads them.
RECEIVED, REVIEW, ASSIGNED, ACCEPTED = Status.RECEIVED, Status.REVIEW, Status.ASSIGNED, Status.ACCEPTED
RESOLVED, SURVEYED, CLOSED, MEETING = Status.RESOLVED, Status.SURVEYED, Status.CLOSED, Status.MEETING
OPEN_STATUSES = frozenset({RECEIVED, REVIEW, ASSIGNED, ACCEPTED, MEETING})
# A ticket number: the day, then its number of the day (six digits, more on a day past a million).
# Path parameters are checked against it before they reach a store key.
TICKET_NO_PATTERN = r"^\d{8}-\d{6,9}$"
# Every dash-like character a resident may type or copy (a long dash from a message, an IME's
# minus, an underscore), read as "-".
DASHES = re.compile(r"[—–‐‑−_]")


def clean_ticket_no(raw: str) -> str:
    """The number as a resident may type it on a phone or read it out: full-width digits, spaces, a
    long dash, or no dash at all (20261201000123) are the same number as 20261201-000123. The one
    reading of a typed number, for every form that takes one (the resident's lookup, the desk's
    erasure): a number one accepts another must not refuse. Anything
    else comes back as typed (without spaces), for the caller to refuse against TICKET_NO_PATTERN."""
    text = re.sub(r"\s", "", unicodedata.normalize("NFKC", raw))
    text = DASHES.sub("-", text)
    return f"{text[:8]}-{text[8:]}" if re.fullmatch(r"\d{14,17}", text) else text


class Ticket(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ticket_no: str
    # No default, so the store's JSON (`shared.store.ticket_json`, which leaves defaults out) always
    # names it: Lua scripts and the queues' filters read it from the raw JSON.
    status: Status
    channel: Channel
    title: str = ""
    text: str
    address: str = ""
    location: GeoPoint | None = None
    caller: Caller = Caller()
    urgent: bool = False
    received_at: datetime
    operator_id: str | None = None
    photos: tuple[str, ...] = ()  # sent with the appeal (shared.photos ids)

    category: str | None = None
    category_names: tuple[str, ...] = ()
    confidence: float | None = None
    top_categories: tuple[CategoryScore, ...] = ()
    appeal_type: AppealType | None = None
    grid: GridMatch | None = None
    model_version: str | None = None

    department: DepartmentRef | None = None
    co_departments: tuple[DepartmentRef, ...] = ()
    assigned_via: str | None = None
    assigned_at: datetime | None = None
    respond_by: datetime | None = None
    resolve_by: datetime | None = None
    accepted_at: datetime | None = None
    resolved_at: datetime | None = None
    resolution_note: str = ""
    resolution_photos: tuple[str, ...] = ()  # the department's photos of the result
    # The id of the last resolution's `resolved` event, which is also its survey's id (the
    # notifier names the survey after the resolution it asks about).
    resolution_id: str | None = None
    # 现场核查: the grid worker's check of the last resolution (cleared when the department resolves
    # again: each resolution is checked once). "not_solved" sent the ticket back (重办).
    verified_at: datetime | None = None
    verified_by: str | None = None  # the grid worker's id (工号)
    verification: Literal["solved", "not_solved"] | None = None
    verification_note: str = ""  # what the worker saw
    verification_photos: tuple[str, ...] = ()  # the worker's photos from the spot
    # 人民调解: the outcome a mediation committee recorded with its last resolution, and the
    # agreement's terms when the parties agreed. Like the resolution's note, they stay until the next
    # resolution (a reopened ticket shows what was agreed), which sets them anew.
    mediation_outcome: MediationOutcome | None = None
    mediation_agreement: str = ""
    # Surveys of resolutions a grid worker found not solved: the resident may still answer them,
    # but the answer neither closes nor reopens the ticket (it has gone back to the department).
    void_surveys: tuple[str, ...] = ()
    returns: int = 0
    reopens: int = 0
    urges: int = 0  # 催办: how often the resident called again about it while it was open
    # 并案: the main ticket (主件) this duplicate was merged into (it is closed), and, on a main
    # ticket, the duplicates merged into it: the residents waiting on its result besides its own.
    merged_into: str | None = None
    merged: tuple[str, ...] = ()
    # The router's bookkeeping: who returned it, a pending extension request, supervision.
    returned_by: tuple[str, ...] = ()
    extension_request: dict | None = None  # {"days", "reason", "by", "at"} until the desk decides
    # A grid worker's request to correct the grid (申请更正事发网格): {"grid", "reason", "by", "at"}
    # until the desk decides, or places the ticket anyway.
    place_request: dict | None = None
    overdue: bool = False  # 督办: a deadline passed
    escalated: bool = False  # long overdue, or sent to a joint meeting
    meeting_id: str | None = None
    meeting_by: datetime | None = None  # when the joint meeting holding it must have decided

    rating: int | None = None
    solved: bool | None = None
    closed_at: datetime | None = None

    # When the resident's personal data was removed (erasure on request): from then on the store
    # keeps the ticket and what it appends to its history scrubbed (`shared.privacy.scrub_event`).
    personal_data_removed_at: datetime | None = None

    # Ids of the events already applied: the idempotency check for every handler.
    applied: list[str] = []
    updated_at: datetime | None = None

    @classmethod
    def from_appeal(cls, appeal: AppealReceived) -> Ticket:
        return cls(
            ticket_no=appeal.ticket_no,
            status=Status.RECEIVED,
            channel=appeal.channel,
            title=appeal.title,
            text=appeal.text,
            address=appeal.address,
            location=appeal.location,
            caller=appeal.caller,
            urgent=appeal.urgent_flag,
            received_at=appeal.received_at,
            operator_id=appeal.operator_id,
            photos=appeal.photos,
            applied=[appeal.event_id],
            updated_at=appeal.occurred_at,
        )

    def has_applied(self, event_id: str) -> bool:
        return event_id in self.applied

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES
