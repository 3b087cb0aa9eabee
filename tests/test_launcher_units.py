"""How `appeals up` stops what it started: each process is interrupted once.

FastStream and uvicorn shut down cleanly on the first SIGINT and take a second as "quit now":
uvicorn then skips the API's lifespan shutdown (its producer and its Redis and PostgreSQL
connections are not closed) and logs the interrupted lifespan as an error. So stopping must not
send it twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.launcher import Launcher

# Counts the SIGINTs it gets into a file, and exits some time after the first (a second signal sent
# while it shuts down is counted; two sent together may arrive as one, as signals do). It says it is
# ready in a file of its own, once the count is written: a signal that came while "0" was being
# written would have had its "1" overwritten.
CHILD = """
import signal, sys, time
path, shutdown = sys.argv[1], float(sys.argv[2])
got = []
def on_int(signum, frame):
    got.append(time.monotonic())
    with open(path, "w") as f:
        f.write(str(len(got)))
signal.signal(signal.SIGINT, on_int)
with open(path, "w") as f:
    f.write("0")
open(path + ".ready", "w").close()
while not got or time.monotonic() - got[0] < shutdown:
    time.sleep(0.01)
"""


def start_counting(launcher: Launcher, tmp_path: Path, shutdowns: dict[str, float]) -> dict[str, Path]:
    """Start a counting child under each name, taking that long to shut down; return once each
    has its handler in place."""
    counts = {name: tmp_path / f"{name}.count" for name in shutdowns}
    for name, count in counts.items():
        launcher.procs[name] = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(count), str(shutdowns[name])]
        )
    deadline = time.monotonic() + 10
    while not all(Path(f"{c}.ready").exists() for c in counts.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return counts


def test_stopping_everything_interrupts_each_process_once(tmp_path):
    launcher = Launcher(env={})
    # The router is still shutting down when the API has finished: it must not be sent another.
    counts = start_counting(launcher, tmp_path, {"api": 0.5, "router": 2})

    launcher.stop_all()

    assert {name: c.read_text() for name, c in counts.items()} == {"api": "1", "router": "1"}
    assert launcher.procs == {}


def test_stopping_one_process_interrupts_it_once(tmp_path):
    launcher = Launcher(env={})
    (count,) = start_counting(launcher, tmp_path, {"notifier": 0.5}).values()
    proc = launcher.procs["notifier"]

    launcher.stop("notifier")

    assert count.read_text() == "1"
    assert proc.returncode == 0
    assert "notifier" not in launcher.procs


# Prints the child's nice value and its scheduling group's ("/autogroup-712 nice 10"). A process
# in the group the kernel starts with (a session never begun since boot, as under some CI
# runners) reads an empty file: that group has no nice value of its own, printed as -1.
PRIORITY = """
import os
with open("/proc/self/autogroup") as f:
    print(os.nice(0), (f.read().split() or ["-1"])[-1])
"""
AUTOGROUP = Path("/proc/self/autogroup")


def group_nice(pid: int | str = "self") -> int:
    return int((Path(f"/proc/{pid}/autogroup").read_text().split() or ["-1"])[-1])


def own_group_nice() -> int:
    return group_nice()


def priority_of(launcher: Launcher, name: str, *, own_session: bool = True) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", PRIORITY],
        start_new_session=own_session,
        preexec_fn=launcher.preexec(name),
        capture_output=True,
        text=True,
        check=True,
    )
    return [int(v) for v in out.stdout.split()]


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="a kernel without autogroup scheduling")
def test_workers_off_the_callers_path_run_lower_in_their_own_scheduling_group():
    launcher = Launcher(env={}, off_path_nice=7)
    ours = os.nice(0)
    lowered = min(19, ours + 7)

    for name in ("meetings", "notifier", "records"):
        assert priority_of(launcher, name) == [lowered, lowered], name
    # A new session's group starts at 0, whatever the launcher's own nice value.
    for name in ("api", "intake", "classifier"):
        assert priority_of(launcher, name) == [ours, 0], name


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="a kernel without autogroup scheduling")
def test_a_child_in_the_launchers_session_leaves_the_sessions_group_alone():
    group = own_group_nice()
    launcher = Launcher(env={}, off_path_nice=7)

    assert priority_of(launcher, "records", own_session=False) == [min(19, os.nice(0) + 7), group]
    assert own_group_nice() == group


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="a kernel without autogroup scheduling")
def test_no_lower_priority_when_the_setting_is_zero():
    launcher = Launcher(env={}, off_path_nice=0, waited_on_raise=0)

    assert priority_of(launcher, "records") == [os.nice(0), 0]
    assert priority_of(launcher, "router") == [os.nice(0), 0]


def may_raise_priority() -> bool:
    """Whether a child of this process may raise its priority (root, or CAP_SYS_NICE: a container
    may run as root without it)."""
    return subprocess.run([sys.executable, "-c", "import os; os.nice(-1)"], check=False).returncode == 0


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="a kernel without autogroup scheduling")
def test_the_router_runs_higher_in_its_own_scheduling_group_where_it_may():
    launcher = Launcher(env={}, off_path_nice=7, waited_on_raise=5)
    ours = os.nice(0)

    if may_raise_priority():
        assert priority_of(launcher, "router") == [max(-20, ours - 5), max(-20, ours - 5)]
    else:  # refused: it runs all the same, at the usual priority
        assert priority_of(launcher, "router") == [ours, 0]


# Run lowered by 5 (or not), then lower the process named on the command line to our priority;
# prints what `lower_to_own_priority` answered.
LOWER_OTHER = """
import os, sys
from shared.embedded import lower_to_own_priority
os.nice(int(sys.argv[2]))
print(lower_to_own_priority(int(sys.argv[1])))
"""


def lowered_from(target: subprocess.Popen[bytes], steps: int) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", LOWER_OTHER, str(target.pid), str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip() == "True"


def sleeper(*, own_session: bool, nice: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        start_new_session=own_session,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="a kernel without autogroup scheduling")
def test_a_lowered_process_lowers_a_server_process_working_for_it_with_its_group():
    # A PostgreSQL backend leads a session of its own: its nice value and its group both follow.
    ours = os.nice(0)
    backend = sleeper(own_session=True)
    try:
        assert lowered_from(backend, 5)
        assert os.getpriority(os.PRIO_PROCESS, backend.pid) == min(19, ours + 5)
        assert group_nice(backend.pid) == min(19, ours + 5)
    finally:
        backend.kill()
        backend.wait()


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="a kernel without autogroup scheduling")
def test_lowering_another_process_leaves_a_session_it_does_not_lead_and_never_raises():
    group = own_group_nice()
    ours = os.nice(0)
    in_our_session = sleeper(own_session=False)
    already_lower = sleeper(own_session=True, nice=10)
    usual = sleeper(own_session=True)
    try:
        assert lowered_from(in_our_session, 5)
        assert os.getpriority(os.PRIO_PROCESS, in_our_session.pid) == min(19, ours + 5)
        assert own_group_nice() == group  # the session's group (ours) is not touched

        assert not lowered_from(already_lower, 5)
        assert os.getpriority(os.PRIO_PROCESS, already_lower.pid) == min(19, ours + 10)

        if ours == 0:  # a process that was not lowered lowers nothing
            assert not lowered_from(usual, 0)
            assert os.getpriority(os.PRIO_PROCESS, usual.pid) == 0
            assert group_nice(usual.pid) == 0
    finally:
        for p in (in_our_session, already_lower, usual):
            p.kill()
            p.wait()


class FailingServers:
    """Embedded servers whose Redis died and whose restarts fail `failures` times (the old process
    is gone either way, as `EmbeddedServers.restart` takes it out before it starts the new one)."""

    def __init__(self, failures: int) -> None:
        from shared.embedded import ManagedProcess

        self.managed = ManagedProcess
        dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        dead.wait(10)
        self.processes = [ManagedProcess("redis", dead)]
        self.failures, self.tries = failures, 0

    def restart(self, name: str) -> None:
        self.tries += 1
        self.processes = []
        if self.tries <= self.failures:
            raise OSError(12, "Cannot allocate memory")
        self.processes = [
            self.managed(name, subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]))
        ]


def test_a_server_whose_restart_fails_is_tried_again_with_a_growing_backoff():
    servers = FailingServers(failures=2)
    launcher = Launcher(embedded=servers, env={}, off_path_nice=0, waited_on_raise=0)  # type: ignore[arg-type]
    launcher.servers, launcher.started_at["redis"] = ["redis"], 0.0
    lines: list[str] = []
    try:
        assert launcher.supervise(now=lambda: 100.0, report=lines.append) == []
        assert "redis exited with code 3 after 100s; starting it again in 1s" in lines[-1]
        assert launcher.supervise(now=lambda: 101.0, report=lines.append) == []  # refused: 2 s
        assert "redis did not start ([Errno 12] Cannot allocate memory); starting it again in 2s" in lines[-1]
        assert launcher.supervise(now=lambda: 102.0, report=lines.append) == []  # not yet
        assert launcher.supervise(now=lambda: 103.0, report=lines.append) == []  # refused: 4 s
        assert "starting it again in 4s" in lines[-1]
        assert launcher.supervise(now=lambda: 107.0, report=lines.append) == ["redis"]
        assert lines[-1] == "redis started again (restart 1)"
        assert launcher.restarts == {"redis": 1}
        assert servers.tries == 3
    finally:
        for managed in servers.processes:
            managed.proc.kill()
            managed.proc.wait(10)
