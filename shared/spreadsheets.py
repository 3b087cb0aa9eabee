"""Tables people open in Excel, streamed: CSV (UTF-8 with a BOM, which Excel needs to read Chinese)
or XLSX (openpyxl's write-only mode: no rows held in memory; the file is built on disk, then sent).
The ticket export, the rankings' export and the trend's export share them.

Rows hold values, not their text, so that a manager can sum, sort and chart them in Excel or WPS:
numbers as numbers, a rate as a `Percent`, a figure the console shows in brackets as `Bracketed`,
a time as a naive local `datetime` (Excel has no time zones: the caller converts to the city's), no
value as None (an empty cell, not 0). XLSX writes them as numeric and date cells with a number
format; CSV as the text the console shows.
"""

from __future__ import annotations

import asyncio
import csv
import io
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fastapi.responses import StreamingResponse

Format = Literal["csv", "xlsx"]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PERCENT = "0.0%"
CHANGE = "+0.0%;-0.0%;0.0%"  # a rise or a fall, signed as the console says it
DATETIME = "yyyy-mm-dd hh:mm"
BRACKETED = '"（"0.0"）"'  # the number, shown in brackets as the console shows it


@dataclass(frozen=True, slots=True)
class Percent:
    """A rate or a change as a fraction (0.873 for 87.3%): a number in XLSX, shown in percent."""

    fraction: float
    signed: bool = False  # a change: +12.5%, -3.1%

    def __str__(self) -> str:
        return f"{self.fraction:+.1%}" if self.signed else f"{self.fraction:.1%}"


@dataclass(frozen=True, slots=True)
class Bracketed:
    """A figure to read, not to compare with those beside it (a score on too few answers, shown
    （95.0） on the page): a number in XLSX, in brackets by its format; its text in brackets in CSV."""

    value: float

    def __str__(self) -> str:
        return f"（{self.value:.1f}）"


def text(value: Any) -> Any:
    """A value as the CSV writes it: the text the console shows."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, Percent | Bracketed):
        return str(value)
    return value


async def csv_chunks(header: Sequence[str], rows: AsyncIterator[Sequence[Any]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    yield "\ufeff".encode() + buffer.getvalue().encode()  # the BOM: Excel then reads UTF-8
    async for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([text(v) for v in row])
        yield buffer.getvalue().encode()


async def xlsx_chunks(
    header: Sequence[str], rows: AsyncIterator[Sequence[Any]], sheet: str
) -> AsyncIterator[bytes]:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(sheet)
    # A formatted cell per column and format, given each row's value: write-only mode writes a row
    # out as it is appended, and styling a new cell for each of 100,000 rows' times took longer
    # than writing them.
    styled: dict[tuple[int, str], Any] = {}

    def cell(column: int, value: Any) -> Any:
        if isinstance(value, Percent):
            value, fmt = value.fraction, CHANGE if value.signed else PERCENT
        elif isinstance(value, Bracketed):
            value, fmt = value.value, BRACKETED
        elif isinstance(value, datetime):
            fmt = DATETIME
        else:
            return value
        c = styled.get((column, fmt))
        if c is None:
            c = styled[column, fmt] = WriteOnlyCell(ws)
            c.number_format = fmt
        c.value = value
        return c

    ws.append(list(header))
    async for row in rows:
        ws.append([cell(i, v) for i, v in enumerate(row)])
    with tempfile.TemporaryFile() as f:
        await asyncio.to_thread(wb.save, f)
        f.seek(0)
        while chunk := f.read(256 * 1024):
            yield chunk


async def each(rows: Iterable[Sequence[Any]]) -> AsyncIterator[Sequence[Any]]:
    """Rows already in memory, as the writers take them."""
    for row in rows:
        yield row


def download(
    fmt: Format, name: str, header: Sequence[str], rows: AsyncIterator[Sequence[Any]], sheet: str
) -> StreamingResponse:
    """The table as an attachment `name`.csv or `name`.xlsx (`sheet`: the XLSX sheet's title)."""
    if fmt == "csv":
        body, media = csv_chunks(header, rows), "text/csv; charset=utf-8"
    else:
        body, media = xlsx_chunks(header, rows, sheet), XLSX
    return StreamingResponse(
        body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'}
    )
