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


@main.group()
def integrations() -> None:
    """National registries (ANIP, DGI) over X-Road."""


@integrations.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
@click.pass_context
@_fail_cleanly
def integrations_status(ctx: click.Context, as_json: bool) -> None:
    """Per registry: recent calls, error rate, latency p50/p95, queued lookups, last breaker change."""
    from simveb.actors.integrations.messages import GetIntegrationsStatus

    settings = settings_of(ctx)
    status = run(with_runtime(settings, lambda rt: rt.bus.ask(GetIntegrationsStatus())))
    if as_json:
        click.echo(msgspec.json.encode(status).decode())
        return
    window = status.services[0].window_s if status.services else 0
    click.echo(f"last {window:g} s        calls  errors  error%  p50 ms  p95 ms  queued  abandoned")
    for s in status.services:
        p50 = f"{s.p50_ms:.0f}" if s.p50_ms is not None else "-"
        p95 = f"{s.p95_ms:.0f}" if s.p95_ms is not None else "-"
        click.echo(
            f"{s.service:<16} {s.calls:>6}  {s.errors:>6}  {s.error_rate * 100:>5.1f}  {p50:>6}  {p95:>6}"
            f"  {s.queued:>6}  {s.abandoned:>9}"
        )
        # The breaker lives in each serving process; this command sees what they recorded.
        change = s.last_change
        if change is None:
            click.echo("  breaker: no state change recorded (closed)")
        else:
            click.echo(
                f"  breaker: {change.to_state} since {change.at:%Y-%m-%d %H:%M:%S %Z}"
                f" (from {change.from_state}, seen by {change.process})"
            )


def sandbox_app() -> Any:
    """The provider simulators alone, for `simveb sandbox` (granian imports this factory)."""
    from litestar import Litestar

    from simveb.sandbox import sandbox_router

    return Litestar(route_handlers=[sandbox_router()], debug=False)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=8100, show_default=True, help="port")
@_fail_cleanly
def sandbox(host: str, port: int) -> None:
    """Run the provider SIMULATORS alone (X-Road, SMS, FCM) under /sandbox, without the API or a database."""
    from granian import Granian
    from granian.constants import Interfaces

    click.echo(f"simveb: simulators on http://{host}:{port}/sandbox (X-Road: /sandbox/xroad)", err=True)
    Granian(
        "simveb.cli:sandbox_app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,  # simulators keep their behaviour and counters in memory: one process
        factory=True,
        log_access=False,
    ).serve()


# --- notifications commands (issue 3) ----------------------------------------------------------------


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param expects key=value, got {pair!r}")
        params[key] = value
    return params


def _notify(
    ctx: click.Context, channel: str, to: str, template: str, params: dict[str, str], language: str, wait: float
) -> None:
    """Queue one message through the notifications actor and wait (a little) for its delivery."""
    from simveb.actors.notifications.messages import GetDelivery, SendNotification

    settings = settings_of(ctx)

    async def work(runtime: Any) -> Any:
        accepted = await runtime.bus.ask(
            SendNotification(channel=channel, to=to, template=template, params=params, language=language, by=CLI_ACTOR)
        )
        mid = accepted.notification_ids[0]
        click.echo(f"queued {mid}")
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            delivery = await runtime.bus.ask(GetDelivery(notification_id=mid))
            if delivery.status in ("sent", "dead") or asyncio.get_running_loop().time() > deadline:
                return delivery
            await asyncio.sleep(0.1)

    try:
        delivery = run(with_runtime(settings, work))
    except msgspec.ValidationError as exc:
        raise CliError(f"invalid message: {exc}") from None
    if delivery.status == "sent":
        click.echo(f"sent ({delivery.provider_message_id})")
    elif delivery.status == "dead":
        raise CliError(f"not delivered: {delivery.last_error}")
    else:
        click.echo(f"{delivery.status} after {delivery.attempts} attempt(s): a running server will deliver it")


@main.group()
def notify() -> None:
    """Send a message from a template (queued durably, then delivered)."""


@notify.command("email")
@click.option("--to", required=True, help="email address")
@click.option("--template", required=True, help="template event, e.g. welcome")
@click.option("--param", "params", multiple=True, help="template parameter key=value (repeatable)")
@click.option("--language", type=click.Choice(["fr", "en"]), default="fr", show_default=True)
@click.option("--wait", type=float, default=15.0, show_default=True, help="seconds to wait for the delivery")
@click.pass_context
@_fail_cleanly
def notify_email(
    ctx: click.Context, to: str, template: str, params: tuple[str, ...], language: str, wait: float
) -> None:
    """Send an email rendered from a template."""
    _notify(ctx, "email", to, template, _params(params), language, wait)


@notify.command("sms")
@click.option("--to", required=True, help="phone number, +229...")
@click.option("--template", required=True, help="template event, e.g. custom")
@click.option("--param", "params", multiple=True, help="template parameter key=value (repeatable)")
@click.option("--language", type=click.Choice(["fr", "en"]), default="fr", show_default=True)
@click.option("--wait", type=float, default=15.0, show_default=True, help="seconds to wait for the delivery")
@click.pass_context
@_fail_cleanly
def notify_sms(ctx: click.Context, to: str, template: str, params: tuple[str, ...], language: str, wait: float) -> None:
    """Send an SMS rendered from a template."""
    _notify(ctx, "sms", to, template, _params(params), language, wait)


@main.group("notifications")
def notifications_group() -> None:
    """The notification queue."""


@notifications_group.command("retry-dead")
@click.option("--channel", type=click.Choice(["email", "sms", "push"]), help="only this channel")
@click.pass_context
@_fail_cleanly
def notifications_retry_dead(ctx: click.Context, channel: str | None) -> None:
    """Queue dead messages again (a running server delivers them)."""
    from simveb.actors.notifications.messages import RetryDead

    settings = settings_of(ctx)
    count = run(with_runtime(settings, lambda rt: rt.bus.ask(RetryDead(channel=channel))))
    click.echo(f"{count} dead message(s) queued again")


# --- users, auth and keys commands (issue 4) ---------------------------------------------------------


@main.group()
def keys() -> None:
    """Token signing keys (Ed25519, in <data_dir>/keys in development)."""


@keys.command("rotate")
@click.pass_context
@_fail_cleanly
def keys_rotate(ctx: click.Context) -> None:
    """Add a new signing key: new tokens use it; tokens signed by older keys stay valid until they expire."""
    from simveb.keys import KeyRing, write_new_key

    settings = settings_of(ctx)
    if settings.security.signing_key:
        raise CliError(
            "the signing key comes from SIMVEB_SECURITY__SIGNING_KEY: put the new key there and keep the old"
            f" one as a file in {settings.data_dir / 'keys'} until its last tokens expired"
        )
    directory = settings.data_dir / "keys"
    KeyRing.for_settings(settings)  # the first key exists before the new one, so the new one is newest
    path = write_new_key(directory)
    click.echo(f"new signing key {path.stem} ({path}); running servers sign with it within seconds")


@keys.command("list")
@click.pass_context
@_fail_cleanly
def keys_list(ctx: click.Context) -> None:
    """The keys that verify tokens, by kid; the signing one is marked."""
    from simveb.keys import KeyRing

    ring = KeyRing.for_settings(settings_of(ctx))
    for kid in ring.public:
        click.echo(f"{'signing  ' if kid == ring.kid else 'verifying'} {kid}")


# --- users commands (issue 4: users service) ---------------------------------------------------------

CLI_CALLER_PERMISSIONS = frozenset({"users:read", "users:write", "users:roles", "users:kyc"})


@main.group("users")
def users_group() -> None:
    """Accounts, roles and permissions of the users service."""


@users_group.command("create")
@click.option("--role", "roles", multiple=True, required=True, help="role code (repeat for several)")
@click.option("--email", help="email (required for staff)")
@click.option("--phone", help="+229 then 10 digits starting 01")
@click.option("--first-name", help="first name(s)")
@click.option("--last-name", help="last name")
@click.option("--kind", type=click.Choice(["staff", "person", "company"]), default="staff", show_default=True)
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.pass_context
@_fail_cleanly
def users_create(
    ctx: click.Context,
    roles: tuple[str, ...],
    email: str | None,
    phone: str | None,
    first_name: str | None,
    last_name: str | None,
    kind: str,
    password_stdin: bool,
) -> None:
    """Create an active account (e.g. the first admin); the password is checked and set by auth."""
    from simveb.actors.auth.messages import SetPassword
    from simveb.actors.users.messages import CreateUser, SeedUsers
    from simveb.http.users import create_account

    settings = settings_of(ctx)
    password = None
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
        if not password:
            raise CliError("no password on standard input")
    try:
        message = msgspec.convert(
            {
                "caller": {"sub": CLI_ACTOR, "permissions": sorted(CLI_CALLER_PERMISSIONS)},
                "kind": kind,
                "roles": list(roles),
                "email": email,
                "phone": phone,
                "first_name": first_name,
                "last_name": last_name,
            },
            CreateUser,
        )
    except msgspec.ValidationError as exc:
        raise CliError(f"invalid user: {exc}") from None

    async def work(runtime: Any) -> tuple[Any, bool, bool]:
        await runtime.bus.ask(SeedUsers(only_if_empty=True))  # the roles exist on a fresh database
        user, password_set = await create_account(runtime.bus, message, password)
        return user, password_set, runtime.bus.handles(SetPassword)

    user, password_set, auth_running = run(with_runtime(settings, work))
    click.echo(f"created {user.kind} {user.id} ({', '.join(user.roles)}) {user.email or user.phone or ''}".rstrip())
    if password is not None and not password_set:
        click.echo("password NOT set: the auth service is not available in this process", err=True)
    elif password is None and auth_running:
        click.echo("no password set: the user signs in after a password reset by one-time code", err=True)


@users_group.command("list")
@click.option("--role", help="only users with this role")
@click.option("--status", type=click.Choice(["pending", "active", "inactive"]))
@click.option("--search", "-q", "q", help="name, NPI, email or phone contains this")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.pass_context
@_fail_cleanly
def users_list(
    ctx: click.Context, role: str | None, status: str | None, q: str | None, limit: int, offset: int
) -> None:
    """Users, newest first: id, status, KYC, roles, contact, name."""
    from simveb.actors.users.messages import Caller, ListUsers

    settings = settings_of(ctx)
    caller = Caller(sub=CLI_ACTOR, permissions=CLI_CALLER_PERMISSIONS)
    page = run(
        with_runtime(
            settings,
            lambda rt: rt.bus.ask(
                ListUsers(caller=caller, role=role, status=status, q=q, limit=limit, offset=offset)  # type: ignore[arg-type]
            ),
        )
    )
    for u in page.items:
        contact = u.email or u.phone or "-"
        click.echo(
            f"{u.id}  {u.status:8} {u.kyc_status:12} {','.join(u.roles) or '-':20} {contact:28} {u.display_name}"
        )
    click.echo(f"{len(page.items)} of {page.total} user(s)")


@users_group.command("roles")
@click.pass_context
@_fail_cleanly
def users_roles(ctx: click.Context) -> None:
    """Every role and its permissions (the seeded grid, as stored)."""
    from simveb.actors.users.messages import ListRoles

    settings = settings_of(ctx)
    for role in run(with_runtime(settings, lambda rt: rt.bus.ask(ListRoles()))):
        click.echo(f"{role.code:11} {', '.join(role.permissions) or '-'}")


# --- vehicles commands (issue 5) ---------------------------------------------------------------------


@main.group("vehicles")
def vehicles_group() -> None:
    """Vehicle registry: bulk import and export (CSV, UTF-8, the columns of the export)."""


@vehicles_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--errors", "errors_path", type=click.Path(dir_okay=False), help="rejected rows (default FILE.errors.csv)"
)
@click.pass_context
@_fail_cleanly
def vehicles_import(ctx: click.Context, file: str, errors_path: str | None) -> None:
    """Import vehicles from FILE.csv; bad rows go to the errors file with their reason. Re-running adds nothing."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from simveb.actors.vehicles.messages import GetImportJob, SeedVehicles, StartImport

    settings = settings_of(ctx)
    source = Path(file).resolve()
    errors = Path(errors_path).resolve() if errors_path else source.with_suffix(".errors.csv")

    async def work(runtime: Any) -> Any:
        bus = runtime.bus
        await bus.ask(SeedVehicles(only_if_empty=True))  # an empty catalogue would reject every row
        job = await bus.ask(StartImport(path=str(source), error_path=str(errors), by=CLI_ACTOR))
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task("copying", total=job.bytes_total or None)
            while job.state in ("queued", "running"):
                await asyncio.sleep(0.2)
                job = await bus.ask(GetImportJob(job_id=job.id))
                progress.update(task, description=job.phase or job.state, completed=job.bytes_read)
        return job

    job = run(with_runtime(settings, work))
    if job.state != "done":
        raise CliError(f"import failed: {job.error}")
    click.echo(
        f"{job.total_rows} row(s): {job.inserted} imported, {job.skipped} already registered, {job.rejected} rejected"
    )
    if job.rejected:
        click.echo(f"rejected rows and their reasons: {errors}")


@vehicles_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--q", help="VIN or plate prefix, or make / model / name")
@click.option("--make")
@click.option("--model")
@click.option("--status", type=click.Choice(["active", "stolen", "destroyed", "exported"]))
@click.option("--year-min", type=int)
@click.option("--year-max", type=int)
@click.pass_context
@_fail_cleanly
def vehicles_export(ctx: click.Context, file: str, **filters: Any) -> None:
    """Write the vehicles matching the filters to FILE.csv (re-importable as is)."""
    from simveb.actors.vehicles.messages import OpenExport, ReadExport, VehicleFilter

    settings = settings_of(ctx)
    try:
        wanted = msgspec.convert({k: v for k, v in filters.items() if v is not None}, VehicleFilter)
    except msgspec.ValidationError as exc:
        raise CliError(f"invalid filter: {exc}") from None

    async def work(runtime: Any, out: Any) -> int:
        export_id = await runtime.bus.ask(OpenExport(filter=wanted))
        lines = 0
        while True:
            chunk = await runtime.bus.ask(ReadExport(export_id=export_id))
            out.write(chunk.data)
            lines += chunk.data.count(b"\n")
            if chunk.done:
                return lines - 1

    with Path(file).open("wb") as out:
        written = run(with_runtime(settings, lambda runtime: work(runtime, out)))
    click.echo(f"{written} vehicle(s) written to {file}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
