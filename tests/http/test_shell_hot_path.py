"""The shell middleware's hot path: access log off the event loop, CORS, the rate limit estimate,
metrics, and guards that never hop to a thread."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import threading
import time

import httpx
import pytest

from simveb.config import with_overrides
from simveb.http.app import create_app
from simveb.http.logs import BackgroundHandler, JsonFormatter, quick_record
from simveb.http.shell import RateLimiter


class BlockingStream(io.StringIO):
    """A stderr that hangs until released (a full pipe, a stuck terminal)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def _handler(stream: io.StringIO) -> tuple[BackgroundHandler, logging.Logger]:
    handler = BackgroundHandler(stream, linger_s=0)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"simveb.test.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler, logger


def test_logging_does_not_wait_for_a_stuck_stream() -> None:
    stream = BlockingStream()
    handler, logger = _handler(stream)
    started = time.perf_counter()
    for i in range(200):
        logger.info("line %s", i, extra={"status": 200})
    assert time.perf_counter() - started < 0.5, "the caller waited for the stream"
    assert stream.getvalue() == ""
    stream.release.set()
    handler.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["msg"] for entry in lines] == [f"line {i}" for i in range(200)], "all lines, in order"
    assert lines[0]["status"] == 200 and lines[0]["logger"] == logger.name


def test_log_writer_survives_close_and_keeps_request_id_and_traceback() -> None:
    from simveb.http.logs import request_id_var

    stream = io.StringIO()
    handler, logger = _handler(stream)
    handler.close()  # what logging.config.dictConfig does to existing handlers (Litestar's start-up)
    token = request_id_var.set("rid-42")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        request_id_var.reset(token)
    handler.flush()
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert entry["request_id"] == "rid-42", "the id of the request that logged, not of the writer thread"
    assert "ValueError: boom" in entry["exc"]


def test_bounded_queue_drops_and_says_so() -> None:
    stream = BlockingStream()
    handler, logger = _handler(stream)
    handler.max_pending = 10
    for i in range(50):
        logger.info("line %s", i)
    stream.release.set()
    handler.flush()
    text = stream.getvalue()
    assert "log records dropped" in text and len(text.splitlines()) < 50


def test_quick_record_formats_like_a_logger_record() -> None:
    record = quick_record("simveb.access", logging.INFO, "GET /x 200", {"status": 200, "route": "/x"})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "GET /x 200" and entry["level"] == "info" and entry["status"] == 200
    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(thread)s %(message)s")
    assert plain.format(record).endswith("INFO simveb.access " + f"{record.process} None GET /x 200")


async def test_access_line_per_request_with_id_route_and_duration(client, simveb_logs) -> None:
    r = await client.get("/health/live", headers={"X-Request-ID": "trace-1"})
    assert r.status_code == 200
    access = [line for line in simveb_logs.lines if line.startswith("GET /health/live 200")]
    assert len(access) == 1
    assert "'request_id': 'trace-1'" in access[0] and "'route': '/health/live'" in access[0]
    assert "'duration_ms':" in access[0]


async def test_metrics_histogram_counts_requests(client) -> None:
    for _ in range(3):
        await client.get("/health/live")
    text = (await client.get("/metrics")).text
    assert 'simveb_http_requests_total{method="GET",route="/health/live",status="200"} 3.0' in text
    assert 'simveb_http_request_duration_seconds_count{method="GET",route="/health/live"} 3.0' in text
    assert 'simveb_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/health/live"} 3.0' in text


async def test_cors_preflight_and_simple_requests(client, settings) -> None:
    origin = settings.server.cors_origins[0]
    asks = {"Origin": origin, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "If-Match"}
    r = await client.options("/api/vehicles/brands", headers=asks)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == origin
    assert "PUT" in r.headers["access-control-allow-methods"]
    assert "if-match" in r.headers["access-control-allow-headers"].lower()
    r = await client.options("/api/vehicles/brands", headers={**asks, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = await client.options("/api/vehicles/brands", headers={**asks, "Access-Control-Request-Headers": "X-Evil"})
    assert r.status_code == 400
    r = await client.get("/health/live", headers={"Origin": origin})
    assert r.headers["access-control-allow-origin"] == origin and r.headers["vary"] == "Origin"
    assert "X-Request-ID" in r.headers["access-control-expose-headers"]


async def test_requests_without_a_token_are_refused_before_the_route(client) -> None:
    r = await client.get("/api/vehicles/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["instance"] == "/api/vehicles/00000000-0000-4000-8000-000000000000"
    assert r.headers["x-request-id"]
    r = await client.get("/api/vehicles/brands")  # public
    assert r.status_code == 200


async def test_token_guessing_is_rate_limited_before_verification(runtime, settings) -> None:
    limited = with_overrides(settings, ratelimit={"per_minute": 3})
    app = create_app(limited, runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("10.0.0.99", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        codes = []
        for i in range(5):
            r = await c.get("/api/auth/me", headers={"Authorization": f"Bearer forged.{i}.token"})
            codes.append(r.status_code)
    assert codes == [401, 401, 401, 429, 429]


def test_rate_limit_window_slides() -> None:
    async def run() -> list[bool]:
        limiter = RateLimiter(10)
        base = 600.0 * 60  # the start of a minute
        allowed = [(await limiter.hit("a", base + 50))[0] for _ in range(10)]
        assert allowed == [True] * 10
        assert (await limiter.hit("a", base + 55))[0] is False
        # 15 s into the next minute the previous minute still weighs 3/4: 7.5 of 10 used.
        nxt = base + 75
        return [(await limiter.hit("a", nxt))[0] for _ in range(4)]

    assert asyncio.run(run()) == [True, True, True, False]


def test_no_guard_runs_in_a_thread(settings) -> None:
    """A plain-function guard makes Litestar hop to a worker thread on every request."""
    app = create_app(settings)
    sync_guards = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for guard in handler.resolve_guards():
                if not inspect.iscoroutinefunction(guard):
                    sync_guards.append(f"{handler} {getattr(guard, 'func', guard)}")
    assert not sync_guards, sync_guards


@pytest.mark.parametrize("path", ["/health/live", "/metrics", "/schema/openapi.json"])
async def test_open_paths_ignore_tokens_and_limits(client, path) -> None:
    r = await client.get(path, headers={"Authorization": "Bearer not-even-a-jwt"})
    assert r.status_code == 200 and "ratelimit-limit" not in r.headers


def test_direct_access_lines_match_logger_lines() -> None:
    """In the plain configuration the shell hands plain values to the writer; the line is the same
    as the one a LogRecord through the formatter gives, and any added handler turns records back on."""
    from simveb.http.logs import AccessEntry, access_writer

    root = logging.getLogger("simveb")
    saved = root.handlers[:]
    stream = io.StringIO()
    handler = BackgroundHandler(stream, linger_s=0)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    try:
        assert access_writer() is handler
        handler.access(AccessEntry(1796190479.25, "GET", "/api/x", 200, 1.5, "/api/x", "rid-1"))
        record = quick_record(
            "simveb.access",
            logging.INFO,
            "GET /api/x 200",
            {"request_id": "rid-1", "status": 200, "duration_ms": 1.5, "route": "/api/x"},
        )
        record.created = 1796190479.25
        handler.handle(record)
        handler.flush()
        direct, via_record = stream.getvalue().splitlines()
        assert direct == via_record
        root.addHandler(logging.NullHandler())
        assert access_writer() is None, "another handler must see LogRecords"
    finally:
        root.handlers[:] = saved
