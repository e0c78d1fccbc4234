"""Benchmark: what the HTTP shell and the authenticated read path cost over a bare Litestar app.

Two servers run side by side on this machine with the same granian settings (those of
`simveb serve`, one worker): the project, started with `simveb serve` and its default settings
(log level INFO, one JSON access line per request to a file, request ids, metrics, CORS, rate
limit, auth middleware), and the bare Litestar app of bench/bare/bare_app.py. wrk (the Debian
package `wrk`, outside Python so it is not the bottleneck) drives each with the same connections:

- live: `GET /health/live` against the bare app's JSON route `GET /live`;
- read: an authenticated `GET /api/vehicles/{id}` (token check, caller, bus ask, vehicles actor,
  store, serialisation, ETag) against the bare app's `GET /vehicles/{id}` (asyncpg, same row).

Every pair is measured back to back, the order alternating, for several rounds; the ratios are
the medians of the rounds' ratios (the machine may be shared: a neighbour hurts both sides of a
round alike). The only setting changed from the defaults is `ratelimit.per_minute`, raised so one
load generator address is not refused: the limiter still runs on every API request.

Run it from a clean clone, with the project's `bench` extra and wrk (`apt-get install wrk`):

    pip install -e ".[bench]" && python bench/http.py [--seconds 5] [--rounds 5] [--connections 32]

(bench/http.py only starts this module: see there why.)

The database is a scratch one on SIMVEB_TEST_DATABASE_URL (created and dropped), otherwise the
embedded PostgreSQL. Targets: live_ratio >= 0.7, read_ratio >= 0.6.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from common import database  # bench/common.py

from simveb.actors.vehicles.messages import RegisterVehicle, SeedVehicles, VehicleFields
from simveb.config import Settings, with_overrides
from simveb.keys import KeyRing

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def prepare(settings: Settings) -> str:
    """Reference data and one vehicle, through the services' messages; returns its id."""
    from simveb.runtime import Runtime

    runtime = Runtime(settings, relay=False)
    await runtime.start(migrate_first=False, seed_if_empty=True)
    try:
        assert runtime.bus is not None
        await runtime.bus.ask(SeedVehicles(only_if_empty=True))
        fields = VehicleFields(
            make="Toyota",
            model="Corolla",
            year=2018,
            colour="Gris",
            energy="Essence",
            cylinder_cc=1600,
            power_kw=90,
            fiscal_hp=8,
            seats=5,
            empty_mass_kg=1250,
            first_registration_date=date(2018, 5, 2),
            commercial_name="Corolla XLi",
        )
        owner = uuid.uuid4()
        vehicle = await runtime.bus.ask(
            RegisterVehicle(vin="JTDBR32E000000001", fields=fields, owners=[owner], plate="AB 1234 RB", by="bench")
        )
        return str(vehicle.id)
    finally:
        await runtime.stop()


def access_token(settings: Settings) -> str:
    """An agent's access token signed with the server's development key (what a login returns)."""
    keys = KeyRing.for_settings(settings)
    now = int(time.time())
    return keys.sign(
        {
            "iss": settings.security.issuer,
            "aud": settings.security.audience,
            "sub": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
            "roles": ["agent"],
            "permissions": ["vehicles:read"],
        }
    )


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], ready_url: str, log: Path, what: str) -> Iterator[subprocess.Popen]:
    """A server process whose stderr goes to `log`, until `ready_url` answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"bench http: {what} did not start:\n{tail}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(
    url: str, seconds: float, connections: int, headers: list[str], script: Path | None = None
) -> tuple[float, float]:
    """(requests per second, p99 latency in ms) of `url` under wrk; every answer must be a 2xx.

    `script` is a wrk Lua script (a POST body, say)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"bench http: errors under load on {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s|m)\b", out).groups()  # type: ignore[union-attr]
    return rps, float(value) * _UNITS[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="back-to-back pairs per route; medians are kept")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench http: needs wrk on PATH (Debian: apt-get install wrk)")
    scratch = Path(tempfile.mkdtemp(prefix="simveb-bench-http-"))
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, scratch: Path) -> None:
    with database(scratch) as url:
        settings = with_overrides(
            Settings(), server={"data_dir": str(scratch)}, database={"url": url, "migrate_on_start": False}
        )
        vehicle_id = asyncio.run(prepare(settings))
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
        project_argv = [sys.executable, "-m", "simveb.cli", "serve", "--port", str(project_port), "--workers", "1"]
        bare_argv = [sys.executable, str(HERE / "bare" / "bare_app.py"), str(bare_port), url]
        project_log, bare_log = scratch / "project.log", scratch / "bare.log"
        project = f"http://127.0.0.1:{project_port}"
        bare = f"http://127.0.0.1:{bare_port}"
        with (
            process(project_argv, env, f"{project}/health/ready", project_log, "simveb serve"),
            process(bare_argv, dict(os.environ), f"{bare}/live", bare_log, "the bare app"),
        ):
            auth = [f"Authorization: Bearer {token}"]
            pairs = {
                "live": ((f"{project}/health/live", []), (f"{bare}/live", [])),
                "read": ((f"{project}/api/vehicles/{vehicle_id}", auth), (f"{bare}/vehicles/{vehicle_id}", [])),
            }
            for (p_url, p_headers), (b_url, b_headers) in pairs.values():  # warm up both servers
                wrk(p_url, 1, args.connections, p_headers)
                wrk(b_url, 1, args.connections, b_headers)
            results: dict[str, dict[str, list[tuple[float, float]]]] = {k: {"project": [], "bare": []} for k in pairs}
            for i in range(args.rounds):
                for name, ((p_url, p_headers), (b_url, b_headers)) in pairs.items():
                    order = [("project", p_url, p_headers), ("bare", b_url, b_headers)]
                    for side, u, h in order if i % 2 == 0 else reversed(order):
                        results[name][side].append(wrk(u, args.seconds, args.connections, h))
                    p, b = results[name]["project"][-1], results[name]["bare"][-1]
                    print(
                        f"round {i + 1} {name}: project {p[0]:,.0f} req/s p99 {p[1]:.1f} ms;"
                        f" bare {b[0]:,.0f} req/s p99 {b[1]:.1f} ms; ratio {p[0] / b[0]:.2f}",
                        flush=True,
                    )
        access_lines = sum(1 for line in project_log.open(errors="replace") if '"logger":"simveb.access"' in line)
        if access_lines == 0:
            raise SystemExit("bench http: the project wrote no access log line: not its default settings")
    load = os.getloadavg()[0]
    summary = []
    for name, sides in results.items():
        ratio = statistics.median(p[0] / b[0] for p, b in zip(sides["project"], sides["bare"], strict=True))
        summary.append(f"{name}_ratio={ratio:.2f}")
    for name, sides in results.items():
        for side, runs in sides.items():
            summary.append(f"{name}_{side}_rps={statistics.median(r[0] for r in runs):.0f}")
            summary.append(f"{name}_{side}_p99_ms={statistics.median(r[1] for r in runs):.1f}")
    print(
        f"connections={args.connections} seconds={args.seconds:g} rounds={args.rounds} server=granian workers=1"
        f" access_lines={access_lines} load1={load:.1f} cpus={os.cpu_count()}"
    )
    print("bench http: " + " ".join(summary))


if __name__ == "__main__":
    main()
