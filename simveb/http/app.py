"""The HTTP shell: `create_app(settings)` builds the Litestar application around a Runtime.

It owns what every route shares: problem+json errors (RFC 9457), request ids, JSON logs, CORS, the
body size limit, rate limits, health and readiness, Prometheus metrics and the OpenAPI schema.
Domain controllers live in `simveb/http/<domain>.py` and only translate HTTP to bus messages.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from litestar import Controller, Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme, Tag
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

import simveb
from simveb import migrate
from simveb.bus import Bus
from simveb.config import Settings, check_providers_reachable
from simveb.errors import DomainError
from simveb.http import audit as audit_http
from simveb.http import auth as auth_http
from simveb.http import config as config_http
from simveb.http import contract
from simveb.http import documents as documents_http
from simveb.http import integrations as integrations_http
from simveb.http import notifications as notifications_http
from simveb.http import payments as payments_http
from simveb.http import registrations as registrations_http
from simveb.http import users as users_http
from simveb.http import vehicles as vehicles_http
from simveb.http.inputs import field_errors, malformed_body
from simveb.http.logs import configure_logging, flush_logs, request_id_var
from simveb.http.security import Token, attach_verifier, caller, load_deny_list, maybe_caller, token
from simveb.http.shell import HttpMetrics, Shell
from simveb.messages import Caller
from simveb.metrics import COLLECTORS as PROCESS_COLLECTORS
from simveb.runtime import Runtime

log = logging.getLogger("simveb.http")

PROBLEM = contract.PROBLEM
_TITLES = contract.TITLES

# The groups of operations in the OpenAPI document, one per service.
TAGS = [
    Tag(name="auth", description="Sign-in (password, one-time code, TOTP), tokens, sessions, password reset, JWKS."),
    Tag(name="users", description="Accounts, person and company profiles, roles, KYC and NPI verification."),
    Tag(
        name="vehicles",
        description="The vehicle catalogue, vehicles and their carte grise fields, owners, standing, search, import and export.",
    ),
    Tag(name="registrations", description="Immatriculation requests: filing, workflow steps, validation, plates."),
    Tag(
        name="documents",
        description="Uploaded papers, issued certificates and receipts, public certificate verification.",
    ),
    Tag(
        name="payments",
        description="Payables, mobile-money and counter payments, refunds, invoices, provider webhooks.",
    ),
    Tag(name="config", description="Settings, the procedure catalogue, the fee grid and feature flags."),
    Tag(name="notifications", description="Templates, subscriptions, devices and in-app messages."),
    Tag(name="integrations", description="ANIP and DGI registry lookups over X-Road, and their status."),
    Tag(name="audit", description="The tamper-evident audit trail of every service, for admins (audit:read)."),
    Tag(name="health", description="Liveness and readiness probes."),
]


# --- problem+json -----------------------------------------------------------------------------------


def problem(
    request: Request[Any, Any, Any], status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response[Any]:
    body.setdefault("instance", request.url.path)
    rid = request_id_var.get() or request.headers.get("x-request-id") or uuid.uuid4().hex
    return Response(
        content=body,
        status_code=status,
        media_type=PROBLEM,
        headers={**(headers or {}), "X-Request-ID": rid},
    )


def _domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    if exc.status >= 500:
        log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc.detail)
    return problem(request, exc.status, exc.problem(), exc.headers)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    code = _TITLES.get(status, "error").lower().replace(" ", "_")
    detail = exc.detail or _TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": f"https://simveb.bj/problems/{code.replace('_', '-')}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    errors = None
    if isinstance(exc, ValidationException):
        params = _parameters(request)
        raw = exc.extra if isinstance(exc.extra, list) else [exc.extra]
        errors = field_errors(raw, body=params.get("data"), params=params)
    elif status == 400 and isinstance(exc.__cause__, SerializationException):
        # The body is not JSON at all (Litestar wraps msgspec's decode error in a 400).
        errors = malformed_body(str(exc.detail).removeprefix("JSON is malformed: "))
    if errors is not None:
        # Every refused field, named, with what was expected; 400 for every malformed request
        # (422 is kept for well-formed input a domain rule refuses).
        body["code"] = "validation_error"
        body["type"] = "https://simveb.bj/problems/validation-error"
        body["errors"] = errors
        body["detail"] = "; ".join(f"{e.get('field') or e.get('source', 'request')}: {e['message']}" for e in errors)
    elif status == 413:
        body["code"] = "payload_too_large"
    headers = dict(exc.headers or {})
    if status == 429:
        # The rate limiter sends RateLimit-* headers; clients and proxies also understand Retry-After.
        reset = headers.get("RateLimit-Reset") or headers.get("ratelimit-reset") or "60"
        headers.setdefault("Retry-After", str(max(1, int(reset))))
        body["code"] = "rate_limited"
    return problem(request, status, body, headers)


def _parameters(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The route's parameters (and body, as "data") by name with their annotations, to say what was expected."""
    try:
        signature = request.route_handler.parsed_fn_signature
    except Exception:  # no route matched (404/405): nothing to describe
        return {}
    return {name: f.annotation for name, f in signature.parameters.items()}


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {
        "type": "https://simveb.bj/problems/internal-error",
        "title": "Internal error",
        "status": 500,
        "detail": "an unexpected error occurred; it was logged with this request's id",
        "code": "internal_error",
    }
    return problem(request, 500, body)


class BusCollector:
    """Per-actor bus metrics, read from the bus at scrape time (nothing is added to the hot path)."""

    def __init__(self, app: Litestar) -> None:
        self.app = app

    def collect(self) -> Any:
        runtime: Runtime | None = getattr(self.app.state, "runtime", None)
        if runtime is None or runtime.bus is None:
            return
        bus = runtime.bus
        depth = GaugeMetricFamily("simveb_bus_mailbox_depth", "Messages waiting in the mailbox", labels=["actor"])
        up = GaugeMetricFamily("simveb_bus_actor_up", "1 when the actor is up", labels=["actor"])
        processed = CounterMetricFamily("simveb_bus_messages", "Messages handled", labels=["actor"])
        failures = CounterMetricFamily("simveb_bus_failures", "Handler crashes", labels=["actor"])
        restarts = CounterMetricFamily("simveb_bus_restarts", "Actor restarts", labels=["actor"])
        asks = CounterMetricFamily("simveb_bus_asks", "Asks answered or timed out", labels=["actor"])
        ask_sum = CounterMetricFamily("simveb_bus_ask_seconds", "Total ask latency", labels=["actor"])
        quant = GaugeMetricFamily(
            "simveb_bus_ask_latency_seconds", "Ask latency over recent asks", labels=["actor", "quantile"]
        )
        for name, s in bus.stats().items():
            depth.add_metric([name], s["mailbox_depth"])
            up.add_metric([name], 1.0 if s["state"] == "up" else 0.0)
            processed.add_metric([name], s["processed"])
            failures.add_metric([name], s["failures"])
            restarts.add_metric([name], s["restarts"])
            asks.add_metric([name], s["asks"])
            ask_sum.add_metric([name], s["ask_seconds_sum"])
            quant.add_metric([name, "0.5"], s["ask_p50_s"])
            quant.add_metric([name, "0.99"], s["ask_p99_s"])
        dead = CounterMetricFamily("simveb_bus_dead_letters", "Messages and events nobody could handle")
        dead.add_metric([], bus.dead_letters)
        yield from (depth, up, processed, failures, restarts, asks, ask_sum, quant, dead)
        hosted = GaugeMetricFamily("simveb_actor_hosted", "1 when this process hosts the actor", labels=["actor"])
        for name in bus.cells:
            hosted.add_metric([name], 1.0)
        for name in bus.remote_cells:
            hosted.add_metric([name], 0.0)
        yield hosted
        transport = runtime.transport
        if transport is not None:
            from simveb.remote import LATENCY_BUCKETS

            remote = HistogramMetricFamily(
                "simveb_remote_ask_seconds", "Latency of asks to actors hosted in another process", labels=["actor"]
            )
            for name, counts in transport.latency.buckets.items():
                buckets = [(str(bound), float(n)) for bound, n in zip(LATENCY_BUCKETS, counts, strict=True)]
                buckets.append(("+Inf", float(transport.latency.counts[name])))
                remote.add_metric([name], buckets, transport.latency.sums[name])
            yield remote
            served = CounterMetricFamily("simveb_remote_served", "Requests from other processes answered here")
            served.add_metric([], transport.served)
            reclaimed = CounterMetricFamily(
                "simveb_remote_reclaimed", "Requests taken over from a silent consumer (XAUTOCLAIM)"
            )
            reclaimed.add_metric([], transport.reclaimed)
            late = CounterMetricFamily("simveb_remote_late_replies", "Remote answers that came after the timeout")
            late.add_metric([], transport.late_replies)
            yield from (served, reclaimed, late)
        if runtime.relay is not None:
            delivered = CounterMetricFamily("simveb_outbox_delivered", "Outbox events delivered")
            delivered.add_metric([], runtime.relay.delivered)
            yield delivered


# --- health and metrics routes ----------------------------------------------------------------------


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live", opt={"public": True}, media_type=MediaType.JSON)
    async def live(self) -> dict[str, str]:
        """The process is running."""
        return {"status": "ok", "version": simveb.__version__}

    @get("/ready", opt={"public": True}, media_type=MediaType.JSON)
    async def ready(self, state: State) -> Response[dict[str, Any]]:
        """Database reachable, every hosted actor up, no pending migration, the transport (if any) reachable;
        also which actors this process hosts and which it reaches in other processes."""
        runtime: Runtime = state.runtime
        checks: dict[str, Any] = {}
        db_ok = runtime.db is not None and await runtime.db.ping()
        checks["database"] = "ok" if db_ok else "unreachable"
        down = runtime.bus.down() if runtime.bus is not None else ["bus"]
        checks["actors"] = "ok" if not down else {"down": down}
        # Where actors live (placement): this process's own, and those it reaches over Redis.
        placement: dict[str, Any] = {}
        if runtime.bus is not None:
            placement["hosted"] = sorted(runtime.bus.cells)
            placement["remote"] = sorted(runtime.bus.remote_cells)
        transport_ok = True
        if runtime.transport is not None:
            # Without Redis this process reaches none of the actors hosted elsewhere.
            transport_ok = await runtime.transport.ping()
            checks["transport"] = "ok" if transport_ok else "unreachable"
            latency = runtime.transport.latency
            placement["remote_ask_p50_s"] = {name: latency.quantile(name, 0.5) for name in latency.counts}
        pending = None
        if db_ok:
            # Through the runtime's connection (acquire timeout, a lost database is an error, not a
            # hang): readiness must answer even when the pool is exhausted.
            try:
                async with runtime.db.connection() as con:  # type: ignore[union-attr]
                    pending = await migrate.pending_count(con)
            except DomainError as exc:
                db_ok = False
                checks["database"] = exc.code
        checks["migrations"] = "ok" if pending == 0 else {"pending": pending}
        ready = db_ok and not down and pending == 0 and transport_ok
        return Response(
            {"status": "ready" if ready else "not_ready", "checks": checks, "placement": placement},
            status_code=200 if ready else 503,
        )


@get("/metrics", opt={"public": True}, media_type="text/plain; version=0.0.4", include_in_schema=False)
async def metrics(state: State) -> bytes:
    """Prometheus metrics: HTTP requests and per-actor bus figures."""
    return generate_latest(state.metrics_registry)


# --- assembly ---------------------------------------------------------------------------------------


def _bus(state: State) -> Bus:
    return state.runtime.bus


# Litestar resolves the dependencies of one level of its dependency graph concurrently, in an anyio
# task group, when there are two or more: `bus` and `caller` side by side cost a task group per
# request (about a tenth of the authenticated read path under py-spy) for two dictionary lookups.
# Declaring `bus` as a dependency of the caller providers puts them on two levels, resolved in turn.
def _caller(request: Request[Any, Any, Any], bus: Bus) -> Caller:
    return caller(request)


def _maybe_caller(request: Request[Any, Any, Any], bus: Bus) -> Caller | None:
    return maybe_caller(request)


def _token(request: Request[Any, Any, Any], bus: Bus) -> Token:
    return token(request)


def _controllers(settings: Settings) -> Sequence[Any]:
    handlers = [
        HealthController,
        metrics,
        *config_http.CONTROLLERS,
        *integrations_http.CONTROLLERS,
        *notifications_http.CONTROLLERS,
        *auth_http.CONTROLLERS,
        *users_http.CONTROLLERS,
        *vehicles_http.CONTROLLERS,
        *registrations_http.CONTROLLERS,
        *documents_http.CONTROLLERS,
        *payments_http.CONTROLLERS,
        *audit_http.CONTROLLERS,
    ]
    if settings.server.sandbox:
        from simveb.sandbox import sandbox_router

        handlers.append(sandbox_router())
    return handlers


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> Litestar:
    """The application. With `runtime` given (tests, benchmarks) the caller owns its life cycle.

    Provider URLs written as a path (`/sandbox/sms`) were resolved against server.host and
    server.port when the settings were made; one that points at this server's /sandbox while the
    simulators are not mounted is refused here (ConfigError), not discovered at the first SMS.
    """
    check_providers_reachable(settings)
    configure_logging(settings.server.log_level)
    registry = CollectorRegistry()
    owns_runtime = runtime is None

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if not owns_runtime:
            await load_deny_list(app.state.verifier)
            yield
            return
        rt = Runtime(settings)
        await rt.start()
        try:
            attach_runtime(app, rt)
            await load_deny_list(app.state.verifier)
            yield
        finally:
            await rt.stop()
            flush_logs()

    http_metrics = HttpMetrics()
    shell = Shell(settings, http_metrics)

    app = Litestar(
        route_handlers=list(_controllers(settings)),
        lifespan=[lifespan],
        dependencies={
            "bus": Provide(_bus, sync_to_thread=False),
            "caller": Provide(_caller, sync_to_thread=False),
            "maybe_caller": Provide(_maybe_caller, sync_to_thread=False),
            "access_token": Provide(_token, sync_to_thread=False),
        },
        # Request id, CORS, rate limit, bearer token (required unless a route is public), metrics
        # and the access log: one pure ASGI middleware (simveb/http/shell.py).
        middleware=[shell.middleware],
        request_max_body_size=settings.server.max_body_bytes,
        exception_handlers={
            DomainError: _domain_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="SIMVEB API",
            version=simveb.__version__,
            description="Vehicle registration system of Benin. Errors are RFC 9457 problem+json.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(
                security_schemes={
                    contract.BEARER: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT (EdDSA)",
                        description="An access token from POST /api/auth/login (or verify-otp, refresh).",
                    )
                }
            ),
            # No document-wide requirement: each operation declares its own (none on public routes).
            tags=TAGS,
            use_handler_docstrings=True,
        ),
        state=State({"settings": settings, "metrics_registry": registry, "shell": shell}),
        debug=False,
    )
    contract.adopt(app)
    registry.register(http_metrics)  # type: ignore[arg-type]
    registry.register(BusCollector(app))  # type: ignore[arg-type]
    for collector in PROCESS_COLLECTORS:
        registry.register(collector)
    if runtime is not None:
        attach_runtime(app, runtime)
    return app


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The OpenAPI document (JSON-ready), exactly as /schema/openapi.json serves it."""
    return contract.openapi_document(app)


def attach_runtime(app: Litestar, runtime: Runtime) -> None:
    """Make a started runtime (bus, database, key ring) available to the routes."""
    app.state.runtime = runtime
    app.state.shell.verifier = attach_verifier(app, runtime)


def app_from_env() -> Litestar:
    """Factory for the ASGI server (granian `--factory`): settings from SIMVEB_CONFIG and the environment."""
    from simveb.config import load_settings

    return create_app(load_settings())
