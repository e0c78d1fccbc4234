"""The X-Road REST client of the integrations actor: one `Registry` per external service (ANIP, DGI).

A lookup is `GET {xroad_url}/r1/{INSTANCE}/{CLASS}/{MEMBER}/{SUBSYSTEM}/{SERVICE}[/{path}]?{param}=id`
with `X-Road-Client`, a fresh `X-Road-Id` per attempt and, when known, `X-Road-UserId`. Every code
comes from the settings. Each attempt is classified (ok, not found, timeout, 5xx, malformed body,
X-Road error...), reported to a callback that logs it, and counted by the registry's breaker.
Lookups are idempotent, so transient failures are retried with full-jitter exponential backoff,
bounded by a retry count and by a time budget shorter than the bus ask timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from simveb.actors.integrations.breaker import CircuitBreaker
from simveb.actors.integrations.messages import ServiceName
from simveb.actors.integrations.store import CallLog
from simveb.config import IntegrationsSettings
from simveb.errors import Unavailable

log = logging.getLogger("simveb.integrations")

LABELS = {"anip": "ANIP", "dgi": "DGI"}
# The registries' record keys (French) without which an answer is useless.
REQUIRED = {"anip": ("nom", "prenoms"), "dgi": ("raison_sociale",)}
ID_KEYS = {"anip": "npi", "dgi": "ifu"}

# Outcome -> the Unavailable code the caller sees when the lookup finally fails with it.
FAILURE_CODES = {
    "timeout": "registry_timeout",
    "connect_error": "registry_unreachable",
    "server_error": "registry_error",
    "rejected": "registry_rejected",
    "malformed": "registry_bad_response",
    "xroad_error": "xroad_error",
}


class Attempt(msgspec.Struct, kw_only=True):
    """The classified result of one HTTP call."""

    outcome: str  # ok | not_found | one of FAILURE_CODES
    http_status: int | None = None
    error_code: str | None = None
    retryable: bool = False
    body: dict[str, Any] | None = None
    duration_ms: int = 0
    x_road_id: uuid.UUID | None = None

    @property
    def answered(self) -> bool:
        """The registry gave an answer (found or not): a success for the breaker."""
        return self.outcome in ("ok", "not_found")


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where one registry's service lives on X-Road and how the identifier is passed."""

    service: ServiceName
    url: str
    query_param: str
    id_key: str  # the record key that repeats the identifier
    required: tuple[str, ...]  # keys a usable answer must carry (non-empty)


def client_header(s: IntegrationsSettings) -> str:
    """`X-Road-Client: INSTANCE/CLASS/MEMBER/SUBSYSTEM`, each part percent-encoded."""
    parts = (s.xroad_instance, s.client_member_class, s.client_member_code, s.client_subsystem)
    return "/".join(quote(p, safe="") for p in parts)


def target(s: IntegrationsSettings, service: ServiceName) -> Target:
    """The REST URL of a registry's lookup service, built from the settings."""
    prefix = service  # "anip" or "dgi": the settings keys are named after the service
    parts = [
        s.xroad_instance,
        getattr(s, f"{prefix}_member_class"),
        getattr(s, f"{prefix}_member_code"),
        getattr(s, f"{prefix}_subsystem"),
        getattr(s, f"{prefix}_service"),
    ]
    path = "/".join(quote(p, safe="") for p in parts)
    extra = getattr(s, f"{prefix}_path").strip("/")
    if extra:
        path += "/" + "/".join(quote(p, safe="") for p in extra.split("/"))
    return Target(
        service=service,
        url=f"{s.xroad_url.rstrip('/')}/r1/{path}",
        query_param=getattr(s, f"{prefix}_query_param"),
        id_key=ID_KEYS[service],
        required=REQUIRED[service],
    )


def new_http_client(s: IntegrationsSettings) -> httpx.AsyncClient:
    # httpx logs every request URL at INFO, and our URLs carry the NPI/IFU in the query string:
    # keep that logger quiet below WARNING so no identifier reaches a log through it.
    quiet = logging.getLogger("httpx")
    if quiet.level < logging.WARNING:  # NOTSET (0) included: do not inherit a chatty root
        quiet.setLevel(logging.WARNING)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=s.connect_timeout_s, read=s.read_timeout_s, write=s.read_timeout_s, pool=1.0),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        headers={"Accept": "application/json"},
        follow_redirects=False,
    )


Recorder = Callable[[CallLog], Awaitable[None]]
TransitionHook = Callable[[str, str, str], Awaitable[None]]


class Registry:
    """One external service: its X-Road target, its breaker, and the lookup with retries."""

    def __init__(
        self,
        service: ServiceName,
        settings: IntegrationsSettings,
        http: httpx.AsyncClient,
        *,
        record: Recorder,
        on_transition: TransitionHook,
        hash_identifier: Callable[[str], str],
    ) -> None:
        self.service = service
        self.label = LABELS[service]
        self.settings = settings
        self.http = http
        self.target = target(settings, service)
        self.client_id = client_header(settings)
        self.breaker = CircuitBreaker(
            service,
            failures=settings.breaker_failures,
            window_s=settings.breaker_window_s,
            cooldown_s=settings.breaker_cooldown_s,
        )
        self._record = record
        self._on_transition = on_transition
        self._hash = hash_identifier

    async def lookup(
        self, identifier: str, *, requested_by: str | None = None, retries: int | None = None, origin: str = "ask"
    ) -> dict[str, Any] | None:
        """The registry's record for identifier, None when it does not know it; Unavailable otherwise."""
        s = self.settings
        retries = s.retries if retries is None else retries
        deadline = time.monotonic() + s.lookup_budget_s
        id_hash = self._hash(identifier)
        attempt = 0
        while True:
            attempt += 1
            before = self.breaker.state
            allowed = self.breaker.allow()
            await self._transitioned(before)
            if not allowed:
                wait = max(1, math.ceil(self.breaker.retry_after()))
                exc = Unavailable(
                    f"{self.label} is unavailable: its circuit breaker is open",
                    code="breaker_open",
                    service=self.service,
                )
                exc.headers["Retry-After"] = str(wait)
                raise exc
            remaining = deadline - time.monotonic()
            try:
                result = await self._attempt(identifier, requested_by, remaining)
            except BaseException:
                self.breaker.released()  # cancelled mid-call: no verdict on the registry
                raise
            before = self.breaker.state
            if result.answered:
                self.breaker.succeeded()
            else:
                self.breaker.failed()
            await self._transitioned(before)
            await self._record(
                CallLog(
                    service=self.service,
                    x_road_id=result.x_road_id or uuid.uuid4(),
                    identifier_hash=id_hash,
                    attempt=attempt,
                    origin=origin,
                    duration_ms=result.duration_ms,
                    outcome=result.outcome,
                    http_status=result.http_status,
                    error_code=result.error_code,
                )
            )
            if result.outcome == "ok":
                return result.body
            if result.outcome == "not_found":
                return None
            log.warning(
                "%s lookup attempt %d failed: %s (status %s, %s)",
                self.label,
                attempt,
                result.outcome,
                result.http_status,
                result.error_code or "-",
            )
            delay = random.uniform(0, min(s.retry_max_delay_s, s.retry_base_delay_s * 2 ** (attempt - 1)))
            out_of_time = time.monotonic() + delay + min(s.connect_timeout_s, 0.05) >= deadline
            if not result.retryable or attempt > retries or out_of_time or self.breaker.state != "closed":
                raise Unavailable(
                    f"{self.label} lookup failed: {result.outcome.replace('_', ' ')}"
                    + (f" ({result.error_code})" if result.error_code else ""),
                    code=FAILURE_CODES[result.outcome],
                    service=self.service,
                )
            await asyncio.sleep(delay)

    async def _transitioned(self, before: str) -> None:
        if self.breaker.state != before:
            log.warning("%s circuit breaker: %s -> %s", self.label, before, self.breaker.state)
            await self._on_transition(self.service, before, self.breaker.state)

    async def _attempt(self, identifier: str, requested_by: str | None, remaining: float) -> Attempt:
        s = self.settings
        x_road_id = uuid.uuid4()
        headers = {"X-Road-Client": self.client_id, "X-Road-Id": str(x_road_id)}
        if requested_by:
            headers["X-Road-UserId"] = requested_by
        # Never wait past the lookup's budget, whatever the per-phase timeouts say.
        budget = max(remaining, 0.01)
        timeout = httpx.Timeout(
            connect=min(s.connect_timeout_s, budget),
            read=min(s.read_timeout_s, budget),
            write=min(s.read_timeout_s, budget),
            pool=min(1.0, budget),
        )
        started = time.perf_counter()
        try:
            response = await self.http.get(
                self.target.url, params={self.target.query_param: identifier}, headers=headers, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            result = Attempt(outcome="timeout", error_code=type(exc).__name__, retryable=True)
        except httpx.TransportError as exc:
            result = Attempt(outcome="connect_error", error_code=type(exc).__name__, retryable=True)
        except httpx.DecodingError:  # a body that claims an encoding (gzip...) it does not have
            result = Attempt(outcome="malformed", error_code="undecodable_body")
        else:
            result = classify(response, self.target, identifier)
        result.duration_ms = round((time.perf_counter() - started) * 1000)
        result.x_road_id = x_road_id
        return result


def classify(response: httpx.Response, target: Target, identifier: str) -> Attempt:
    """Turn one HTTP response into an outcome; the body is parsed only for a 200 without X-Road error."""
    status = response.status_code
    xroad_error = response.headers.get("X-Road-Error")
    if xroad_error:
        # Errors raised by X-Road itself: "Server.*" ones (a provider or proxy failing) may pass,
        # "Client.*" ones (our request or identity refused) will not.
        return Attempt(
            outcome="xroad_error",
            http_status=status,
            error_code=xroad_error[:120],
            retryable=xroad_error.startswith("Server."),
        )
    if status == 404:
        return Attempt(outcome="not_found", http_status=status)
    if status == 429 or status >= 500:
        return Attempt(outcome="server_error" if status >= 500 else "rejected", http_status=status, retryable=True)
    if status != 200:
        return Attempt(outcome="rejected", http_status=status, error_code=f"http_{status}")
    content = response.content.strip()
    if not content:
        return Attempt(outcome="not_found", http_status=status)
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return Attempt(outcome="malformed", http_status=status, error_code="invalid_json")
    if body is None or body == {} or body == []:
        return Attempt(outcome="not_found", http_status=status)  # some registries answer "nothing" so
    if not isinstance(body, dict):
        return Attempt(outcome="malformed", http_status=status, error_code="not_an_object")
    if str(body.get(target.id_key, "")) != identifier:
        # An answer about someone else is worse than no answer.
        return Attempt(outcome="malformed", http_status=status, error_code="identifier_mismatch")
    if not all(isinstance(body.get(k), str) and body[k].strip() for k in target.required):
        return Attempt(outcome="malformed", http_status=status, error_code="missing_field")
    return Attempt(outcome="ok", http_status=status, body=body)
