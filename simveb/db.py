"""Database access for the whole process: the embedded PostgreSQL, the asyncpg pool and its codecs.

Each actor gets the same `Database` object; it reads and writes only its own schema (tables are always
schema-qualified). The embedded server (pgserver) is used when `database.url` is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec

from simveb.config import Settings

log = logging.getLogger("simveb.db")

_json_encoder = msgspec.json.Encoder()

T = TypeVar("T")


def _encode_json(value: Any) -> str:
    return _json_encoder.encode(value).decode()


async def init_connection(con: asyncpg.Connection) -> None:
    """Codecs for every pooled connection: jsonb <-> Python via msgspec, uuid -> stdlib UUID."""
    for name in ("jsonb", "json"):
        await con.set_type_codec(
            name, encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog", format="text"
        )
    await con.set_type_codec("uuid", encoder=str, decoder=uuid.UUID, schema="pg_catalog", format="text")


def from_row(cls: type[T], row: asyncpg.Record | None) -> T | None:
    """One row as the Struct `cls` (None stays None); msgspec checks the column types on the way."""
    return None if row is None else msgspec.convert(dict(row), cls)


def from_rows(cls: type[T], rows: Iterable[asyncpg.Record]) -> list[T]:
    """Rows as a list of the Struct `cls`."""
    return [msgspec.convert(dict(r), cls) for r in rows]


def start_embedded(data_dir: Path) -> Any:
    """Start (or join) the embedded PostgreSQL in <data_dir>/pgdata and return the pgserver handle.

    pgserver shares one server between the processes that open the same directory and stops it when
    the last one leaves, so the CLI can run next to a serving process.
    """
    import warnings

    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir, which warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: it is only needed for the embedded mode

    pgdata = data_dir / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL in %s", pgdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pgserver.get_server(pgdata, cleanup_mode="stop")


def embedded_url(server: Any) -> str:
    return server.get_uri()


class Database:
    """The pool plus the per-actor transaction helper."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = url

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 30.0) -> Database:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=init_connection, command_timeout=timeout
        )
        return cls(pool, url)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection in one transaction: commit on success, roll back on any exception."""
        async with self.pool.acquire() as con, con.transaction():
            yield con

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as con:
                return await con.fetchval("SELECT 1") == 1
        except Exception:
            return False

    async def close(self, timeout: float = 10.0) -> None:
        """Close the pool; connections still held after `timeout` (a stuck task) are terminated."""
        try:
            async with asyncio.timeout(timeout):
                await self.pool.close()
        except TimeoutError:
            log.error("database connections still in use after %g s at shutdown; terminating them", timeout)
            self.pool.terminate()


class DatabaseProvider:
    """Resolves `database.url` (embedded when empty) and owns the embedded server's life cycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._server: Any = None
        self.url = settings.database.url

    def __enter__(self) -> str:
        if not self.url:
            self._server = start_embedded(self.settings.data_dir)
            self.url = embedded_url(self._server)
        return self.url

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None

    @property
    def embedded(self) -> bool:
        return self._server is not None
