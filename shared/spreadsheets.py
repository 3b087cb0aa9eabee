"""Tables people open in Excel, streamed: CSV (UTF-8 with a BOM, which Excel needs to read Chinese)
or XLSX (openpyxl's write-only mode: no rows held in memory; the file is built on disk, then sent).
The ticket export and the rankings' export share them."""

from __future__ import annotations

import asyncio
import csv
import io
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Literal

from fastapi.responses import StreamingResponse

Format = Literal["csv", "xlsx"]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


async def csv_chunks(header: Sequence[str], rows: AsyncIterator[Sequence[Any]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    yield "\ufeff".encode() + buffer.getvalue().encode()  # the BOM: Excel then reads UTF-8
    async for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(row)
        yield buffer.getvalue().encode()


async def xlsx_chunks(
    header: Sequence[str], rows: AsyncIterator[Sequence[Any]], sheet: str
) -> AsyncIterator[bytes]:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(sheet)
    ws.append(list(header))
    async for row in rows:
        ws.append(list(row))
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
