"""Start-up shared by the benchmarks: a migrated scratch database for one run, the sandbox simulators.

A bench script imports it as `from common import database`; `python bench/<name>.py` puts this
directory first on sys.path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from simveb import migrate
from simveb.config import Settings, local_origin, url_settings, with_overrides
from simveb.db import start_embedded


@contextlib.contextmanager
def database(scratch: Path) -> Iterator[str]:
    """A migrated database for the run: a scratch database created (then dropped) on the server named
    by SIMVEB_TEST_DATABASE_URL, otherwise the embedded PostgreSQL in `scratch`; yields its URL."""
    server_url = os.environ.get("SIMVEB_TEST_DATABASE_URL")
    if not server_url:
        server = start_embedded(scratch)
        try:
            url = server.get_uri()
            asyncio.run(migrate.migrate(url))
            yield url
        finally:
            server.cleanup()
        return
    name = f"simveb_bench_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        con = await asyncpg.connect(server_url)
        try:
            await con.execute(sql)
        finally:
            await con.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(server_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    try:
        asyncio.run(migrate.migrate(url))
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def simulator() -> Iterator[str]:
    """The sandbox simulators on a free port, served by uvicorn in a thread (its own event loop).
    uvicorn comes with the `bench` extra, so only the scripts that call this need it."""
    import uvicorn
    from litestar import Litestar

    from simveb.sandbox import sandbox_router

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Litestar([sandbox_router()]), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def providers_at(settings: Settings, sim: str) -> Settings:
    """`settings` with every provider URL that points at this server's own /sandbox pointed at the
    simulators served at `sim` instead (a bench serves them apart, with server.sandbox false)."""
    own = local_origin(settings.server)
    changes: dict[str, dict[str, str]] = {}
    for section, name, value in url_settings(settings):
        if value == own + "/sandbox" or value.startswith(own + "/sandbox/"):
            changes.setdefault(section, {})[name] = sim + value[len(own) :]
    return with_overrides(settings, **changes)
