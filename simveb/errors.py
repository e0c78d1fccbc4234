"""Expected failures: DomainError and its family, each carrying its HTTP status and a stable code.

Actors raise these; the bus carries them back to the asker unchanged; the HTTP layer turns them into
RFC 9457 problem+json. Anything that is not a DomainError is a bug and is supervised as a crash.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """An expected failure with an HTTP status, a machine code and a human detail."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code
        self.extra = extra
        self.headers: dict[str, str] = {}

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body for this error."""
        body: dict[str, Any] = {
            "type": f"https://simveb.bj/problems/{self.code.replace('_', '-')}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class Invalid(DomainError):
    status = 422
    code = "invalid"
    title = "Invalid input"


class BadRequest(DomainError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class InvalidCursor(BadRequest):
    """A list's `cursor` that this list did not give (garbled, edited, or another list's)."""

    code = "invalid_cursor"

    def __init__(self, detail: str = "cursor: not a cursor this list gave; start again without one") -> None:
        super().__init__(detail, errors=[{"field": "cursor", "message": "a next_cursor this list returned"}])


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(DomainError):
    status = 409
    code = "conflict"
    title = "Conflict"


class PreconditionFailed(DomainError):
    status = 412
    code = "precondition_failed"
    title = "Precondition failed"


class PayloadTooLarge(DomainError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class TooManyRequests(DomainError):
    status = 429
    code = "too_many_requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(retry_after)


class Unavailable(DomainError):
    """A dependency is down or too slow (open breaker, ask timeout, stopped actor)."""

    status = 503
    code = "unavailable"
    title = "Service unavailable"


class InternalError(DomainError):
    """What an asker receives when the handler crashed: the details stay in the server log."""

    status = 500
    code = "internal_error"
    title = "Internal error"
