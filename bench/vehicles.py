"""Vehicle registry benchmark: bulk import and searches at national scale.

Run it from a clean clone, with the project's `bench` extra:

    pip install -e ".[bench]" && python bench/vehicles.py [--rows N | --national] [--database-url URL]

Generates a CSV of N plausible vehicles (mostly motorcycles; default 200,000, `--national` for
1,000,000) and reports, each against a baseline measured in the same run on the same database:

(a) import rows/s (`simveb vehicles import` path: the actor COPYs into staging, validates in SQL,
    inserts in batches) against a raw COPY of the same file into a copy of vehicles.vehicles with
    its indexes, constraints and defaults (see SCRATCH_SQL: the import must maintain those too),
    timed before and after the import and averaged, as the machine's load drifts (target ratio
    >= 0.5). For reference it also prints the COPY into a bare table of text columns, and, when the
    server runs on this machine, the CPU seconds of the database sessions on both sides;
(b) p50/p95 latency of plate, VIN, owner and fuzzy searches through the bus at N rows (target p95
    <= 20 ms).

`GET /api/vehicles/{id}` against a bare Litestar + asyncpg app is measured by bench/http.py.

The database is the one of --database-url or SIMVEB_TEST_DATABASE_URL (a fresh database is created
on that server and dropped after), otherwise an embedded PostgreSQL in a temporary directory.
The last line is a summary: `bench vehicles: import_ratio=... search_p95_ms=... ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simveb import migrate  # noqa: E402
from simveb.actors.vehicles import seed_data  # noqa: E402
from simveb.actors.vehicles.messages import (  # noqa: E402
    CSV_COLUMNS,
    GetImportJob,
    SearchVehicles,
    SeedVehicles,
    StartImport,
    VehicleFilter,
)
from simveb.config import Settings, with_overrides  # noqa: E402

LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # plate series skip I, O and Q like VINs do
VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
COLOURS = ["Rouge", "Noir", "Bleu", "Blanc", "Gris", "Vert", "Jaune", "Argent", "Bordeaux", "Blanc nacré"]
TOWNS = ["Cotonou", "Porto-Novo", "Parakou", "Abomey-Calavi", "Djougou", "Bohicon", "Natitingou", "Lokossa"]
TYPOS = [
    "boxr",
    "cruser",
    "crypton",
    "hilux",
    "corola",
    "haojue",
    "apache",
    "sportage",
    "lucky",
    "dayun",
    "jincheng",
    "pulsar",
]


# --- data ----------------------------------------------------------------------------------------------


def catalogue() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(make, model, type) of motorcycles and of cars, from the seeded catalogue."""
    motos, cars = [], []
    two_wheels = {"motorcycle", "scooter", "tricycle"}
    for _code, name, _country, models in seed_data.BRANDS:
        for model, type_code in models:
            (motos if type_code in two_wheels else cars).append((name, model, type_code))
    return motos, cars


def generate(path: Path, rows: int, seed: int = 7) -> dict[str, list[str]]:
    """Write the CSV; return samples of plates, VINs and owners for the search benchmark."""
    rnd = random.Random(seed)
    motos, cars = catalogue()
    owners = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(max(1, rows // 2))]
    samples: dict[str, list[str]] = {"plate": [], "vin": [], "owner": []}
    moto_n = car_n = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for i in range(rows):
            moto = rnd.random() < 0.8
            if moto:
                make, model, type_code = rnd.choice(motos)
                series, number = divmod(moto_n, 9999)
                plate = f"{1 + series // len(LETTERS) % 9}{LETTERS[series % len(LETTERS)]} {number + 1:04d}"
                moto_n += 1
                cc, kw, hp, seats, mass = rnd.choice((110, 125, 150)), rnd.randint(6, 12), 2, 2, ""
                empty, energy, chars = str(rnd.randint(95, 140)), "Essence", ""
            else:
                make, model, type_code = rnd.choice(cars)
                series, number = divmod(car_n, 9999)
                pair = LETTERS[series // len(LETTERS) % len(LETTERS)] + LETTERS[series % len(LETTERS)]
                plate = f"{pair} {number + 1:04d} RB"
                car_n += 1
                cc, kw = rnd.choice((1400, 1600, 2000, 2400, 3000)), rnd.randint(55, 160)
                hp, seats, mass = kw // 10, rnd.choice((5, 5, 5, 7, 15)), str(rnd.randint(1500, 3500))
                empty = str(rnd.randint(900, 2200))
                energy = rnd.choice(("Essence", "Gazole", "Gazole", "Hybride", "Électricité"))
                chars = rnd.choice(("", "", "tinted_windows", "utility", "air_conditioning;tinted_windows"))
            vin = "".join(rnd.choice(VIN_CHARS) for _ in range(9)) + f"{i:08d}"
            owner = rnd.choice(owners)
            if rnd.random() < 0.05:
                owner += ";" + rnd.choice(owners)
            year = rnd.randint(1995, 2025)
            writer.writerow(
                (
                    vin,
                    plate,
                    make,
                    model,
                    type_code,
                    "",
                    model,
                    year,
                    rnd.choice(COLOURS),
                    energy,
                    cc,
                    kw,
                    hp,
                    seats,
                    mass,
                    "",
                    empty,
                    f"{year}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
                    f"DD-{rnd.choice(TOWNS)[:3].upper()}-{i}",
                    chars,
                    f"Immatriculé à {rnd.choice(TOWNS)}",
                    owner,
                    "active",
                )
            )
            if i % max(1, rows // 2000) == 0:
                samples["plate"].append(plate)
                samples["vin"].append(vin)
                samples["owner"].append(owner.split(";")[0])
    return samples


# --- database ------------------------------------------------------------------------------------------


class BenchDatabase:
    """A fresh database on the given server, or an embedded server in a temporary directory."""

    def __init__(self, server_url: str | None, workdir: Path) -> None:
        self.server_url = server_url
        self.workdir = workdir
        self.name = f"simveb_bench_{uuid.uuid4().hex[:8]}"
        self.embedded: Any = None
        self.url = ""

    async def __aenter__(self) -> str:
        if self.server_url:
            con = await asyncpg.connect(self.server_url)
            try:
                await con.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await con.close()
            parts = urlsplit(self.server_url)
            self.url = urlunsplit((parts.scheme, parts.netloc, "/" + self.name, parts.query, parts.fragment))
        else:
            from simveb.db import start_embedded

            self.embedded = start_embedded(self.workdir)
            self.url = self.embedded.get_uri()
        return self.url

    async def __aexit__(self, *exc: object) -> None:
        if self.server_url:
            con = await asyncpg.connect(self.server_url)
            try:
                await con.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await con.close()
        elif self.embedded is not None:
            self.embedded.cleanup()


def bench_settings(url: str, data_dir: Path) -> Settings:
    return with_overrides(
        Settings(),
        server={"data_dir": str(data_dir), "log_level": "WARNING"},
        database={"url": url, "migrate_on_start": False, "pool_min": 2, "pool_max": 10},
        ratelimit={"enabled": False},
        bus={"ask_timeout_s": 3600.0},
    )


# --- (a) import ----------------------------------------------------------------------------------------


async def raw_copy(url: str, path: Path) -> float:
    """Seconds to COPY the file into a bare table of text columns: no index, no constraint (for reference)."""
    con = await asyncpg.connect(url)
    try:
        cols = ", ".join(f"{c} text" for c in CSV_COLUMNS)
        await con.execute(f"DROP TABLE IF EXISTS public.bench_raw; CREATE TABLE public.bench_raw ({cols})")
        started = time.perf_counter()
        await con.copy_to_table("bench_raw", source=path, format="csv", header=True, encoding="utf8")
        elapsed = time.perf_counter() - started
        await con.execute("DROP TABLE public.bench_raw")
        return elapsed
    finally:
        await con.close()


def backend_cpu(pid: int) -> float | None:
    """CPU seconds used so far by a server process of this machine (None when it is not ours to read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU of the database sessions of one database, sampled while a job runs (sessions come and go)."""

    def __init__(self, con: asyncpg.Connection) -> None:
        self.con = con
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}

    async def sample(self) -> None:
        pids = await self.con.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        for r in pids:
            used = backend_cpu(r["pid"])
            if used is not None:
                self.start.setdefault(r["pid"], used)
                self.last[r["pid"]] = used

    def seconds(self) -> float:
        return sum(self.last[pid] - self.start[pid] for pid in self.last)


# The baseline of the import ratio: the same file COPYed into a copy of vehicles.vehicles, with its
# indexes, constraints and defaults, because the import must maintain those as well. Two changes so
# that COPY accepts the file as it is, each keeping the work: the two `a;b` list columns are not array
# literals, so they stay text and the owners GIN index is built on their parsed form; and an empty
# CSV cell is NULL to COPY, so the NOT NULL constraints go (the import fills those cells with '').
SCRATCH_SQL = """
DROP SCHEMA IF EXISTS bench_scratch CASCADE;
CREATE SCHEMA bench_scratch;
CREATE TABLE bench_scratch.vehicles (LIKE vehicles.vehicles INCLUDING ALL);
DROP INDEX bench_scratch.vehicles_owners_idx;
ALTER TABLE bench_scratch.vehicles ALTER characteristics DROP DEFAULT, ALTER characteristics TYPE text,
    ALTER owners DROP DEFAULT, ALTER owners TYPE text;
CREATE INDEX ON bench_scratch.vehicles USING gin ((string_to_array(owners, ';')::uuid[])) WITH (fastupdate = off);
"""


async def indexed_copy(url: str, path: Path) -> tuple[float, int, float | None]:
    """Seconds to COPY the file into a copy of vehicles.vehicles (SCRATCH_SQL), its index count, CPU s."""
    con = await asyncpg.connect(url)
    try:
        await con.execute(SCRATCH_SQL)
        nullable = await con.fetch(
            "SELECT quote_ident(attname) AS name FROM pg_attribute WHERE attrelid = 'bench_scratch.vehicles'::regclass"
            " AND attnum > 0 AND attnotnull AND attname <> 'id'"
        )
        for r in nullable:
            await con.execute(f"ALTER TABLE bench_scratch.vehicles ALTER {r['name']} DROP NOT NULL")
        indexes = await con.fetchval(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'bench_scratch.vehicles'::regclass"
        )
        pid = con.get_server_pid()
        cpu_before = backend_cpu(pid)
        started = time.perf_counter()
        await con.copy_to_table(
            "vehicles",
            schema_name="bench_scratch",
            source=path,
            columns=list(CSV_COLUMNS),
            format="csv",
            header=True,
            encoding="utf8",
        )
        elapsed = time.perf_counter() - started
        cpu_after = backend_cpu(pid)
        cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
        await con.execute("DROP SCHEMA bench_scratch CASCADE")
        return elapsed, indexes, cpu
    finally:
        await con.close()


async def import_file(runtime: Any, path: Path, workdir: Path) -> tuple[float, Any, float | None]:
    """Seconds of the import through the actor, its job, and the CPU seconds of its database sessions."""
    bus = runtime.bus
    await bus.ask(SeedVehicles(only_if_empty=True))
    watcher = await asyncpg.connect(runtime.db.url)
    try:
        watch = CpuWatch(watcher)
        await watch.sample()
        started = time.perf_counter()
        job = await bus.ask(StartImport(path=str(path), error_path=str(workdir / "errors.csv"), by="bench"))
        while job.state in ("queued", "running"):
            await watch.sample()
            await asyncio.sleep(0.05)
            job = await bus.ask(GetImportJob(job_id=job.id))
        elapsed = time.perf_counter() - started
    finally:
        await watcher.close()
    return elapsed, job, (watch.seconds() if watch.last else None)


# --- (b) searches --------------------------------------------------------------------------------------


def quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def searches(runtime: Any, samples: dict[str, list[str]], per_kind: int) -> dict[str, tuple[float, float]]:
    rnd = random.Random(11)
    bus = runtime.bus
    kinds = {
        "plate": lambda: VehicleFilter(plate=rnd.choice(samples["plate"])),
        "vin": lambda: VehicleFilter(vin=rnd.choice(samples["vin"])),
        "owner": lambda: VehicleFilter(owner=uuid.UUID(rnd.choice(samples["owner"]))),
        "fuzzy": lambda: VehicleFilter(q=rnd.choice(TYPOS)),
    }
    results = {}
    for kind, make in kinds.items():
        for _ in range(10):  # warm the plan cache and the buffers
            await bus.ask(SearchVehicles(filter=make(), limit=20))
        timings = []
        for _ in range(per_kind):
            filt = make()
            started = time.perf_counter()
            page = await bus.ask(SearchVehicles(filter=filt, limit=20))
            timings.append((time.perf_counter() - started) * 1000)
            if kind in ("plate", "vin") and not page.items:
                raise SystemExit(f"bench: {kind} search found nothing for {filt}")
        results[kind] = quantiles(timings)
    return results


# --- main ----------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    from simveb.runtime import Runtime

    workdir = Path(tempfile.mkdtemp(prefix="simveb-bench-"))
    try:
        source = workdir / "vehicles.csv"
        started = time.perf_counter()
        samples = generate(source, args.rows)
        size_mb = source.stat().st_size / 1e6
        print(f"generated {args.rows} rows ({size_mb:.0f} MB) in {time.perf_counter() - started:.1f} s", flush=True)
        async with BenchDatabase(args.database_url, workdir) as url:
            await migrate.migrate(url)
            bare_s = await raw_copy(url, source)
            print(f"raw COPY into a bare table: {bare_s:.1f} s, {args.rows / bare_s:,.0f} rows/s", flush=True)
            copy_before, index_count, copy_cpu = await indexed_copy(url, source)
            print(
                f"raw COPY into a copy of vehicles.vehicles ({index_count} indexes): {copy_before:.1f} s,"
                f" {args.rows / copy_before:,.0f} rows/s" + (f", {copy_cpu:.1f} s CPU" if copy_cpu else ""),
                flush=True,
            )
            settings = bench_settings(url, workdir / "data")
            runtime = Runtime(settings, relay=False)
            await runtime.start(migrate_first=False, seed_if_empty=False)
            try:
                import_s, job, import_cpu = await import_file(runtime, source, workdir)
                if job.state != "done" or job.inserted != args.rows:
                    raise SystemExit(
                        f"bench: import {job.state}: {job.inserted} inserted, {job.rejected} rejected, {job.error}"
                    )
                print(
                    f"import: {import_s:.1f} s, {args.rows / import_s:,.0f} rows/s"
                    + (f", {import_cpu:.1f} s CPU in the database sessions" if import_cpu else ""),
                    flush=True,
                )
                print("import phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in job.seconds.items()), flush=True)
                async with runtime.db.pool.acquire() as con:
                    await con.execute("ANALYZE vehicles.vehicles")  # what autovacuum does after a bulk load
                fuzzy = runtime.bus.cells["vehicles"].instance.fuzzy
                latencies = await searches(runtime, samples, args.queries)
            finally:
                await runtime.stop()
            copy_after, _, copy_cpu_after = await indexed_copy(url, source)
            print(f"raw COPY into a copy of vehicles.vehicles again: {copy_after:.1f} s", flush=True)
            for kind, (p50, p95) in latencies.items():
                print(f"search {kind:6}: p50 {p50:6.2f} ms  p95 {p95:6.2f} ms", flush=True)
        raw_s = (copy_before + copy_after) / 2
        import_ratio = raw_s / import_s  # (rows / import_s) / (rows / raw_s)
        search_p95 = max(p95 for _, p95 in latencies.values())
        cpu_ratio = ""
        if copy_cpu and copy_cpu_after and import_cpu:
            cpu_ratio = f" import_cpu_ratio={(copy_cpu + copy_cpu_after) / 2 / import_cpu:.2f}"
        print(
            f"bench vehicles: import_ratio={import_ratio:.2f} search_p95_ms={search_p95:.1f}"
            f" rows={args.rows} import_rows_s={args.rows / import_s:.0f} raw_rows_s={args.rows / raw_s:.0f}"
            f" bare_ratio={bare_s / import_s:.2f}{cpu_ratio}"
            + "".join(f" {k}_p95_ms={v[1]:.1f}" for k, v in latencies.items())
            + f" fuzzy={fuzzy}"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="vehicles to generate (default 200,000)")
    parser.add_argument(
        "--national", action="store_const", const=1_000_000, dest="rows", help="1,000,000 vehicles (a national load)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SIMVEB_TEST_DATABASE_URL"),
        help="PostgreSQL server to create the bench database on (default: SIMVEB_TEST_DATABASE_URL, else embedded)",
    )
    parser.add_argument("--queries", type=int, default=300, help="searches per kind")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(parse(sys.argv[1:])))
