"""The `simveb` command line: `main` and one module of commands per domain (see `simveb.cli.app`)."""

from simveb.cli import (
    audit,
    auth,
    config,
    events,
    integrations,
    notifications,
    payments,
    registrations,
    server,
    users,
    vehicles,
)
from simveb.cli.app import main

__all__ = [
    "audit",
    "auth",
    "config",
    "events",
    "integrations",
    "main",
    "notifications",
    "payments",
    "registrations",
    "server",
    "users",
    "vehicles",
]
