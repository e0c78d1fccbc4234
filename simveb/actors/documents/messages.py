"""The documents service's contract: uploads, validations, issued certificates, and what others ask."""

from __future__ import annotations

from uuid import UUID

from simveb.messages import Ask, Record


class RequiredDocuments(Record):
    """Whether a registration request's required documents are all present and validated."""

    complete: bool
    missing: tuple[str, ...] = ()  # required types with no live upload
    pending: tuple[str, ...] = ()  # uploaded, not validated yet
    rejected: tuple[str, ...] = ()  # the last upload of that type was rejected


class CheckRequiredDocuments(Ask[RequiredDocuments]):
    """Asked by registrations before a request leaves its first status, and before verification."""

    request_id: UUID
    required: tuple[str, ...]  # document type codes from the procedure
