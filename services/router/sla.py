"""Deadlines (SLA): respond within N clock hours; resolve within M clock hours or working days on
the city's holiday calendar. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from shared.city import City, SlaClass, SlaConfig


@dataclass(frozen=True)
class Deadlines:
    sla_class: str
    respond_by: datetime
    resolve_by: datetime


def is_workday(day: date, sla: SlaConfig) -> bool:
    return _is_workday(day, *_calendar(sla.holidays, sla.workdays))


def _is_workday(day: date, holidays: frozenset[date], workdays: frozenset[date]) -> bool:
    if day in workdays:  # a make-up working day (调休) on a weekend
        return True
    return day not in holidays and day.weekday() < 5


@lru_cache(maxsize=8)
def _calendar(holidays: tuple[date, ...], workdays: tuple[date, ...]) -> tuple[frozenset, frozenset]:
    return frozenset(holidays), frozenset(workdays)


@lru_cache(maxsize=4096)
def _working_day_after(day: date, days: int, holidays: tuple[date, ...], workdays: tuple[date, ...]) -> date:
    """The date `days` working days after `day` (every ticket of a day shares the answer)."""
    calendar = _calendar(holidays, workdays)
    added = 0
    while added < days:
        day += timedelta(days=1)
        if _is_workday(day, *calendar):
            added += 1
    return day


def add_working_days(start: datetime, days: int, sla: SlaConfig, tz: ZoneInfo) -> datetime:
    """`start` plus `days` working days, at the same local clock time."""
    local = start.astimezone(tz)
    target = _working_day_after(local.date(), days, sla.holidays, sla.workdays)
    # Same wall-clock time on the target date (DST-safe: rebuild, don't add a timedelta).
    return datetime.combine(target, local.timetz().replace(tzinfo=None), tzinfo=tz)


def is_urgent(city: City, category: str, flagged: bool) -> bool:
    """Urgent when the classifier or operator flagged it, or the city lists its category (or a
    branch above it) as always urgent."""
    return flagged or any(c in city.sla.urgent_categories for c in city.category_path.get(category, ()))


def sla_class_for(city: City, category: str, urgent: bool, *, department: str | None) -> str:
    """The deadline class of a ticket of `category` held by `department` (its id; None before it has
    one). Urgent first; then the holder's kind where the city gives that kind a class of its own
    (`department_kinds`): how a mediation committee works (both parties heard, a session they can
    both attend) sets its time, not what the dispute is about, so a noise complaint referred to
    one gets mediation's time; then the category."""
    sla = city.sla
    if is_urgent(city, category, urgent):
        return sla.urgent_class
    # A department no longer in the configuration (an old ticket read back) has no kind to go by.
    holder = city.department_by_id.get(department) if department else None
    if holder is not None and holder.kind in sla.department_kinds:
        return sla.department_kinds[holder.kind]
    # The deepest category (leaf first) that the SLA table names.
    for cat in reversed(city.category_path.get(category, ())):
        if cat in sla.categories:
            return sla.categories[cat]
    return sla.default_class


def resolve_deadline(cls: SlaClass, start: datetime, sla: SlaConfig, tz: ZoneInfo) -> datetime:
    if cls.resolve_hours is not None:
        return start + timedelta(hours=cls.resolve_hours)
    return add_working_days(start, cls.resolve_days or 0, sla, tz)


def deadlines(
    city: City, category: str, urgent: bool, start: datetime, tz: ZoneInfo, *, department: str | None
) -> Deadlines:
    """The deadlines from `start` of a ticket `department` is to hold (see `sla_class_for`). The
    holder is required, not defaulted: a caller that forgot it would give a committee's ticket its
    category's time."""
    name = sla_class_for(city, category, urgent, department=department)
    cls = city.sla.classes[name]
    return Deadlines(
        sla_class=name,
        respond_by=start + timedelta(hours=cls.respond_hours),
        resolve_by=resolve_deadline(cls, start, city.sla, tz),
    )
