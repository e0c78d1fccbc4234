"""The `simveb` command: serve, migrate, db status, seed, openapi, config and flags (admin tasks).

Commands that change data go through the bus like the HTTP layer does, never through SQL. An error
is one line on stderr and a non-zero exit; long work shows a progress bar.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from simveb.config import ConfigError, Settings, load_settings, with_overrides
from simveb.errors import DomainError
from simveb.migrate import MigrationError

T = TypeVar("T")
CLI_ACTOR = "cli"


class CliError(click.ClickException):
    """Printed as one line `simveb: error: ...`, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"simveb: error: {self.message}", err=True)


def _fail_cleanly(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, MigrationError) as exc:
            raise CliError(str(exc)) from None
        except DomainError as exc:
            raise CliError(f"{exc.detail} ({exc.code})") from None
        except OSError as exc:
            raise CliError(str(exc)) from None

    return wrapper


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config.toml to read")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """SIMVEB: vehicle registration system of Benin."""
    ctx.obj = {"config_path": config_path}


def settings_of(ctx: click.Context) -> Settings:
    try:
        return load_settings(ctx.obj.get("config_path") if ctx.obj else None)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


async def with_runtime(settings: Settings, work: Callable[[Any], Awaitable[T]], *, seed: bool = False) -> T:
    """Start a runtime without an outbox relay (the server relays what the CLI emits) and run work."""
    from simveb.runtime import Runtime

    runtime = Runtime(settings, relay=False)
    await runtime.start(seed_if_empty=seed)
    try:
        return await work(runtime)
    finally:
        await runtime.stop()


# --- serve --------------------------------------------------------------------------------------------


@main.command()
@click.option("--host", help="address to listen on (server.host)")
@click.option("--port", type=int, help="port (server.port)")
@click.option("--workers", type=int, help="worker processes (server.workers)")
@click.pass_context
@_fail_cleanly
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the API (granian) on the configured database; migrates and seeds first when configured."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    from simveb.db import DatabaseProvider

    settings = settings_of(ctx)
    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    if overrides:
        settings = with_overrides(settings, server=overrides)
    from simveb.keys import KeyRing

    KeyRing.for_settings(settings)  # create the development key before workers race to do it
    with DatabaseProvider(settings) as url:
        # Migrate and seed once, here, before the workers start (they skip both).
        prepared = with_overrides(settings, database={"url": url})
        run(_prepare(prepared))
        os.environ["SIMVEB_DATABASE__URL"] = url
        os.environ["SIMVEB_DATABASE__MIGRATE_ON_START"] = "false"
        if ctx.obj and ctx.obj.get("config_path"):
            os.environ["SIMVEB_CONFIG"] = str(Path(ctx.obj["config_path"]).resolve())
        for key, value in overrides.items():
            os.environ[f"SIMVEB_SERVER__{key.upper()}"] = str(value)
        click.echo(f"simveb: serving on http://{settings.server.host}:{settings.server.port}", err=True)
        Granian(
            "simveb.http.app:app_from_env",
            address=settings.server.host,
            port=settings.server.port,
            interface=Interfaces.ASGI,
            workers=settings.server.workers,
            factory=True,
            loop=Loops.auto,
            log_access=False,
        ).serve()


async def _prepare(settings: Settings) -> None:
    from simveb.runtime import Runtime

    runtime = Runtime(settings, relay=False)
    await runtime.start()
    await runtime.stop()


# --- migrations ---------------------------------------------------------------------------------------


@main.command()
@click.option("--dry-run", is_flag=True, help="list what would be applied, apply nothing")
@click.pass_context
@_fail_cleanly
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
@_fail_cleanly
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
@_fail_cleanly
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
@_fail_cleanly
def openapi(ctx: click.Context) -> None:
    """Print the OpenAPI document (JSON)."""
    from simveb.http.app import create_app

    settings = settings_of(ctx)
    app = create_app(settings)
    click.echo(json.dumps(app.openapi_schema.to_schema(), indent=2, ensure_ascii=False))


# --- config and flags ---------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Read and change settings of the config service."""


@config_group.command("get")
@click.argument("key", required=False)
@click.pass_context
@_fail_cleanly
def config_get(ctx: click.Context, key: str | None) -> None:
    """Print one setting, or all of them (private ones included)."""
    from simveb.actors.config.messages import GetSetting, ListSettings

    settings = settings_of(ctx)

    async def work(runtime: Any) -> Any:
        if key:
            return [await runtime.bus.ask(GetSetting(key=key))]
        return await runtime.bus.ask(ListSettings(include_private=True))

    for s in run(with_runtime(settings, work)):
        click.echo(f"{s.key} = {json.dumps(s.value, ensure_ascii=False)}  ({s.type}{', public' if s.public else ''})")


@config_group.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--type", "type_", type=click.Choice(["string", "integer", "boolean", "json"]), help="for a new key")
@click.option("--public/--private", default=None, help="visible to anonymous callers")
@click.pass_context
@_fail_cleanly
def config_set(ctx: click.Context, key: str, value: str, type_: str | None, public: bool | None) -> None:
    """Set a setting; VALUE is JSON (42, true, "text") or plain text for a string."""
    from simveb.actors.config.messages import GetSetting, PutSetting

    settings = settings_of(ctx)
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value

    async def work(runtime: Any) -> Any:
        nonlocal parsed
        kind = type_
        if kind is None:
            try:
                kind = (await runtime.bus.ask(GetSetting(key=key))).type
            except DomainError:
                kind = None
        if kind == "string" and not isinstance(parsed, str):
            parsed = value
        message = msgspec.convert(
            {"key": key, "value": parsed, "type": type_, "public": public, "by": CLI_ACTOR}, PutSetting
        )
        return await runtime.bus.ask(message)

    try:
        saved = run(with_runtime(settings, work))
    except msgspec.ValidationError as exc:
        raise CliError(f"invalid setting: {exc}") from None
    click.echo(f"{saved.key} = {json.dumps(saved.value, ensure_ascii=False)}")


@main.group()
def flags() -> None:
    """Feature flags."""


@flags.command("list")
@click.pass_context
@_fail_cleanly
def flags_list(ctx: click.Context) -> None:
    """Every flag, on or off, with its rollout."""
    from simveb.actors.config.messages import ListFeatures

    settings = settings_of(ctx)
    for f in run(with_runtime(settings, lambda rt: rt.bus.ask(ListFeatures()))):
        rollout = f" {f.rollout_percent}%" if f.rollout_percent is not None else ""
        click.echo(f"{'on ' if f.enabled else 'off'} {f.key}{rollout}")


def _set_flag(ctx: click.Context, key: str, enabled: bool, percent: int | None) -> None:
    from simveb.actors.config.messages import ListFeatures, PutFeature

    settings = settings_of(ctx)

    async def work(runtime: Any) -> Any:
        existing = {f.key: f for f in await runtime.bus.ask(ListFeatures())}
        if key not in existing and not enabled:
            raise CliError(f"no feature flag {key!r}")
        message = msgspec.convert(
            {"key": key, "enabled": enabled, "rollout_percent": percent, "by": CLI_ACTOR}, PutFeature
        )
        return await runtime.bus.ask(message)

    try:
        flag = run(with_runtime(settings, work))
    except msgspec.ValidationError as exc:
        raise CliError(f"invalid flag: {exc}") from None
    click.echo(f"{flag.key}: {'on' if flag.enabled else 'off'}")


@flags.command("enable")
@click.argument("key")
@click.option("--percent", type=click.IntRange(0, 100), help="roll out to this share of subjects")
@click.pass_context
@_fail_cleanly
def flags_enable(ctx: click.Context, key: str, percent: int | None) -> None:
    """Switch a flag on (optionally for a percentage of subjects)."""
    _set_flag(ctx, key, True, percent)


@flags.command("disable")
@click.argument("key")
@click.pass_context
@_fail_cleanly
def flags_disable(ctx: click.Context, key: str) -> None:
    """Switch a flag off."""
    _set_flag(ctx, key, False, None)


# --- integrations commands (issue 3) -----------------------------------------------------------------


# --- notifications commands (issue 3) ----------------------------------------------------------------


# --- users, auth and keys commands (issue 4) ---------------------------------------------------------


# --- vehicles commands (issue 5) ---------------------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
