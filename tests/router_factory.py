"""Builders for the router's unit tests: classified appeals and assigned tickets, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.classifier.grid import grid_match
from services.router import meetings, workflow
from services.router.rules import contested, route
from services.router.sla import deadlines
from shared.city import City
from shared.events import AppealClassified, AppealReceived, Caller, CategoryScore, GridMatch, MeetingSpec
from shared.tickets import Ticket

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai


def grid(city: City, grid_id: str | None) -> GridMatch:
    if grid_id is None:
        return GridMatch(grid=None)
    return grid_match(city, grid_id, "gazetteer", 0.9, "test")


def classified(
    city: City,
    category: str,
    grid_id: str | None = "s01c01g01",
    *,
    confidence: float = 0.9,
    no: str = "20261123-000001",
    second: tuple[str, float] | None = None,
    urgent: bool = False,
    at: datetime = T0,
    reviewed_by: str | None = None,
) -> AppealClassified:
    appeal = AppealReceived(
        ticket_no=no,
        channel="hotline",
        text="测试诉求内容",
        received_at=at,
        occurred_at=at,
        caller=Caller(caller_id="c1", masked_phone="138****0000"),
    )
    top = (CategoryScore(category=category, probability=confidence),)
    if second:
        top += (CategoryScore(category=second[0], probability=second[1]),)
    return AppealClassified(
        ticket_no=no,
        appeal=appeal,
        category=category,
        category_names=city.category_names(category),
        confidence=confidence,
        top=top,
        grid=grid(city, grid_id),
        urgent=urgent,
        model_version="test",
        occurred_at=at,
        reviewed_by=reviewed_by,
    )


def assign(city: City, c: AppealClassified, ticket: Ticket | None = None, threshold: float = 0.5):
    routing = route(city, c.category, c.grid, c.confidence, 0.0 if c.reviewed_by else threshold)
    others = contested(city, routing, c.top, c.grid, city.sla.supervision.ambiguity_margin)
    due = deadlines(
        city, c.category, c.urgent or c.appeal.urgent_flag, c.occurred_at, TZ, department=routing.lead
    )
    return workflow.assign(ticket, c, routing, due, city, contested=others, tz=TZ)


def assigned_ticket(
    city: City, category: str = "city.facility.streetlight", grid_id: str | None = "s01c01g01", **kw
) -> Ticket:
    return assign(city, classified(city, category, grid_id, **kw)).ticket


def garbage_hotspot(city: City) -> MeetingSpec:
    """The spec of a hotspot meeting M1 on garbage in grid s03c02g03, summoning its street."""
    return meetings.spec(
        city,
        mid="M1",
        reason="hotspot",
        grid="s03c02g03",
        category="city.appearance.garbage",
        summoned=["street_s03"],
        now=T0,
        tz=TZ,
    )
