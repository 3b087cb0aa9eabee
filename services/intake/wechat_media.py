"""A WeChat image message's picture, fetched from WeChat's media host (the message names its
`PicUrl`). Only the hosts WECHAT_MEDIA_HOSTS lists are asked, without following redirects, for at
most PHOTO_MAX_BYTES and within a few seconds: a push must not make this server fetch any address
it names (an internal service, a huge file), and WeChat wants the reply within five seconds."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from shared.settings import Settings

TIMEOUT_SECONDS = 3


class MediaRefused(Exception):
    """The picture is not fetched: a host not WeChat's, an answer not a picture, too large, or
    WeChat's host did not answer in time."""


def allowed(url: str, settings: Settings) -> bool:
    parts = urlsplit(url)
    hosts = {h.strip().lower() for h in settings.wechat_media_hosts.split(",") if h.strip()}
    return parts.scheme in ("http", "https") and (parts.hostname or "").lower() in hosts


async def fetch_picture(url: str, settings: Settings) -> bytes:
    if not allowed(url, settings):
        raise MediaRefused(f"not a WeChat media host: {urlsplit(url).hostname!r}")
    limit = settings.photo_max_bytes
    try:
        async with (
            httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise MediaRefused(f"WeChat's media host answered {response.status_code}")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > limit:
                    raise MediaRefused(f"larger than {limit} bytes")
            return bytes(data)
    except httpx.HTTPError as e:
        raise MediaRefused(f"{type(e).__name__}: {e}") from None
