"""Shared fixtures: a real PostgreSQL, migrated once, and a fresh runtime (bus + actors) per test.

The database is `SIMVEB_TEST_DATABASE_URL` when set (a new database is created on that server for
the session and dropped after), otherwise the embedded PostgreSQL in a temporary directory. Each test
starts from empty tables and a new runtime, so no cache or mailbox leaks from one test to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from simveb import migrate
from simveb.config import Settings, with_overrides
from simveb.db import start_embedded
from simveb.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database for this test session."""
    server_url = os.environ.get("SIMVEB_TEST_DATABASE_URL")
    if server_url:
        name = f"simveb_test_{uuid.uuid4().hex[:10]}"

        async def create() -> None:
            con = await asyncpg.connect(server_url)
            try:
                await con.execute(f'CREATE DATABASE "{name}"')
            finally:
                await con.close()

        async def drop() -> None:
            con = await asyncpg.connect(server_url)
            try:
                await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await con.close()

        asyncio.run(create())
        url = _with_database(server_url, name)
        asyncio.run(migrate.migrate(url))
        yield url
        asyncio.run(drop())
    else:
        server = start_embedded(tmp_path_factory.mktemp("embedded"))
        url = server.get_uri()
        asyncio.run(migrate.migrate(url))
        yield url
        server.cleanup()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def base_settings(database_url: str, data_dir: Path) -> Settings:
    """config.toml's defaults pointed at the test database; rate limits high enough for a whole session."""
    return with_overrides(
        Settings(),
        server={"data_dir": str(data_dir), "env": "development", "log_level": "WARNING"},
        database={"url": database_url, "migrate_on_start": False, "pool_min": 1, "pool_max": 8},
        bus={"ask_timeout_s": 10.0},
        ratelimit={"per_minute": 1_000_000},
    )


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return base_settings


_TABLES: list[str] = []


async def truncate_all(url: str) -> None:
    """Empty every table of every schema the migrations created (the ledger of migrations stays)."""
    con = await asyncpg.connect(url)
    try:
        if not _TABLES:
            rows = await con.fetch(
                "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) AS t FROM pg_tables"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'public')"
            )
            _TABLES.extend(r["t"] for r in rows)
        if _TABLES:
            await con.execute(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE")
    finally:
        await con.close()


@contextlib.asynccontextmanager
async def fresh_runtime(settings: Settings, **options: Any) -> AsyncIterator[Runtime]:
    """A started runtime on empty tables (all actors and the relay unless `options` say otherwise)."""
    assert settings.database.url
    await truncate_all(settings.database.url)
    rt = Runtime(settings, **options)
    await rt.start(migrate_first=False, seed_if_empty=False)
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """A started runtime (all actors, relay) on empty tables."""
    async with fresh_runtime(settings) as rt:
        yield rt


@pytest.fixture
async def seeded(runtime: Runtime) -> Runtime:
    """The runtime with every domain's reference data loaded."""
    from simveb.seed import seed

    await seed(runtime)
    return runtime


@pytest.fixture
async def client(runtime: Runtime, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app, in process and on the test's event loop, sharing the test's runtime."""
    from simveb.http.app import create_app

    app = create_app(settings, runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://simveb.test") as c:
        yield c


TokenFactory = Callable[..., str]


@pytest.fixture
def make_token(runtime: Runtime, settings: Settings) -> TokenFactory:
    """Sign an access token with the runtime's key: make_token(sub, permissions=[...], roles=[...])."""

    def factory(
        sub: str = "test-user",
        *,
        permissions: list[str] | tuple[str, ...] = (),
        roles: list[str] | tuple[str, ...] = (),
        ttl: int = 900,
        **claims: Any,
    ) -> str:
        assert runtime.keys is not None
        now = int(time.time())
        body = {
            "iss": settings.security.issuer,
            "aud": settings.security.audience,
            "sub": sub,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
            "permissions": list(permissions),
            **claims,
        }
        return runtime.keys.sign(body)

    return factory


@pytest.fixture
def auth(make_token: TokenFactory) -> Callable[..., dict[str, str]]:
    """Headers with a bearer token: auth("config:write", sub="admin-1")."""

    def headers(*permissions: str, sub: str = "test-user", roles: tuple[str, ...] = ()) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(sub, permissions=permissions, roles=roles)}"}

    return headers


class LogCapture(logging.Handler):
    """Every record of the simveb loggers, formatted, to search for what must never be logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.__dict__}")

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def simveb_logs() -> Iterator[LogCapture]:
    handler = LogCapture()
    logger = logging.getLogger("simveb")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("SIMVEB_TEST_REDIS_URL")
    if not url:
        pytest.skip("SIMVEB_TEST_REDIS_URL is not set: no Redis server for this test")
    return url
