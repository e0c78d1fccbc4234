"""Migration runner shared by the CLI, the server start and the tests.

Plain SQL files in `migrations/<domain>/NNNN_slug.sql`. The runner holds a PostgreSQL advisory lock
(two processes migrating at once take turns), applies each pending file in its own transaction,
records (domain, version, sha256), stops at the first error, and refuses to run at all when a file
that was already applied has changed on disk.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import asyncpg
import msgspec

# Any constant works as long as every SIMVEB process uses the same one: it names "the migration lock".
LOCK_KEY = 0x51_4D_56_45_42  # "SIMVEB"-ish
RUNTIME_DOMAIN = "bus"  # the runtime's own schema (outbox, inbox) goes first
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """A migration could not be applied, or an applied file changed. One line, naming the file."""


class Migration(msgspec.Struct, frozen=True, kw_only=True):
    domain: str
    version: int
    name: str
    path: str
    sha256: str

    @property
    def label(self) -> str:
        return f"{self.domain}/{self.version:04d}_{self.name}"


class MigrationState(msgspec.Struct, frozen=True, kw_only=True):
    migration: Migration
    state: str  # applied | pending | changed
    applied_at: str | None = None


def default_directory() -> Path:
    """`migrations/` beside the package (editable install or source tree), else in the working dir."""
    beside = Path(__file__).resolve().parent.parent / "migrations"
    return beside if beside.is_dir() else Path("migrations").resolve()


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or default_directory()
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    domains = sorted(p for p in directory.iterdir() if p.is_dir())
    domains.sort(key=lambda p: (p.name != RUNTIME_DOMAIN, p.name))
    found = []
    for domain in domains:
        for file in sorted(domain.glob("*.sql")):
            match = _FILE.match(file.name)
            if not match:
                raise MigrationError(f"{file}: migration file names look like 0001_slug.sql")
            data = file.read_bytes()
            found.append(
                Migration(
                    domain=domain.name,
                    version=int(match.group(1)),
                    name=match.group(2),
                    path=str(file),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
    return found


_LEDGER = """
CREATE TABLE IF NOT EXISTS public.simveb_migrations (
    domain      text        NOT NULL,
    version     integer     NOT NULL,
    name        text        NOT NULL,
    sha256      text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer     NOT NULL,
    PRIMARY KEY (domain, version)
)
"""


async def _applied(con: asyncpg.Connection) -> dict[tuple[str, int], asyncpg.Record]:
    exists = await con.fetchval("SELECT to_regclass('public.simveb_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await con.fetch("SELECT domain, version, sha256, applied_at FROM public.simveb_migrations")
    return {(r["domain"], r["version"]): r for r in rows}


async def status(con: asyncpg.Connection, directory: Path | None = None) -> list[MigrationState]:
    applied = await _applied(con)
    states = []
    for m in discover(directory):
        row = applied.get((m.domain, m.version))
        if row is None:
            states.append(MigrationState(migration=m, state="pending"))
        else:
            state = "applied" if row["sha256"] == m.sha256 else "changed"
            states.append(MigrationState(migration=m, state=state, applied_at=row["applied_at"].isoformat()))
    return states


async def pending_count(con: asyncpg.Connection, directory: Path | None = None) -> int:
    return sum(1 for s in await status(con, directory) if s.state != "applied")


async def migrate(url: str, directory: Path | None = None, *, dry_run: bool = False, on_apply=None) -> list[Migration]:
    """Apply every pending migration under the advisory lock; return what was (or would be) applied."""
    con = await asyncpg.connect(url)
    try:
        await con.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            states = await status(con, directory)
            changed = [s.migration.label for s in states if s.state == "changed"]
            if changed:
                raise MigrationError(
                    f"{changed[0]}: applied file changed on disk (write a new migration instead of editing one)"
                )
            todo = [s.migration for s in states if s.state == "pending"]
            if dry_run:
                return todo
            await con.execute(_LEDGER)
            for m in todo:
                started = time.perf_counter()
                sql = Path(m.path).read_text(encoding="utf-8")
                try:
                    async with con.transaction():
                        await con.execute(sql)
                        await con.execute(
                            "INSERT INTO public.simveb_migrations (domain, version, name, sha256, duration_ms)"
                            " VALUES ($1, $2, $3, $4, $5)",
                            m.domain,
                            m.version,
                            m.name,
                            m.sha256,
                            int((time.perf_counter() - started) * 1000),
                        )
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{m.label}: {type(exc).__name__}: {exc}") from None
                if on_apply is not None:
                    on_apply(m)
            return todo
        finally:
            await con.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await con.close()
