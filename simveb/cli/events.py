"""Outbox commands: list dead and quarantined events, redrive them, purge delivered rows.

The outbox (`bus.outbox`, `bus.inbox`) is the runtime's own table, like the migrations ledger, not an
actor's: no actor owns it and none answers messages about it. So these commands reach it through the
runtime's database (`simveb.outbox`'s `list_dead`, `redrive` and `purge` on a connection of
`Runtime.db`), not through the bus; they start no actor and no relay. A redriven event is delivered
by the relay of a running server (woken by NOTIFY), exactly like a freshly emitted one.
"""

from __future__ import annotations

import shutil
from typing import Any

import click

from simveb.cli.app import CliError, fail_cleanly, main, run, settings_of
from simveb.config import Settings


async def _with_outbox(settings: Settings, work: Any) -> Any:
    """Run `work(con)` on a connection of a runtime that has only its database (no actor, no relay)."""
    from simveb.runtime import Runtime

    runtime = Runtime(settings, actors=[], graph={}, relay=False)
    await runtime.start(seed_if_empty=False)
    try:
        assert runtime.db is not None
        async with runtime.db.connection() as con:
            return await work(con)
    finally:
        await runtime.stop()


@main.group()
def events() -> None:
    """The outbox of domain events: dead and quarantined events, redrive, purge."""


@events.command("dead")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.pass_context
@fail_cleanly
def events_dead(ctx: click.Context, limit: int) -> None:
    """Dead events (retried past bus.event_retry_horizon_s) and quarantined ones (undecodable), oldest first."""
    from rich.console import Console
    from rich.table import Table

    from simveb.outbox import list_dead

    rows = run(_with_outbox(settings_of(ctx), lambda con: list_dead(con, limit=limit)))
    if not rows:
        click.echo("no dead or quarantined event")
        return
    table = Table("id", "status", "type", "source", "attempts", "failed at", "error", "event id")
    for r in rows:
        failed = f"{r.failed_at:%Y-%m-%d %H:%M:%S}" if r.failed_at else "-"
        table.add_row(
            str(r.id), r.status, r.type, r.source, str(r.attempts), failed, r.last_error or "-", str(r.event_id)
        )
    # Wide enough that an operator (or a pipe) sees each row on one line with its whole error.
    Console(width=max(160, shutil.get_terminal_size().columns), soft_wrap=True).print(table)
    click.echo(f"{len(rows)} event(s); `simveb events redrive ID ...` or `--all` delivers them again")


@events.command("redrive")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="every dead and quarantined event")
@click.pass_context
@fail_cleanly
def events_redrive(ctx: click.Context, ids: tuple[int, ...], all_: bool) -> None:
    """Make dead (or quarantined) events deliverable again now, with a fresh retry horizon.

    Consumers that handled an event already skip it (inbox), so a redrive never applies one twice.
    """
    from simveb.outbox import redrive

    if bool(ids) == all_:
        raise CliError("give the ids of the events to redrive (see `simveb events dead`), or --all")
    count = run(_with_outbox(settings_of(ctx), lambda con: redrive(con, None if all_ else list(ids))))
    if ids and count < len(ids):
        click.echo(f"{len(ids) - count} of the given id(s) are not dead or quarantined: left as they are", err=True)
    click.echo(f"{count} event(s) redriven; a running server's relay delivers them")


@events.command("purge")
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(0),
    help="seconds (default: bus.retention_s)",
)
@click.pass_context
@fail_cleanly
def events_purge(ctx: click.Context, older_than: float | None) -> None:
    """Delete delivered outbox rows and inbox rows older than the retention (the relay also does it hourly)."""
    from simveb.outbox import purge

    settings = settings_of(ctx)
    retention = settings.bus.retention_s if older_than is None else older_than
    outbox, inbox = run(_with_outbox(settings, lambda con: purge(con, retention)))
    click.echo(f"purged {outbox} outbox row(s) and {inbox} inbox row(s) older than {retention:g} s")
