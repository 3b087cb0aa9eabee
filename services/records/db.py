"""PostgreSQL access for the records: connections and the schema migrations.

Migrations are plain SQL files, `migrations/NNNN_name.sql`, applied in order at start by whoever
connects first (the records worker, the API, the command line) under an advisory lock, each in its
own transaction, and noted in `schema_migrations`. Plain SQL rather than Alembic: the schema is
read and reviewed by the centre's DBAs as SQL, and without SQLAlchemy models Alembic would only add
a second way of running the same SQL files.
"""

from __future__ import annotations

import ipaddress
from functools import partial
from pathlib import Path

import orjson
import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from shared.embedded import lower_to_own_priority

Pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK = 4_712_345  # pg_advisory_lock key: one migrator at a time


class DatabaseNotConfigured(RuntimeError):
    pass


def require_url(url: str) -> str:
    if not url:
        raise DatabaseNotConfigured(
            "DATABASE_URL is not set: `appeals up` starts an embedded PostgreSQL and sets it; "
            "elsewhere point it at a server, e.g. postgresql://user:password@host:5432/appeals"
        )
    return url


def migration_files() -> list[tuple[str, Path]]:
    return sorted((p.stem, p) for p in MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def migrate(url: str) -> list[str]:
    """Apply the migrations not applied yet; returns their versions."""
    applied_now: list[str] = []
    async with await psycopg.AsyncConnection.connect(require_url(url), autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {r[0] for r in await cur.fetchall()}
            for version, path in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text(encoding="utf-8"))
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    return applied_now


def pool(url: str, *, max_size: int = 4, backends_follow: bool = False) -> Pool:
    """A pool that is not opened yet (`await pool.open()`): connections come and go with the
    server, so a PostgreSQL that is down at start does not stop the process. `backends_follow`:
    the server's process of each connection runs as low as this process, when the server is on
    this machine (`_backend_follows`)."""
    return AsyncConnectionPool(
        require_url(url),
        connection_class=psycopg.AsyncConnection[DictRow],
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "connect_timeout": 5},
        timeout=5,  # waiting for a connection: then the caller answers "unavailable"
        check=AsyncConnectionPool.check_connection,  # a server restart leaves dead connections behind
        configure=partial(_configure, backend_follows=backends_follow),
    )


async def _configure(conn: psycopg.AsyncConnection[DictRow], *, backend_follows: bool = False) -> None:
    # Stored events come back as JSON: orjson reads them several times faster than the standard
    # library (a rebuild reads every event; the worker, those of tickets folded again).
    set_json_loads(orjson.loads, conn)
    # PostgreSQL keeps no offset: a timestamptz comes back in the session's time zone, which is the
    # server's `timezone` setting unless the session sets one (a server set up in Beijing has
    # Asia/Shanghai; a managed one, whatever its region). An archived ticket's deadlines and the
    # list's times would then change clock with the server they were read from. UTC on
    # every connection of every pool (the records' reads all go through `pool`) reads them one way
    # wherever; what needs the city's clock converts to it (`meeting_of`, the export's cells).
    # A statement here rather than `options=-c TimeZone=UTC` in the connection: that would replace
    # any `options` the DATABASE_URL carries. Once per connection, not per checkout.
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.commit()  # the pool takes back only an idle connection
    if backend_follows:
        _backend_follows(conn)


def _backend_follows(conn: psycopg.AsyncConnection[DictRow]) -> None:
    """Run the connection's backend as low as this process runs (`lower_to_own_priority`), when the
    server is on this machine: the records worker runs low in a flood, off the caller's path, but
    each of its statements (a batch as one JSON document of megabytes) then ran in PostgreSQL at the
    usual priority, beside the classifier: about a fifth of a core in two minutes at 2,000 appeals a
    second. A server elsewhere (a socket that is not loopback, `deploy/`) is left alone: the number
    of its backend names no process here."""
    try:
        host = conn.info.hostaddr or conn.info.host
    except psycopg.NotSupportedError:  # a libpq before 12 does not say: treat it as elsewhere
        return
    if not host.startswith("/"):  # a Unix socket's folder: this machine
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:  # a name: `hostaddr` is empty only for a socket
            return
    lower_to_own_priority(conn.info.backend_pid)
