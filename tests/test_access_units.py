"""Staff access without servers: who may be given a credential (shared.access), and how often a
token's last use is written (shared.auth)."""

from __future__ import annotations

import pytest

from services.console import session
from shared import auth
from shared.access import NOTE_MAX, ROLE_NAMES, InvalidGrant, checked_grant
from shared.city import load_city


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


def test_the_console_signs_in_people_not_the_gateway():
    assert set(session.ROLE_NAMES) == set(ROLE_NAMES) - {"sms_gateway"}


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
