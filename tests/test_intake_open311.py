"""Open311 GeoReport v2: the spec's own example request sequence, form-encoded, on the running API.

The sequence is the one in http://wiki.open311.org/GeoReport_v2/ (GET services, POST a request,
GET it, GET requests), with the spec city's values that cannot exist here substituted: the
service_code is taken from our services.json (as a client does), the api_key is ours, the phone is
a Chinese number (the spec's "111111111" is refused with a reason, tested below), the media_url a
photo served on this machine (tests/media_server.py), and the date window is today instead of 2010."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import pytest

from shared.photo_store import PENDING
from shared.photos import prepare
from tests.conftest import PHOTO_MAX_BYTES, eventually
from tests.media_server import MediaServer, media_server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]
KEY = "test-open311-key"  # the settings fixture's OPEN311_API_KEYS
FORM = {"content-type": "application/x-www-form-urlencoded"}
MB = 1024 * 1024
SECRET = "token=SECRET-0b1c"  # a query string in a media_url, which the log must not show
# The spec's example body, byte for byte except the substituted values marked {}.
SPEC_POST = (
    "api_key={key}&jurisdiction_id=city.gov&service_code={code}&lat=37.76524078&long=-122.4212043"
    "&address_string=1234+5th+street&email=smit222%40sfgov.edu&device_id=tt222111&account_id=123456"
    "&first_name=john&last_name=smith&phone={phone}&description=A+large+sinkhole+is+destroying+the+street"
    "&media_url={media}"
)
SPEC_FIELDS = {
    "service_request_id",
    "status",
    "status_notes",
    "service_name",
    "service_code",
    "description",
    "agency_responsible",
    "service_notice",
    "requested_datetime",
    "updated_datetime",
    "expected_datetime",
    "address",
    "address_id",
    "zipcode",
    "lat",
    "long",
    "media_url",
}


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    """The residents' photo host: `localhost` is the test settings' OPEN311_MEDIA_ALLOWED_HOSTS."""
    with media_server() as server:
        yield server


def spec_post(code: str, phone: str, media: MediaServer) -> str:
    return SPEC_POST.format(
        key=KEY, code=code, phone=phone, media=quote(media.url("/photo-spec.jpg"), safe="")
    )


async def test_the_spec_example_sequence(api, media):
    r = await api.get("/open311/v2/services.json", params={"jurisdiction_id": "city.gov"})
    assert r.status_code == 200
    services = r.json()
    assert {"service_code", "service_name", "description", "metadata", "type", "keywords", "group"} <= set(
        services[0]
    )
    code = next(s["service_code"] for s in services if s["service_name"] == "道路破损")

    body = spec_post(code, "13811112222", media)
    r = await api.post("/open311/v2/requests.json", content=body, headers=FORM)
    assert r.status_code == 201, r.text
    [created] = r.json()
    assert set(created) == {"service_request_id", "service_notice", "account_id"}
    no = created["service_request_id"]

    r = await api.get(f"/open311/v2/requests/{no}.json", params={"jurisdiction_id": "city.gov"})
    [record] = r.json()
    assert set(record) == SPEC_FIELDS
    assert record["status"] == "open"
    # The public GET shows no resident's words or address: the category, the street, a coarse point.
    assert record["description"] is None
    assert record["lat"] == 37.77
    assert record["long"] == -122.42
    assert record["address"] is None  # not placed in any street of this city
    assert "sinkhole" not in r.text
    assert "5th street" not in r.text
    assert "13811112222" not in r.text
    # The resident's photo is the ticket's, for staff; the public record does not show it.
    assert record["media_url"] is None
    ticket = (await api.get(f"/api/v1/tickets/{no}")).json()
    assert ticket["photos"] == [prepare(media.photo("/photo-spec.jpg"), max_bytes=MB).id]

    now = datetime.now(UTC)
    window = {
        "start_date": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_date": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": "open",
    }
    listed = (await api.get("/open311/v2/requests.json", params=window)).json()
    assert no in [x["service_request_id"] for x in listed]
    closed = (await api.get("/open311/v2/requests.json", params={**window, "status": "closed"})).json()
    assert no not in [x["service_request_id"] for x in closed]
    by_id = (await api.get("/open311/v2/requests.json", params={"service_request_id": no})).json()
    assert [x["service_request_id"] for x in by_id] == [no]


async def test_status_follows_the_ticket_to_closed(api):
    text = "和平路与建设路交叉口的路灯全部不亮，晚上过马路很危险"
    body = urlencode(
        {
            "api_key": KEY,
            "service_code": "city.facility.streetlight",
            "address_string": "和平路建设路口",
            "description": text,
        }
    )
    r = await api.post("/open311/v2/requests.json", content=body, headers=FORM)
    no = r.json()[0]["service_request_id"]

    async def routed():
        t = (await api.get(f"/api/v1/tickets/{no}")).json()
        return t if t["status"] in ("assigned", "review") else None

    t = await eventually(routed)
    record = (await api.get(f"/open311/v2/requests/{no}.json")).json()[0]
    assert record["status"] == "open"
    assert record["service_code"] == t["category"]
    if t["department"]:
        assert record["agency_responsible"] == t["department"]["name"]


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"api_key": "wrong"}, 403, "api_key"),
        ({"api_key": None}, 403, "api_key"),
        ({"service_code": "999"}, 400, "service_code"),
        ({"phone": "111111111"}, 400, "caller_phone"),  # the spec example's phone
        ({"description": "坑"}, 400, "text"),
        ({"lat": None, "long": None, "address_string": None}, 400, "location"),
        ({"lat": "north"}, 400, "lat"),
    ],
)
async def test_rejections_use_the_spec_error_format(api, change, code, words):
    fields = {
        "api_key": KEY,
        "service_code": "city.facility.road_damage",
        "lat": "39.91",
        "long": "116.40",
        "address_string": "和平路",
        "description": "和平路上有一个大坑，车辆经过很危险",
        **change,
    }
    body = urlencode({k: v for k, v in fields.items() if v is not None})
    r = await api.post("/open311/v2/requests.json", content=body, headers=FORM)
    assert r.status_code == code, r.text
    [err] = r.json()
    assert err["code"] == code
    assert words in err["description"]


async def test_invalid_utf8_and_unknown_ids(api):
    r = await api.post(
        "/open311/v2/requests.json", content=b"api_key=" + KEY.encode() + b"&description=%FF%FE", headers=FORM
    )
    assert r.status_code == 400
    assert "UTF-8" in r.json()[0]["description"]
    r = await api.get("/open311/v2/requests/20000101-999999.json")
    assert r.status_code == 404
    assert r.json()[0]["code"] == 404
    r = await api.get("/open311/v2/requests.json", params={"start_date": "yesterday"})
    assert r.status_code == 400
    assert "ISO 8601" in r.json()[0]["description"]


async def test_a_retried_post_with_an_idempotency_key_returns_the_same_request(api):
    body = urlencode(
        {
            "api_key": KEY,
            "service_code": "city.appearance.garbage",
            "address_string": "幸福里小区北门",
            "description": "幸福里小区北门的垃圾站三天没清运了，气味很大",
        }
    )
    headers = {**FORM, "Idempotency-Key": "open311-retry-test-1"}
    first = await api.post("/open311/v2/requests.json", content=body, headers=headers)
    second = await api.post("/open311/v2/requests.json", content=body, headers=headers)
    assert first.json()[0]["service_request_id"] == second.json()[0]["service_request_id"]


# --- media_url: the resident's photo, fetched when the request comes in ---------------------------------


def form_with(media_url: str, text: str = "解放路88号门前的井盖缺失，晚上行人很容易踩空") -> str:
    return urlencode(
        {
            "api_key": KEY,
            "service_code": "city.facility.road_damage",
            "address_string": "解放路88号",
            "description": text,
            "media_url": media_url,
        }
    )


async def test_a_media_url_becomes_the_tickets_photo_as_an_upload_would(api, media):
    url = media.url("/photo-manhole.jpg?width=640&token=abc")
    r = await api.post("/open311/v2/requests.json", content=form_with(url), headers=FORM)
    assert r.status_code == 201, r.text
    no = r.json()[0]["service_request_id"]
    assert media.hits[-1] == ("/photo-manhole.jpg?width=640&token=abc", f"localhost:{media.port}")

    ticket = (await api.get(f"/api/v1/tickets/{no}")).json()
    # Kept as any upload is: decoded and encoded again (the id is the hash of what is kept).
    kept = prepare(media.photo("/photo-manhole.jpg?width=640&token=abc"), max_bytes=MB)
    assert ticket["photos"] == [kept.id]
    photo = await api.get(f"/api/v1/photos/{kept.id}")
    assert photo.headers["content-type"] == "image/jpeg"
    assert photo.content == kept.data

    # A retry with an idempotency key fetches the photo again and gets the same request.
    headers = {**FORM, "Idempotency-Key": f"media-{no}"}
    first = await api.post(
        "/open311/v2/requests.json", content=form_with(url, "井盖缺失的重试测试，解放路90号"), headers=headers
    )
    again = await api.post(
        "/open311/v2/requests.json", content=form_with(url, "井盖缺失的重试测试，解放路90号"), headers=headers
    )
    assert first.status_code == 201, first.text
    assert first.json()[0]["service_request_id"] == again.json()[0]["service_request_id"]


@pytest.mark.parametrize(
    ("path", "host", "error", "words"),
    [
        # The photo host by number: loopback, and only `localhost` is allowed.
        ("/photo-by-number.jpg", "127.0.0.1", "media_url_forbidden", "内部网络地址"),
        ("/to-loopback", "localhost", "media_url_forbidden", "内部网络地址"),  # redirected there
        ("/huge", "localhost", "media_url_too_large", f"不能超过 {PHOTO_MAX_BYTES // 1048576} MB"),
        ("/notes.txt", "localhost", "media_url_not_image", "不是图片"),
        ("/slow", "localhost", "media_url_unreachable", "超时"),
        ("/missing", "localhost", "media_url_unreachable", "HTTP 404"),
    ],
)
async def test_a_media_url_that_gives_no_photo_is_refused_and_nothing_is_registered(
    api, redis, settings, system, media, path, host, error, words
):
    day = datetime.now(ZoneInfo(settings.timezone)).date()
    numbered = await redis.get(f"seq:{day:%Y%m%d}")
    url = media.url(f"{path}?{SECRET}", host=host)
    r = await api.post("/open311/v2/requests.json", content=form_with(url), headers=FORM)
    assert r.status_code == 400, r.text
    [err] = r.json()
    assert (err["code"], err["error"], err["field"]) == (400, error, "media_url")
    assert words in err["message"]
    assert err["description"] == f"media_url: {err['message']}"
    # No number taken, no photo kept.
    assert await redis.get(f"seq:{day:%Y%m%d}") == numbered
    # The photo an address the rules refuse would have given was never asked for, nor kept (the
    # size of the set of photos waiting to be attached proves nothing: the suite's earlier tests'
    # photos leave it meanwhile, as the worker attaches them).
    refused = {"/photo-by-number.jpg": "/photo-by-number.jpg", "/to-loopback": "/photo-redirected.jpg"}
    if target := refused.get(path):
        assert target not in [urlsplit(p).path for p in media.paths()]
        assert await redis.zscore(PENDING, prepare(media.photo(target), max_bytes=MB).id) is None

    # The API logs at most 10 refusals a minute: this file's refusals stay under that.
    def logged() -> str:
        return (system.log_dir / "api.log").read_text(errors="replace")

    async def line() -> list[str]:
        return [x for x in logged().splitlines() if "media_url" in x and f":{media.port}{path} refused" in x]

    assert await eventually(line, timeout=5)
    assert "SECRET-0b1c" not in logged()


async def test_a_refused_media_url_in_xml(api, media):
    url = media.url("/photo-xml.jpg", host="127.0.0.1")
    r = await api.post("/open311/v2/requests.xml", content=form_with(url), headers=FORM)
    assert r.status_code == 400
    [err] = xml_records(r, "errors", "error")
    assert err["code"] == "400"
    assert err["description"].startswith("media_url: media_url指向内部网络地址")


# --- the XML format ----------------------------------------------------------------------------------


def xml_records(r, outer: str, inner: str) -> list[dict[str, str]]:
    assert r.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(r.content)
    assert root.tag == outer
    return [{child.tag: child.text or "" for child in item} for item in root.findall(inner)]


async def test_the_spec_example_sequence_in_xml(api, media):
    r = await api.get("/open311/v2/services.xml", params={"jurisdiction_id": "city.gov"})
    assert r.status_code == 200
    services = xml_records(r, "services", "service")
    assert services[0]["metadata"] == "false"
    assert services[0]["type"] == "realtime"
    code = next(s["service_code"] for s in services if s["service_name"] == "道路破损")

    body = spec_post(code, "13811113333", media)
    r = await api.post("/open311/v2/requests.xml", content=body, headers=FORM)
    assert r.status_code == 201, r.text
    [created] = xml_records(r, "service_requests", "request")
    assert set(created) == {"service_request_id", "service_notice", "account_id"}
    assert created["account_id"] == ""
    no = created["service_request_id"]
    assert f"requests/{no}.xml" in created["service_notice"]

    [record] = xml_records(await api.get(f"/open311/v2/requests/{no}.xml"), "service_requests", "request")
    assert set(record) == SPEC_FIELDS
    assert record["status"] == "open"
    assert record["description"] == ""
    assert float(record["lat"]) == 37.77
    assert record["zipcode"] == ""
    listed = xml_records(
        await api.get("/open311/v2/requests.xml", params={"service_request_id": no}),
        "service_requests",
        "request",
    )
    assert [x["service_request_id"] for x in listed] == [no]


async def test_xml_errors_and_unknown_formats(api):
    r = await api.post("/open311/v2/requests.xml", content=urlencode({"api_key": "wrong"}), headers=FORM)
    assert r.status_code == 403
    [err] = xml_records(r, "errors", "error")
    assert err["code"] == "403"
    assert "api_key" in err["description"]
    r = await api.get("/open311/v2/requests/20000101-999999.xml")
    assert r.status_code == 404
    assert xml_records(r, "errors", "error")[0]["code"] == "404"
    r = await api.get("/open311/v2/services.csv")
    assert r.status_code == 404
    assert ".json or .xml" in r.json()[0]["description"]


def test_xml_escapes_markup_and_drops_characters_xml_cannot_carry():
    from services.intake.open311 import to_xml

    xml = to_xml("requests", [{"description": "<b>噪音</b> & \x01夜间施工", "lat": None, "metadata": True}])
    [item] = ET.fromstring(xml).findall("request")
    assert item.find("description").text == "<b>噪音</b> & 夜间施工"
    assert item.find("lat").text is None
    assert item.find("metadata").text == "true"
