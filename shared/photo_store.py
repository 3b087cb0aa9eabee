"""Where photos are kept: files under DATA_DIR/photos (the embedded default), or a bucket of an
S3-compatible store (MinIO, Ceph, a cloud's; `deploy/`). One client for both: obstore (the Rust
`object_store` behind an asyncio API), so the code is the same whichever a city runs.

A photo is stored at `{id[:2]}/{id}.jpg` (see `shared.photos`: the id is the hash of the JPEG).
Events carry the ids, never the bytes: a message stays a few hundred bytes, and erasing a ticket's
photos is deleting a few objects, not rewriting the broker.

An upload is kept before any ticket names it (the form sends the photos first, then the appeal),
so it is also listed in `photos:pending` (Redis, id -> when). The records worker, which sees every
event, removes from there what a ticket took, and deletes what no ticket took within
PHOTO_UNATTACHED_HOURS: a photo chosen and then not sent does not stay for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import LocalStore, ObjectStore, S3Store
from redis.asyncio import Redis

from shared.errors import DomainError, Unavailable
from shared.photos import Photo
from shared.settings import Settings

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

log = logging.getLogger("photos")
PENDING = "photos:pending"


class PhotoMissing(DomainError):
    kind = "invalid"


def key(photo_id: str, thumbnail: bool = False) -> str:
    return f"{photo_id[:2]}/{photo_id}{'.thumb' if thumbnail else ''}.jpg"


def open_store(settings: Settings) -> ObjectStore:
    url = settings.photo_store_url
    if not url:
        root = Path(settings.data_dir, "photos").resolve()
        root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root)
    if not url.startswith(("s3://", "s3a://")):
        raise ValueError(f"PHOTO_STORE_URL must be empty (files under DATA_DIR) or s3://BUCKET, not {url!r}")
    config: dict[str, Any] = {"region": settings.photo_s3_region}
    options: dict[str, Any] = {"timeout": "10s", "connect_timeout": "3s"}
    if settings.photo_s3_endpoint:
        config["endpoint"] = settings.photo_s3_endpoint
        # MinIO and most self-hosted stores answer at one host, the bucket in the path.
        config["virtual_hosted_style_request"] = False
        options["allow_http"] = settings.photo_s3_endpoint.startswith("http://")
    if settings.photo_s3_access_key:
        config["access_key_id"] = settings.photo_s3_access_key
        config["secret_access_key"] = settings.photo_s3_secret_key
    # A request waits for the upload: a store that is away is said at once (503), not retried
    # for the library's default three minutes.
    retry: dict[str, Any] = {"max_retries": 2, "retry_timeout": timedelta(seconds=5)}
    return S3Store.from_url(
        url,
        config=cast("S3Config", config),
        client_options=cast("ClientConfig", options),
        retry_config=cast("RetryConfig", retry),
    )


class PhotoStore:
    def __init__(self, store: ObjectStore, redis: Redis) -> None:
        self.store = store
        self.redis = redis

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis) -> PhotoStore:
        return cls(open_store(settings), redis)

    async def put(self, photo: Photo) -> None:
        """Keep the photo (again, harmlessly, if it is there already), listed as not yet attached."""
        try:
            # The thumbnail first: a photo found (`require`) always has one.
            await obstore.put_async(self.store, key(photo.id, thumbnail=True), photo.thumbnail)
            await obstore.put_async(self.store, key(photo.id), photo.data)
        except BaseError as e:
            log.warning("photo store unavailable: %s", str(e).splitlines()[0][:200])
            raise Unavailable() from None
        await self.redis.zadd(PENDING, {photo.id: time.time()}, nx=True)

    async def get(self, photo_id: str, thumbnail: bool = False) -> bytes | None:
        try:
            result = await obstore.get_async(self.store, key(photo_id, thumbnail))
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):
            return None
        except BaseError as e:
            log.warning("photo store unavailable: %s", str(e).splitlines()[0][:200])
            raise Unavailable() from None

    async def _exists(self, photo_id: str) -> bool:
        try:
            await obstore.head_async(self.store, key(photo_id))
            return True
        except (NotFoundError, FileNotFoundError):
            return False

    async def require(self, ids: Sequence[str], field: str = "photos") -> None:
        """Refuse ids that name no kept photo (never uploaded, or deleted since): a ticket must
        not promise a photo nobody can open."""
        if not ids:
            return
        try:
            found = await asyncio.gather(*(self._exists(i) for i in ids))
        except BaseError as e:
            log.warning("photo store unavailable: %s", str(e).splitlines()[0][:200])
            raise Unavailable() from None
        if missing := [i for i, ok in zip(ids, found, strict=True) if not ok]:
            raise PhotoMissing(
                "photo_missing",
                f"有 {len(missing)} 张照片未找到（可能已过期被清理），请重新上传后再提交",
                field=field,
            )

    async def delete(self, ids: Iterable[str]) -> int:
        """Delete these photos; returns how many were there."""
        ids = list(dict.fromkeys(ids))
        deleted = 0
        for i in ids:
            if await self._exists(i):
                await obstore.delete_async(self.store, key(i))
                deleted += 1
            with contextlib.suppress(NotFoundError, FileNotFoundError):
                await obstore.delete_async(self.store, key(i, thumbnail=True))
        if ids:
            await self.redis.zrem(PENDING, *ids)
        return deleted

    async def attached(self, ids: Iterable[str]) -> None:
        """These photos belong to a ticket now: no longer candidates for the unattached sweep."""
        if ids := list(ids):
            await self.redis.zrem(PENDING, *ids)

    async def pending_before(self, before: float, limit: int = 1000) -> list[str]:
        """Photos uploaded before `before` (epoch seconds) that no ticket has taken yet."""
        raw = await self.redis.zrangebyscore(PENDING, "-inf", before, start=0, num=limit)
        return [r.decode() for r in cast("list[bytes]", raw)]
