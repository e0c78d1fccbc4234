"""Process-level commands: serve, migrate, db status, seed, openapi, and the simulators alone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from simveb.cli.app import CliError, fail_cleanly, main, run, settings_of, with_runtime
from simveb.config import Settings, check_providers_reachable, with_overrides

# --- serve --------------------------------------------------------------------------------------------


@main.command()
@click.option("--host", help="address to listen on (server.host)")
@click.option("--port", type=int, help="port (server.port)")
@click.option("--workers", type=int, help="worker processes (server.workers)")
@click.option("--actors", help="comma-separated actors this process hosts (placement.actors; default all)")
@click.pass_context
@fail_cleanly
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None, actors: str | None) -> None:
    """Run the API (granian) on the configured database; migrates and seeds first when configured."""
    from simveb.db import DatabaseProvider

    settings = settings_of(ctx)
    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    if overrides:
        # Provider URLs at this server's own /sandbox follow the new host and port (see simveb.config).
        settings = with_overrides(settings, server=overrides)
    if actors is not None:
        names = [name.strip() for name in actors.split(",") if name.strip()]
        settings = with_overrides(settings, placement={"actors": names})
        os.environ["SIMVEB_PLACEMENT__ACTORS"] = ",".join(names)
    _check_placement(settings)
    check_providers_reachable(settings)
    from simveb.keys import KeyRing

    KeyRing.for_settings(settings)  # create the development key before workers race to do it
    with DatabaseProvider(settings) as url:
        # Migrate and seed once, here, before the workers start (they skip both). The preparation
        # hosts every actor in-process, whatever this server's placement: it only migrates and seeds.
        prepared = with_overrides(settings, database={"url": url}, placement={"actors": [], "redis_url": ""})
        run(_prepare(prepared))
        os.environ["SIMVEB_DATABASE__URL"] = url
        os.environ["SIMVEB_DATABASE__MIGRATE_ON_START"] = "false"
        if ctx.obj and ctx.obj.get("config_path"):
            os.environ["SIMVEB_CONFIG"] = str(Path(ctx.obj["config_path"]).resolve())
        for key, value in overrides.items():
            os.environ[f"SIMVEB_SERVER__{key.upper()}"] = str(value)
        click.echo(f"simveb: serving on http://{settings.server.host}:{settings.server.port}", err=True)
        granian_server("simveb.http.app:app_from_env", settings).serve()


def _check_placement(settings: Settings) -> None:
    """Refuse an unknown actor name or a partial placement without a transport, before anything starts."""
    from simveb.runtime import Runtime

    try:
        Runtime(settings)
    except Exception as exc:  # ConfigError, one line naming the key
        raise CliError(str(exc)) from None


def granian_server(target: str, settings: Settings, **extra: Any) -> Any:
    """The granian server of `simveb serve` for an ASGI factory `target`; bench/http.py runs its bare
    baseline app through it too, so both sides of that comparison get the same server settings."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    return Granian(
        target,
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.ASGI,
        workers=settings.server.workers,
        factory=True,
        loop=Loops.auto,
        log_access=False,
        **extra,
    )


async def _prepare(settings: Settings) -> None:
    from simveb.runtime import Runtime

    runtime = Runtime(settings, relay=False)
    await runtime.start()
    await runtime.stop()


# --- migrations ---------------------------------------------------------------------------------------


@main.command()
@click.option("--dry-run", is_flag=True, help="list what would be applied, apply nothing")
@click.pass_context
@fail_cleanly
def migrate(ctx: click.Context, dry_run: bool) -> None:
    """Apply pending migrations (under an advisory lock; safe to run from several places at once)."""
    from simveb import migrate as runner
    from simveb.db import DatabaseProvider

    settings = settings_of(ctx)
    with DatabaseProvider(settings) as url:
        applied = run(runner.migrate(url, dry_run=dry_run, on_apply=lambda m: click.echo(f"applied {m.label}")))
    if dry_run:
        for m in applied:
            click.echo(f"would apply {m.label}")
    click.echo(f"{len(applied)} migration(s) {'pending' if dry_run else 'applied'}")


@main.group()
def db() -> None:
    """Database information."""


@db.command("status")
@click.pass_context
@fail_cleanly
def db_status(ctx: click.Context) -> None:
    """Each migration file and whether it is applied, pending, or changed since it was applied."""
    import asyncpg

    from simveb import migrate as runner
    from simveb.db import DatabaseProvider

    settings = settings_of(ctx)

    async def work(url: str) -> list[runner.MigrationState]:
        con = await asyncpg.connect(url)
        try:
            return await runner.status(con)
        finally:
            await con.close()

    with DatabaseProvider(settings) as url:
        states = run(work(url))
    for s in states:
        click.echo(f"{s.state:8} {s.migration.label}  {s.applied_at or ''}".rstrip())
    pending = sum(1 for s in states if s.state != "applied")
    click.echo(f"{len(states) - pending} applied, {pending} not applied")
    if any(s.state == "changed" for s in states):
        raise CliError("an applied migration file changed on disk")


# --- seed and openapi ---------------------------------------------------------------------------------


@main.command()
@click.pass_context
@fail_cleanly
def seed(ctx: click.Context) -> None:
    """Load the placeholder reference data of every domain (idempotent)."""
    from rich.progress import Progress

    from simveb import seed as seeding

    settings = settings_of(ctx)

    async def work(runtime: Any) -> dict[str, int]:
        inserted: dict[str, int] = {}
        with Progress(transient=True) as progress:
            task = progress.add_task("seeding", total=len(seeding.SEEDS))
            for name, factory in seeding.SEEDS:
                if name in runtime.bus.cells and runtime.bus.handles(factory):
                    inserted[name] = await runtime.bus.ask(factory(only_if_empty=False), timeout=300)
                progress.advance(task)
        return inserted

    for name, count in run(with_runtime(settings, work)).items():
        click.echo(f"{name}: {count} row(s) added")


@main.command()
@click.pass_context
@fail_cleanly
def openapi(ctx: click.Context) -> None:
    """Print the OpenAPI document (JSON)."""
    from simveb.http.app import create_app, openapi_document

    settings = settings_of(ctx)
    app = create_app(settings)
    click.echo(json.dumps(openapi_document(app), indent=2, ensure_ascii=False))


# --- config and flags ---------------------------------------------------------------------------------


def sandbox_app() -> Any:
    """The provider simulators alone, for `simveb sandbox` (granian imports this factory)."""
    from litestar import Litestar

    from simveb.sandbox import sandbox_router

    return Litestar(route_handlers=[sandbox_router()], debug=False)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=8100, show_default=True, help="port")
@fail_cleanly
def sandbox(host: str, port: int) -> None:
    """Run the provider SIMULATORS alone (X-Road, SMS, FCM) under /sandbox, without the API or a database."""
    from granian import Granian
    from granian.constants import Interfaces

    click.echo(f"simveb: simulators on http://{host}:{port}/sandbox (X-Road: /sandbox/xroad)", err=True)
    Granian(
        "simveb.cli.server:sandbox_app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,  # simulators keep their behaviour and counters in memory: one process
        factory=True,
        log_access=False,
    ).serve()
