"""The Redis client every process uses: redis-py's asyncio client, with commands packed by hiredis.

redis-py's asyncio connection packs commands in Python, copying its buffer for every argument: the
pipeline's one-command-per-batch Lua calls (hundreds or thousands of arguments) spent milliseconds
there. hiredis (already installed for its reply parser) packs the same bytes in C; the synchronous
redis-py client uses it the same way.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError


class HiredisPackedConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        # A command name with a space in it ('CONFIG GET') goes as separate words, as in redis-py.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as e:  # what redis-py's encoder would refuse (None, a dict, ...)
            raise DataError(str(e)) from e


def connect(url: str) -> Redis:
    redis = Redis.from_url(url)
    pool = redis.connection_pool
    # Plain TCP only (TLS and unix sockets keep their own connection classes).
    if pool.connection_class is Connection and hasattr(hiredis, "pack_command"):
        pool.connection_class = HiredisPackedConnection
    return redis


def text(value: bytes | str) -> str:
    """A Redis reply as text (the clients here are not created with decode_responses)."""
    return value.decode() if isinstance(value, bytes) else value
