"""The command line without servers: what `appeals up` prints for the reader to paste, and where the
record's commands find PostgreSQL when DATABASE_URL is not set."""

from __future__ import annotations

import json
import subprocess
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
