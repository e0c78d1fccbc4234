"""Benchmark: the price of token checks, and how many password logins a server signs per second.

A real server (granian, one worker, in a subprocess) on the embedded PostgreSQL or on the server
named by SIMVEB_TEST_DATABASE_URL (a scratch database is created and dropped). In the same run and
with the same httpx concurrency:
- baseline: `GET /health/live` (no token, no database);
- me: `GET /api/auth/me` with a bearer token (EdDSA verify, claims, deny-list lookup);
- logins: `POST /api/auth/login` (argon2id verify off the event loop, session and token writes).
The two request kinds are measured twice, interleaved, to even out drift. The target is
me/baseline >= 0.8; logins are bounded by argon2 (m=19 MiB, t=2) and only reported.

Run it from a clean clone, with the project's `bench` extra:

    pip install -e ".[bench]" && python bench/auth.py [--seconds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from common import database  # bench/common.py

from simveb.actors.auth.messages import SetPassword
from simveb.actors.users.messages import SYSTEM, CreateUser, SeedUsers
from simveb.config import Settings, with_overrides
from simveb.runtime import Runtime

EMAIL = "bench.agent@example.bj"
PASSWORD = "bench password 2026"


async def prepare(settings: Settings) -> None:
    """Reference data and one agent with a password, through the services' messages."""
    runtime = Runtime(settings, relay=False)
    await runtime.start(migrate_first=False, seed_if_empty=True)
    try:
        assert runtime.bus is not None
        await runtime.bus.ask(SeedUsers(only_if_empty=True))
        user = await runtime.bus.ask(CreateUser(caller=SYSTEM, kind="staff", roles=["agent"], email=EMAIL))
        await runtime.bus.ask(SetPassword(user_id=user.id, password=PASSWORD, by="bench"))
    finally:
        await runtime.stop()


@contextlib.contextmanager
def server(scratch: str, url: str) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "SIMVEB_SERVER__DATA_DIR": scratch,
        "SIMVEB_SERVER__LOG_LEVEL": "WARNING",
        "SIMVEB_DATABASE__URL": url,
        "SIMVEB_DATABASE__MIGRATE_ON_START": "false",
        "SIMVEB_RATELIMIT__ENABLED": "false",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-ws",
            "--log-level",
            "warning",
            "simveb.http.app:app_from_env",
        ],
        env=env,
        cwd=scratch,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench auth: the server did not start")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def rate(
    client: httpx.AsyncClient, method: str, path: str, seconds: float, concurrency: int, **kw: object
) -> float:
    """Requests per second for `seconds`, `concurrency` in flight; every answer must be a 200."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            r = await client.request(method, path, **kw)  # type: ignore[arg-type]
            if r.status_code != 200:
                raise SystemExit(f"bench auth: {method} {path} answered {r.status_code}: {r.text[:200]}")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def measure(base: str, seconds: float, concurrency: int) -> tuple[float, float, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        r = await client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD})
        r.raise_for_status()
        headers = {"Authorization": f"Bearer {r.json()['tokens']['access_token']}"}
        await rate(client, "GET", "/health/live", 0.5, concurrency)  # warm up both paths
        await rate(client, "GET", "/api/auth/me", 0.5, concurrency, headers=headers)
        baseline, me = [], []
        for _ in range(2):
            baseline.append(await rate(client, "GET", "/health/live", seconds, concurrency))
            me.append(await rate(client, "GET", "/api/auth/me", seconds, concurrency, headers=headers))
        login_body = {"email": EMAIL, "password": PASSWORD}
        logins = await rate(client, "POST", "/api/auth/login", seconds, min(concurrency, 8), json=login_body)
    return sum(me) / len(me), sum(baseline) / len(baseline), logins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    logging.getLogger("simveb").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch, database(Path(scratch)) as url:
        settings = with_overrides(
            Settings(),
            server={"data_dir": scratch, "log_level": "WARNING"},
            database={"url": url, "migrate_on_start": False, "pool_min": 1, "pool_max": 4},
        )
        asyncio.run(prepare(settings))
        with server(scratch, url) as base:
            me, baseline, logins = asyncio.run(measure(base, args.seconds, args.concurrency))
        print(f"seconds={args.seconds:g} concurrency={args.concurrency} server=granian workers=1")
        print(
            f"bench auth: me_per_s={me:.0f} baseline_per_s={baseline:.0f} ratio={me / baseline:.2f}"
            f" logins_per_s={logins:.1f}"
        )


if __name__ == "__main__":
    main()
