"""A notice as a WeChat template message (模板消息). Pure: no I/O.

WeChat's customer-service messages reach a user only within 48 hours of their last message to the
account (`services.notifier.wechat_gateway`); a service account (服务号) may send a template message
to a follower at any time, with a template it chose in WeChat's console. The gateway falls back to
one when WeChat answers 45015 and `WECHAT_TEMPLATE_ID` is set, laid out as the common 工单进度通知:

  first      the headline (您反映的问题已办结，请评价)
  keyword1   the ticket number
  keyword2   the notice kind in words (受理, 进度, 办结, 满意度回访)
  keyword3   the local time the notice was written
  remark     the message's own text (the survey's says how to answer: 回复1/2/3 in the chat)

Each account's template names its fields its own way, so the names are a setting
(`WECHAT_TEMPLATE_FIELDS`): a role maps to the template's field, or to "" when the template has
no place for it.

The template opens `WECHAT_TEMPLATE_URL`; the gateway passes the links of `shared.lookup_link`,
and the link then carries the message's ticket (`?t=…&e=…&s=…`), so the resident sees that ticket's
progress without the phone digits a WeChat appeal never gave. It opens for `LOOKUP_LINK_DAYS` from
the day the message was written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from services.notifier.routing import Notice
from shared.lookup_link import day_number, ticket_url

ROLES = ("first", "ticket_no", "kind", "time", "remark")
DEFAULT_FIELDS: dict[str, str] = {
    "first": "first",
    "ticket_no": "keyword1",
    "kind": "keyword2",
    "time": "keyword3",
    "remark": "remark",
}
# A template's field is named like `keyword1`, `thing2`, `character_string3`.
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
# WeChat shows at most 20 characters of a template's middle field (since May 2023), so a longer
# value is cut here, visibly, rather than by WeChat.
KEYWORD_MAX_CHARS = 20

# Per kind of message a resident receives in WeChat: the headline and the kind in words. A kind not
# here (an answer to 查询, a clarification) has no template: it stays undelivered past 48 hours (and
# is not kept for the resident's return: it would answer nothing by then).
HEADLINES: dict[str, tuple[str, str]] = {
    "ack": ("您的诉求已受理", "受理"),
    "progress": ("您反映的问题有新进展", "进度"),
    "result": ("您反映的问题已办结", "办结"),
    # WeChat no longer shows `first` and `remark` (May 2023), so how to answer goes in the kind, the
    # one place a resident still reads it: their reply in the chat answers the survey.
    "survey": ("您反映的问题已办结，请评价", "满意度回访：回复1/2/3"),
    "reminder": ("您反映的问题办理结果还在等待您的评价", "满意度回访：回复1/2/3"),
}


def parse_fields(raw: str) -> dict[str, str]:
    """WECHAT_TEMPLATE_FIELDS (`ticket_no=character_string1,first=`) as the template's field per
    role (`template_fields`). Raises ValueError naming what is wrong."""
    given: dict[str, str] = {}
    for pair in raw.split(","):
        if not pair.strip():
            continue
        role, eq, name = (part.strip() for part in pair.partition("="))
        if not eq:
            raise ValueError(
                f"WECHAT_TEMPLATE_FIELDS: {pair.strip()!r} is not role=field (like ticket_no=keyword1)"
            )
        if role in given:
            raise ValueError(f"WECHAT_TEMPLATE_FIELDS: role {role!r} given twice")
        given[role] = name
    return template_fields(given)


def template_fields(given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The template's field per role: the defaults, with `given` over them; a role given "" is
    left out. Raises ValueError naming what is wrong."""
    fields = dict(DEFAULT_FIELDS)
    for role, name in (given or {}).items():
        if role not in ROLES:
            raise ValueError(
                f"WECHAT_TEMPLATE_FIELDS: unknown role {role!r} (expected some of {', '.join(ROLES)})"
            )
        if name and not _FIELD.match(name):
            raise ValueError(
                f"WECHAT_TEMPLATE_FIELDS: {role}={name!r} is not a template field name (like keyword1)"
            )
        fields[role] = name
    fields = {role: name for role, name in fields.items() if name}
    if not fields:
        raise ValueError("WECHAT_TEMPLATE_FIELDS leaves no field to fill")
    names = list(fields.values())
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"WECHAT_TEMPLATE_FIELDS: field {', '.join(twice)} given to two roles")
    return fields


@dataclass(frozen=True)
class WeChatTemplate:
    """The account's template for notices: its id, the field of each role, the link it opens, and
    the query that makes the link open a ticket on a unix day (`shared.lookup_link.params` with
    its lifetime and key; None: the link opens as it is)."""

    template_id: str
    fields: Mapping[str, str]
    tz: ZoneInfo
    url: str = ""
    link_query: Callable[[str, int], dict[str, str]] | None = None


def template_body(message: Notice, template: WeChatTemplate) -> dict[str, Any] | None:
    """The body of `POST /cgi-bin/message/template/send` for `message`, or None when its kind has
    no template (see HEADLINES)."""
    words = HEADLINES.get(message.kind)
    if words is None:
        return None
    headline, kind = words
    values = {
        "first": headline,
        "ticket_no": message.ticket_no or "",
        "kind": kind,
        "time": message.created_at.astimezone(template.tz).strftime("%Y-%m-%d %H:%M"),
        "remark": message.text,
    }
    # By the field's name, not its role: a role mapped onto a middle field is cut as one.
    data = {
        name: {"value": values[role] if name in ("first", "remark") else _cut(values[role])}
        for role, name in template.fields.items()
    }
    body: dict[str, Any] = {"touser": message.to, "template_id": template.template_id, "data": data}
    if template.url:
        no, link_query = message.ticket_no, template.link_query
        body["url"] = template.url
        if link_query and no:
            # Its days count from when the message was written, not when it was sent: the body is
            # the same on every retry.
            body["url"] = ticket_url(template.url, link_query(no, day_number(message.created_at.timestamp())))
    return body


def _cut(value: str) -> str:
    return value if len(value) <= KEYWORD_MAX_CHARS else value[: KEYWORD_MAX_CHARS - 1] + "…"
