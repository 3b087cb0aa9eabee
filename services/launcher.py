"""Starting the system as separate processes: `appeals up`, `appeals bench pipeline` and the tests'
fixture all use this one launcher. Embedded servers are started unless the environment names
external ones (KAFKA_BOOTSTRAP_SERVERS and REDIS_URL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from shared.embedded import EmbeddedServers, environment_for, port_open

WORKERS = ("intake", "classifier", "router", "notifier")
ALL_PROCESSES = (*WORKERS, "api")


def external_servers_configured(env: Mapping[str, str] = os.environ) -> bool:
    return bool(env.get("KAFKA_BOOTSTRAP_SERVERS") and env.get("REDIS_URL"))


class Launcher:
    def __init__(
        self,
        *,
        embedded: EmbeddedServers | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.embedded = embedded
        self.base_env = dict(env if env is not None else os.environ)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        return environment_for(self.embedded, **self.base_env) if self.embedded else dict(self.base_env)

    def start_servers(self) -> None:
        if self.embedded is not None and not self.embedded.processes:
            self.embedded.start()

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
        )
        self.procs[name] = proc
        return proc

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

    def _log_tail(self, name: str) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        return f":\n{path.read_text(errors='replace')[-3000:]}" if path.exists() else ""

    def first_exited(self) -> str | None:
        return next((n for n, p in self.procs.items() if p.poll() is not None), None)

    def stop(self, name: str, timeout: float = 20) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # FastStream and uvicorn shut down cleanly on SIGINT
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGINT)
        for name in list(self.procs):
            self.stop(name)
        if self.embedded is not None:
            self.embedded.stop()
