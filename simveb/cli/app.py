"""The `simveb` command group and what every command module shares: settings, the runtime, errors.

Commands that change data go through the bus like the HTTP layer does, never through SQL. An error
is one line on stderr and a non-zero exit; long work shows a progress bar. One module per domain
registers its commands on `main`, mirroring `simveb/http/`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from simveb.config import ConfigError, Settings, load_settings
from simveb.errors import DomainError
from simveb.migrate import MigrationError

T = TypeVar("T")
CLI_ACTOR = "cli"


class CliError(click.ClickException):
    """Printed as one line `simveb: error: ...`, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"simveb: error: {self.message}", err=True)


def fail_cleanly(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn expected failures into one `simveb: error: ...` line and exit code 1."""

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
    from simveb.config import with_overrides
    from simveb.runtime import Runtime

    # A command hosts every actor in its own process whatever the servers' placement: it must not
    # join the servers' consumer groups and take their requests for the few seconds it runs.
    if settings.placement.actors or settings.placement.redis_url:
        settings = with_overrides(settings, placement={"actors": [], "redis_url": ""})
    runtime = Runtime(settings, relay=False)
    await runtime.start(seed_if_empty=seed)
    try:
        return await work(runtime)
    finally:
        await runtime.stop()
