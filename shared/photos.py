"""Photos of an appeal (a grid worker's from the spot, a resident's) and of its resolution (the
department's 处置照片): what is accepted, and the one form every photo is kept in. Pure: the bytes
come in, the bytes to keep come out; `shared.photo_store` keeps them.

Every photo is decoded and encoded again as a JPEG of bounded size, never stored as sent:
- the metadata goes: a phone's EXIF carries the GPS position where it was taken (often the
  resident's home), the device and the time, which nobody reading a ticket needs;
- what is stored is an image, whatever the upload was (a file that is also a script or an archive
  does not survive decoding), and it is shown the right way up (EXIF orientation applied);
- a 12-megapixel original becomes a few hundred kilobytes, which a department's phone loads.

A photo's id is the hash of what is kept: uploading the same photo twice (a retry) stores it once,
and an id cannot be guessed, so it can name the photo in events and addresses.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import DomainError

ACCEPTED_FORMATS = {"JPEG": "JPG", "PNG": "PNG", "WEBP": "WebP", "MPO": "JPG"}  # MPO: phones' JPEGs
MAX_SIDE = 2048  # pixels, the long side of what is kept: sharp on any screen, small to send
# The thumbnail a ticket's page shows (a few kilobytes; the photo itself opens on a tap): a
# department's queue on a phone, out in the street, should not pull megabytes to show a row.
THUMB_SIDE = 320
MAX_PIXELS = 50_000_000  # a decompression bomb (a small file that decodes to gigabytes) stops here
QUALITY = 82
MAX_PER_ITEM = 9  # photos on one appeal or one resolution (as many as a WeChat message takes)
ID = re.compile(r"^[0-9a-f]{32}$")


class PhotoRefused(DomainError):
    kind = "invalid"


@dataclass(frozen=True)
class Photo:
    id: str
    data: bytes  # JPEG
    width: int
    height: int
    thumbnail: bytes  # JPEG, at most THUMB_SIDE a side


def prepare(raw: bytes, *, max_bytes: int, name: str = "") -> Photo:
    """The photo to keep from an upload's bytes, or PhotoRefused saying why (in Chinese)."""
    label = f"“{name}”" if name else "照片"
    if not raw:
        raise PhotoRefused("photo_empty", f"{label}是空文件，请重新选择照片", field="photos")
    if len(raw) > max_bytes:
        raise PhotoRefused(
            "photo_too_large",
            f"{label}太大（{len(raw) / 1048576:.1f} MB），单张照片不能超过 {max_bytes // 1048576} MB",
            kind="too_large",
            field="photos",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(raw))
            if image.format not in ACCEPTED_FORMATS:  # read from the file's header, not its name
                raise PhotoRefused(
                    "photo_format",
                    f"{label}的格式不支持，请上传 JPG、PNG 或 WebP 格式的照片",
                    field="photos",
                )
            if image.width * image.height > MAX_PIXELS:
                raise PhotoRefused(
                    "photo_pixels", f"{label}的像素过多，请缩小后再上传", kind="too_large", field="photos"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        if isinstance(e, Image.DecompressionBombWarning):
            raise PhotoRefused(
                "photo_pixels", f"{label}的像素过多，请缩小后再上传", kind="too_large", field="photos"
            ) from None
        raise PhotoRefused(
            "photo_unreadable", f"{label}无法识别为图片，文件可能已损坏，请重新拍摄或选择", field="photos"
        ) from None
    if image.mode != "RGB":
        # Transparency over white, as a viewer shows it, not over black.
        background = Image.new("RGB", image.size, "white")
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    data = _jpeg(image, QUALITY)
    small = image.copy()
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    return Photo(
        id=photo_id(data), data=data, width=image.width, height=image.height, thumbnail=_jpeg(small, 75)
    )


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)  # no exif= argument: no metadata
    return out.getvalue()


def photo_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def checked_ids(ids: list[str] | tuple[str, ...], field: str = "photos") -> tuple[str, ...]:
    """Photo ids as a request gives them: well formed, at most MAX_PER_ITEM, each once (in order)."""
    unique = tuple(dict.fromkeys(ids))
    if len(unique) > MAX_PER_ITEM:
        raise PhotoRefused(
            "photos_too_many",
            f"最多附 {MAX_PER_ITEM} 张照片，请删去 {len(unique) - MAX_PER_ITEM} 张",
            field=field,
        )
    for i in unique:
        if not ID.match(i):
            raise PhotoRefused("photo_id", f"照片编号“{i[:40]}”无效，请重新上传照片", field=field)
    return unique
