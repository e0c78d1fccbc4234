"""Configuration commands: settings (`config get|set|table`) and feature flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import msgspec

from simveb.cli.app import CLI_ACTOR, CliError, fail_cleanly, main, run, settings_of, with_runtime
from simveb.errors import DomainError


@main.group("config")
def config_group() -> None:
    """Read and change settings of the config service."""


@config_group.command("get")
@click.argument("key", required=False)
@click.pass_context
@fail_cleanly
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
@fail_cleanly
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


@config_group.command("table")
@click.argument("path", type=click.Path(exists=True, dir_okay=False), default="config.toml")
def config_table(path: str) -> None:
    """Print every setting of config.toml as a Markdown table (key, default, meaning) for the README."""
    import re

    section = ""
    click.echo("| setting | default | meaning |")
    click.echo("| --- | --- | --- |")
    pattern = re.compile(r"^([a-z0-9_]+)\s*=\s*(.+?)\s*(?:#\s*(.*))?$")
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line.strip("[] ")
            continue
        match = pattern.match(line)
        if match and section:
            key, value, comment = match.groups()
            value = value.replace("|", "\\|")
            click.echo(f"| `{section}.{key}` | `{value}` | {comment or ''} |")


@main.group()
def flags() -> None:
    """Feature flags."""


@flags.command("list")
@click.pass_context
@fail_cleanly
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
@fail_cleanly
def flags_enable(ctx: click.Context, key: str, percent: int | None) -> None:
    """Switch a flag on (optionally for a percentage of subjects)."""
    _set_flag(ctx, key, True, percent)


@flags.command("disable")
@click.argument("key")
@click.pass_context
@fail_cleanly
def flags_disable(ctx: click.Context, key: str) -> None:
    """Switch a flag off."""
    _set_flag(ctx, key, False, None)


# --- integrations commands (issue 3) -----------------------------------------------------------------
