"""A WeChat image message's picture, fetched from WeChat's media host (the message names its
`PicUrl`). Only the hosts WECHAT_MEDIA_HOSTS lists are asked, without following redirects, for at
most PHOTO_MAX_BYTES and within a few seconds: a push must not make this server fetch any address
it names (an internal service, a huge file), and WeChat wants the reply within five seconds."""

from __future__ import annotations

from urllib.parse import urlsplit

from services.intake import media_fetch, media_rules
from shared.settings import Settings

TIMEOUT_SECONDS = 3


class MediaRefused(Exception):
    """The picture is not fetched: a host not WeChat's, an answer not a picture, too large, or
    WeChat's host did not answer in time."""


def hosts(settings: Settings) -> frozenset[str]:
    return media_rules.allowed_hosts(settings.wechat_media_hosts)


def allowed(url: str, settings: Settings) -> bool:
    parts = urlsplit(url)
    host = media_rules.normal_host(parts.hostname or "")
    return parts.scheme in ("http", "https") and host in hosts(settings)


async def fetch_picture(url: str, settings: Settings) -> bytes:
    """The picture, by Open311's guarded fetcher (the addresses checked when connecting, the body
    counted as it streams), from a listed host only and with no redirect: WeChat's media host
    answers itself."""
    if not allowed(url, settings):
        raise MediaRefused(f"not a WeChat media host: {urlsplit(url).hostname!r}")
    try:
        return await media_fetch.fetch_guarded(
            url,
            allowed_hosts=hosts(settings),
            max_bytes=settings.photo_max_bytes,
            step=TIMEOUT_SECONDS,
            total=TIMEOUT_SECONDS,
            max_redirects=0,
        )
    except media_rules.MediaRefused as e:
        raise MediaRefused(e.detail) from None
