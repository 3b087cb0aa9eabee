"""The command line without servers: what `appeals up` prints for the reader to paste, where the
record's commands find PostgreSQL when DATABASE_URL is not set, and how a command takes SIGINT."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

from services import cli
from shared.settings import Settings


def pasted(command: str) -> list[str]:
    """The arguments bash gives curl for `command` as pasted, with `appeals` a stand-in."""
    shims = 'appeals() { echo "TOKEN-$*"; }; curl() { printf "%s\\0" "$@"; }\n'
    run = subprocess.run(["bash", "-c", shims + command], capture_output=True, text=True, check=True)
    return run.stdout.split("\0")[:-1]


def test_the_submit_command_appeals_up_prints_runs_when_pasted():
    settings = Settings(api_host="127.0.0.1", api_port=8000)
    banner = cli._up_banner(settings, {}, Path("var/logs"), "appeals")
    lines = banner.splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("submit"))
    end = next(i for i in range(first, len(lines)) if not lines[i].endswith("\\"))
    command = "\n".join(lines[first : end + 1]).split("submit", 1)[1]
    args = pasted(command)
    assert args[:3] == ["-s", "-X", "POST"]
    assert "http://127.0.0.1:8000/api/v1/appeals" in args
    assert "Authorization: Bearer TOKEN-token --operator 0231" in args
    body = json.loads(args[args.index("-d") + 1])  # the body was cut by a backslash-newline once
    assert set(body) == {"caller_phone", "text", "address"}


def test_the_banner_names_the_command_as_it_was_typed():
    banner = cli._up_banner(Settings(), {}, Path("var/logs"), ".venv/bin/appeals")
    assert "$(.venv/bin/appeals token --operator 0231)" in banner
    assert "$(.venv/bin/appeals token --admin)" in banner
    assert "$(appeals " not in banner
    assert "$DATABASE_URL" not in banner  # set for `appeals up`'s processes, not in the reader's shell


def test_the_records_commands_use_the_postgresql_appeals_up_starts_without_database_url():
    assert cli._database_url(Settings(database_url="")) == "postgresql://appeals@127.0.0.1:5433/appeals"
    other = "postgresql://appeals:secret@db.example.org:5432/appeals"
    assert cli._database_url(Settings(database_url=other)) == other


def test_a_command_started_with_sigint_ignored_takes_it_again():
    """`appeals up` and `appeals bench pipeline` started in the background by a script inherit
    SIGINT ignored (as bash starts `cmd &`); they take it back, so `kill -INT` stops them, as Ctrl-C
    does. Without it the process sleeps on (the control)."""
    root = Path(__file__).resolve().parent.parent

    def started(take: bool) -> subprocess.Popen[bytes]:
        code = f"import time; from services import cli; {'cli.take_sigint(); ' if take else ''}"
        code += "print('ready', flush=True); time.sleep(30)"
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=root,
            stdout=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        process.send_signal(signal.SIGINT)
        return process

    taking, ignoring = started(True), started(False)
    try:
        assert taking.wait(timeout=10) == -signal.SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            ignoring.wait(timeout=1)
        assert ignoring.poll() is None
    finally:
        for p in (taking, ignoring):
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
