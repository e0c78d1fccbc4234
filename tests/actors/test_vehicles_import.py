"""Bulk import (COPY, SQL validation, rejected rows) and streamed export of the vehicles actor."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from simveb.actors.vehicles.messages import (
    CSV_COLUMNS,
    CloseExport,
    GetImportJob,
    ImportJob,
    OpenExport,
    ReadExport,
    SearchVehicles,
    SeedVehicles,
    StartImport,
    VehicleFilter,
    Viewer,
)
from simveb.config import with_overrides
from tests.support import wait_for

OWNER = str(uuid.uuid4())


def good_row(i: int) -> dict[str, str]:
    moto = i % 4 != 0
    return {
        "vin": f"LBPKE1300{i:08d}",
        "plate": f"{1 + i % 9}A {i:04d}" if moto else f"AB {i:04d} RB",
        "make": "Bajaj" if moto else "Toyota",
        "model": "Boxer BM 150" if moto else "Hilux",
        "vehicle_type": "",
        "category": "",
        "commercial_name": "Boxer" if moto else "Hilux Double Cabine",
        "year": str(2010 + i % 14),
        "colour": "Rouge bordeaux" if moto else "Blanc nacré",
        "energy": "Électricité" if i % 10 == 3 else ("Essence" if moto else "gazole"),
        "cylinder_cc": "150" if moto else "2400",
        "power_kw": "10" if moto else "110",
        "fiscal_hp": "2" if moto else "11",
        "seats": "2" if moto else "5",
        "max_mass_kg": "" if moto else "2910",
        "service_mass_kg": "",
        "empty_mass_kg": "122" if moto else "1900",
        "first_registration_date": f"20{10 + i % 14}-0{1 + i % 9}-15",
        "customs_ref": f"DD-COT-{i}",
        "characteristics": "" if moto else "utility;tinted_windows",
        "remarks": "Immatriculé à Cotonou, « zémidjan »" if moto else "Porto-Novo",
        "owners": OWNER if i % 2 else "",
        "status": "active",
    }


BAD_ROWS: list[tuple[dict[str, str], str]] = [
    ({"vin": "LBPKE13000000001"}, "vin: must be 17 characters"),
    ({"vin": "LBPKE1300000000O1"[:17]}, "I, O and Q"),
    ({"make": "Lada"}, "make: unknown brand"),
    ({"model": "Cybertruck"}, "model: unknown model"),
    ({"energy": "Vapeur"}, "energy: unknown"),
    ({"year": "deux mille"}, "year:"),
    ({"seats": "-3"}, "seats:"),
    ({"first_registration_date": "2021-02-30"}, "first_registration_date:"),
    ({"owners": "not-a-user"}, "owners:"),
    ({"characteristics": "flying"}, "characteristics:"),
]


def write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = CSV_COLUMNS) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def sample(n: int = 100) -> tuple[list[dict[str, str]], dict[int, str]]:
    """n rows, every tenth one bad (row number -> expected reason)."""
    rows, bad = [], {}
    for i in range(1, n + 1):
        row = good_row(i)
        if i % 10 == 0:
            change, reason = BAD_ROWS[(i // 10 - 1) % len(BAD_ROWS)]
            row.update(change)
            bad[i] = reason
        rows.append(row)
    return rows, bad


@pytest.fixture
async def bus(runtime: Any) -> Any:
    await runtime.bus.ask(SeedVehicles())
    return runtime.bus


async def run_import(bus: Any, path: Path, error_path: Path) -> ImportJob:
    job = await bus.ask(StartImport(path=str(path), error_path=str(error_path), by="admin-1"))

    async def finished() -> ImportJob | None:
        current = await bus.ask(GetImportJob(job_id=job.id))
        return current if current.state in ("done", "failed") else None

    return await wait_for(finished, timeout=60)


async def export_all(bus: Any, **filters: Any) -> str:
    export_id = await bus.ask(OpenExport(filter=VehicleFilter(**filters)))
    out = bytearray()
    while True:
        chunk = await bus.ask(ReadExport(export_id=export_id))
        out += chunk.data
        if chunk.done:
            return out.decode("utf-8")


async def test_import_rejects_bad_rows_and_is_idempotent(bus, tmp_path):
    rows, bad = sample(100)
    source = write_csv(tmp_path / "legacy.csv", rows)
    errors = tmp_path / "legacy.errors.csv"
    job = await run_import(bus, source, errors)
    assert job.state == "done", job.error
    assert (job.total_rows, job.inserted, job.rejected, job.skipped) == (100, 90, 10, 0)
    with errors.open(encoding="utf-8", newline="") as f:
        reported = {int(r["row"]): r for r in csv.DictReader(f)}
    assert set(reported) == set(bad)
    for row_no, reason in bad.items():
        assert reason in reported[row_no]["reason"], (row_no, reported[row_no]["reason"])
        assert reported[row_no]["vin"] == rows[row_no - 1]["vin"]  # the original text, for fixing
    page = await bus.ask(SearchVehicles(filter=VehicleFilter(vin="LBPKE130000000001"[:17])))
    v = page.items[0]
    assert (v.make, v.model, v.vehicle_type, v.category) == ("Bajaj", "Boxer BM 150", "motorcycle", "two_three_wheels")
    assert v.remarks == "Immatriculé à Cotonou, « zémidjan »" and v.owners == [uuid.UUID(OWNER)]
    # A re-run adds nothing: every good row is skipped as already registered.
    again = await run_import(bus, source, tmp_path / "again.errors.csv")
    assert (again.inserted, again.skipped, again.rejected) == (0, 90, 10)


async def test_duplicates_inside_the_file_and_plates_taken(bus, tmp_path):
    rows = [good_row(1), good_row(2), good_row(1) | {"plate": "9Z 9999"}, good_row(3) | {"plate": good_row(2)["plate"]}]
    job = await run_import(bus, write_csv(tmp_path / "dup.csv", rows), tmp_path / "dup.errors.csv")
    assert (job.inserted, job.rejected) == (2, 2)
    text = (tmp_path / "dup.errors.csv").read_text(encoding="utf-8")
    assert "vin: duplicate of an earlier row" in text and "plate: duplicate of an earlier row" in text
    taken = [good_row(4) | {"plate": good_row(1)["plate"]}]
    job = await run_import(bus, write_csv(tmp_path / "taken.csv", taken), tmp_path / "taken.errors.csv")
    assert job.rejected == 1
    assert "already assigned" in (tmp_path / "taken.errors.csv").read_text(encoding="utf-8")


async def test_ragged_rows_fall_back_to_row_by_row(bus, tmp_path):
    source = tmp_path / "ragged.csv"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerow([good_row(1)[c] for c in CSV_COLUMNS])
    writer.writerow([good_row(2)[c] for c in CSV_COLUMNS][:5])  # truncated line
    writer.writerow([good_row(3)[c] for c in CSV_COLUMNS])
    source.write_text(buf.getvalue(), encoding="utf-8")
    job = await run_import(bus, source, tmp_path / "ragged.errors.csv")
    assert job.state == "done" and (job.inserted, job.rejected) == (2, 1)
    assert "row has 5 fields" in (tmp_path / "ragged.errors.csv").read_text(encoding="utf-8")


async def test_subset_of_columns_in_any_order_and_bad_headers(bus, tmp_path):
    columns = ("model", "make", "energy", "vin")
    job = await run_import(bus, write_csv(tmp_path / "few.csv", [good_row(5)], columns), tmp_path / "e.csv")
    assert job.inserted == 1
    job = await run_import(
        bus, write_csv(tmp_path / "odd.csv", [good_row(6)], (*columns, "wheels")), tmp_path / "e.csv"
    )
    assert job.state == "failed" and "wheels" in (job.error or "")
    job = await run_import(bus, write_csv(tmp_path / "miss.csv", [good_row(6)], ("vin", "make")), tmp_path / "e.csv")
    assert job.state == "failed" and "missing column" in (job.error or "")


async def test_export_reimports_to_the_same_data(bus, runtime, tmp_path):
    rows, _ = sample(60)
    job = await run_import(bus, write_csv(tmp_path / "in.csv", rows), tmp_path / "in.errors.csv")
    assert job.inserted == 54
    first = await export_all(bus)
    assert first.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert len(first.splitlines()) == 55 and "Électricité" in first and "Cotonou" in first
    # Start again from an empty registry and import the export.
    con = await asyncpg.connect(runtime.db.url)
    try:
        await con.execute("TRUNCATE vehicles.vehicles CASCADE")
    finally:
        await con.close()
    exported = tmp_path / "export.csv"
    exported.write_text(first, encoding="utf-8")
    job = await run_import(bus, exported, tmp_path / "export.errors.csv")
    assert (job.inserted, job.rejected) == (54, 0)
    again = await export_all(bus)
    # Same rows (ids order rows created in the same millisecond at random, so compare as sets).
    assert again.splitlines()[0] == first.splitlines()[0]
    assert sorted(again.splitlines()) == sorted(first.splitlines())
    # Filters apply to the export; a citizen's export holds only their vehicles.
    bajaj = await export_all(bus, make="Bajaj")
    assert all(",Bajaj," in line for line in bajaj.splitlines()[1:]) and len(bajaj.splitlines()) > 1
    export_id = await bus.ask(OpenExport(viewer=Viewer(sub=OWNER, scope="own")))
    mine = (await bus.ask(ReadExport(export_id=export_id))).data.decode()
    assert all(OWNER in line for line in mine.splitlines()[1:])
    assert not await bus.ask(CloseExport(export_id=export_id))  # closed already when exhausted


async def test_export_in_small_batches_and_early_close(bus, runtime, tmp_path):
    rows, _ = sample(30)
    await run_import(bus, write_csv(tmp_path / "in.csv", rows), tmp_path / "in.errors.csv")
    actor = runtime.bus.cells["vehicles"].instance
    actor.settings = with_overrides(actor.settings, vehicles={"export_batch_rows": 5})
    export_id = await bus.ask(OpenExport())
    first = await bus.ask(ReadExport(export_id=export_id))
    assert not first.done and len(first.data.decode().splitlines()) == 6  # header + 5 rows
    second = await bus.ask(ReadExport(export_id=export_id))
    assert len(second.data.decode().splitlines()) == 5
    assert await bus.ask(CloseExport(export_id=export_id))  # the client stops early
    assert actor.exports.open == {}


def small_batches(runtime: Any, rows: int = 10, lock_timeout_s: float | None = None) -> None:
    actor = runtime.bus.cells["vehicles"].instance
    changes: dict[str, Any] = {"import_batch_rows": rows}
    if lock_timeout_s is not None:
        changes["import_lock_timeout_s"] = lock_timeout_s
    actor.settings = with_overrides(actor.settings, vehicles=changes)


async def imported_events(runtime: Any, job_id: uuid.UUID) -> list[int]:
    async with runtime.db.pool.acquire() as con:
        rows = await con.fetch(
            "SELECT (payload->>'inserted')::int AS n FROM bus.outbox"
            " WHERE type LIKE '%VehiclesImported' AND payload->>'job_id' = $1 ORDER BY id",
            str(job_id),
        )
    return [r["n"] for r in rows]


async def test_batches_commit_one_by_one_and_keep_the_indexes(bus, runtime, tmp_path):
    async def indexes() -> list[str]:
        async with runtime.db.pool.acquire() as con:
            rows = await con.fetch(
                "SELECT pg_get_indexdef(indexrelid) AS d FROM pg_index"
                " WHERE indrelid = 'vehicles.vehicles'::regclass ORDER BY 1"
            )
        return [r["d"] for r in rows]

    before = await indexes()
    small_batches(runtime, rows=10)
    rows, bad = sample(100)
    job = await run_import(bus, write_csv(tmp_path / "big.csv", rows), tmp_path / "big.errors.csv")
    assert (job.inserted, job.rejected) == (90, 10), job.error
    assert await indexes() == before  # maintained in place: the registry stays open to everyone
    # One transaction, and one event, per batch (10 rows asked; a batch is at least one staging block,
    # about 30 of these rows).
    events = await imported_events(runtime, job.id)
    assert len(events) >= 3 and sum(events) == 90, events
    page = await bus.ask(SearchVehicles(filter=VehicleFilter(owner=uuid.UUID(OWNER)), limit=100))
    assert len(page.items) == sum(1 for i, r in enumerate(rows, 1) if r["owners"] and i not in bad)
    # Nothing of the job is left in the schema (its batch tables are dropped).
    async with runtime.db.pool.acquire() as con:
        left = await con.fetchval(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'vehicles'::regnamespace"
            " AND relname ~ '^import_[0-9a-f]{32}_'"
        )
    assert left == 0


async def test_a_locked_registry_makes_the_import_back_off_not_queue(bus, runtime, tmp_path):
    # The attack: a session holds a lock that blocks inserts (as a migration would) for as long as it
    # likes. The import must not wait behind it for ever (queueing every reader behind itself): it
    # gives up after its lock timeout and a few tries, and says so; a re-run adds the rest.
    small_batches(runtime, rows=10, lock_timeout_s=0.2)
    rows, _ = sample(30)
    source = write_csv(tmp_path / "locked.csv", rows)
    con = await asyncpg.connect(runtime.db.url)
    try:
        tx = con.transaction()
        await tx.start()
        await con.execute("LOCK TABLE vehicles.vehicles IN SHARE MODE")
        job = await run_import(bus, source, tmp_path / "locked.errors.csv")
        # Readers were never queued behind the import: a read on another connection answers at once.
        assert await con.fetchval("SELECT count(*) FROM vehicles.vehicles") == 0
        await tx.rollback()
    finally:
        await con.close()
    assert job.state == "failed" and "locked" in (job.error or ""), job
    again = await run_import(bus, source, tmp_path / "locked.errors.csv")
    assert (again.state, again.inserted, again.rejected) == ("done", 27, 3), again


async def test_a_plate_taken_while_the_import_runs_is_rejected_not_fatal(bus, runtime, tmp_path):
    # A clerk registers a vehicle with one of the file's plates after the import checked its rows but
    # before its batch is inserted: that row is rejected with its reason, the others go in.
    small_batches(runtime, rows=1000, lock_timeout_s=0.5)
    rows = [good_row(i) for i in range(1, 21)]
    taken = rows[7]["plate"]
    con = await asyncpg.connect(runtime.db.url)
    try:
        tx = con.transaction()
        await tx.start()
        await con.execute("LOCK TABLE vehicles.vehicles IN SHARE MODE")  # holds the import's insert back
        job = await bus.ask(
            StartImport(
                path=str(write_csv(tmp_path / "race.csv", rows)), error_path=str(tmp_path / "race.errors.csv"), by="a"
            )
        )

        async def checked() -> bool:
            current = await bus.ask(GetImportJob(job_id=job.id))
            return current.phase == "validating and inserting" or None

        await wait_for(checked, timeout=30)
        await con.execute(
            "INSERT INTO vehicles.vehicles (vin, plate, make, model, vehicle_type, category, energy, created_by,"
            " updated_by) VALUES ('WDB1234561X999999', $1, 'Bajaj', 'Boxer BM 150', 'motorcycle',"
            " 'two_three_wheels', 'Essence', 'clerk', 'clerk')",
            taken,
        )
        await tx.commit()
    finally:
        await con.close()

    async def finished() -> ImportJob | None:
        current = await bus.ask(GetImportJob(job_id=job.id))
        return current if current.state in ("done", "failed") else None

    done = await wait_for(finished, timeout=60)
    assert (done.state, done.inserted, done.rejected) == ("done", 19, 1), done
    with (tmp_path / "race.errors.csv").open(encoding="utf-8", newline="") as f:
        (reported,) = list(csv.DictReader(f))
    assert reported["row"] == "8" and "already assigned" in reported["reason"] and reported["plate"] == taken


async def test_non_ascii_text_in_ascii_fields_is_rejected_and_case_is_folded(bus, tmp_path):
    # VIN, plate, owners, codes and status are case-folded byte by byte (the "C" collation): an
    # accented letter must still be refused with the field's reason, and plain lower case accepted.
    rows = [
        good_row(1) | {"vin": "lbpke130000000001", "plate": "1a 0001", "status": "ACTIVE"},
        good_row(2) | {"vin": "LBPKE13000000000é"},
        good_row(3) | {"plate": "AB 12É4"},
        good_row(4) | {"status": "volé"},
        good_row(5) | {"characteristics": "utilité"},
    ]
    job = await run_import(bus, write_csv(tmp_path / "accents.csv", rows), tmp_path / "accents.errors.csv")
    assert (job.inserted, job.rejected) == (1, 4), job
    with (tmp_path / "accents.errors.csv").open(encoding="utf-8", newline="") as f:
        reasons = {int(r["row"]): r["reason"] for r in csv.DictReader(f)}
    assert reasons[2].startswith("vin: only letters and digits"), reasons
    assert reasons[3].startswith("plate: only letters"), reasons
    assert reasons[4].startswith("status:"), reasons
    assert reasons[5].startswith("characteristics: unknown code"), reasons
    page = await bus.ask(SearchVehicles(filter=VehicleFilter(vin="LBPKE130000000001")))
    assert (page.items[0].plate, page.items[0].status) == ("1A 0001", "active")


async def test_batch_tables_left_by_a_dead_import_are_dropped_by_the_next(bus, runtime, tmp_path):
    # A process that dies mid-import leaves its unlogged batch tables; the next import drops them,
    # but not those of a job that is still running.
    dead, live = uuid.uuid4(), uuid.uuid4()
    async with runtime.db.pool.acquire() as con:
        await con.execute(
            "INSERT INTO vehicles.import_jobs (id, source, error_path, created_by) VALUES ($1, 'x.csv', 'x.err', 'a')",
            live,
        )
        for job_id in (dead, live):
            await con.execute(f'CREATE UNLOGGED TABLE vehicles."import_{job_id.hex}_3" (row_no bigint)')
    job = await run_import(bus, write_csv(tmp_path / "one.csv", [good_row(1)]), tmp_path / "one.errors.csv")
    assert job.inserted == 1
    async with runtime.db.pool.acquire() as con:
        left = await con.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'vehicles'::regnamespace"
            " AND relname ~ '^import_[0-9a-f]{32}_'"
        )
    assert [r["relname"] for r in left] == [f"import_{live.hex}_3"]
