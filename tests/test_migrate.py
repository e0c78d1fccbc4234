"""The migration runner: idempotent, refuses changed files, stops at the first error, takes turns."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from simveb import migrate
from tests.conftest import ROOT, _with_database


@pytest.fixture
async def scratch_url(database_url: str) -> AsyncIterator[str]:
    """A new, empty database on the test server."""
    name = f"simveb_scratch_{uuid.uuid4().hex[:8]}"
    con = await asyncpg.connect(database_url)
    await con.execute(f'CREATE DATABASE "{name}"')
    await con.close()
    yield _with_database(database_url, name)
    con = await asyncpg.connect(database_url)
    await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await con.close()


def write(directory: Path, relative: str, sql: str) -> None:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sql, encoding="utf-8")


async def test_the_real_migrations_apply_once(scratch_url: str) -> None:
    first = await migrate.migrate(scratch_url)
    assert {m.domain for m in first} >= {"bus", "config"}
    assert first[0].domain == "bus", "the runtime's schema goes first"
    assert await migrate.migrate(scratch_url) == []
    con = await asyncpg.connect(scratch_url)
    try:
        assert await migrate.pending_count(con) == 0
    finally:
        await con.close()


async def test_dry_run_applies_nothing(scratch_url: str) -> None:
    todo = await migrate.migrate(scratch_url, dry_run=True)
    assert todo
    con = await asyncpg.connect(scratch_url)
    try:
        assert await con.fetchval("SELECT to_regclass('config.settings')") is None
    finally:
        await con.close()


async def test_a_changed_applied_file_is_refused(scratch_url: str, tmp_path: Path) -> None:
    write(tmp_path, "alpha/0001_init.sql", "CREATE SCHEMA alpha; CREATE TABLE alpha.t (x int);")
    assert len(await migrate.migrate(scratch_url, tmp_path)) == 1
    write(tmp_path, "alpha/0001_init.sql", "CREATE SCHEMA alpha; CREATE TABLE alpha.t (x bigint);")
    write(tmp_path, "alpha/0002_more.sql", "CREATE TABLE alpha.u (y int);")
    with pytest.raises(migrate.MigrationError, match=r"alpha/0001_init: applied file changed"):
        await migrate.migrate(scratch_url, tmp_path)
    con = await asyncpg.connect(scratch_url)
    try:
        assert await con.fetchval("SELECT to_regclass('alpha.u')") is None, "nothing else was applied"
    finally:
        await con.close()


async def test_the_first_error_stops_the_run_and_is_rolled_back(scratch_url: str, tmp_path: Path) -> None:
    write(tmp_path, "alpha/0001_ok.sql", "CREATE SCHEMA alpha; CREATE TABLE alpha.t (x int);")
    write(tmp_path, "alpha/0002_bad.sql", "CREATE TABLE alpha.half (x int); SELECT no_such_function();")
    write(tmp_path, "alpha/0003_later.sql", "CREATE TABLE alpha.later (x int);")
    with pytest.raises(migrate.MigrationError, match=r"alpha/0002_bad"):
        await migrate.migrate(scratch_url, tmp_path)
    con = await asyncpg.connect(scratch_url)
    try:
        rows = await con.fetch("SELECT domain, version FROM public.simveb_migrations ORDER BY version")
        assert [(r["domain"], r["version"]) for r in rows] == [("alpha", 1)]
        assert await con.fetchval("SELECT to_regclass('alpha.half')") is None, "the failed file left nothing"
        assert await con.fetchval("SELECT to_regclass('alpha.later')") is None
    finally:
        await con.close()


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha/1_init.sql", "SELECT 1;")
    with pytest.raises(migrate.MigrationError, match=r"0001_slug\.sql"):
        migrate.discover(tmp_path)


async def test_two_migrate_processes_at_once_take_turns(scratch_url: str, tmp_path: Path) -> None:
    # Both processes run the real migrations plus a slow file; the advisory lock makes them take turns.
    directory = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", directory)
    write(directory, "zzslow/0001_slow.sql", "CREATE SCHEMA zzslow; SELECT pg_sleep(0.5);")
    env = {
        **os.environ,
        "SIMVEB_DATABASE__URL": scratch_url,
        "SIMVEB_CONFIG": str(ROOT / "config.toml"),
    }
    code = (
        "import asyncio, sys; from pathlib import Path; from simveb import migrate;"
        "print(len(asyncio.run(migrate.migrate(sys.argv[1], Path(sys.argv[2])))))"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, scratch_url, str(directory), env=env, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [int((await p.communicate())[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    total = len(migrate.discover(directory))
    assert sorted(outputs) == [0, total], "one process applied everything, the other found nothing to do"
    con = await asyncpg.connect(scratch_url)
    try:
        assert await con.fetchval("SELECT count(*) FROM public.simveb_migrations") == total
    finally:
        await con.close()
