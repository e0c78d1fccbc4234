"""The registrations (immatriculation) service's contract: requests, workflow, plates, and its events."""

from __future__ import annotations

from datetime import date, datetime
from uuid import UUID

from simveb.messages import Event


class RegistrationSubmitted(Event):
    request_id: UUID
    number: str
    procedure: str
    applicant_id: UUID
    vehicle_id: UUID | None


class RegistrationStatusChanged(Event):
    """A request moved; `visible_to_applicant` says whether the applicant is told (notifications)."""

    request_id: UUID
    number: str
    procedure: str
    applicant_id: UUID
    from_status: str
    to_status: str
    by: str
    visible_to_applicant: bool
    note: str = ""


class PlateAssigned(Event):
    """A plate number was allocated to a vehicle by a registration (vehicles records it)."""

    request_id: UUID
    vehicle_id: UUID
    plate: str


class RegistrationValidated(Event):
    """A request was validated: the vehicle has its plate and holders; a carte grise is due.

    Documents issues the certificate from it; `replaces_previous` means the vehicle's current
    certificate is replaced (transfer, duplicate, renewal).
    """

    request_id: UUID
    number: str
    procedure: str
    vehicle_id: UUID
    applicant_id: UUID
    holder_ids: tuple[UUID, ...]
    plate: str
    first_registration_date: date | None = None
    duplicate: bool = False
    replaces_previous: bool = False
    validated_at: datetime
