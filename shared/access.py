"""Who may be given a credential, and for what: the rules the dispatch desk's access page and the
API's /api/v1/tokens apply before a token is minted (shared.auth stores it). Pure: no client.

A role names whom its token acts for: an operator and a grid worker by their staff id (工号), a
department by the city's department id, a grid worker also by the grid it patrols; the desk and the
SMS gateway by nothing. Each refusal names the field at fault, in Chinese."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from shared.city import City
from shared.errors import DomainError
from shared.text import without_controls

Role = Literal["operator", "grid_worker", "department", "admin", "sms_gateway"]
# In the order the access page offers them, named as a 12345 centre says them.
ROLES: tuple[Role, ...] = get_args(Role)
ROLE_NAMES: dict[str, str] = {
    "operator": "话务员",
    "admin": "派单中心",
    "department": "承办单位",
    "grid_worker": "网格员",
    "sms_gateway": "短信网关",
}
# 工号: letters, digits, '-' and '_'. It goes into idempotency scopes and audit actors as
# "role:id", so no ':' or spaces; short enough to read out.
STAFF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
NOTE_MAX = 50  # visible characters: a name and a post (张三 夜班组长), not a file
# How long a credential may be issued for, in days (0: never expires): the access page's field
# offers this range, and a grant outside it is refused.
MIN_DAYS, MAX_DAYS = 0, 3650
SURROGATE = re.compile("[\ud800-\udfff]")
# Which of the optional fields each role takes: the others must be left out, so that a token is
# never stored with a subject it does not act for.
FIELDS_OF: dict[str, tuple[str, ...]] = {
    "operator": ("operator",),
    "grid_worker": ("operator", "grid"),
    "department": ("department",),
    "admin": (),
    "sms_gateway": (),
}
FIELD_NAMES = {
    "operator": "工号",
    "department": "承办单位",
    "grid": "网格",
    "days": "有效天数",
    "note": "备注",
}


class InvalidGrant(DomainError):
    kind = "invalid"

    def __init__(self, field: str, message: str) -> None:
        super().__init__("invalid_grant", message, field=field)


@dataclass(frozen=True)
class Grant:
    """A credential to mint, checked."""

    role: Role
    operator: str | None
    department: str | None
    grid: str | None
    ttl_seconds: int  # 0: never expires
    note: str


def checked_role(raw: str) -> Role:
    for role in ROLES:
        if raw == role:
            return role
    choices = "、".join(f"{name}（{role}）" for role, name in ROLE_NAMES.items())
    raise InvalidGrant("role", f"请选择角色：{choices}")


def checked_grant(
    city: City,
    *,
    role: str,
    operator: str | None = None,
    department: str | None = None,
    grid: str | None = None,
    days: int | None = None,
    note: str | None = None,
    default_days: int,
) -> Grant:
    """The grant, or InvalidGrant naming the first field at fault. `days` None: `default_days`
    (TOKEN_TTL_DAYS); 0: never expires."""
    checked = checked_role(role)
    given = {"operator": operator, "department": department, "grid": grid}
    for field, value in {**given, "note": note}.items():
        # A lone surrogate (JSON's "\ud800") is no character: it could be neither stored as UTF-8
        # nor said back in a refusal.
        if value and SURROGATE.search(value):
            raise InvalidGrant(field, f"{FIELD_NAMES[field]}含有无法识别的字符，请重新输入")
    name = ROLE_NAMES[checked]
    for field, value in given.items():
        if value not in (None, "") and field not in FIELDS_OF[checked]:
            raise InvalidGrant(field, f"{name}凭证不填{FIELD_NAMES[field]}，请留空")
    staff_id = (operator or "").strip()
    if "operator" in FIELDS_OF[checked]:
        if not staff_id:
            raise InvalidGrant("operator", f"请填写{name}的工号，如 0231")
        if not STAFF_ID.fullmatch(staff_id):
            raise InvalidGrant(
                "operator", "工号只能由字母、数字、短横线和下划线组成，以字母或数字开头，最多32个字符"
            )
    dept = (department or "").strip()
    if checked == "department":
        if not dept:
            raise InvalidGrant("department", "请选择承办单位")
        found = city.department_by_id.get(dept)
        if found is None:
            raise InvalidGrant("department", f"没有编号为“{dept[:40]}”的承办单位，请从列表中选择")
        if found.kind == "dispatch_desk":
            # The desk works with the admin role; a department token for it could take none of its work.
            raise InvalidGrant("department", f"{found.name}请签发派单中心凭证，不作为承办单位")
    grid_id = (grid or "").strip()
    if checked == "grid_worker":
        if not grid_id:
            raise InvalidGrant("grid", "请选择网格员负责的网格")
        if grid_id not in city.grids:
            raise InvalidGrant("grid", f"没有编号为“{grid_id[:40]}”的网格，请从列表中选择")
    if days is None:
        days = default_days
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise InvalidGrant("days", f"有效天数须在{MIN_DAYS}到{MAX_DAYS}之间（0为长期有效）")
    # One line without invisible controls: it is shown in a table cell, a confirmation and the audit.
    text = " ".join(without_controls(note or "").split())
    if len(text) > NOTE_MAX:
        raise InvalidGrant("note", f"备注最多{NOTE_MAX}个字，请精简（如姓名和岗位）")
    return Grant(
        role=checked,
        operator=staff_id or None,
        department=dept or None,
        grid=grid_id or None,
        ttl_seconds=days * 86400,
        note=text,
    )


def subject_words(
    role: str, operator: str | None, department: str | None, grid: str | None, city: City
) -> str:
    """Whom a credential acts for, in words: 话务员 0231, 承办单位 区水务局, 和平里社区第一网格的网格员
    W017, 派单中心."""
    name = ROLE_NAMES.get(role, role)
    if role == "department":
        dept = city.department_by_id.get(department or "")
        return f"{name} {dept.name if dept else department}"
    if role == "grid_worker":
        info = city.grids.get(grid or "")
        where = info.full_name if info is not None else grid
        return f"{where}的{name} {operator}"
    if role == "operator":
        return f"{name} {operator}"
    return name
