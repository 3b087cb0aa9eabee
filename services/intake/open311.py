"""Open311 GeoReport v2 (http://wiki.open311.org/GeoReport_v2/): our categories as services, appeals
as service requests. Pure functions; the HTTP side is open311_views.py.

Both formats of the spec: `.json` and `.xml` (the same records; `to_xml` writes the spec's element
names: services/service, service_requests/request, errors/error).

Mapping: service_code = leaf category id; service_request_id = ticket number; status `open` while
the ticket is open (shared.tickets.OPEN_STATUSES), `closed` after. A POSTed service_code is the
resident's choice, kept as the appeal's title: the classifier still decides the category.

GET is public (no key), so it shows only what anyone may see (`request_record`), and only of
tickets the city publishes (`is_public`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from services.intake.domain import InvalidAppeal, Submission, validate
from shared.city import City
from shared.events import GeoPoint
from shared.tickets import Ticket

MAX_REQUESTS = 1000  # the spec's cap on GET requests
MAX_SCANNED = 10 * MAX_REQUESTS  # tickets one GET may read while filtering by status or code
DEFAULT_DAYS = 90  # ... and its default window


FORMATS = ("json", "xml")
Kind = Literal["services", "requests", "errors"]
_XML_ELEMENTS = {
    "services": ("services", "service"),
    "requests": ("service_requests", "request"),
    "errors": ("errors", "error"),
}


def error(status: int, code: str, message: str, field: str | None = None) -> list[dict[str, Any]]:
    """The spec's error list (`code` is the HTTP status, `description` the reason), each error also
    carrying the API's own shape (`error`, `field`, `message`): Open311 clients read the first two,
    everything else the last three."""
    description = f"{field}: {message}" if field else message
    return [{"code": status, "description": description, "error": code, "field": field, "message": message}]


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")  # not allowed in XML 1.0 at all


def _xml_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(_NOT_XML.sub("", str(value)))


def to_xml(kind: Kind, records: list[dict[str, Any]]) -> str:
    """The spec's XML for a list of records: `<service_requests><request><status>open</status>...`;
    None is an empty element, booleans are true/false."""
    outer, inner = _XML_ELEMENTS[kind]
    items = "".join(
        f"<{inner}>" + "".join(f"<{k}>{_xml_value(v)}</{k}>" for k, v in r.items()) + f"</{inner}>"
        for r in records
    )
    return f'<?xml version="1.0" encoding="utf-8"?><{outer}>{items}</{outer}>'


def services(city: City) -> list[dict[str, Any]]:
    out = []
    for code in city.leaf_categories:
        names = city.category_names(code)
        out.append(
            {
                "service_code": code,
                "service_name": names[-1],
                "description": " / ".join(names),
                "metadata": False,
                "type": "realtime",
                "keywords": ",".join(city.category_by_id[code].keywords),
                "group": names[0],
            }
        )
    return out


def _coordinate(form: Mapping[str, str], *names: str) -> float | None:
    for name in names:
        raw = (form.get(name) or "").strip()
        if raw:
            try:
                return float(raw)
            except ValueError:
                raise InvalidAppeal(name, f"{name}应为数字（十进制度），例如39.9087") from None
    return None


def submission(city: City, form: Mapping[str, str]) -> Submission:
    """A POST requests form -> Submission. Raises InvalidAppeal (Open311 error 400)."""
    code = (form.get("service_code") or "").strip()
    if not code:
        raise InvalidAppeal("service_code", "service_code is required / 缺少service_code")
    if code not in city.category_by_id or code not in city.leaf_categories:
        raise InvalidAppeal(
            "service_code", f"service_code {code!r} not found, see services.json / 未知的服务类型"
        )
    lat = _coordinate(form, "lat")
    lng = _coordinate(form, "long", "lon")  # the spec names it `long`; some clients send `lon`
    address = (form.get("address_string") or "").strip()
    if (lat is None) != (lng is None):
        raise InvalidAppeal("lat", "lat and long must be given together / 经纬度需同时提供")
    location = None
    if lat is not None and lng is not None:
        if not (-90 <= lat <= 90 and -180 <= lng <= 180):
            raise InvalidAppeal("lat", "lat/long out of range / 经纬度超出范围")
        location = GeoPoint(lat=lat, lng=lng)
    if location is None and not address and not (form.get("address_id") or "").strip():
        raise InvalidAppeal(
            "lat", "a location is required: lat & long, address_string or address_id / 请提供位置"
        )
    # The spec's media_url (a link to the resident's photo) is fetched by the view, which does the
    # I/O (open311_views, media_fetch: only addresses media_rules allows) and adds the photo.
    last, first = (form.get("last_name") or "").strip(), (form.get("first_name") or "").strip()
    name = f"{last}{first}" if not (last + first).isascii() else " ".join(p for p in (first, last) if p)
    return validate(
        channel="open311",
        text=form.get("description") or "",
        title=city.category_names(code)[-1],
        address=address,
        location=location,
        phone=form.get("phone"),
        name=name or None,
    )


def _iso(dt: datetime | None, tz: ZoneInfo) -> str | None:
    return dt.astimezone(tz).isoformat(timespec="seconds") if dt else None


# What a department writes may still quote a number (a phone, an ID card): runs of 7 or more digits,
# spaces and dashes allowed between them, never reach the public record.
_NUMBER_RUN = re.compile(r"\d(?:[\s\-]?\d){6,}")
COORDINATE_DECIMALS = 2  # about a kilometre: the neighbourhood, not the building


def is_public(ticket: Ticket, public_channels: frozenset[str]) -> bool:
    """Whether the city publishes this ticket at all (`OPEN311_PUBLIC_CHANNELS`): by default only
    what residents filed through Open311 itself, never a hotline call, a WeChat chat, an SMS or a
    suggestion-box slip, which residents gave in confidence."""
    return ticket.channel in public_channels


def street_of(ticket: Ticket, city: City) -> str | None:
    """The street (街道) the classifier placed the ticket in, as `district street`: the finest place
    that is public. The resident's own address and point are not."""
    grid = ticket.grid
    if grid is None:
        return None
    if grid.grid and grid.grid in city.grids:
        name: str | None = city.grids[grid.grid].street_name
    else:
        name = next((s.name for s in city.district.streets if s.id == grid.street), None)
    return f"{city.district.name}{name}" if name else None


def public_answer(note: str) -> str | None:
    """The department's answer as published: its own words, numbers masked."""
    return _NUMBER_RUN.sub("****", note).strip() or None


def request_record(ticket: Ticket, city: City, tz: ZoneInfo) -> dict[str, Any]:
    """One service request as GET requests shows it: status, category, the street and the
    department's answer. Never the resident's text, address, point or anything of the caller; the
    spec's fields stay present (null) so that clients find what they expect."""
    code = ticket.category if ticket.category in city.category_by_id else None
    point = ticket.location
    return {
        "service_request_id": ticket.ticket_no,
        "status": "open" if ticket.is_open else "closed",
        "status_notes": public_answer(ticket.resolution_note),
        "service_name": city.category_names(code)[-1] if code else None,
        "service_code": code,
        "description": None,
        "agency_responsible": ticket.department.name if ticket.department else None,
        "service_notice": None,
        "requested_datetime": _iso(ticket.received_at, tz),
        "updated_datetime": _iso(ticket.updated_at, tz),
        "expected_datetime": _iso(ticket.resolve_by, tz),
        "address": street_of(ticket, city),
        "address_id": None,
        "zipcode": None,
        "lat": round(point.lat, COORDINATE_DECIMALS) if point else None,
        "long": round(point.lng, COORDINATE_DECIMALS) if point else None,
        "media_url": None,
    }


def parse_time(value: str | None, field: str) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidAppeal(field, f"{field} must be ISO 8601, e.g. 2010-05-24T00:00:00Z") from None
    if dt.tzinfo is None:
        raise InvalidAppeal(field, f"{field} must include a time zone (Z or +08:00)")
    return dt
