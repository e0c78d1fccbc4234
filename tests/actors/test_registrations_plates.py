"""The plate sequence: formats as data, sequential allocation, skips, the three legacy bugs, and
1,000 concurrent allocations that give 1,000 distinct valid plates, none of them reserved."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from simveb.actors.registrations.messages import (
    AllocatePlate,
    ListReservations,
    ListSeries,
    ReleaseReservation,
    ReservePlates,
    SeedRegistrations,
)
from simveb.errors import Conflict, Invalid
from simveb.runtime import Runtime

CAR = re.compile(r"^([A-HJ-NP-Z]{2}) (\d{4}) RB$")


@pytest.fixture
async def plates(runtime: Runtime) -> Runtime:
    assert runtime.bus is not None
    await runtime.bus.ask(SeedRegistrations())
    return runtime


async def allocate(rt: Runtime, fmt: str = "car") -> str:
    assert rt.bus is not None
    return (await rt.bus.ask(AllocatePlate(format_code=fmt))).plate


async def set_counter(rt: Runtime, fmt: str, series: str | None, number: int) -> None:
    assert rt.db is not None
    async with rt.db.connection() as con:
        await con.execute(
            "UPDATE registrations.plate_series SET series = $2, next_number = $3 WHERE format_code = $1",
            fmt,
            series,
            number,
        )


async def test_sequence_starts_at_aa_0001_and_formats_are_data(plates: Runtime) -> None:
    assert [await allocate(plates) for _ in range(3)] == ["AA 0001 RB", "AA 0002 RB", "AA 0003 RB"]
    assert await allocate(plates, "moto") == "2A 0001"
    assert await allocate(plates, "car_diplomatic") == "CD AA 0001"
    assert plates.bus is not None
    series = {s.format_code: s for s in await plates.bus.ask(ListSeries())}
    assert series["car"].series == "AA" and series["car"].next_number == 4 and series["car"].issued == 3


async def test_number_resets_after_9999_and_series_advances(plates: Runtime) -> None:
    """Legacy bug 2: the number was never reset after 9999."""
    await set_counter(plates, "car", "AA", 9998)
    assert [await allocate(plates) for _ in range(3)] == ["AA 9998 RB", "AA 9999 RB", "AB 0001 RB"]


async def test_series_carries_and_skips_letters_without_overflowing_past_z(plates: Runtime) -> None:
    """Legacy bug 1: the letter increment overflowed past Z. Letters I, O, Q are skipped."""
    await set_counter(plates, "car", "AZ", 9999)
    assert await allocate(plates) == "AZ 9999 RB"
    assert await allocate(plates) == "BA 0001 RB"
    await set_counter(plates, "car", "AH", 9999)
    await allocate(plates)
    assert await allocate(plates) == "AJ 0001 RB"  # no AI
    await set_counter(plates, "car", "ZZ", 9999)
    assert await allocate(plates) == "ZZ 9999 RB"
    with pytest.raises(Conflict) as err:
        await allocate(plates)
    assert err.value.code == "plates_exhausted"
    # Nothing past ZZ was issued and the counter did not move into garbage.
    assert plates.db is not None
    async with plates.db.connection() as con:
        bad = await con.fetchval(
            "SELECT count(*) FROM registrations.issued_plates WHERE format_code = 'car' AND plate !~ $1",
            CAR.pattern,
        )
        assert bad == 0
    await set_counter(plates, "moto", "Z", 9999)
    assert await allocate(plates, "moto") == "2Z 9999"
    with pytest.raises(Conflict):
        await allocate(plates, "moto")


async def test_collision_with_an_issued_plate_is_retried(plates: Runtime) -> None:
    """Legacy bug 3: a collision with an already-issued plate was not retried."""
    assert plates.db is not None
    async with plates.db.connection() as con:
        for n in (1, 2):
            await con.execute(
                "INSERT INTO registrations.issued_plates (plate, format_code) VALUES ($1, 'car')", f"AA {n:04d} RB"
            )
    assert await allocate(plates) == "AA 0003 RB"


async def test_reserved_numbers_ranges_and_series_are_skipped_then_released(plates: Runtime) -> None:
    assert plates.bus is not None
    ask = plates.bus.ask
    one = await ask(ReservePlates(format_code="car", number_from=1, number_to=1, reason="official", by="admin"))
    await ask(ReservePlates(format_code="car", series="AA", number_from=3, number_to=9, by="admin"))
    await ask(ReservePlates(format_code="car", series="AB", by="admin"))
    assert [await allocate(plates) for _ in range(2)] == ["AA 0002 RB", "AA 0010 RB"]
    await set_counter(plates, "car", "AA", 9999)
    assert await allocate(plates) == "AA 9999 RB"
    # AB is reserved whole, and 0001 is reserved in every series.
    assert await allocate(plates) == "AC 0002 RB"
    assert len((await ask(ListReservations(format_code="car"))).items) == 3
    first = await ask(ListReservations(format_code="car", limit=2))
    rest = await ask(ListReservations(format_code="car", limit=2, cursor=first.next_cursor))
    assert len(first.items) == 2 and len(rest.items) == 1 and rest.next_cursor is None
    await ask(ReleaseReservation(reservation_id=one.id, by="admin"))
    assert len((await ask(ListReservations(format_code="car"))).items) == 2
    await set_counter(plates, "car", "AD", 1)
    assert await allocate(plates) == "AD 0001 RB"
    with pytest.raises(Invalid):
        await ask(ReservePlates(format_code="car", series="AI", by="admin"))  # not a series plates use
    with pytest.raises(Invalid):
        await ask(ReservePlates(format_code="car", number_from=5, number_to=2, by="admin"))


async def test_a_thousand_concurrent_allocations_are_distinct_valid_and_never_reserved(plates: Runtime) -> None:
    assert plates.bus is not None
    reserved_numbers = {7, 77, 777}
    for n in reserved_numbers:
        await plates.bus.ask(ReservePlates(format_code="car", number_from=n, number_to=n, by="admin"))
    await plates.bus.ask(ReservePlates(format_code="car", series="AA", number_from=100, number_to=199, by="admin"))
    # Start near the end of a series so the burst also crosses AA -> AB.
    await set_counter(plates, "car", "AA", 9500)
    got: list[str] = await asyncio.gather(*(allocate(plates) for _ in range(1000)))
    assert len(got) == 1000 and len(set(got)) == 1000
    parsed: list[Any] = [CAR.match(p) for p in got]
    assert all(parsed)
    for m in parsed:
        series, number = m[1], int(m[2])
        assert number not in reserved_numbers
        assert not (series == "AA" and 100 <= number <= 199)
    assert {m[1] for m in parsed} == {"AA", "AB"}
    assert plates.db is not None
    async with plates.db.connection() as con:
        assert await con.fetchval("SELECT count(*) FROM registrations.issued_plates") == 1000
