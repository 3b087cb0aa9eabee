"""Staff access without servers: who may be given a credential (shared.access), how the desk's page
says a credential and its audit (present), what its form sends, and how often a token's last use
is written (shared.auth)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from starlette.datastructures import FormData

from services.console import present, session
from services.console.views import ACCESS_FIELDS, grant_of, templates
from shared import auth
from shared.access import NOTE_MAX, ROLE_NAMES, InvalidGrant, checked_grant
from shared.city import load_city
from tests.markup import described_by

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def city():
    return load_city()


def grant(city, **fields):
    return checked_grant(city, default_days=90, **fields)


def refused(city, **fields) -> tuple[str | None, str]:
    with pytest.raises(InvalidGrant) as e:
        grant(city, **fields)
    return e.value.field, e.value.message


def a_grid(city) -> str:
    return next(iter(city.grids))


def test_each_role_is_granted_for_whom_it_acts(city):
    operator = grant(city, role="operator", operator=" 0231 ", note="  张三\n夜班 ")
    assert (operator.role, operator.operator, operator.note) == ("operator", "0231", "张三 夜班")
    assert operator.ttl_seconds == 90 * 86400
    worker = grant(city, role="grid_worker", operator="W017", grid=a_grid(city), days=30)
    assert (worker.operator, worker.grid, worker.ttl_seconds) == ("W017", a_grid(city), 30 * 86400)
    dept = grant(city, role="department", department="water")
    assert (dept.department, dept.operator, dept.grid) == ("water", None, None)
    assert grant(city, role="admin", days=0).ttl_seconds == 0  # never expires
    assert grant(city, role="sms_gateway").role == "sms_gateway"


def test_a_refusal_names_the_field_and_says_what_to_do_in_chinese(city):
    assert refused(city, role="boss") == ("role", refused(city, role="")[1])
    assert "话务员（operator）" in refused(city, role="boss")[1]
    assert refused(city, role="operator") == ("operator", "请填写话务员的工号，如 0231")
    assert refused(city, role="grid_worker", operator=" ", grid=a_grid(city))[0] == "operator"
    field, message = refused(city, role="operator", operator="02 31")
    assert field == "operator"
    assert "字母、数字" in message
    assert refused(city, role="operator", operator="op:1")[0] == "operator"  # "role:id" stays unambiguous
    assert refused(city, role="operator", operator="x" * 33)[0] == "operator"
    assert refused(city, role="department") == ("department", "请选择承办单位")
    field, message = refused(city, role="department", department="nowhere")
    assert (field, "nowhere" in message) == ("department", True)
    field, message = refused(city, role="department", department="dispatch_desk")
    assert field == "department"
    assert "派单中心凭证" in message
    assert refused(city, role="grid_worker", operator="W017") == ("grid", "请选择网格员负责的网格")
    assert refused(city, role="grid_worker", operator="W017", grid="nowhere")[0] == "grid"
    assert refused(city, role="operator", operator="0231", days=-1)[0] == "days"
    assert refused(city, role="operator", operator="0231", days=3651)[0] == "days"
    for field in ("operator", "department", "grid", "note"):  # "\ud800" in JSON: nothing UTF-8 can hold
        assert (
            refused(city, role="grid_worker", **{"operator": "W1", "grid": a_grid(city), field: "a\ud800"})[0]
            == field
        )
    field, message = refused(city, role="operator", operator="0231", note="张" * (NOTE_MAX + 1))
    assert (field, str(NOTE_MAX) in message) == ("note", True)


def test_a_token_is_never_stored_with_a_subject_its_role_does_not_act_for(city):
    assert refused(city, role="department", department="water", operator="0231") == (
        "operator",
        "承办单位凭证不填工号，请留空",
    )
    assert refused(city, role="operator", operator="0231", grid=a_grid(city))[0] == "grid"
    assert refused(city, role="admin", department="water")[0] == "department"
    assert refused(city, role="sms_gateway", operator="x")[0] == "operator"


def test_the_form_sends_only_the_fields_the_chosen_role_takes():
    typed = {
        "csrf": "c",
        "operator": "0231",
        "department": "water",
        "grid": "g1",
        "days": "",
        "note": " 张三 ",
    }
    values, body = grant_of(FormData({**typed, "role": "department"}))
    assert body == {"role": "department", "department": "water", "note": "张三"}
    assert values["operator"] == "0231"  # kept for the form, should the desk switch back
    _, body = grant_of(FormData({**typed, "role": "grid_worker", "days": "30"}))
    assert body == {"role": "grid_worker", "operator": "0231", "grid": "g1", "days": "30", "note": "张三"}
    _, body = grant_of(FormData({**typed, "role": "admin", "note": ""}))
    assert body == {"role": "admin", "note": None}


def test_a_credential_is_named_by_its_holder_and_its_revocation_says_who_loses_access(city):
    grid = a_grid(city)
    info = city.grids[grid]
    token = {
        "token_id": "0123456789abcdef", "role": "grid_worker", "operator": "W017", "department": None,
        "grid": grid, "note": "李四", "created_at": "2026-03-01T00:00:00+00:00", "expires_at": None,
        "last_used_at": None,
    }  # fmt: skip
    row = present.access_row(token, city, TZ, own_token_id="ffffffffffffffff")
    assert row["role_name"] == "网格员"
    assert row["subject"].startswith("工号 W017 · ")
    assert info.grid.name in row["subject"]
    assert info.community_name in row["subject"]
    assert (row["created"], row["expires"], row["last_used"]) == ("2026-03-01 08:00", "长期有效", "暂无记录")
    assert not row["own"]
    grid_name = row["subject"].split(" · ")[1]
    assert row["confirm"].startswith(f"确定吊销{grid_name}的网格员 W017（李四）的凭证 0123456789abcdef 吗？")
    assert "用它登录的控制台随即退出登录" in row["confirm"]
    dept = present.access_row(
        {**token, "role": "department", "operator": None, "grid": None, "department": "water", "note": ""},
        city,
        TZ,
        own_token_id="0123456789abcdef",
    )
    assert dept["subject"] == city.department_by_id["water"].name
    assert dept["own"]
    assert dept["confirm"].startswith(f"确定吊销承办单位 {city.department_by_id['water'].name}的凭证")


def test_the_audit_says_who_acted_from_the_desk_or_the_shell(city):
    assert present.actor_words("admin:0123456789abcdef", "王五") == "派单中心 王五（凭证 0123456789abcdef）"
    assert present.actor_words("admin:0123456789abcdef") == "派单中心（凭证 0123456789abcdef）"
    assert present.actor_words("cli:root") == "命令行 appeals token（系统用户 root）"
    entry = {
        "at": "2026-03-01T01:02:00+00:00", "action": "revoke", "actor": "cli:ops", "actor_note": "",
        "token_id": "0123456789abcdef", "role": "operator", "operator": "0231", "department": None,
        "grid": None, "note": "张三", "expires_at": "2026-05-30T00:00:00+00:00",
    }  # fmt: skip
    row = present.access_audit_row(entry, city, TZ)
    assert (row["at_local"], row["action_name"], row["held_by"]) == (
        "2026-03-01 09:02",
        "吊销",
        "话务员 0231（张三）",
    )
    assert row["expires"] == "2026-05-30 08:00"


def test_the_console_signs_in_people_not_the_gateway():
    assert set(session.ROLE_NAMES) == set(ROLE_NAMES) - {"sms_gateway"}


def access_page(city, **context) -> str:
    principal = SimpleNamespace(role="admin", is_admin=True, department=None, operator=None, grid=None)
    base = {
        "request": None, "s": SimpleNamespace(principal=principal, csrf="x"),
        "values": {"role": "", "days": "90"}, "errors": {}, "issued": None, "idem": "k", "revoked_id": "",
        "revoked": "", "notice": "", "filters": {},
        "query": "", "list_query": "", "role_links": [("", "全部", "")], "tokens": [], "total": 0,
        "list_notice": "", "page_no": 1, "pages": 1, "audit": [], "audit_notice": "",
        "role_choices": list(ROLE_NAMES.items()), "department_choices": [("water", "区水务局")],
        "grid_groups": present.grid_choices(city), "default_days": 90,
    }  # fmt: skip
    return templates.get_template("access.html").render(**{**base, **context})


@pytest.mark.parametrize("field", [f for f in ACCESS_FIELDS])
def test_a_refused_field_of_the_issue_form_is_described_by_its_hint_and_its_error(city, field):
    assert described_by(access_page(city), field) == [f"{field}-hint"]
    html = access_page(city, errors={field: "请填写工号"})
    assert described_by(html, field) == [f"{field}-hint", f"{field}-error"]
    assert 'aria-invalid="true"' in re.search(rf'<(?:input|select) id="{field}"[^>]*>', html)[0]


def test_a_new_token_is_shown_once_with_how_to_sign_in_and_the_own_token_cannot_be_revoked(city):
    issued = {
        "token": "s3cr3t-token", "token_id": "0123456789abcdef", "role": "operator", "held_by": "话务员 0231",
        "expires": "2026-05-30 08:00", "signin_url": "https://12345.example.cn/console/signin",
    }  # fmt: skip
    html = access_page(city, issued=issued)
    assert 'value="s3cr3t-token"' in html
    assert "凭证只显示这一次" in html
    assert "https://12345.example.cn/console/signin" in html
    gateway = access_page(city, issued={**issued, "role": "sms_gateway"})
    assert "Authorization: Bearer" in gateway
    mine = {"token_id": "0123456789abcdef", "own": True, "role_name": "派单中心", "subject": "—"}
    other = {
        **mine,
        "token_id": "fedcba9876543210",
        "own": False,
        "held_by": "话务员 0231",
        "confirm": "确定？",
    }
    html = access_page(city, tokens=[mine, other], total=2)
    assert "/console/access/0123456789abcdef/revoke" not in html
    assert 'action="/console/access/fedcba9876543210/revoke"' in html
    assert 'data-confirm="确定？"' in html


class FakeRedis:
    """What lookup() asks of Redis: the token's record, and the last-use writes it makes."""

    def __init__(self, record: str) -> None:
        self.record, self.writes = record, []

    async def get(self, key):
        return self.record

    async def hset(self, key, field, value):
        self.writes.append((key, field, value))


async def test_a_tokens_last_use_is_written_at_most_once_a_minute(monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(auth.time, "time", lambda: clock[0])
    monkeypatch.setattr(auth, "_use_written", {})
    redis = FakeRedis('{"role": "operator", "operator": "0231", "note": "张三", "expires_at": null}')
    for _ in range(100):
        principal = await auth.lookup(redis, "the-token")
    assert principal is not None
    assert principal.note == "张三"
    assert redis.writes == [(auth.USED_KEY, auth.token_id_of("the-token"), 1_000_000)]
    clock[0] += auth.USE_RESOLUTION_SECONDS - 1
    await auth.lookup(redis, "the-token")
    assert len(redis.writes) == 1
    clock[0] += 1
    await auth.lookup(redis, "the-token")
    assert redis.writes[-1] == (auth.USED_KEY, auth.token_id_of("the-token"), 1_000_000 + 60)
    await auth.lookup(redis, "another-token")  # each token its own
    assert len(redis.writes) == 3


LONG_NOTE = "很长的备注" * 11


@pytest.mark.parametrize(
    ("args", "body", "option"),
    [
        (["--department", "dispatch_desk"], {"department": "dispatch_desk"}, "--department"),
        (["--department", "nowhere"], {"department": "nowhere"}, "--department"),
        (["--operator", "张 三"], {"operator": "张 三"}, "--operator"),
        (["--operator", " "], {"operator": " "}, "--operator"),
        (["--operator", "op:1"], {"operator": "op:1"}, "--operator"),
        (["--operator", "0231", "--grid", "g"], {"operator": "0231", "grid": "g"}, "--grid"),
        (["--admin", "--grid", "g"], {"grid": "g"}, "--grid"),
        (["--grid-worker", "W 1", "--grid", "g"], {"operator": "W 1", "grid": "g"}, "--grid-worker"),
        (["--grid-worker", "W1"], {"operator": "W1"}, "--grid"),
        (["--grid-worker", "W1", "--grid", "nowhere"], {"operator": "W1", "grid": "nowhere"}, "--grid"),
        (["--admin", "--days", "5000"], {"days": 5000}, "--days"),
        (["--admin", "--days", "-1"], {"days": -1}, "--days"),
        (["--sms-gateway", "--note", LONG_NOTE], {"note": LONG_NOTE}, "--note"),
        (["--admin", "--note", "a\udcff"], {"note": "a\udcff"}, "--note"),  # a byte that is not UTF-8
    ],
)
def test_appeals_token_refuses_what_the_api_refuses_with_its_reason(city, args, body, option):
    """Checked before Redis is reached (this test has none): nothing is minted, the shell gets the
    API's Chinese reason beside the option at fault, and a non-zero exit."""
    from typer.testing import CliRunner

    from services.cli import cli

    role = args[0].removeprefix("--").replace("-", "_")
    _, reason = refused(city, role=role, **body)
    r = CliRunner().invoke(cli, ["token", *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"{option}: {reason}"
    assert r.stdout == ""
