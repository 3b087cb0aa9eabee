"""What an Open311 `media_url` may point at, and why one is refused. Pure: the fetcher
(`media_fetch.py`) applies these rules to the URL and to every address its host resolves to, on
every hop, before it connects.

The URL is the client's, and the server fetching it stands inside the city's network: without
these rules a request could make it read the cloud's metadata service (169.254.169.254), an admin
page on loopback or any intranet host, and hand the answer back as a "photo". So only http and
https, no credentials in the URL, and only addresses that are globally reachable. A city that keeps
residents' photos on its own intranet media server names that host in OPEN311_MEDIA_ALLOWED_HOSTS:
a host named there may resolve to a private, loopback or link-local address.

Refusals say what to fix, in Chinese (the Open311 client shows them to the resident); `detail` is
for the log, in English, and never holds the URL's query string (it may carry a token)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from shared.errors import DomainError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
FIELD = "media_url"
MAX_REDIRECTS = 3  # a short link and a CDN's hop or two; more is a loop or a maze
SCHEMES = ("http", "https")

# Prefixes that carry an IPv4 address in an IPv6 one: the embedded IPv4 address is where the packet
# ends up, so it is judged instead (an IPv4-mapped ::ffff:127.0.0.1 reaches loopback).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598): never the internet


INVALID_MESSAGE = "media_url不是有效的链接，请提供照片的完整网址（以http://或https://开头）"


class MediaRefused(DomainError):
    """The media_url is not fetched, or what it gave is not a photo we keep (HTTP 400)."""

    kind = "invalid"

    def __init__(self, code: str, message: str, detail: str) -> None:
        super().__init__(code, message, field=FIELD)
        self.detail = detail  # for the log only


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped (::ffff:a.b.c.d), NAT64's well-known
    prefix (64:ff9b::a.b.c.d) or 6to4 (2002:aabb:ccdd::). None for a plain IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_class(ip: IPAddress) -> str | None:
    """The class an address is refused for, or None for a globally reachable unicast address.
    Classes: unspecified, multicast, loopback, link-local, reserved, private (including IPv6
    unique-local and site-local, and the documentation and benchmarking ranges), shared (100.64/10),
    and not-global (any other range IANA marks as not globally reachable)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return address_class(inner)
        if ip.is_site_local:  # fec0::/10: deprecated, still routed inside some networks
            return "private"
    # The order names the most specific class: 240.0.0.1 is both reserved and "private" to Python.
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared"
    if not ip.is_global:
        return "not-global"
    return None


# Never a server, whatever a city allows: 0.0.0.0 and :: connect to this machine itself, and a
# multicast group takes no TCP connection.
NEVER = frozenset({"unspecified", "multicast"})


def address_refusal(ip: IPAddress, host_allowed: bool) -> str | None:
    """Why a connection to `ip` is refused (its class), or None when it may be made. A host the city
    allows (OPEN311_MEDIA_ALLOWED_HOSTS) may resolve to an internal address."""
    cls = address_class(ip)
    if cls is None or (host_allowed and cls not in NEVER):
        return None
    return cls


def normal_host(host: str) -> str:
    """A host as the allow-list compares it: lower case, no trailing dot, no IPv6 brackets."""
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def allowed_hosts(setting: str) -> frozenset[str]:
    """OPEN311_MEDIA_ALLOWED_HOSTS (comma-separated host names or addresses) as a set."""
    return frozenset(h for h in (normal_host(p) for p in setting.split(",")) if h)


def check_url(scheme: str, userinfo: str, host: str) -> None:
    """The URL's own parts: http or https, a host, no credentials. Raises MediaRefused."""
    if scheme not in SCHEMES:
        raise MediaRefused(
            "media_url_invalid",
            "media_url应为以http://或https://开头的照片链接",
            f"scheme {scheme[:20]!r} refused",
        )
    if userinfo:
        raise MediaRefused(
            "media_url_invalid",
            "media_url不能包含用户名或密码，请提供无需登录即可访问的照片链接",
            "credentials in the URL",
        )
    if not host:
        raise MediaRefused("media_url_invalid", INVALID_MESSAGE, "no host")


def invalid(detail: str) -> MediaRefused:
    return MediaRefused("media_url_invalid", INVALID_MESSAGE, detail)


def forbidden(host: str, ip: IPAddress, cls: str) -> MediaRefused:
    return MediaRefused(
        "media_url_forbidden",
        "media_url指向内部网络地址，不允许访问，请提供可从互联网公开访问的照片链接",
        f"{host if host == str(ip) else f'{host} resolves to {ip}'} ({cls})",
    )


def unreachable(what: str, detail: str) -> MediaRefused:
    """`what`: the cause as the client should read it (连接超时, 服务器返回HTTP 404...)."""
    return MediaRefused(
        "media_url_unreachable", f"无法获取media_url的照片（{what}），请确认链接可公开访问后重试", detail
    )


def too_many_redirects(limit: int = MAX_REDIRECTS) -> MediaRefused:
    return MediaRefused(
        "media_url_unreachable",
        f"media_url跳转超过{limit}次，请提供照片本身的直接链接",
        f"more than {limit} redirect(s)",
    )


def too_large(max_bytes: int, detail: str) -> MediaRefused:
    return MediaRefused(
        "media_url_too_large",
        f"media_url的照片太大，单张照片不能超过 {max_bytes // 1048576} MB，请压缩后再提供链接",
        detail,
    )


def not_a_photo(photo_code: str, max_bytes: int) -> MediaRefused:
    """What the URL gave, refused by the photo rules (`shared.photos.prepare`, its code)."""
    if photo_code == "photo_too_large":
        return too_large(max_bytes, "larger than the photo limit")
    if photo_code == "photo_pixels":
        return MediaRefused(
            "media_url_too_large", "media_url的照片像素过多，请缩小后再提供链接", "too many pixels"
        )
    return MediaRefused(
        "media_url_not_image",
        "media_url的内容不是图片，请提供JPG、PNG或WebP格式照片本身的链接（而不是网页）",
        f"not an image ({photo_code})",
    )


def loggable(url: str) -> str:
    """The URL as a log may show it: scheme, host, port and path, at most 200 characters. No
    query string or fragment (a signed link carries its token there) and no credentials."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"[:200]
