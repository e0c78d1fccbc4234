"""Database access for the whole process: the embedded PostgreSQL, the asyncpg pool and its codecs.

Each actor gets the same `Database` object; it reads and writes only its own schema (tables are always
schema-qualified). The embedded server (pgserver) is used when `database.url` is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec

from simveb.config import Settings
from simveb.errors import Unavailable

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


async def keep_session(con: asyncpg.Connection) -> None:
    """What a pooled connection runs when it is released: nothing.

    asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` at
    every release: one more round trip for every message an actor handles (a sixth of the event
    loop's time on a read by id). The pool still rolls back a transaction left open. Nothing in this
    project leaves session state on a pooled connection, and nothing may: settings with SET LOCAL,
    advisory locks with the _xact_ functions, LISTEN, cursors across messages and bulk work with
    session settings on connections of their own (Database.listener, the vehicles bulk pipeline).
    """


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


# Set while the current task holds a pooled connection (through Database.connection/transaction):
# the bus refuses an ask made then, because the asked actor may need a connection from the same pool.
holding_connection: contextvars.ContextVar[bool] = contextvars.ContextVar("simveb_holding", default=False)


class DatabaseBusy(Unavailable):
    code = "database_busy"
    title = "Database busy"


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"
    title = "Database unavailable"


# What a lost or refused database connection raises (server stopped, restarting, network gone): the
# request fails as a 503 the client may retry, not as a crash of the actor that happened to ask.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def _closed(con: asyncpg.Connection) -> bool:
    try:
        return con.is_closed()
    except asyncpg.InterfaceError:  # the pool took it back already: it closed under us
        return True


def _lost(exc: BaseException, con: asyncpg.Connection | None) -> bool:
    """Is `exc` (or what it was raised while handling: a failed rollback after a lost connection) the
    loss or refusal of the connection? `con` None: while connecting."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, _CONNECTION_LOST):
            return True
        # A socket error, or using a connection the server dropped ("connection is closed"); once
        # connected, only when the connection is indeed closed (a handler's own file error is not ours).
        if isinstance(seen, (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)) and (
            con is None or _closed(con)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Database:
    """The pool, the transaction helper the runtime and the actors use, and dedicated listeners."""

    def __init__(self, pool: asyncpg.Pool, url: str, *, acquire_timeout: float = 5.0) -> None:
        self.pool = pool
        self.url = url
        self.acquire_timeout = acquire_timeout

    @classmethod
    async def connect(
        cls, url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 30.0, acquire_timeout: float = 5.0
    ) -> Database:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=init_connection,
            command_timeout=timeout,
            reset=keep_session,
        )
        return cls(pool, url, acquire_timeout=acquire_timeout)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """One pooled connection, waited for at most `acquire_timeout` (then a 503, never a hang).

        A connection that cannot be opened, or is lost while in use, is a DatabaseUnavailable (503).
        """
        try:
            con = await self.pool.acquire(timeout=self.acquire_timeout)
        except TimeoutError:
            raise DatabaseBusy(f"no database connection free within {self.acquire_timeout:g} s") from None
        except Exception as exc:
            if _lost(exc, None):
                raise DatabaseUnavailable(f"database unavailable ({type(exc).__name__})") from exc
            raise
        token = holding_connection.set(True)
        try:
            yield con
        except Exception as exc:
            if _lost(exc, con):
                raise DatabaseUnavailable(f"database connection lost ({type(exc).__name__})") from exc
            raise
        finally:
            holding_connection.reset(token)
            try:
                await self.pool.release(con)
            except Exception as exc:  # broken while being reset: the pool has terminated and replaces it
                log.debug("connection dropped at release: %s", exc)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection in one transaction: commit on success, roll back on any exception."""
        async with self.connection() as con, con.transaction():
            yield con

    def listener(self, channel: str, callback: Callable[[str], None]) -> Listener:
        """A LISTEN on its own connection (never one of the pool's), re-established after a loss."""
        return Listener(self.url, channel, callback)

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


class Listener:
    """LISTEN on a dedicated connection. When the connection is lost (database restart, network),
    it reconnects with backoff and calls the callback once with "" so the owner catches up on what
    it may have missed while deaf (a relay drains, a cache reloads)."""

    def __init__(self, url: str, channel: str, callback: Callable[[str], None]) -> None:
        self.url = url
        self.channel = channel
        self.callback = callback
        self.connected = False
        self._con: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._closing = False

    async def start(self) -> None:
        await self._connect()  # the first connection must work: a start-up error is reported
        self._task = asyncio.create_task(self._watch(), name=f"listen:{self.channel}")

    async def _connect(self) -> None:
        con = await asyncpg.connect(self.url, timeout=10)
        await con.add_listener(self.channel, self._notified)
        con.add_termination_listener(self._terminated)
        self._con = con
        self.connected = True
        self._lost.clear()

    def _notified(self, _con: object, _pid: int, _channel: str, payload: str) -> None:
        self.callback(payload)

    def _terminated(self, _con: object) -> None:
        self.connected = False
        self._lost.set()

    async def _watch(self) -> None:
        delay = 0.2
        while not self._closing:
            # A connection can also die without a termination callback (server killed): probe it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._lost.wait()
            if self._closing:
                return
            if self.connected and self._con is not None:
                try:
                    async with asyncio.timeout(5.0):
                        await self._con.execute("SELECT 1")
                    continue
                except Exception:
                    self.connected = False
            with contextlib.suppress(Exception):
                if self._con is not None:
                    self._con.terminate()
            try:
                await self._connect()
            except Exception as exc:
                log.warning("LISTEN %s: reconnect failed (%s); retrying in %.1f s", self.channel, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                self._lost.set()
                continue
            delay = 0.2
            log.info("LISTEN %s: connection re-established", self.channel)
            self.callback("")

    async def stop(self) -> None:
        self._closing = True
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._con is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._con.close()
            with contextlib.suppress(Exception):
                self._con.terminate()
            self._con = None
        self.connected = False


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
