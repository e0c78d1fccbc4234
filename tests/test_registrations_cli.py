"""`simveb plates status | reserve | release | reservations` as an admin runs them: real processes."""

from __future__ import annotations

import re

from simveb.actors.registrations.messages import AllocatePlate, SeedRegistrations
from tests.support import simveb


async def test_plates_status_reserve_and_release(settings, runtime) -> None:
    await runtime.bus.ask(SeedRegistrations())
    status = simveb(settings, "plates", "status")
    assert status.returncode == 0, status.stderr
    line = next(row for row in status.stdout.splitlines() if row.startswith("car "))
    assert "AA 0001 RB" in line and "four_wheels_plus" in line

    made = simveb(settings, "plates", "reserve", "car", "--number", "1-5", "--reason", "state fleet")
    assert made.returncode == 0, made.stderr
    rid = re.fullmatch(r"reserved ([0-9a-f-]{36})\n", made.stdout)
    assert rid is not None
    listed = simveb(settings, "plates", "reservations", "--format", "car")
    assert rid[1] in listed.stdout and "* 0001-0005" in listed.stdout and "state fleet" in listed.stdout

    assert (await runtime.bus.ask(AllocatePlate(format_code="car"))).plate == "AA 0006 RB"
    after = simveb(settings, "plates", "status")
    assert "AA 0007 RB" in next(r for r in after.stdout.splitlines() if r.startswith("car "))

    released = simveb(settings, "plates", "release", rid[1])
    assert released.returncode == 0 and released.stdout == f"released {rid[1]}\n"
    assert rid[1] not in simveb(settings, "plates", "reservations").stdout

    for args, text in (
        (("reserve", "car"), "give --series, --number, or both"),
        (("reserve", "car", "--number", "x"), "--number is N or N-M"),
        (("reserve", "nope", "--series", "AB"), "no plate format"),
        (("release", "not-an-id"), "RESERVATION_ID"),
    ):
        bad = simveb(settings, "plates", *args)
        assert bad.returncode != 0 and bad.stderr.startswith("simveb: error:") and text in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
