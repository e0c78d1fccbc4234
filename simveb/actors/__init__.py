"""The actors this process runs and the declared ask graph between them.

ASK_GRAPH says which actor may `ask` which (checked at start-up, cycles refused: two actors asking
each other would deadlock on their mailboxes). Everything not in the graph goes by event.
"""

from __future__ import annotations

from simveb.actors.auth.actor import AuthActor
from simveb.actors.config.actor import ConfigActor
from simveb.actors.documents.actor import DocumentsActor
from simveb.actors.integrations.actor import IntegrationsActor
from simveb.actors.notifications.actor import NotificationsActor
from simveb.actors.payments.actor import PaymentsActor
from simveb.actors.registrations.actor import RegistrationsActor
from simveb.actors.users.actor import UsersActor
from simveb.actors.vehicles.actor import VehiclesActor
from simveb.bus import Actor

ACTORS: list[type[Actor]] = [
    ConfigActor,
    IntegrationsActor,
    NotificationsActor,
    UsersActor,
    AuthActor,
    VehiclesActor,
    RegistrationsActor,
    DocumentsActor,
    PaymentsActor,
]

ASK_GRAPH: dict[str, set[str]] = {
    "config": set(),
    "integrations": set(),
    "notifications": set(),
    "users": {"integrations"},
    "auth": {"users", "notifications", "config"},
    "vehicles": set(),
    "registrations": {"config", "vehicles", "users", "documents"},
    "documents": {"vehicles", "users", "payments"},
    "payments": {"config"},
}
