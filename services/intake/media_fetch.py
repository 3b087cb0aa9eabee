"""Fetching an Open311 request's `media_url`, the photo of the problem, safely (the rules are in
`media_rules.py`).

The URL is the client's, so the fetch must not become a way into the city's network. It goes
through httpcore, httpx's own connection layer, whose connection pool takes a network backend: ours
(`GuardedBackend`) is where every connection is opened, the first and each redirect's. It resolves
the host once, refuses the connection if any address it resolves to is not globally reachable
(unless the city allows the host), and connects to an address it checked: there is no second
lookup a rebinding DNS server could answer differently. TLS still verifies the certificate for the
URL's host name, and the Host header is the URL's. No proxy from the environment is used (the pool
reads none), so nothing else resolves the name.

Redirects are followed by hand, at most MAX_REDIRECTS, each target checked as the first URL was.
Resolving, connecting and each read wait at most OPEN311_MEDIA_TIMEOUT_SECONDS, the whole fetch
three times that. The body is read as it streams and refused as soon as it passes
PHOTO_MAX_BYTES (a declared Content-Length over it before any of it is read); it is asked for
without compression, so what is counted is what is kept."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

from services.intake import media_rules
from services.intake.media_rules import IPAddress, MediaRefused
from shared.settings import Settings

log = logging.getLogger(__name__)
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_URL_LENGTH = 2048
HEADERS = [
    (b"Accept", b"image/jpeg, image/png, image/webp"),
    (b"Accept-Encoding", b"identity"),
    (b"User-Agent", b"appeals-open311-media/1"),
]
# A host's addresses, looked up once per connection (a test passes its own to play a DNS server).
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host` as the system resolver gives them (an address literal is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found = (
        ipaddress.ip_address(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)
    )
    return list(dict.fromkeys(found))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens the pool's connections: resolve once, check every address, connect to a checked one."""

    def __init__(self, allowed_hosts: frozenset[str], resolve: Resolve = system_resolve) -> None:
        self.allowed_hosts = allowed_hosts
        self.resolve = resolve
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface names it)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        name = media_rules.normal_host(host)
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolve(name, port)
        except TimeoutError:
            raise media_rules.unreachable("域名解析超时", f"resolving {name} timed out") from None
        except OSError as e:  # socket.gaierror: no such name, or no resolver
            raise media_rules.unreachable("域名无法解析", f"{name} does not resolve: {e}") from None
        if not addresses:
            raise media_rules.unreachable("域名无法解析", f"{name} has no address")
        allowed = name in self.allowed_hosts
        # Every address, not only the first: a name answering with a public and a private address
        # would otherwise reach the private one when the public one does not answer.
        for ip in addresses:
            if cls := media_rules.address_refusal(ip, allowed):
                raise media_rules.forbidden(name, ip, cls)
        failed: Exception | None = None
        for ip in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                failed = e
        raise failed or httpcore.ConnectError(f"no address of {name} answered")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def parse(url: str) -> httpx.URL:
    """The URL, if it may be fetched at all (scheme, host, no credentials). Raises MediaRefused."""
    if len(url) > MAX_URL_LENGTH:
        raise media_rules.invalid(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError):
        raise media_rules.invalid("unparsable") from None
    media_rules.check_url(parsed.scheme, parsed.userinfo.decode("latin-1"), parsed.raw_host.decode("ascii"))
    return parsed


async def fetch(url: str, settings: Settings, resolve: Resolve = system_resolve) -> bytes:
    """An Open311 media_url's bytes (at most PHOTO_MAX_BYTES), following up to MAX_REDIRECTS
    redirects. Raises MediaRefused saying why not: an invalid URL, an address not allowed,
    unreachable (no such host, no answer in time, an HTTP error), too large."""
    step = settings.open311_media_timeout_seconds
    return await fetch_guarded(
        url,
        allowed_hosts=media_rules.allowed_hosts(settings.open311_media_allowed_hosts),
        max_bytes=settings.photo_max_bytes,
        step=step,
        total=3 * step,
        resolve=resolve,
    )


async def fetch_guarded(
    url: str,
    *,
    allowed_hosts: frozenset[str],
    max_bytes: int,
    step: float,
    total: float,
    max_redirects: int = media_rules.MAX_REDIRECTS,
    resolve: Resolve = system_resolve,
) -> bytes:
    """The bytes `url` gives, fetched by the rules above: each step (resolving, connecting, each
    read) within `step` seconds, the whole within `total`. Raises MediaRefused."""
    backend = GuardedBackend(allowed_hosts, resolve)
    target = parse(url)
    hops = 0
    try:
        async with (
            asyncio.timeout(total),
            httpcore.AsyncConnectionPool(
                ssl_context=httpcore.default_ssl_context(), network_backend=backend, retries=0
            ) as pool,
        ):
            while True:
                got = await _get(pool, target, max_bytes, step)
                if isinstance(got, bytes):
                    return got
                if hops == max_redirects:
                    raise media_rules.too_many_redirects(max_redirects)
                hops += 1
                try:
                    target = parse(str(target.join(got)))
                except httpx.InvalidURL:
                    raise media_rules.invalid("a redirect to an unparsable URL") from None
    except MediaRefused as e:
        if hops:
            e.detail = f"after {hops} redirect(s), to {media_rules.loggable(str(target))}: {e.detail}"
        raise
    except (TimeoutError, httpcore.TimeoutException) as e:
        raise media_rules.unreachable("连接或读取超时", f"timed out ({type(e).__name__})") from None
    except httpcore.ConnectError as e:
        raise media_rules.unreachable("无法连接到服务器", f"cannot connect: {e}") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as e:
        raise media_rules.unreachable("服务器的回答无法读取", f"{type(e).__name__}: {e}") from None


async def _get(pool: httpcore.AsyncConnectionPool, url: httpx.URL, limit: int, step: float) -> bytes | str:
    """One request: the body, or a redirect's Location."""
    request_url = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
    timeouts = {"connect": step, "read": step, "write": step, "pool": step}
    async with pool.stream(
        "GET", request_url, headers=[(b"Host", url.netloc), *HEADERS], extensions={"timeout": timeouts}
    ) as response:
        if response.status in REDIRECTS:
            location = _header(response, b"location")
            if not location:
                raise media_rules.unreachable(
                    f"服务器返回HTTP {response.status}", f"HTTP {response.status} without a Location"
                )
            return location
        if response.status != 200:
            raise media_rules.unreachable(f"服务器返回HTTP {response.status}", f"HTTP {response.status}")
        declared = _header(response, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise media_rules.too_large(limit, f"Content-Length {declared}")
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > limit:
                raise media_rules.too_large(limit, f"more than {limit} bytes")
        return bytes(body)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


class BoundedLog:
    """Warnings at a bounded rate: at most `per_minute` lines a minute, then the count of those held
    back with the next line let through. A client sending bad links in a loop must not fill the log."""

    def __init__(
        self, logger: logging.Logger, per_minute: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.clock = clock
        self.window = clock()
        self.logged = 0
        self.held = 0

    def warning(self, msg: str, *args: object) -> None:
        now = self.clock()
        if now - self.window >= 60:
            if self.held:
                self.logger.warning(
                    "%d more such warnings were not logged (at most %d a minute)", self.held, self.per_minute
                )
            self.window, self.logged, self.held = now, 0, 0
        if self.logged < self.per_minute:
            self.logged += 1
            self.logger.warning(msg, *args)
        else:
            self.held += 1


FAILURES = BoundedLog(log, per_minute=10)


def log_refusal(url: str, refusal: MediaRefused) -> None:
    """A refused media_url in the log: where it pointed (no query string) and why."""
    FAILURES.warning("Open311 media_url %s refused: %s", media_rules.loggable(url), refusal.detail)
