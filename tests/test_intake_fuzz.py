"""No input a client can send makes the API answer 5xx: schemathesis generates requests from the
API's own OpenAPI schema (valid and invalid alike) against a real API process, and hypothesis
feeds the intake parsers arbitrary bytes and forms. Bounded: a fixed number of examples each.

The API under test runs on a broker and Redis of its own, with no workers, so the appeals the
generator manages to submit go nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from services.api import create_app
from services.intake import batch, open311, wechat
from services.intake.domain import InvalidAppeal, validate
from services.intake.errors import BadRequest, TooLarge
from services.intake.jsonbody import parse_json
from services.launcher import Launcher
from shared.auth import issue_token
from shared.embedded import EmbeddedServers, free_port
from shared.redis_client import connect
from shared.settings import Settings
from tests.cities import demo_city
from tests.conftest import settings_env

CITY = demo_city()
BOUNDED = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


# --- the whole API, from its OpenAPI schema -----------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_api(settings, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """An API process of its own (and its own servers), and a dispatch desk token for it."""
    logs = tmp_path_factory.mktemp("fuzz")
    with EmbeddedServers(log_dir=logs) as own:
        port = free_port()
        env = settings_env(
            settings, kafka_bootstrap_servers=own.kafka_bootstrap, redis_url=own.redis_url, api_port=port
        )
        launcher = Launcher(env=env, log_dir=logs)
        launcher.start("api")
        try:
            launcher.wait_for_ports([port], timeout=90)

            async def token() -> str:
                redis = connect(own.redis_url)
                try:
                    return await issue_token(redis, "admin")
                finally:
                    await redis.aclose()

            yield f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {asyncio.run(token())}"}
        finally:
            launcher.stop_all()


# The schema as the app publishes it at /openapi.json; building it needs no server.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.mark.integration
@schema.parametrize()
@BOUNDED
def test_no_request_makes_the_api_answer_5xx(case: Any, fuzz_api: tuple[str, dict[str, str]]) -> None:
    base, admin = fuzz_api
    response = case.call(base_url=base, headers=admin, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        body = response.json()
        errors = body if isinstance(body, list) else [body]  # Open311: the spec's list
        for error in errors:
            assert {"error", "field", "message"} <= set(error), body


# --- the parsers, with hypothesis ---------------------------------------------------------------------


@given(st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
@BOUNDED
def test_json_bodies_parse_or_say_why(raw: bytes) -> None:
    try:
        parse_json(raw)
    except BadRequest as e:
        assert e.message


@given(st.text(alphabet='[]{}",:1a ', max_size=200), st.integers(1, 5000))
@BOUNDED
def test_json_nesting_never_escapes_as_recursion(pieces: str, depth: int) -> None:
    """Bracket soup, repeated and nested as deep as a body allows: a value or a BadRequest."""
    for raw in ((pieces * 50).encode(), ("[" * depth + pieces + "]" * depth).encode()):
        with contextlib.suppress(BadRequest):
            parse_json(raw)


_CSV_PIECES = st.sampled_from(
    [
        "box_id,date,text,phone,address\n",
        "B1,2026-11-20,",
        "路灯坏了很多天",
        '"',
        "\n",
        "\r\n",
        ",",
        "\t=1+1",
        "\x00",
    ]
)


@given(st.lists(_CSV_PIECES | st.text(max_size=40), max_size=40), st.binary(max_size=64))
@BOUNDED
def test_csv_uploads_read_or_say_why(pieces: list[str], junk: bytes) -> None:
    data = "".join(pieces).encode() + junk
    try:
        slips = batch.read("s.csv", "text/csv", io.BytesIO(data), date(2026, 11, 30), batch.UploadLimits())
    except (batch.BadFile, TooLarge):
        return
    for _, slip in slips:
        assert isinstance(slip, InvalidAppeal | tuple)


@given(st.binary(max_size=3000))
@BOUNDED
def test_xlsx_uploads_read_or_say_why(data: bytes) -> None:
    with contextlib.suppress(batch.BadFile, TooLarge):
        batch.read("s.xlsx", "", io.BytesIO(b"PK\x03\x04" + data), date(2026, 11, 30), batch.UploadLimits())


_FORM_KEYS = st.sampled_from(
    [
        "service_code",
        "lat",
        "long",
        "lon",
        "address_string",
        "address_id",
        "description",
        "phone",
        "first_name",
        "last_name",
    ]
)


@given(st.dictionaries(_FORM_KEYS, st.text(max_size=60) | st.sampled_from(["nan", "inf", "1e999", "-0"])))
@BOUNDED
def test_open311_forms_become_appeals_or_say_why(form: dict[str, str]) -> None:
    try:
        open311.submission(CITY, form)
    except InvalidAppeal as e:
        assert e.field


@given(st.binary(max_size=1500) | st.text(max_size=400).map(lambda t: f"<xml>{t}</xml>".encode()))
@BOUNDED
def test_wechat_pushes_parse_or_say_why(raw: bytes) -> None:
    try:
        wechat.parse(raw)
    except wechat.BadMessage as e:
        assert str(e)


@given(st.text(max_size=300), st.text(max_size=30), st.text(max_size=100))
@BOUNDED
def test_validation_accepts_or_names_the_field(text: str, phone: str, address: str) -> None:
    try:
        validate(channel="hotline", text=text, phone=phone, address=address)
    except InvalidAppeal as e:
        assert e.field in ("text", "caller_phone", "address")
