"""Users commands: create accounts (staff, citizens, companies), list them, list roles."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from simveb.cli.app import CLI_ACTOR, CliError, fail_cleanly, main, run, settings_of, with_runtime
from simveb.messages import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX

# What the CLI may do through the users service: it runs with the machine's trust (an operator).
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
@fail_cleanly
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
    from simveb.actors.auth.messages import CreateAccount
    from simveb.actors.users.messages import CreateUser, SeedUsers

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
        if not runtime.bus.handles(CreateAccount):  # no auth service here: the account without a password
            return await runtime.bus.ask(message), False, False
        created = await runtime.bus.ask(CreateAccount(user=message, password=password))
        return created.user, created.password_set, True

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
@click.option("--limit", type=click.IntRange(1, PAGE_LIMIT_MAX), default=PAGE_LIMIT_DEFAULT, show_default=True)
@click.option("--cursor", help="the next page, as the previous list printed it")
@click.pass_context
@fail_cleanly
def users_list(
    ctx: click.Context, role: str | None, status: str | None, q: str | None, limit: int, cursor: str | None
) -> None:
    """Users, newest first: id, status, KYC, roles, contact, name."""
    from simveb.actors.users.messages import Caller, ListUsers

    settings = settings_of(ctx)
    caller = Caller(sub=CLI_ACTOR, permissions=CLI_CALLER_PERMISSIONS)
    page = run(
        with_runtime(
            settings,
            lambda rt: rt.bus.ask(
                ListUsers(caller=caller, role=role, status=status, q=q, limit=limit, cursor=cursor)  # type: ignore[arg-type]
            ),
        )
    )
    for u in page.items:
        contact = u.email or u.phone or "-"
        click.echo(
            f"{u.id}  {u.status:8} {u.kyc_status:12} {','.join(u.roles) or '-':20} {contact:28} {u.display_name}"
        )
    click.echo(f"{len(page.items)} user(s)")
    if page.next_cursor:
        click.echo(f"next page: --cursor {page.next_cursor}")


@users_group.command("roles")
@click.pass_context
@fail_cleanly
def users_roles(ctx: click.Context) -> None:
    """Every role and its permissions (the seeded grid, as stored)."""
    from simveb.actors.users.messages import ListRoles

    settings = settings_of(ctx)
    for role in run(with_runtime(settings, lambda rt: rt.bus.ask(ListRoles()))):
        click.echo(f"{role.code:11} {', '.join(role.permissions) or '-'}")


# --- vehicles commands (issue 5) ---------------------------------------------------------------------
