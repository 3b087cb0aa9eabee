"""Photos over HTTP: staff upload them (a hotline operator or the dispatch desk with an appeal, a
department with its resolution) and read them back by id.

An upload comes before what it belongs to: the form sends the photos, gets their ids, then sends
the appeal or the resolution naming them (`AppealIn.photos`, `ResolveIn.photos`), which checks
that every id names a kept photo. What is kept is never the file as sent but what
`shared.photos.prepare` makes of it (a clean, bounded JPEG), so the id is the hash of our own
encoding and cannot be guessed: any staff token may read a photo it can name."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.intake.errors import BadRequest
from shared.auth import Principal, Role, require_role
from shared.bodies import Limit
from shared.errors import DomainError
from shared.http import multipart_schema
from shared.photo_store import PhotoStore
from shared.photos import MAX_PER_ITEM, Photo, PhotoRefused, checked_ids, prepare
from shared.settings import Settings

router = APIRouter(prefix="/api/v1", tags=["photos"])
FIELD = "photos"
# Who attaches photos: intake (operators, grid workers on patrol), the desk, departments.
UPLOADERS: tuple[Role, ...] = ("operator", "grid_worker", "admin", "department")
DECODING_AT_ONCE = 2  # photos decoded at the same time per process: a 50-megapixel one takes ~150 MB
# The browser keeps a photo for a day without asking again; the content never changes under its id.
CACHE = "private, max-age=86400, immutable"
NAME_MAX = 60  # characters of a file's name quoted back in a refusal


def photo_store(request: Request) -> PhotoStore:
    """The API process's one photo store (made at start-up, beside the ticket store)."""
    store: PhotoStore = request.app.state.photos
    return store


require_staff = require_role(*UPLOADERS, refusal="只有话务员、网格员、派单中心和承办单位可以上传和查看照片")


def upload_limit(settings: Settings) -> int:
    """The body of one upload: the most photos a request may carry, and room for the multipart
    framing and a form's other fields (the console posts its form's text with the photos)."""
    return MAX_PER_ITEM * settings.photo_max_bytes + settings.max_body_bytes


def body_limits(settings: Settings) -> dict[str, Limit]:
    return {"/api/v1/photos": Limit(upload_limit(settings), upload_advice(settings))}


def upload_advice(settings: Settings) -> str:
    return f"每次最多上传{MAX_PER_ITEM}张照片，单张不超过{settings.photo_max_bytes // 1048576} MB"


async def decode(state: Any, raw: bytes, name: str = "") -> Photo:
    """The photo to keep from an upload's bytes (`prepare`), off the event loop (a phone's photo
    takes tens of milliseconds) and at most DECODING_AT_ONCE at a time in the process, whichever
    channel it came by. `state`: the app's state, which holds the settings and the slots (made on
    first use, in the app's own event loop)."""
    if not hasattr(state, "photo_decoding"):
        state.photo_decoding = asyncio.Semaphore(DECODING_AT_ONCE)
    slots: asyncio.Semaphore = state.photo_decoding
    async with slots:
        return await asyncio.to_thread(prepare, raw, max_bytes=state.settings.photo_max_bytes, name=name)


_UPLOAD_SCHEMA = multipart_schema(
    FIELD, {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": MAX_PER_ITEM}
)


@router.post("/photos", openapi_extra=_UPLOAD_SCHEMA)
async def upload_photos(
    request: Request,
    _: Principal = Depends(require_staff),
    store: PhotoStore = Depends(photo_store),
) -> dict[str, list[dict[str, Any]]]:
    """One or more photos (JPG, PNG or WebP) under the field `photos`, at most 9. Each is decoded
    and kept as a clean JPEG (no EXIF position, at most 2048 px on its long side); the answer gives
    the ids to name them with, in the order sent. One refused photo refuses the request, and
    nothing of it is kept: the message names the file and says why."""
    settings: Settings = request.app.state.settings
    await request.app.state.intake.check_ip(request.client.host if request.client else None)
    try:
        form = await request.form(max_files=MAX_PER_ITEM, max_fields=MAX_PER_ITEM)
    except StarletteHTTPException as e:  # a body that is not multipart, or more files than allowed
        if e.status_code != 400:
            raise  # 413: the body ran over its limit while being read
        raise BadRequest(
            f"请以multipart/form-data上传照片，字段名为{FIELD}，每次最多{MAX_PER_ITEM}张", field=FIELD
        ) from None
    try:
        uploads = [u for u in form.getlist(FIELD) if isinstance(u, UploadFile)]
        if not uploads:
            raise BadRequest(f"没有收到照片：请以multipart/form-data上传，字段名为{FIELD}", field=FIELD)
        photos: list[Photo] = []
        for upload in uploads:  # one at a time: a photo's bytes are read only when its turn comes
            name = (upload.filename or "")[:NAME_MAX]
            # Never more than one byte past the limit in memory: a larger file is refused by the
            # size the parser counted while spooling it.
            raw = await upload.read(settings.photo_max_bytes + 1)
            if upload.size is not None and upload.size > settings.photo_max_bytes:
                raise too_large(name, upload.size, settings.photo_max_bytes)
            photos.append(await decode(request.app.state, raw, name))
    finally:
        await form.close()
    for photo in photos:
        await store.put(photo)
    return {"photos": [{"photo_id": p.id, "width": p.width, "height": p.height} for p in photos]}


def too_large(name: str, size: int, max_bytes: int) -> PhotoRefused:
    label = f"“{name}”" if name else "照片"
    return PhotoRefused(
        "photo_too_large",
        f"{label}太大（{size / 1048576:.1f} MB），单张照片不能超过 {max_bytes // 1048576} MB",
        kind="too_large",
        field=FIELD,
    )


class PhotoNotFound(DomainError):
    kind = "not_found"

    def __init__(self) -> None:
        super().__init__(
            "photo_not_found", "照片不存在或已删除（个人信息删除、或上传后未提交即被清理）", field="photo_id"
        )


@router.get(
    "/photos/{photo_id}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "the photo, a JPEG"}},
)
async def get_photo(
    photo_id: str,
    size: Literal["full", "thumb"] = Query("full", description="thumb: at most 320 px a side"),
    _: Principal = Depends(require_staff),
    store: PhotoStore = Depends(photo_store),
) -> Response:
    """The photo as kept (JPEG), or its thumbnail."""
    (checked,) = checked_ids([photo_id], field="photo_id")
    data = await store.get(checked, thumbnail=size == "thumb")
    if data is None:
        raise PhotoNotFound()
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": CACHE, "X-Content-Type-Options": "nosniff"}
    )


async def checked_photos(ids: list[str], store: PhotoStore) -> tuple[str, ...]:
    """Photo ids a request names (an appeal's, a resolution's): well formed, at most 9, each once,
    and every one a kept photo. Refused in Chinese, saying to upload again."""
    photos = checked_ids(ids)
    await store.require(photos)
    return photos
