"""`simveb users create | list | roles` as an admin runs them: real processes on the test database."""

from __future__ import annotations

from simveb.actors.users.messages import ResolveLogin
from tests.support import simveb


async def test_create_first_admin_list_and_roles(settings, runtime) -> None:
    made = simveb(
        settings,
        "users", "create", "--role", "admin", "--email", "Root@Simveb.test", "--last-name", "Admin",
        "--password-stdin",
        stdin="correct horse battery staple 42\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("created staff ") and "(admin) root@simveb.test" in made.stdout
    admin = await runtime.bus.ask(ResolveLogin(identifier="root@simveb.test"))
    assert admin.status == "active" and "users:roles" in admin.permissions

    weak = simveb(
        settings,
        "users",
        "create",
        "--role",
        "agent",
        "--email",
        "weak@simveb.test",
        "--password-stdin",
        stdin="short\n",
    )
    if "password NOT set" not in weak.stderr:  # auth runs in the CLI's process: the policy refuses it first
        assert weak.returncode != 0 and weak.stderr.startswith("simveb: error:")
        assert "weak@simveb.test" not in simveb(settings, "users", "list").stdout  # refused before creation
    bad = simveb(settings, "users", "create", "--role", "emperor", "--email", "e@simveb.test")
    assert bad.returncode != 0 and "unknown role" in bad.stderr

    listed = simveb(settings, "users", "list", "--role", "admin")
    assert listed.returncode == 0, listed.stderr
    assert "root@simveb.test" in listed.stdout and listed.stdout.rstrip().endswith("\n1 user(s)")
    assert "next page" not in listed.stdout

    roles = simveb(settings, "users", "roles")
    assert roles.returncode == 0, roles.stderr
    lines = {line.split()[0]: line for line in roles.stdout.splitlines()}
    assert set(lines) == {"admin", "affiliate", "agent", "citizen", "company", "police", "supervisor", "validator"}
    assert "registrations:submit" in lines["citizen"] and "users:read" not in lines["citizen"]
