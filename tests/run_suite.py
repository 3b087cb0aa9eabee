"""`make test` after ruff: the type check and the tests that start nothing, beside the tests on the
real broker, Redis and services.

The integration tests (two processes) leave about a third of the two cores idle, waiting on the
systems they drive; the type check and the tests that start nothing fill it, in one process, rather
than running before them. A mistake still stops everything at once: when the type check or those
tests fail, the integration tests are interrupted (their fixtures stop what they started) and the
run fails. Their output is shown when they end; the integration tests' as it comes. Ctrl-C
interrupts both.

Usage: python tests/run_suite.py PYTHON (the environment's interpreter, which runs pytest and mypy)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(python: str) -> int:
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    integration = start([*pytest, "-m", "integration", "-n", "2", "--dist", "loadgroup", "--durations=25"])
    # Ctrl-C (or the CI stopping the job) interrupts the integration tests too, not only this process.
    signal.signal(signal.SIGINT, lambda *_: interrupt(integration))
    signal.signal(signal.SIGTERM, lambda *_: interrupt(integration))
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        status = 0
        for command in ([python, "-m", "mypy", "shared", "services"], [*pytest, "-m", "not integration"]):
            status = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            if status != 0:
                break
        out.seek(0)
        sys.stdout.write(out.read())
        sys.stdout.flush()
    if status != 0:
        print("the type check or the tests that start nothing failed: stopping the integration tests")
        interrupt(integration)
        integration.wait()
        return status
    return integration.wait()


def start(command: list[str]) -> subprocess.Popen:
    # A process group of its own: an interruption reaches pytest, its workers and what they started.
    return subprocess.Popen(command, cwd=ROOT, start_new_session=True)


_interrupted: set[int] = set()


def interrupt(process: subprocess.Popen) -> None:
    """What Ctrl-C does in a terminal, to `process`'s group: pytest stops and tears its fixtures
    down. Once: a second Ctrl-C would cut that tear-down short."""
    if process.poll() is None and process.pid not in _interrupted:
        _interrupted.add(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.executable))
