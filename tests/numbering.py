"""Made-up ticket numbers for tests that write tickets to Redis and the record without intake."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable


def made_up_numbers(day: str) -> Callable[[], str]:
    """Ticket numbers of `day` ("20001201", a day intake never numbers), one after the other, none
    another pytest-xdist worker hands out: each worker counts in its own hundred thousand, from a
    random point of its first half (a run after another on the same servers starts elsewhere).
    Counting from random points of one shared range, two workers met now and then, and two tests
    then shared a ticket in the shared Redis and the record."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    slot = int(worker) % 9 if worker.isdigit() else 0
    numbers = itertools.count(100_000 * (slot + 1) + random.randrange(50_000))
    return lambda: f"{day}-{next(numbers)}"
