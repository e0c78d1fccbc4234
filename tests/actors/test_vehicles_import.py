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


async def test_a_load_bigger_than_the_registry_rebuilds_the_indexes(bus, runtime, tmp_path):
    async def indexes() -> list[str]:
        async with runtime.db.pool.acquire() as con:
            rows = await con.fetch(
                "SELECT pg_get_indexdef(indexrelid) AS d FROM pg_index"
                " WHERE indrelid = 'vehicles.vehicles'::regclass ORDER BY 1"
            )
        return [r["d"] for r in rows]

    before = await indexes()
    actor = runtime.bus.cells["vehicles"].instance
    actor.imports.rebuild_min_rows = 10
    rows, bad = sample(40)
    job = await run_import(bus, write_csv(tmp_path / "big.csv", rows), tmp_path / "big.errors.csv")
    assert (job.inserted, job.rejected) == (36, 4), job.error
    assert await indexes() == before
    page = await bus.ask(SearchVehicles(filter=VehicleFilter(owner=uuid.UUID(OWNER)), limit=100))
    assert len(page.items) == sum(1 for i, r in enumerate(rows, 1) if r["owners"] and i not in bad)
