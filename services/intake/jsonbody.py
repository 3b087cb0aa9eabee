"""Reading a JSON body that a hostile client wrote. Pure.

`json.loads` alone turns some inputs into a server error or into work out of proportion with the
body: nesting deep enough to exhaust the recursion limit, integers of thousands of digits (Python
refuses past 4,300 with a ValueError), NaN and Infinity, which are not JSON. Here each is a 400
that names the problem; the body's size is bounded before this (shared.bodies)."""

from __future__ import annotations

import json
from typing import Any

from services.intake.errors import BadRequest

MAX_DEPTH = 16  # our bodies are flat objects; a few levels of slack for future fields
MAX_NUMBER_CHARS = 32  # a phone number typed as a number fits; a 4,000-digit integer does not


def _number(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        if len(text) > MAX_NUMBER_CHARS:
            raise BadRequest(f"请求中的数字过长（超过{MAX_NUMBER_CHARS}位）")
        value = kind(text)
        if value in (float("inf"), float("-inf")):
            raise BadRequest("请求中的数字超出范围")
        return value

    return parse


def _constant(name: str) -> Any:
    raise BadRequest(f"{name}不是有效的JSON数值")


def parse_json(raw: bytes) -> Any:
    """The body's JSON value. Raises BadRequest (400) for anything that is not JSON we accept."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"请求内容不是有效的UTF-8编码（第{e.start}字节）") from None
    if _depth_over(text, MAX_DEPTH):
        raise BadRequest(f"请求的JSON嵌套过深（超过{MAX_DEPTH}层）")
    try:
        return json.loads(text, parse_int=_number(int), parse_float=_number(float), parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise BadRequest(f"请求内容不是有效的JSON：第{e.lineno}行第{e.colno}列 {e.msg}") from None


def _depth_over(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit`. Only a quick count before the
    parser (which recurses per level); a body that is not JSON at all is left to it."""
    if text.count("[") + text.count("{") <= limit:  # the usual body: no need to look closer
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False
