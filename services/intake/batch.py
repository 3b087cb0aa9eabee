"""Suggestion-box slips (意见箱) typed into a CSV or XLSX file: read row by row, never whole.

Columns (header row first, English or Chinese names, any order): box_id (意见箱编号), date (日期),
text (内容), and optionally phone (电话) and address (地址). Each row becomes a Submission or an
InvalidAppeal naming the line and the field. A row's hash (box, date, text, phone) is its
idempotency key: uploading the same file twice returns the same tickets.
"""

from __future__ import annotations

import csv
import hashlib
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any

from services.intake.domain import InvalidAppeal, Submission, clean_text, validate
from services.intake.errors import BadRequest, TooLarge

COLUMNS = {
    "box_id": ("box_id", "box", "意见箱编号", "意见箱", "箱号"),
    "date": ("date", "日期", "投递日期"),
    "text": ("text", "content", "内容", "诉求内容"),
    "phone": ("phone", "电话", "联系电话", "手机"),
    "address": ("address", "地址"),
}
REQUIRED = ("box_id", "date", "text")
SNIFF = 64 * 1024


class BadFile(BadRequest):
    """The file as a whole cannot be read (HTTP 400): wrong type, encoding or header."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="file")


def header_map(header: Iterable[Any]) -> dict[str, int]:
    names = [clean_text(str(h or "")).lower() for h in header]
    found: dict[str, int] = {}
    for column, aliases in COLUMNS.items():
        for i, name in enumerate(names):
            if name in aliases:
                found.setdefault(column, i)
    missing = [c for c in REQUIRED if c not in found]
    if missing:
        wanted = "、".join(f"{c}（{COLUMNS[c][2]}）" for c in missing)
        raise BadFile(f"第1行表头缺少列：{wanted}")
    return found


def slip_date(value: Any, today: date) -> str:
    if isinstance(value, datetime):
        d = value.date()
    elif isinstance(value, date):
        d = value
    else:
        s = clean_text(str(value or "")).replace("/", "-").replace(".", "-")
        try:
            d = date.fromisoformat("-".join(p.zfill(2) for p in s.split("-")))
        except ValueError:
            raise InvalidAppeal("date", f"日期“{s}”无法识别，请写成2024-05-01") from None
    if d > today:
        raise InvalidAppeal("date", f"日期{d}晚于今天，请核对")
    return d.isoformat()


def row_key(box_id: str, day: str, text: str, phone: str) -> str:
    digest = hashlib.sha256("\x1f".join((box_id, day, text, phone)).encode()).hexdigest()[:32]
    return f"box:{digest}"


def to_submission(row: dict[str, Any], today: date) -> tuple[Submission, str]:
    """One slip -> (submission, idempotency key). Raises InvalidAppeal."""
    box_id = clean_text(str(row.get("box_id") or ""))
    if not box_id:
        raise InvalidAppeal("box_id", "缺少意见箱编号")
    if len(box_id) > 50:
        raise InvalidAppeal("box_id", "意见箱编号太长，请控制在50字以内")
    day = slip_date(row.get("date"), today)
    phone = _cell(row.get("phone"))
    sub = validate(
        channel="box",
        text=_cell(row.get("text")),
        title=f"意见箱{box_id}（{day}投递）",
        address=_cell(row.get("address")),
        phone=phone,
    )
    return sub, row_key(box_id, day, sub.text, sub.phone or "")


def _cell(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Excel stores phone numbers as numbers
    return "" if value is None else str(value)


Row = tuple[int, dict[str, Any] | InvalidAppeal]  # (line number, cells by column, or why not)
Slip = tuple[int, tuple[Submission, str] | InvalidAppeal]  # (line, (submission, key) or why not)


@dataclass(frozen=True)
class UploadLimits:
    """The most work one upload may cause. Rows count blank ones too (an XLSX can declare a last
    row a million lines down); columns beyond `columns` are not read; the time is the whole read."""

    rows: int = 20_000
    columns: int = 50
    seconds: float = 60
    # XLSX is a zip: what its parts may unpack to, declared sizes checked before anything is read
    # (Python's zipfile never inflates a member past its declared size).
    unpacked_bytes: int = 200 * 1024 * 1024
    shared_strings_bytes: int = 16 * 1024 * 1024  # openpyxl holds the shared strings in memory


def read(
    filename: str, content_type: str, stream: IO[bytes], today: date, limits: UploadLimits
) -> list[Slip]:
    """The whole upload, read and validated: for each row its submission and idempotency key, or
    why not. CPU-bound and blocking: the API runs it in a worker thread. Raises BadFile or TooLarge."""
    deadline = time.monotonic() + limits.seconds
    out: list[Slip] = []
    for n, (line, row) in enumerate(rows_of(filename, content_type, stream, limits), start=1):
        if n > limits.rows:
            raise TooLarge(f"文件超过{limits.rows}行，请拆分成较小的文件分批上传")
        if time.monotonic() > deadline:
            raise TooLarge(f"文件处理超时（上限{limits.seconds:g}秒），请拆分成较小的文件分批上传")
        if row is BLANK:
            continue
        if isinstance(row, InvalidAppeal):
            out.append((line, row))
            continue
        try:
            out.append((line, to_submission(row, today)))
        except InvalidAppeal as e:
            out.append((line, e))
    return out


def csv_rows(stream: IO[bytes], limits: UploadLimits | None = None) -> Iterator[Row]:
    """Rows of a UTF-8 CSV (a BOM is fine), decoded line by line: a line that is not UTF-8 rejects
    its row, and a file that is not UTF-8 from the start (Excel's GBK "CSV") is refused whole.
    Blank rows are yielded too (`BLANK`), so that the limits count them."""
    limits = limits or UploadLimits()
    head = stream.read(SNIFF)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the sniff boundary
            raise BadFile("文件不是UTF-8编码。用Excel保存时请选择“CSV UTF-8（逗号分隔）”") from None
    stream.seek(0)
    bad_lines: set[int] = set()

    def lines() -> Iterator[str]:
        for n, raw in enumerate(stream, start=1):
            try:
                yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                bad_lines.add(n)
                yield raw.decode("utf-8", errors="replace")

    reader = csv.reader(lines())
    try:
        header = next(reader)
    except StopIteration:
        raise BadFile("文件是空的") from None
    except csv.Error as e:
        raise BadFile(f"第1行不是有效的CSV：{e}") from None
    columns = header_map(header[: limits.columns])
    start = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error:
            # A cell over the csv module's field limit (128 KB) or a broken quote: nothing after it
            # can be told apart reliably, so the file stops here with the line that broke it.
            raise BadFile(f"第{start + 1}行不是有效的CSV（单元格过大或引号不成对），请检查该行") from None
        line, first = reader.line_num, start + 1
        start = line
        if not any(c.strip() for c in cells[: limits.columns]):
            yield first, BLANK
            continue
        if any(first <= n <= line for n in bad_lines):
            yield first, InvalidAppeal("text", "该行不是有效的UTF-8编码")
            continue
        yield first, {c: cells[i] if i < len(cells) else "" for c, i in columns.items()}


BLANK: dict[str, Any] = {}  # a blank row: counted against the limits, never submitted


def xlsx_rows(stream: IO[bytes], limits: UploadLimits | None = None) -> Iterator[Row]:
    """Rows of the first sheet, streamed (openpyxl read-only mode keeps one row at a time), at most
    `limits.columns` cells of each; the zip's declared sizes are checked first."""
    from openpyxl import load_workbook

    limits = limits or UploadLimits()
    _check_zip(stream, limits)
    try:
        book = load_workbook(stream, read_only=True, data_only=True)
    except Exception:
        raise BadFile("无法读取XLSX文件，请确认文件是Excel 2007及以上格式（.xlsx）") from None
    try:
        rows = book.worksheets[0].iter_rows(values_only=True, max_col=limits.columns)
        header = next(rows, None)
        if header is None:
            raise BadFile("文件是空的")
        columns = header_map(header)
        for line, cells in enumerate(rows, start=2):
            if not any(c is not None and str(c).strip() for c in cells):
                yield line, BLANK
                continue
            yield line, {c: cells[i] if i < len(cells) else None for c, i in columns.items()}
    finally:
        book.close()


def _check_zip(stream: IO[bytes], limits: UploadLimits) -> None:
    try:
        with zipfile.ZipFile(stream) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BadFile("无法读取XLSX文件，请确认文件是Excel 2007及以上格式（.xlsx）") from None
    finally:
        stream.seek(0)
    if sum(m.file_size for m in members) > limits.unpacked_bytes:
        raise TooLarge("XLSX文件解压后过大，请另存为CSV UTF-8或拆分后分批上传")
    strings = sum(m.file_size for m in members if m.filename.lower().endswith("sharedstrings.xml"))
    if strings > limits.shared_strings_bytes:
        raise TooLarge("XLSX文件中的文字内容过多，请另存为CSV UTF-8或拆分后分批上传")


def rows_of(
    filename: str, content_type: str, stream: IO[bytes], limits: UploadLimits | None = None
) -> Iterator[Row]:
    """Every row of the file, blank ones included (as an empty dict), for `read` to count."""
    name = filename.lower()
    if name.endswith(".xlsx") or "spreadsheetml" in content_type:
        return xlsx_rows(stream, limits)
    if name.endswith(".csv") or content_type in ("text/csv", "application/csv"):
        return csv_rows(stream, limits)
    raise BadFile("只接受CSV（UTF-8）或XLSX文件")
