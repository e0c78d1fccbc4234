"""Benchmark: the price of the token check, and how many password logins a server signs per second.

Two servers run side by side with the same granian settings (one worker): the project, started
with `simveb serve` and its default settings, and the bare Litestar app of bench/bare/bare_app.py.
wrk (the Debian package `wrk`, outside Python so it is not the bottleneck) drives both:

- me: `GET /api/auth/me` with a bearer token (the shell, EdDSA verification, claims, deny-list
  lookup, the caller) against the bare app's `GET /me`, which verifies the same token with pyjwt
  alone (EdDSA pinned, `iss`, `aud`, `exp`) and answers its claims. One token is sent again and
  again, as a client does for its 15 minutes: the project keeps verified tokens in a small cache
  (expiry and revocation still checked each time), the bare app verifies the signature every time,
  so the ratio can exceed 1;
- logins: `POST /api/auth/login` (argon2id verify off the event loop, session and token writes),
  reported only: argon2 (m=19 MiB, t=2) bounds it, not our code.

Each pair is measured back to back, the order alternating, for several rounds; the ratio is the
median of the rounds' ratios. The only setting changed from the defaults is
`ratelimit.per_minute`, raised so the one load generator address is not refused.

Run it from a clean clone, with the project's `bench` extra and wrk (`apt-get install wrk`):

    pip install -e ".[bench]" && python bench/auth.py [--seconds 3] [--rounds 3] [--connections 32]

The database is a scratch one on SIMVEB_TEST_DATABASE_URL (created and dropped), otherwise the
embedded PostgreSQL. Target: me_ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import database  # bench/common.py
from cryptography.hazmat.primitives import serialization
from http_load import HERE, ROOT, access_token, free_port, process, wrk  # bench/http_load.py

from simveb.actors.auth.messages import SetPassword
from simveb.actors.users.messages import SYSTEM, CreateUser, SeedUsers
from simveb.config import Settings, with_overrides
from simveb.keys import KeyRing, load_private

EMAIL = "bench.agent@example.bj"
PASSWORD = "bench password 2026"


async def prepare(settings: Settings) -> None:
    """Reference data and one agent with a password, through the services' messages."""
    from simveb.runtime import Runtime

    runtime = Runtime(settings, relay=False)
    await runtime.start(migrate_first=False, seed_if_empty=True)
    try:
        assert runtime.bus is not None
        await runtime.bus.ask(SeedUsers(only_if_empty=True))
        user = await runtime.bus.ask(CreateUser(caller=SYSTEM, kind="staff", roles=["agent"], email=EMAIL))
        await runtime.bus.ask(SetPassword(user_id=user.id, password=PASSWORD, by="bench"))
    finally:
        await runtime.stop()


def public_pem(settings: Settings) -> str:
    """The public half of the server's signing key, for the bare app's own verification."""
    private = load_private(KeyRing.for_settings(settings).private_pem())
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="back-to-back pairs; the median ratio is kept")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench auth: needs wrk (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, scratch: Path) -> None:
    with database(scratch) as url:
        settings = with_overrides(
            Settings(), server={"data_dir": str(scratch)}, database={"url": url, "migrate_on_start": False}
        )
        asyncio.run(prepare(settings))
        token = access_token(settings)
        project_port, bare_port = free_port(), free_port()
        env = {
            **os.environ,
            "SIMVEB_CONFIG": str(ROOT / "config.toml"),
            "SIMVEB_SERVER__DATA_DIR": str(scratch),
            "SIMVEB_DATABASE__URL": url,
            # One wrk address would be refused after 600 requests; the limiter still runs.
            "SIMVEB_RATELIMIT__PER_MINUTE": str(10**9),
        }
        bare_env = {
            **os.environ,
            "BARE_JWT_PUBLIC_KEY": public_pem(settings),
            "BARE_JWT_ISSUER": settings.security.issuer,
            "BARE_JWT_AUDIENCE": settings.security.audience,
        }
        project_argv = [sys.executable, "-m", "simveb.cli", "serve", "--port", str(project_port), "--workers", "1"]
        bare_argv = [sys.executable, str(HERE / "bare" / "bare_app.py"), str(bare_port), url]
        project = f"http://127.0.0.1:{project_port}"
        bare = f"http://127.0.0.1:{bare_port}"
        login = scratch / "login.lua"
        body = json.dumps({"email": EMAIL, "password": PASSWORD})
        login.write_text(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        auth = [f"Authorization: Bearer {token}"]
        with (
            process(project_argv, env, f"{project}/health/ready", scratch / "project.log", "simveb serve"),
            process(bare_argv, bare_env, f"{bare}/live", scratch / "bare.log", "the bare app"),
        ):
            wrk(f"{project}/api/auth/me", 1, args.connections, auth)  # warm up both servers
            wrk(f"{bare}/me", 1, args.connections, auth)
            rounds: list[tuple[tuple[float, float], tuple[float, float]]] = []
            for i in range(args.rounds):
                sides = [("project", f"{project}/api/auth/me"), ("bare", f"{bare}/me")]
                got = {
                    side: wrk(u, args.seconds, args.connections, auth) for side, u in sides[:: 1 if i % 2 == 0 else -1]
                }
                rounds.append((got["project"], got["bare"]))
                p, b = got["project"], got["bare"]
                print(
                    f"round {i + 1} me: project {p[0]:,.0f} req/s p99 {p[1]:.1f} ms;"
                    f" bare {b[0]:,.0f} req/s p99 {b[1]:.1f} ms; ratio {p[0] / b[0]:.2f}",
                    flush=True,
                )
            # Logins: few connections, argon2 runs in worker threads on the server's cores.
            logins, logins_p99 = wrk(f"{project}/api/auth/login", args.seconds, 4, [], script=login)
    ratio = statistics.median(p[0] / b[0] for p, b in rounds)
    me_rps = statistics.median(p[0] for p, _ in rounds)
    bare_rps = statistics.median(b[0] for _, b in rounds)
    print(
        f"connections={args.connections} seconds={args.seconds:g} rounds={args.rounds} server=granian workers=1"
        f" load1={os.getloadavg()[0]:.1f} cpus={os.cpu_count()}"
    )
    print(
        f"bench auth: me_ratio={ratio:.2f} me_per_s={me_rps:.0f} bare_me_per_s={bare_rps:.0f}"
        f" logins_per_s={logins:.1f} logins_p99_ms={logins_p99:.0f}"
    )


if __name__ == "__main__":
    main()
