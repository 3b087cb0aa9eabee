"""Open311's media_url, without the system: the address rules (services/intake/media_rules.py) and
the fetcher (services/intake/media_fetch.py) against a real HTTP server on loopback
(tests/media_server.py), the resolver played by the test where a DNS server's answer matters.
The request end to end, with the photo on the ticket: tests/test_intake_open311.py."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterator

import httpcore
import pytest

from services.intake import media_fetch, media_rules
from services.intake.media_fetch import BoundedLog, GuardedBackend, fetch
from services.intake.media_rules import MediaRefused, address_class, address_refusal
from shared.settings import Settings
from tests.media_server import MediaServer, media_server

LIMIT = 256 * 1024  # PHOTO_MAX_BYTES here: the photos served are a few kilobytes


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    with media_server() as server:
        yield server


def settings(allowed: str = "localhost", timeout: float = 1) -> Settings:
    return Settings(
        open311_media_allowed_hosts=allowed, open311_media_timeout_seconds=timeout, photo_max_bytes=LIMIT
    )


# --- the address rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "cls"),
    [
        ("0.0.0.0", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("0.1.2.3", "private"),  # "this network"
        ("192.0.2.10", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("169.254.169.254", "link-local"),  # the cloud's metadata service
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "shared"),  # carrier-grade NAT
        ("100.100.100.200", "shared"),  # a cloud's metadata service inside it
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),  # unique local
        ("fd12:3456:789a::1", "private"),
        ("fec0::1", "private"),  # site-local (deprecated)
        ("2001:db8::1", "private"),  # documentation
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
        # IPv6 addresses that carry an IPv4 one are judged by it.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("::ffff:224.0.0.1", "multicast"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:7f00:1::1", "loopback"),  # 6to4
        ("2002:c0a8:101::1", "private"),
    ],
)
def test_an_address_that_is_not_globally_reachable_is_refused_with_its_class(address: str, cls: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_class(ip) == cls
    assert address_refusal(ip, host_allowed=False) == cls


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_a_public_address_is_allowed(address: str) -> None:
    assert address_class(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("10.1.2.3", None),
        ("127.0.0.1", None),
        ("::1", None),
        ("169.254.10.1", None),
        ("fd00::5", None),
        ("0.0.0.0", "unspecified"),  # never a server: it connects to this machine itself
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
    ],
)
def test_a_host_the_city_allows_may_be_internal_but_never_unspecified_or_multicast(
    address: str, refused: str | None
) -> None:
    assert address_refusal(ipaddress.ip_address(address), host_allowed=True) == refused


def test_the_allow_list_is_compared_as_hosts_are_written() -> None:
    assert media_rules.allowed_hosts(" Media.City.GOV ,, [fd00::5], localhost. ") == {
        "media.city.gov",
        "fd00::5",
        "localhost",
    }
    assert media_rules.allowed_hosts("") == frozenset()
    assert Settings().open311_media_allowed_hosts == ""  # nothing internal unless a city says so


# --- the URL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/photo.jpg", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme"),
        ("photo.jpg", "scheme"),
        ("//example.com/photo.jpg", "scheme"),
        ("http://user:secret@example.com/photo.jpg", "credentials"),
        ("https://token@example.com/photo.jpg", "credentials"),
        ("http:///photo.jpg", "no host"),
        ("http://[::1/photo.jpg", "unparsable"),
        ("https://example.com/" + "a" * 3000, "longer"),
    ],
)
async def test_a_url_that_may_not_be_fetched_is_refused_before_any_lookup(url: str, detail: str) -> None:
    async def resolver(host: str, port: int) -> list[media_rules.IPAddress]:
        raise AssertionError("no lookup for a URL refused as written")

    with pytest.raises(MediaRefused) as e:
        await fetch(url, settings(), resolve=resolver)
    assert e.value.code == "media_url_invalid"
    assert e.value.field == "media_url"
    assert detail in e.value.detail
    assert "http" in e.value.message or "链接" in e.value.message


def test_the_log_shows_no_query_string_fragment_or_credentials() -> None:
    url = "https://user:pw@photos.example.com:8443/a/b.jpg?X-Amz-Signature=secret&token=t#frag"
    assert media_rules.loggable(url) == "https://photos.example.com:8443/a/b.jpg"
    assert media_rules.loggable("http://[fd00::5]/p.jpg?k=v") == "http://[fd00::5]/p.jpg"
    assert media_rules.loggable("http://[::1") == "(unparsable URL)"


# --- the fetcher, against a server on loopback ------------------------------------------------------------


async def test_an_allowed_host_is_fetched_with_its_own_host_header(media: MediaServer) -> None:
    data = await fetch(media.url("/photo-1.jpg?size=large"), settings())
    assert data == media.photo("/photo-1.jpg?size=large")
    assert media.hits[-1] == ("/photo-1.jpg?size=large", f"localhost:{media.port}")


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"],
)
async def test_loopback_is_refused_without_the_allow_list_however_it_is_written(
    media: MediaServer, host: str
) -> None:
    before = len(media.hits)
    with pytest.raises(MediaRefused) as e:
        await fetch(media.url("/photo-2.jpg", host=host), settings(allowed=""))
    assert e.value.code == "media_url_forbidden"
    assert "内部网络" in e.value.message
    assert len(media.hits) == before  # not connected at all


async def test_localhost_is_refused_unless_allowed(media: MediaServer) -> None:
    with pytest.raises(MediaRefused) as e:
        await fetch(media.url("/photo-3.jpg"), settings(allowed="media.city.gov"))
    assert e.value.code == "media_url_forbidden"
    assert "localhost resolves to 127.0.0.1 (loopback)" in e.value.detail
    assert await fetch(media.url("/photo-3.jpg"), settings(allowed="media.city.gov,LOCALHOST"))


class Recording(httpcore.AsyncNetworkBackend):
    """The real connector, noting the addresses it is asked to connect to."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connected: list[str] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connected.append(host)
        return await self.inner.connect_tcp(host, port, timeout=timeout)


async def test_the_checked_address_is_the_one_connected_to_with_no_second_lookup(media: MediaServer) -> None:
    # A rebinding DNS server: the first answer is the one checked, later ones would point elsewhere.
    answers = [[ipaddress.ip_address("127.0.0.1")], [ipaddress.ip_address("10.0.0.1")]]
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[media_rules.IPAddress]:
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    backend = GuardedBackend(frozenset({"photos.city.test"}), rebinding)
    backend.inner = recording = Recording()
    stream = await backend.connect_tcp("photos.city.test", media.port, timeout=1)
    await stream.aclose()
    assert asked == ["photos.city.test"]
    assert recording.connected == ["127.0.0.1"]


async def test_a_name_with_any_internal_address_is_refused_before_connecting() -> None:
    async def mixed(host: str, port: int) -> list[media_rules.IPAddress]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("::ffff:192.168.0.1")]

    backend = GuardedBackend(frozenset(), mixed)
    backend.inner = recording = Recording()
    with pytest.raises(MediaRefused) as e:
        await backend.connect_tcp("photos.example.com", 80, timeout=1)
    assert e.value.code == "media_url_forbidden"
    assert "::ffff:c0a8:1 (private)" in e.value.detail
    assert recording.connected == []


async def test_the_fetch_goes_through_the_guard_with_the_resolver_it_is_given(media: MediaServer) -> None:
    async def resolver(host: str, port: int) -> list[media_rules.IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    # A public-looking name that a DNS server points at loopback: refused, then allowed by name.
    with pytest.raises(MediaRefused) as e:
        await fetch(f"http://photos.example.com:{media.port}/photo-4.jpg", settings(allowed=""), resolver)
    assert "photos.example.com resolves to 127.0.0.1 (loopback)" in e.value.detail
    got = await fetch(
        f"http://photos.example.com:{media.port}/photo-4.jpg",
        settings(allowed="photos.example.com"),
        resolver,
    )
    assert got == media.photo("/photo-4.jpg")
    assert media.hits[-1] == ("/photo-4.jpg", f"photos.example.com:{media.port}")


async def test_redirects_are_followed_a_few_times_each_target_checked(media: MediaServer) -> None:
    assert await fetch(media.url("/chain/3"), settings()) == media.photo("/photo-chain.jpg")
    assert await fetch(media.url("/relative"), settings()) == media.photo("/photo-relative.jpg")
    with pytest.raises(MediaRefused) as e:
        await fetch(media.url("/chain/4"), settings())
    assert e.value.code == "media_url_unreachable"
    assert "跳转超过3次" in e.value.message

    before = media.paths()
    with pytest.raises(MediaRefused) as e:
        await fetch(media.url("/to-loopback"), settings())
    assert e.value.code == "media_url_forbidden"
    assert "after 1 redirect(s), to http://127.0.0.1" in e.value.detail
    assert media.paths()[len(before) :] == ["/to-loopback"]  # the target was never asked

    with pytest.raises(MediaRefused) as e:
        await fetch(media.url("/to-ftp"), settings())
    assert e.value.code == "media_url_invalid"


async def test_a_body_over_the_limit_is_refused_without_reading_it_all(media: MediaServer) -> None:
    started = time.monotonic()
    for path in ("/huge", "/huge-declared"):
        with pytest.raises(MediaRefused) as e:
            await fetch(media.url(path), settings())
        assert e.value.code == "media_url_too_large"
        assert "不能超过" in e.value.message
    assert time.monotonic() - started < 5  # the endless body is a gigabyte: it was not read


async def test_a_server_that_does_not_answer_in_time_is_unreachable(media: MediaServer) -> None:
    started = time.monotonic()
    with pytest.raises(MediaRefused) as e:
        await fetch(media.url("/slow"), settings(timeout=0.5))
    assert e.value.code == "media_url_unreachable"
    assert "超时" in e.value.message
    assert time.monotonic() - started < 3


async def test_unreachable_hosts_say_why(media: MediaServer) -> None:
    with pytest.raises(MediaRefused) as e:
        await fetch(media.url("/missing"), settings())
    assert "服务器返回HTTP 404" in e.value.message

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(MediaRefused) as e:
        await fetch(f"http://localhost:{closed}/photo.jpg", settings())
    assert "无法连接到服务器" in e.value.message

    async def no_such_name(host: str, port: int) -> list[media_rules.IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(MediaRefused) as e:
        await fetch("https://no-such-host.example/photo.jpg", settings(), no_such_name)
    assert "域名无法解析" in e.value.message


async def test_a_proxy_in_the_environment_is_not_used(media: MediaServer, monkeypatch) -> None:
    # A proxy would resolve and connect by itself, past the guard. This one does not even exist.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    assert await fetch(media.url("/photo-5.jpg"), settings()) == media.photo("/photo-5.jpg")


# --- the log --------------------------------------------------------------------------------------------


def test_refusals_are_logged_at_a_bounded_rate(caplog) -> None:
    now = [1000.0]
    bounded = BoundedLog(logging.getLogger("test.media"), per_minute=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.media"):
        for i in range(10):
            bounded.warning("refused %d", i)
        assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
        now[0] += 61
        bounded.warning("refused %d", 10)
    assert [r.getMessage() for r in caplog.records][3:] == [
        "7 more such warnings were not logged (at most 3 a minute)",
        "refused 10",
    ]


def test_a_refusal_is_logged_without_the_query_string(caplog) -> None:
    refusal = media_rules.forbidden("10.0.0.8", ipaddress.ip_address("10.0.0.8"), "private")
    with caplog.at_level(logging.WARNING, logger=media_fetch.log.name):
        media_fetch.log_refusal("http://10.0.0.8/p.jpg?token=SECRET", refusal)
    assert "http://10.0.0.8/p.jpg" in caplog.text
    assert "SECRET" not in caplog.text
    assert "10.0.0.8 (private)" in caplog.text
