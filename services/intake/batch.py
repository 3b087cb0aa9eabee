"""Suggestion-box slips (意见箱) typed into a CSV or XLSX file: read row by row, never whole.

Columns (header row first, English or Chinese names, any order): box_id (意见箱编号), date (日期),
text (内容), and optionally phone (电话) and address (地址). Each row becomes a Submission or an
InvalidAppeal naming the line and the field. A row's hash (box, date, text, phone) is its
idempotency key: uploading the same file twice returns the same tickets.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from typing import IO, Any

from services.intake.domain import InvalidAppeal, Submission, clean_text, validate
from services.intake.errors import BadRequest

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


def csv_rows(stream: IO[bytes]) -> Iterator[Row]:
    """Rows of a UTF-8 CSV (a BOM is fine), decoded line by line: a line that is not UTF-8 rejects
    its row, and a file that is not UTF-8 from the start (Excel's GBK "CSV") is refused whole."""
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
    columns = header_map(header)
    start = reader.line_num
    for cells in reader:
        line, first = reader.line_num, start + 1
        start = line
        if not any(c.strip() for c in cells):
            continue
        if any(first <= n <= line for n in bad_lines):
            yield first, InvalidAppeal("text", "该行不是有效的UTF-8编码")
            continue
        yield first, {c: cells[i] if i < len(cells) else "" for c, i in columns.items()}


def xlsx_rows(stream: IO[bytes]) -> Iterator[Row]:
    """Rows of the first sheet, streamed (openpyxl read-only mode keeps one row at a time)."""
    from openpyxl import load_workbook

    try:
        book = load_workbook(stream, read_only=True, data_only=True)
    except Exception:
        raise BadFile("无法读取XLSX文件，请确认文件是Excel 2007及以上格式（.xlsx）") from None
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = next(rows, None)
        if header is None:
            raise BadFile("文件是空的")
        columns = header_map(header)
        for line, cells in enumerate(rows, start=2):
            if not any(c is not None and str(c).strip() for c in cells):
                continue
            yield line, {c: cells[i] if i < len(cells) else None for c, i in columns.items()}
    finally:
        book.close()


def rows_of(filename: str, content_type: str, stream: IO[bytes]) -> Iterator[Row]:
    name = filename.lower()
    if name.endswith(".xlsx") or "spreadsheetml" in content_type:
        return xlsx_rows(stream)
    if name.endswith(".csv") or content_type in ("text/csv", "application/csv"):
        return csv_rows(stream)
    raise BadFile("只接受CSV（UTF-8）或XLSX文件")
