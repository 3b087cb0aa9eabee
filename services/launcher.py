"""Starting the system as separate processes: `appeals up`, `appeals bench pipeline` and the tests'
fixture all use this one launcher. Embedded servers are started unless the environment names
external ones (KAFKA_BOOTSTRAP_SERVERS and REDIS_URL).

`appeals up` supervises what it started, like a service manager: a process that exits, a service
or an embedded server, is logged and started again after a backoff that doubles with each quick
failure (1 s up to 60 s) and resets once it has stayed up for a while; the others keep running.
Every child dies with the launcher (`shared.embedded.die_with_parent`), so a `kill -9` of `appeals
up` leaves no ports held.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from shared.embedded import EmbeddedServers, at_priority, die_with_parent, environment_for, port_open
from shared.settings import Settings, get_settings

log = logging.getLogger("appeals.launcher")

WORKERS = ("intake", "classifier", "router", "meetings", "notifier", "records")
ALL_PROCESSES = (*WORKERS, "api")
# What can wait while the machine is short of CPU: run `Settings.off_path_nice` lower. The API, the
# classifier and the router are what a caller and a department wait for, and the intake worker keeps
# the index the operator's duplicate preview reads as the next call comes in. A joint meeting has
# days to meet: the meetings worker may take its tickets a few seconds late.
OFF_CALLERS_PATH = frozenset({"meetings", "notifier", "records"})
# Run `Settings.waited_on_raise` higher, with the embedded Redis and broker: where a flood queues.
WAITED_ON = frozenset({"router"})


def worker_app(name: str, settings: Settings | None = None) -> Any:
    """The app of the worker `name` (`appeals run NAME`), built, not started: its service's
    `build_app`; the meetings worker is the router's second (`build_meetings_app`)."""
    module, builder = ("router", "build_meetings_app") if name == "meetings" else (name, "build_app")
    return getattr(import_module(f"services.{module}.app"), builder)(settings)


def external_servers_configured(env: Mapping[str, str] = os.environ) -> bool:
    return bool(env.get("KAFKA_BOOTSTRAP_SERVERS") and env.get("REDIS_URL"))


@dataclass
class Backoff:
    """When to start a process again after it exited: 1 s, 2 s, 4 s ... up to `ceiling`; a run that
    lasted `stable` seconds counts as healthy and starts the series again."""

    first: float = 1.0
    ceiling: float = 60.0
    stable: float = 60.0
    failures: int = 0

    def delay_after(self, ran_for: float) -> float:
        self.failures = 1 if ran_for >= self.stable else self.failures + 1
        return min(self.ceiling, self.first * 2 ** (self.failures - 1))


class Launcher:
    def __init__(
        self,
        *,
        embedded: EmbeddedServers | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        off_path_nice: int | None = None,
        waited_on_raise: int | None = None,
    ) -> None:
        settings = get_settings()
        self.embedded = embedded
        self.off_path_nice = settings.off_path_nice if off_path_nice is None else off_path_nice
        self.waited_on_raise = settings.waited_on_raise if waited_on_raise is None else waited_on_raise
        self.base_env = dict(env if env is not None else os.environ)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.extra_env: dict[str, dict[str, str]] = {}
        self.backoff: dict[str, Backoff] = {}
        self.restart_at: dict[str, float] = {}  # exited processes waiting for their backoff
        self.restarts: dict[str, int] = {}
        self.servers: list[str] = []  # the embedded servers started, which supervise keeps running

    @property
    def env(self) -> dict[str, str]:
        return environment_for(self.embedded, **self.base_env) if self.embedded else dict(self.base_env)

    def start_servers(self) -> None:
        if self.embedded is not None and not self.embedded.processes:
            self.embedded.raised = self.waited_on_raise  # as the router: every stage waits on them
            self.embedded.start()
            started = time.monotonic()
            self.servers = [p.name for p in self.embedded.processes]
            self.started_at |= dict.fromkeys(self.servers, started)

    def start(self, name: str, **extra_env: str) -> subprocess.Popen:
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", name],
            env={**self.env, **extra_env},
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            # Own session: the terminal's Ctrl-C reaches only `appeals up`, which then stops the
            # services before the servers they depend on.
            start_new_session=True,
            preexec_fn=self.preexec(name),
        )
        self.procs[name] = proc
        self.started_at[name] = time.monotonic()
        self.extra_env[name] = dict(extra_env)
        return proc

    def preexec(self, name: str) -> Callable[[], None] | None:
        """What the child `name` runs before its program (after `setsid`): it dies with the
        launcher; one off the caller's path runs at a lower priority, the router at a higher."""
        if name in OFF_CALLERS_PATH:
            steps = self.off_path_nice
        elif name in WAITED_ON:
            steps = -self.waited_on_raise
        else:
            steps = 0
        return at_priority(steps, die_with_parent(signal.SIGTERM))

    def start_all(self, names: Iterable[str] = ALL_PROCESSES) -> None:
        for name in names:
            self.start(name)

    def wait_for_ports(self, ports: Iterable[int], timeout: float = 120) -> None:
        """Wait until every port answers; fail early, with the log, if a process dies."""
        deadline = time.monotonic() + timeout
        ports = list(ports)
        while not all(port_open(p) for p in ports):
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {p.returncode}{self._log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {timeout:.0f}s (ports {ports})")
            time.sleep(0.2)

    def _log_tail(self, name: str, size: int = 3000) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        return f":\n{path.read_text(errors='replace')[-size:]}" if path.exists() else ""

    def first_exited(self) -> str | None:
        return next((n for n, p in self.procs.items() if p.poll() is not None), None)

    def _running(self) -> dict[str, subprocess.Popen | None]:
        """Every process started: the embedded servers (first: the services need them; None for
        one whose restart failed before it had a process) and the services."""
        procs = {p.name: p.proc for p in self.embedded.processes} if self.embedded is not None else {}
        return {name: procs.get(name) for name in self.servers} | self.procs

    def supervise(
        self, now: Callable[[], float] = time.monotonic, report: Callable[[str], None] = log.warning
    ) -> list[str]:
        """One round of supervision: note processes that exited (their backoff starts), start
        those whose backoff is over, an embedded server before the services. Returns the names
        started again in this round."""
        t = now()
        for name, proc in self._running().items():
            if name in self.restart_at or proc is None or proc.poll() is None:
                continue
            ran = t - self.started_at.get(name, t)
            self._retry_later(name, t, ran, f"exited with code {proc.returncode} after {ran:.0f}s", report)
        started = []
        for name in [n for n in self._running() if self.restart_at.get(n, float("inf")) <= t]:
            del self.restart_at[name]
            if name in self.procs:
                self.start(name, **self.extra_env.get(name, {}))
            else:
                assert self.embedded is not None
                try:  # Redis reads its file back meanwhile: the services could do nothing anyway
                    self.embedded.restart(name)
                except Exception as e:  # whatever it was (a port, memory, recovery), try again later
                    self._retry_later(name, now(), 0, f"did not start ({e})", report)
                    continue
                self.started_at[name] = now()  # its run counts from when it answered
            self.restarts[name] = self.restarts.get(name, 0) + 1
            started.append(name)
            report(f"{name} started again (restart {self.restarts[name]})")
        return started

    def _retry_later(self, name: str, t: float, ran: float, what: str, report: Callable[[str], None]) -> None:
        """Start `name` again after its backoff; `ran`: how long its last run lasted (0 for a start
        that failed, which counts as a quick failure)."""
        delay = self.backoff.setdefault(name, Backoff()).delay_after(ran)
        self.restart_at[name] = t + delay
        report(f"{name} {what}; starting it again in {delay:.0f}s{self._log_tail(name, 600)}")

    def stop(self, name: str, timeout: float = 20) -> None:
        self._interrupt(name)
        self._reap(name, timeout)

    def stop_all(self) -> None:
        names = list(self.procs)
        for name in names:  # all at once, so they shut down side by side
            self._interrupt(name)
        for name in names:
            self._reap(name)
        if self.embedded is not None:
            self.embedded.stop()

    def _interrupt(self, name: str) -> None:
        # Once: FastStream and uvicorn shut down cleanly on SIGINT, and take a second one as "quit
        # now" (uvicorn then skips the API's lifespan shutdown and logs the interrupted lifespan).
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    def _reap(self, name: str, timeout: float = 20) -> None:
        proc = self.procs.pop(name)
        self.restart_at.pop(name, None)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
