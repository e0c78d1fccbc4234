"""What every HTTP request goes through before its route: one pure ASGI middleware.

In order: the request id (X-Request-ID in and out), CORS (preflights answered here, the allowed
origin echoed on responses), the per-client rate limit, the bearer token (the Caller in
`scope["user"]`, the Token in `scope["auth"]`; a route needs one unless it is declared public),
then the route; afterwards the HTTP metrics and one access log line.

It is one function call per request on purpose. The first version layered four middlewares (a
request context one, Litestar's CORS, authentication and rate limit middlewares, the last keeping
every client's request timestamps in a store and decoding and re-encoding them at each request)
and cost more than the database read behind a route; see "Where a request's time goes"
in the README. Metrics are plain counters updated on the event loop and read by the Prometheus
collector at scrape time; the access line is handed to the log writer thread (simveb/http/logs.py).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from simveb.errors import DomainError, TooManyRequests, Unauthorized
from simveb.http.forwarded import ClientAddresses
from simveb.http.logs import AccessEntry, access_writer, quick_record, request_id_var
from simveb.metrics import RATELIMIT_LOCAL_FALLBACK

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from simveb.config import Settings
    from simveb.http.security import TokenVerifier

log = logging.getLogger("simveb.http")
access_log = logging.getLogger("simveb.access")

# Paths with no token check and no rate limit: probes, scrapes, the API description and the
# provider simulators (which check their own fake credentials).
OPEN_PREFIXES = ("/health", "/metrics", "/schema", "/sandbox")

_encoder = msgspec.json.Encoder()
_getrandbits = random.getrandbits
_perf_counter = time.perf_counter


# --- metrics ------------------------------------------------------------------------------------------


class HttpMetrics:
    """Requests by (method, route, status) and a latency histogram by (method, route).

    Updated from the event loop only (no lock: one thread); exported by `collect` at scrape time
    under the names prometheus_client's Counter and Histogram would give them.
    """

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # per (method, route): one count per bucket, one for +Inf, then the sum of durations
        self.durations: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.durations.get((method, route))
        if hist is None:
            hist = self.durations[(method, route)] = [0] * (len(self.BUCKETS) + 2)
        hist[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        hist[-1] += seconds

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("simveb_http_requests", "HTTP requests", labels=["method", "route", "status"])
        for (method, route, status), count in list(self.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        duration = HistogramMetricFamily(
            "simveb_http_request_duration_seconds", "HTTP request duration", labels=["method", "route"]
        )
        for (method, route), hist in list(self.durations.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.BUCKETS, math.inf), hist, strict=False):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            duration.add_metric([method, route], buckets, sum_value=hist[-1])
        yield requests
        yield duration


# --- rate limit ---------------------------------------------------------------------------------------


class RateLimiter:
    """Requests per minute per client, as a sliding window estimated from two fixed windows.

    The estimate is the previous minute's count weighted by how much of it the sliding window still
    covers, plus the current minute's count: O(1) memory and time per client, no burst of twice the
    limit at a minute boundary. In memory by default (one count per worker process); `RedisRateLimiter`
    shares the counts between processes.
    """

    def __init__(self, per_minute: int) -> None:
        self.limit = per_minute
        self.counts: dict[str, list[int]] = {}  # client -> [window, count in it, count in the previous]
        self._window = 0

    async def hit(self, client: str, now: float) -> tuple[bool, int, int]:
        """(allowed, remaining, seconds until the current window ends) for one request of `client`."""
        window, into = divmod(now, 60.0)
        window_id = int(window)
        if window_id != self._window:
            self._sweep(window_id)
        entry = self.counts.get(client)
        if entry is None:
            entry = self.counts[client] = [window_id, 0, 0]
        elif entry[0] != window_id:
            entry[2] = entry[1] if entry[0] == window_id - 1 else 0
            entry[0], entry[1] = window_id, 0
        estimate = entry[2] * (1.0 - into / 60.0) + entry[1]
        reset = max(1, math.ceil(60.0 - into))
        if estimate >= self.limit:
            return False, 0, reset
        entry[1] += 1
        return True, max(0, int(self.limit - estimate - 1)), reset

    def _sweep(self, window_id: int) -> None:
        # Once a minute: forget clients silent for two windows (they count as new ones).
        self._window = window_id
        self.counts = {k: v for k, v in self.counts.items() if v[0] >= window_id - 1}


class RedisRateLimiter(RateLimiter):
    """The same estimate on counters in Redis, shared by every worker and server (one round trip).

    When Redis is slow or down, the request is limited by this process's own counts (the parent's
    estimate), counted in `simveb_ratelimit_local_fallback_total` and logged at most once a minute;
    after a failure Redis is left alone for `redis_retry_s`, so an outage costs one short timeout
    per retry period, not one per request.
    """

    def __init__(self, per_minute: int, url: str, timeout_s: float = 0.05, retry_s: float = 5.0) -> None:
        super().__init__(per_minute)
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._skip_until = 0.0
        self._warned = 0.0

    async def hit(self, client: str, now: float) -> tuple[bool, int, int]:
        window, into = divmod(now, 60.0)
        window_id = int(window)
        key = f"simveb:ratelimit:{client}:"
        reset = max(1, math.ceil(60.0 - into))
        if now < self._skip_until:
            RATELIMIT_LOCAL_FALLBACK.inc()
            return await super().hit(client, now)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.incr(key + str(window_id))
                    pipe.expire(key + str(window_id), 180)
                    pipe.get(key + str(window_id - 1))
                    current, _, previous = await pipe.execute()
        except Exception as exc:
            self._skip_until = now + self.retry_s
            RATELIMIT_LOCAL_FALLBACK.inc()
            if now - self._warned > 60:
                self._warned = now
                log.warning("rate limit store unreachable, limiting with local counts: %r", exc)
            return await super().hit(client, now)
        estimate = int(previous or 0) * (1.0 - into / 60.0) + int(current)
        if estimate > self.limit:
            return False, 0, reset
        return True, max(0, int(self.limit - estimate)), reset


# --- the middleware -----------------------------------------------------------------------------------


class Shell:
    """Settings and state of the shell middleware; `middleware` is what Litestar wraps routes with."""

    def __init__(self, settings: Settings, metrics: HttpMetrics) -> None:
        self.metrics = metrics
        self.cors = Cors(
            settings.server.cors_origins,
            allow_headers=["Authorization", "Content-Type", "If-Match", "X-Request-ID", "Idempotency-Key"],
            expose_headers=["X-Request-ID", "ETag", "Retry-After"],
        )
        self.verifier: TokenVerifier | None = None  # set when a runtime is attached
        self.limiter: RateLimiter | None = None
        if settings.ratelimit.enabled:
            per_minute = settings.ratelimit.per_minute
            rl = settings.ratelimit
            # Split or replicated processes share one budget per client: the counters go to Redis
            # when any Redis is configured (the rate-limit store, else the actors' transport).
            shared = settings.redis.url or settings.placement.redis_url
            self.limiter = (
                RedisRateLimiter(per_minute, shared, rl.redis_timeout_s, rl.redis_retry_s)
                if shared
                else RateLimiter(per_minute)
            )
        # Only when proxies are configured: no per-request cost otherwise.
        self.addresses = ClientAddresses(settings.server.trusted_proxies) if settings.server.trusted_proxies else None
        self.limit_header = str(settings.ratelimit.per_minute).encode()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        shell = self
        metrics = self.metrics
        cors = self.cors

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = _perf_counter()
            rid = authorization = origin = None
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    rid = value.decode("latin-1")[:128]
                elif name == b"authorization":
                    authorization = value
                elif name == b"origin":
                    origin = value
            if not rid:
                rid = f"{_getrandbits(128):032x}"  # an id, not a secret: no system entropy needed
            context = request_id_var.set(rid)
            extra: list[tuple[bytes, bytes]] = [(b"x-request-id", rid.encode("latin-1"))]
            if origin is not None and cors.allows(origin):
                extra += cors.simple_headers(origin)
            status = 500

            async def send_with_headers(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = message.get("headers") or []
                    headers = list(headers) if not isinstance(headers, list) else headers
                    # Only error answers (problem+json) may carry the id already.
                    if status >= 400 and any(k.lower() == b"x-request-id" for k, _ in headers):
                        headers.extend(extra[1:])
                    else:
                        headers.extend(extra)
                    message["headers"] = headers
                await send(message)

            path: str = scope["path"]
            if shell.addresses is not None and (peer := scope.get("client")):
                # Rate limits, lockouts and logs all read scope["client"]: the real client, not the proxy.
                scope["client"] = (shell.addresses.resolve(peer[0], scope["headers"]), peer[1])
            try:
                refusal = None
                if origin is not None and scope["method"] == "OPTIONS":
                    preflight = cors.preflight(origin, scope["headers"])
                    if preflight is not None:
                        del extra[1:]  # the preflight answer carries its own CORS headers
                        await _answer(send_with_headers, *preflight)
                        return
                if not path.startswith(OPEN_PREFIXES):
                    refusal = await shell.admit(scope, path, authorization, extra)
                if refusal is None:
                    await app(scope, receive, send_with_headers)
                else:
                    # Refused before the route: answered as the exception handlers would (problem+json).
                    await _problem(refusal, path, send_with_headers)
            finally:
                elapsed = _perf_counter() - started
                route = scope.get("path_template") or "unmatched"
                method = scope["method"]
                metrics.observe(method, route, status, elapsed)
                if access_log.isEnabledFor(logging.INFO):
                    ms = round(elapsed * 1000, 2)
                    writer = access_writer()
                    if writer is not None:
                        # The plain configuration: values to the writer thread, which formats the line.
                        writer.access(AccessEntry(time.time(), method, path, status, ms, route, rid))
                    else:
                        # Made directly: Logger.info would also walk the stack for a caller nobody reads.
                        line = f"{method} {path} {status}"
                        fields = {"request_id": rid, "status": status, "duration_ms": ms, "route": route}
                        access_log.handle(quick_record("simveb.access", logging.INFO, line, fields))
                request_id_var.reset(context)

        return middleware

    async def admit(
        self, scope: Scope, path: str, authorization: bytes | None, extra: list[tuple[bytes, bytes]]
    ) -> DomainError | None:
        """Rate limit, then token: the error that refuses this request, or None (scope["user"] set)."""
        try:
            limiter = self.limiter
            if limiter is not None:
                client = scope.get("client")
                allowed, remaining, reset = await limiter.hit(client[0] if client else "-", time.time())
                extra.append((b"ratelimit-limit", self.limit_header))
                extra.append((b"ratelimit-remaining", str(remaining).encode()))
                extra.append((b"ratelimit-reset", str(reset).encode()))
                if not allowed:
                    return TooManyRequests(
                        f"more than {limiter.limit} requests a minute from this address",
                        code="rate_limited",
                        retry_after=reset,
                    )
            if authorization:
                token = self.authenticate(authorization)
                scope["user"], scope["auth"] = token.caller, token
            else:
                scope["user"] = scope["auth"] = None
                if not scope["route_handler"].opt.get("public"):
                    return Unauthorized("this route needs a bearer token")
        except DomainError as exc:
            return exc
        return None

    def authenticate(self, header: bytes) -> Any:
        """The verified Token of an `Authorization: Bearer` header; anything else is a 401.

        A present but invalid token is refused even on a public route: a client that sends a forged
        or expired token must learn it, not be silently treated as anonymous.
        """
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("expected 'Authorization: Bearer <token>'", code="invalid_token")
        if self.verifier is None:
            raise Unauthorized("the server is starting", code="invalid_token")
        return self.verifier.verify(token.strip())


async def _problem(exc: DomainError, path: str, send: Callable[[Message], Any]) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await _answer(send, exc.status, b"application/problem+json", _encoder.encode(exc.problem(path)), headers)


async def _answer(
    send: Callable[[Message], Any],
    status: int,
    content_type: bytes,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    start = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(headers or ())]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --- CORS ---------------------------------------------------------------------------------------------


class Cors:
    """CORS for browser clients of the allowed origins (no credentials: tokens travel in a header).

    Litestar's CORSConfig computes the header sets; answering them here costs a dictionary lookup
    per request where Litestar's middleware parsed every request's headers into an object first.
    """

    def __init__(self, origins: list[str], *, allow_headers: list[str], expose_headers: list[str]) -> None:
        from litestar.config.cors import CORSConfig
        from litestar.constants import DEFAULT_ALLOWED_CORS_HEADERS

        self.config = CORSConfig(
            allow_origins=origins,
            allow_headers=allow_headers,
            expose_headers=expose_headers,
            allow_credentials=False,
        )
        self._allowed: dict[bytes, bool] = {}
        self._simple = [(k.lower().encode(), v.encode()) for k, v in self.config.simple_headers.items()]
        self._preflight = [(k.lower().encode(), v.encode()) for k, v in self.config.preflight_headers.items()]
        self._request_headers = {h.lower() for h in allow_headers} | {h.lower() for h in DEFAULT_ALLOWED_CORS_HEADERS}

    def allows(self, origin: bytes) -> bool:
        allowed = self._allowed.get(origin)
        if allowed is None:
            allowed = self.config.is_origin_allowed(origin.decode("latin-1"))
            if len(self._allowed) < 1000:  # bounded: origins are chosen by clients
                self._allowed[origin] = allowed
        return allowed

    def simple_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if self.config.is_allow_all_origins:
            return self._simple
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin"), *self._simple]

    def preflight(
        self, origin: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]] | None:
        """(status, content type, body, headers) answering a preflight, None for a plain OPTIONS."""
        method = requested = None
        for name, value in headers:
            if name == b"access-control-request-method":
                method = value
            elif name == b"access-control-request-headers":
                requested = value
        if method is None:
            return None
        failures = []
        if not self.allows(origin):
            failures.append("Origin")
        asked = [h.strip().lower() for h in (requested or b"").decode("latin-1").split(",") if h.strip()]
        if any(h not in self._request_headers for h in asked):
            failures.append("headers")
        if failures:
            return 400, b"text/plain; charset=utf-8", f"Disallowed CORS {', '.join(failures)}".encode(), []
        answer = [h for h in self._preflight if h[0] != b"access-control-allow-origin"]
        if not self.config.is_allow_all_origins:
            answer.append((b"access-control-allow-origin", origin))
        else:
            answer.append((b"access-control-allow-origin", b"*"))
        return 204, b"text/plain; charset=utf-8", b"", answer
