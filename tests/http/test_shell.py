"""The HTTP shell: problem+json everywhere, request ids, CORS, metrics, OpenAPI, health, rate limits."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest

from simveb.config import with_overrides
from simveb.http.app import create_app


async def test_unknown_route_and_wrong_method_are_problems(client) -> None:
    r = await client.get("/api/nowhere")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "not_found" and r.headers["x-request-id"]
    r = await client.delete("/api/config/services")
    assert r.status_code == 405 and r.json()["status"] == 405


async def test_request_id_is_echoed_or_created(client) -> None:
    r = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/health/live")
    assert len(r.headers["x-request-id"]) == 32


async def test_cors_allows_only_configured_origins(client, settings) -> None:
    origin = settings.server.cors_origins[0]
    r = await client.options("/api/config/services", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
    assert r.headers.get("access-control-allow-origin") == origin
    r = await client.get("/api/config/services", headers={"Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") is None


async def test_ready_lists_what_is_wrong(client, runtime) -> None:
    r = await client.get("/health/ready")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "actors": "ok", "migrations": "ok"}
    runtime.bus.cells["config"].state = "down"  # what supervision sets when an actor cannot start
    try:
        r = await client.get("/health/ready")
        assert r.status_code == 503 and r.json()["checks"]["actors"] == {"down": ["config"]}
    finally:
        runtime.bus.cells["config"].state = "up"


async def test_metrics_show_http_and_bus_figures(client, seeded) -> None:
    await client.get("/api/config/services")
    text = (await client.get("/metrics")).text
    assert 'simveb_http_requests_total{method="GET",route="/api/config/services",status="200"}' in text
    assert 'simveb_bus_mailbox_depth{actor="config"}' in text
    assert 'simveb_bus_ask_latency_seconds{actor="config",quantile="0.99"}' in text
    assert "simveb_bus_dead_letters_total" in text


async def test_openapi_lists_the_routes(client) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    assert "/api/config/fees" in doc["paths"]
    assert doc["paths"]["/api/config/fees"]["get"]["summary"]
    ui = await client.get("/schema")
    assert ui.status_code == 200 and "<html" in ui.text.lower()


def token(runtime, settings, **changes) -> str:
    now = int(time.time())
    claims = {
        "iss": settings.security.issuer,
        "aud": settings.security.audience,
        "sub": "u1",
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        "permissions": ["config:write"],
    }
    claims.update(changes)
    return runtime.keys.sign({k: v for k, v in claims.items() if v is not None})


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"exp": int(time.time()) - 3600}, "token_expired"),
        ({"aud": "someone-else"}, "invalid_token"),
        ({"iss": "evil"}, "invalid_token"),
        ({"sub": None}, "invalid_token"),
    ],
)
async def test_bad_tokens_are_refused(client, runtime, settings, changes, code) -> None:
    r = await client.get(
        "/api/config/history", headers={"Authorization": f"Bearer {token(runtime, settings, **changes)}"}
    )
    assert r.status_code == 401 and r.json()["code"] == code


async def test_unsigned_or_tampered_tokens_are_refused(client, runtime, settings) -> None:
    good = token(runtime, settings)
    header, _payload, signature = good.split(".")
    forged_payload = jwt.utils.base64url_encode(b'{"sub":"admin","permissions":["config:write"]}').decode()
    none_token = jwt.encode({"sub": "x"}, key=None, algorithm="none")
    for bad in (f"{header}.{forged_payload}.{signature}", none_token, "not-a-jwt", good + "x"):
        r = await client.get("/api/config/history", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
    r = await client.get("/api/config/history", headers={"Authorization": f"Basic {good}"})
    assert r.status_code == 401


async def test_rate_limit_answers_429_with_retry_after(runtime, settings) -> None:
    limited = with_overrides(settings, ratelimit={"per_minute": 3})
    app = create_app(limited, runtime=runtime)
    transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        codes = [(await c.get("/api/config/services")).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        r = await c.get("/api/config/services")
        assert r.headers["content-type"].startswith("application/problem+json")
        assert int(r.headers["retry-after"]) > 0
        assert (await c.get("/health/live")).status_code == 200, "health is not rate limited"


async def test_rate_limit_shared_through_redis(runtime, settings, redis_url) -> None:
    limited = with_overrides(settings, ratelimit={"per_minute": 2}, redis={"url": redis_url})
    address = f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    codes = []
    for _ in range(2):  # two app instances (two workers) share one counter in Redis
        app = create_app(limited, runtime=runtime)
        transport = httpx.ASGITransport(app=app, client=(address, 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            codes += [(await c.get("/api/config/services")).status_code for _ in range(2)]
    assert codes == [200, 200, 429, 429]
