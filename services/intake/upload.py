"""Uploading typed suggestion-box slips to a running API, from the command line (`appeals upload-slips`)."""

from __future__ import annotations

import csv
import mimetypes
import random
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# No place names: the slips go to the dispatch desk instead of piling up in a few grids as hotspots.
_DEMO = [
    "{n}号楼门前的路灯坏了，晚上很黑，请尽快修理",
    "{n}号楼下的垃圾桶满了好几天没人清运，味道很大",
    "{n}号楼旁边的井盖松动，车辆经过响声很大",
    "{n}号楼附近有人占道经营摆摊，行人无法通行",
    "{n}号楼楼下烧烤摊油烟很大，晚上吵到凌晨",
]


def write_demo_csv(path: Path, rows: int, seed: int | None = None, today: date | None = None) -> Path:
    """Synthetic slips (anonymous, so no SMS goes out), for trying the upload and measuring it.
    Each call makes new slips (the box ids carry a run tag) unless `seed` is given: the same file
    uploaded again is all duplicates, which measures the retry path instead. `today`: the city's
    date (the API refuses a slip dated after it); the machine's own may be a day ahead of it."""
    rnd = random.Random(seed)
    run = rnd.randint(1000, 9999)
    today = today or datetime.now().date()
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["box_id", "date", "text", "phone", "address"])
        for i in range(rows):
            text = rnd.choice(_DEMO).format(n=f"{rnd.randint(1, 30)}-{i}")
            w.writerow([f"BOX-{run}-{i % 20:02d}", (today - timedelta(days=i % 7)).isoformat(), text, "", ""])
    return path


def upload(base_url: str, path: Path, token: str, timeout: float = 600) -> tuple[dict[str, Any], float]:
    """POST the file to /api/v1/appeals/batch with an operator's token; returns the answer and the
    seconds it took."""
    kind = XLSX if path.suffix.lower() == ".xlsx" else mimetypes.guess_type(path.name)[0] or "text/csv"
    started = time.perf_counter()
    with path.open("rb") as f:
        r = httpx.post(
            f"{base_url}/api/v1/appeals/batch",
            files={"file": (path.name, f, kind)},
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )
    elapsed = time.perf_counter() - started
    body = r.json()
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {body.get('message') or body.get('detail') or body}")
    return body, elapsed
