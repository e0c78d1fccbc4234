"""Plate administration commands: `simveb plates status | reserve | release | reservations`."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import click

from simveb.cli.app import CLI_ACTOR, CliError, fail_cleanly, main, run, settings_of, with_runtime


@main.group("plates")
def plates_group() -> None:
    """Plate numbers: each series' position, reservations."""


@plates_group.command("status")
@click.pass_context
@fail_cleanly
def plates_status(ctx: click.Context) -> None:
    """Where each plate format's sequence stands (next plate, issued, live reservation rules)."""
    from simveb.actors.registrations.messages import ListSeries, SeedRegistrations

    async def work(runtime: Any) -> Any:
        await runtime.bus.ask(SeedRegistrations(only_if_empty=True))
        return await runtime.bus.ask(ListSeries())

    rows = run(with_runtime(settings_of(ctx), work))
    click.echo(f"{'format':<16} {'category':<18} {'type':<11} {'next':<14} {'issued':>8} {'reserved':>9}")
    for s in rows:
        nxt = (
            "exhausted"
            if s.exhausted
            else s.template.replace("{series}", s.series).replace("{number}", f"{s.next_number:04d}")
        )
        click.echo(
            f"{s.format_code:<16} {s.category:<18} {s.registration_type:<11} {nxt:<14} {s.issued:>8} {s.reserved_rules:>9}"
        )


@plates_group.command("reserve")
@click.argument("format_code")
@click.option("--series", help="one series (e.g. AB); alone, the whole series is reserved")
@click.option("--number", "numbers", help="one number (7) or a range (100-199)")
@click.option("--reason", default="", help="why (kept with the reservation)")
@click.pass_context
@fail_cleanly
def plates_reserve(ctx: click.Context, format_code: str, series: str | None, numbers: str | None, reason: str) -> None:
    """Keep numbers, a range or a whole series out of the sequence of FORMAT_CODE."""
    from simveb.actors.registrations.messages import ReservePlates

    low = high = None
    if numbers:
        try:
            parts = [int(p) for p in numbers.split("-", 1)]
        except ValueError:
            raise CliError("--number is N or N-M") from None
        low, high = parts[0], parts[-1]
    if series is None and low is None:
        raise CliError("give --series, --number, or both")

    async def work(runtime: Any) -> Any:
        return await runtime.bus.ask(
            ReservePlates(
                format_code=format_code,
                series=series.upper() if series else None,
                number_from=low,
                number_to=high,
                reason=reason,
                by=CLI_ACTOR,
            )
        )

    res = run(with_runtime(settings_of(ctx), work))
    click.echo(f"reserved {res.id}")


@plates_group.command("release")
@click.argument("reservation_id")
@click.pass_context
@fail_cleanly
def plates_release(ctx: click.Context, reservation_id: str) -> None:
    """Give a reservation's numbers back to the sequence."""
    from simveb.actors.registrations.messages import ReleaseReservation

    try:
        rid = UUID(reservation_id)
    except ValueError:
        raise CliError("RESERVATION_ID is a reservation id (see `simveb plates reservations`)") from None

    async def work(runtime: Any) -> Any:
        return await runtime.bus.ask(ReleaseReservation(reservation_id=rid, by=CLI_ACTOR))

    res = run(with_runtime(settings_of(ctx), work))
    click.echo(f"released {res.id}")


@plates_group.command("reservations")
@click.option("--format", "format_code", help="one plate format")
@click.option("--all", "include_released", is_flag=True, help="released ones too")
@click.pass_context
@fail_cleanly
def plates_reservations(ctx: click.Context, format_code: str | None, include_released: bool) -> None:
    """List reservations and prestige holds."""
    from simveb.actors.registrations.messages import ListReservations
    from simveb.messages import PAGE_LIMIT_MAX

    async def work(runtime: Any) -> Any:
        found, cursor = [], None
        while True:  # every page: an operator's listing
            batch = await runtime.bus.ask(
                ListReservations(
                    format_code=format_code, include_released=include_released, cursor=cursor, limit=PAGE_LIMIT_MAX
                )
            )
            found += batch.items
            if (cursor := batch.next_cursor) is None:
                return found

    for r in run(with_runtime(settings_of(ctx), work)):
        what = r.plate or (
            f"{r.series or '*'} {r.number_from:04d}-{r.number_to:04d}" if r.number_from else f"series {r.series}"
        )
        state = " (released)" if r.released_at else ""
        click.echo(f"{r.id}  {r.format_code:<16} {what:<16} {r.reason}{state}")
