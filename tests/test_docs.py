"""The walkthroughs in README.md and docs/*.md, run as written against the started system.

A fenced block opened with ```` ```bash runnable ```` is a walkthrough: every runnable block of one
document runs, in order, in one bash process (a variable set in one block is there in the next),
with `set -euo pipefail`. A comment line `# -> EXPECTED` states what the commands since the previous
such line print: `...` stands for anything, and a ticket number (yyyymmdd-nnnnnn) for any ticket
number, so the examples may show real output without going stale. The only changes made before
running: the API address and the `appeals` command point at the test system, the demo WeChat token
and Open311 key become the test system's, and each phone number gets fresh middle digits (same
prefix and last four, so masked phones read the same) so documents do not answer each other's
surveys. Blocks without `runnable` (output listings, configuration, commands that change what other
tests rely on) are not run.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, System, settings_env

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```bash runnable[^\n]*\n(.*?)^```", re.M | re.S)
EXPECT = re.compile(r"^\s*# -> (.*)$")
PHONE = re.compile(r"(?<!\d)(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
TICKET = r"\d{8}-\d{6}"
MARK = "@@step-done@@"
# The fresh phones of the session's documents: four middle digits are few to draw from at random,
# and two documents given the same phone would answer each other's surveys.
DRAWN: set[tuple[str, str, str]] = set()
SCRIPT_TIMEOUT = 240  # the whole document
COMMAND_TIMEOUT = 60  # each `appeals` command and each curl call
WALKTHROUGH_TOOLS = ("bash", "curl", "python3", "sha1sum", "timeout")  # what a reader's shell has


def runnable_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def documents_with_walkthroughs() -> list[Path]:
    return [p for p in DOCS if runnable_blocks(p)]


def expectation(text: str) -> re.Pattern[str]:
    """`...` or `…` matches anything, a ticket number any ticket number, the rest literally."""
    parts = re.split(r"(\.\.\.|…)", text.strip())
    out = []
    for part in parts:
        if part in ("...", "…"):
            out.append(".*?")
        else:
            out.append(TICKET.join(re.escape(p) for p in re.split(TICKET, part)))
    return re.compile("".join(out), re.S)


def prepare(script: str, port: int, wechat_token: str, open311_key: str) -> tuple[str, list[str]]:
    """The script with the test system's address and keys, step marks after each `# ->` line, and
    the expectations in order."""
    script = script.replace(".venv/bin/appeals", "appeals")
    script = re.sub(r"\b(localhost|127\.0\.0\.1):8000\b", f"127.0.0.1:{port}", script)
    script = script.replace("demo-token", wechat_token).replace("demo-key", open311_key)
    fresh: dict[str, str] = {}

    def phone(m: re.Match[str]) -> str:
        if m[0] not in fresh:
            middle = m[2]  # never the document's own: other tests type those numbers as they are
            while middle == m[2] or (m[1], middle, m[3]) in DRAWN:
                middle = f"{random.randint(0, 9999):04d}"
            DRAWN.add((m[1], middle, m[3]))
            fresh[m[0]] = f"{m[1]}{middle}{m[3]}"
        return fresh[m[0]]

    script = PHONE.sub(phone, script)
    lines, expected = [], []
    for line in script.splitlines():
        lines.append(line)
        if m := EXPECT.match(line):
            expected.append(m[1])
            lines.append(f"printf '\\n%s\\n' '{MARK}'")
    return "set -euo pipefail\n" + "\n".join(lines) + "\n", expected


def command_shims(folder: Path, env: dict[str, str]) -> None:
    """`appeals` as the docs call it (the project's CLI, each call bounded), and curl bounded too."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    appeals = bin_dir / "appeals"
    command = f'exec timeout {COMMAND_TIMEOUT} "{sys.executable}" -m services.cli "$@"'
    appeals.write_text(f"#!/bin/sh\n{command}\n", encoding="utf-8")
    appeals.chmod(appeals.stat().st_mode | stat.S_IEXEC)
    (folder / ".curlrc").write_text(f"max-time = {COMMAND_TIMEOUT}\n", encoding="utf-8")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["CURL_HOME"] = str(folder)
    env["PYTHONPATH"] = str(ROOT)


@pytest.mark.parametrize("doc", documents_with_walkthroughs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_walkthrough_runs_as_written(doc: Path, system: System, settings, tmp_path: Path) -> None:
    script, expected = prepare(
        "\n".join(runnable_blocks(doc)),
        system.api_port,
        settings.wechat_token,
        settings.open311_api_keys.split(",")[0],
    )
    assert expected, f"{doc.name}: a walkthrough with nothing to check; add `# -> ...` lines"
    missing = [tool for tool in WALKTHROUGH_TOOLS if shutil.which(tool) is None]
    assert missing == [], f"the walkthroughs use {missing}: install them to run this test"
    env = settings_env(settings, api_port=system.api_port)
    command_shims(tmp_path, env)
    (tmp_path / "docs").symlink_to(ROOT / "docs")  # files the walkthroughs name, e.g. the sample history
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # on a timeout the whole group goes, curl and appeals included
    )
    try:
        stdout, stderr = proc.communicate(timeout=SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    steps = stdout.split(MARK)
    where = f"{doc.name}\n--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-4000:]}"
    assert proc.returncode == 0, where
    assert len(steps) == len(expected) + 1, where
    for n, (want, got) in enumerate(zip(expected, steps, strict=False), start=1):
        assert expectation(want).search(got), f"step {n}: expected {want!r}, got {got.strip()!r}\n{where}"


def test_expectations_match_what_they_say() -> None:
    # The matcher itself: wildcards and ticket numbers, and no false match.
    pattern = expectation('{"ticket_no":"20261123-000001",...,"status":"received"}')
    assert pattern.search('{"ticket_no":"20261130-000042","x":1,"status":"received"}')
    assert not pattern.search('{"ticket_no":"20261130-000042","status":"assigned"}')
    assert not expectation('{"detail":"ok"}').search('{"detail":"Not authenticated"}')
