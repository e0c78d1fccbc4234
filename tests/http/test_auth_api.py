"""The auth API over HTTP: sign-in flows, forged tokens, sessions, refresh reuse, TOTP, password reset.

One-time codes are read the way a user reads them: from the SMS gateway simulator, served on its own
port, to which the notifications service delivers over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pyotp
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar

from simveb.actors.auth.messages import SetPassword
from simveb.actors.notifications.messages import SeedNotifications
from simveb.actors.users.messages import SYSTEM, CreateUser, RegisterCitizen, SeedUsers
from simveb.config import Settings, with_overrides
from simveb.keys import write_new_key
from simveb.runtime import Runtime
from simveb.sandbox import sandbox_router
from tests.support import free_port, wait_for

PASSWORD = "correct horse battery"
_numbers = itertools.count(20_000_000)


# --- fixtures: the SMS simulator on its own port, users made through the users service ----------------


@pytest.fixture
async def sms_url() -> AsyncIterator[str]:
    port = free_port()
    sim = Litestar(route_handlers=[sandbox_router()])
    server = uvicorn.Server(uvicorn.Config(sim, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}/sandbox/sms"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def settings(base_settings: Settings, sms_url: str) -> Settings:
    return with_overrides(base_settings, notifications={"sms_url": sms_url})


async def sms_code(sms_url: str, phone: str, *, after: int = 0) -> str:
    """The newest 6-digit code the simulator received for this phone (waits for its delivery)."""

    async def newest() -> str | None:
        async with httpx.AsyncClient() as c:
            messages = (await c.get(f"{sms_url}/messages", params={"to": phone})).json()
        if len(messages) <= after:
            return None
        found = re.search(r"\b(\d{6})\b", messages[-1]["text"])
        return found.group(1) if found else None

    return await wait_for(newest, timeout=15, interval=0.05)


async def sms_count(sms_url: str, phone: str) -> int:
    async with httpx.AsyncClient() as c:
        return len((await c.get(f"{sms_url}/messages", params={"to": phone})).json())


async def make_user(rt: Runtime, *roles: str, kind: str = "staff") -> dict[str, Any]:
    assert rt.bus is not None
    await rt.bus.ask(SeedUsers(only_if_empty=True))
    n = next(_numbers)
    fields: dict[str, Any] = {"email": f"u{n}@example.bj", "phone": f"+22901{n:08d}"}
    if kind == "person":
        fields["npi"] = f"{n:010d}"
        fields["last_name"], fields["first_name"] = "Dossou", "Afi"
    user = await rt.bus.ask(CreateUser(caller=SYSTEM, kind=kind, roles=list(roles or ("agent",)), **fields))  # type: ignore[arg-type]
    await rt.bus.ask(SetPassword(user_id=user.id, password=PASSWORD, by="test"))
    return {"id": str(user.id), **fields}


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- password sign-in, me, sessions, logout ------------------------------------------------------------


async def test_login_me_refresh_logout(client: httpx.AsyncClient, runtime: Runtime) -> None:
    user = await make_user(runtime, "agent")
    body = await login(client, user["email"])
    assert body["status"] == "authenticated"
    tokens = body["tokens"]
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "EdDSA" and header["typ"] == "at+jwt" and header["kid"]
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user["id"] and claims["exp"] - claims["iat"] == 900
    assert {"iss", "aud", "jti", "roles", "permissions"} <= set(claims)
    assert "users:read" in claims["permissions"] and claims["roles"] == ["agent"]

    r = await client.get("/api/auth/me", headers=bearer(tokens["access_token"]))
    assert r.status_code == 200 and r.json()["user_id"] == user["id"], r.text
    r = await client.get("/api/auth/sessions", headers=bearer(tokens["access_token"]))
    assert [s["id"] for s in r.json()["items"]] == [tokens["session_id"]]
    assert r.json()["items"][0]["client_ip"] == "127.0.0.1"

    r = await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    fresh = r.json()["tokens"]
    assert r.headers["cache-control"] == "no-store"

    r = await client.post("/api/auth/logout", headers=bearer(fresh["access_token"]))
    assert r.status_code == 204
    r = await client.get("/api/auth/me", headers=bearer(fresh["access_token"]))
    assert r.status_code == 401 and r.json()["code"] == "token_revoked"
    # Every access token of the session is denied, not only the one that logged out.
    r = await client.get("/api/auth/me", headers=bearer(tokens["access_token"]))
    assert r.status_code == 401
    r = await client.post("/api/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
    assert r.status_code == 401


async def test_login_answers_do_not_reveal_accounts(client: httpx.AsyncClient, runtime: Runtime) -> None:
    user = await make_user(runtime)
    known = await client.post("/api/auth/login", json={"email": user["email"], "password": "wrong password 1"})
    unknown = await client.post("/api/auth/login", json={"email": "no@example.bj", "password": "wrong password 1"})
    assert known.status_code == unknown.status_code == 401
    strip = lambda r: {k: v for k, v in r.json().items() if k != "instance"}  # noqa: E731
    assert strip(known) == strip(unknown)
    r = await client.post("/api/auth/login", json={"email": user["email"], "phone": user["phone"], "password": "x"})
    assert r.status_code == 422
    r = await client.post("/api/auth/login", json={"email": user["email"], "password": "x", "role": "admin"})
    assert r.status_code == 400  # unknown fields are refused


async def test_lockout_over_http(client: httpx.AsyncClient, runtime: Runtime) -> None:
    user = await make_user(runtime)
    statuses = []
    for _ in range(6):
        r = await client.post("/api/auth/login", json={"phone": user["phone"], "password": "wrong password 1"})
        statuses.append(r.status_code)
    assert statuses == [401, 401, 401, 401, 429, 429]
    assert int(r.headers["retry-after"]) > 800
    r = await client.post("/api/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert r.status_code == 429 and r.json()["code"] == "locked_out"


async def test_sessions_of_another_user(client: httpx.AsyncClient, runtime: Runtime) -> None:
    a = await make_user(runtime)
    b = await make_user(runtime)
    a_tokens = (await login(client, a["email"]))["tokens"]
    b_tokens = (await login(client, b["email"]))["tokens"]
    r = await client.get("/api/auth/sessions", headers=bearer(a_tokens["access_token"]))
    assert [s["id"] for s in r.json()["items"]] == [a_tokens["session_id"]]
    r = await client.delete(f"/api/auth/sessions/{b_tokens['session_id']}", headers=bearer(a_tokens["access_token"]))
    assert r.status_code == 404
    r = await client.delete(f"/api/auth/sessions/{uuid.uuid4()}", headers=bearer(a_tokens["access_token"]))
    assert r.status_code == 404
    # B's session is untouched; B may end it.
    assert (await client.get("/api/auth/me", headers=bearer(b_tokens["access_token"]))).status_code == 200
    r = await client.delete(f"/api/auth/sessions/{b_tokens['session_id']}", headers=bearer(b_tokens["access_token"]))
    assert r.status_code == 204
    assert (await client.get("/api/auth/me", headers=bearer(b_tokens["access_token"]))).status_code == 401


async def test_refresh_reuse_revokes_family(client: httpx.AsyncClient, runtime: Runtime) -> None:
    user = await make_user(runtime)
    first = (await login(client, user["email"]))["tokens"]
    second = (await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()["tokens"]
    # The owner goes on with the new pair; then the old token is replayed (no lost answer: the new
    # pair was used, so the reuse grace does not apply).
    third = (await client.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]})).json()["tokens"]
    r = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "refresh_token_reused"
    r = await client.post("/api/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert r.status_code == 401
    r = await client.get("/api/auth/me", headers=bearer(third["access_token"]))
    assert r.status_code == 401 and r.json()["code"] == "token_revoked"


async def test_routes_need_a_token(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/auth/me"),
        ("GET", "/api/auth/sessions"),
        ("POST", "/api/auth/logout"),
        ("DELETE", f"/api/auth/sessions/{uuid.uuid4()}"),
        ("POST", "/api/auth/2fa/setup"),
        ("POST", "/api/auth/2fa/enable"),
    ]:
        r = await client.request(method, path)
        assert r.status_code == 401, (method, path, r.text)


# --- forged tokens ------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tamper(token: str, **changes: Any) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims.update(changes)
    return ".".join([head, _b64(json.dumps(claims).encode()), sig])


async def test_forged_tokens_are_refused(
    client: httpx.AsyncClient, runtime: Runtime, settings: Settings, make_token: Any
) -> None:
    user = await make_user(runtime, "agent")
    good = (await login(client, user["email"]))["tokens"]["access_token"]
    assert (await client.get("/api/auth/me", headers=bearer(good))).status_code == 200
    assert runtime.keys is not None
    kid = runtime.keys.kid
    public_pem = runtime.keys.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = jwt.decode(good, options={"verify_signature": False})
    head = {"alg": "none", "typ": "at+jwt", "kid": kid}
    alg_none = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}."
    hs_head = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
    hs_body = f"{_b64(json.dumps(hs_head).encode())}.{_b64(json.dumps(claims).encode())}"
    import hashlib
    import hmac

    hs256 = f"{hs_body}.{_b64(hmac.new(public_pem, hs_body.encode(), hashlib.sha256).digest())}"
    stranger = Ed25519PrivateKey.generate()
    forged = {
        "payload changed": _tamper(good, permissions=["users:write", "users:roles"]),
        "sub changed": _tamper(good, sub=str(uuid.uuid4())),
        "alg none": alg_none,
        "HS256 with the public key": hs256,
        "expired": make_token(user["id"], ttl=-60),
        "wrong aud": make_token(user["id"], aud="another-api"),
        "wrong iss": make_token(user["id"], iss="https://evil.example"),
        "unknown kid": jwt.encode(
            {**claims, "iat": now, "exp": now + 60},
            stranger,
            algorithm="EdDSA",
            headers={"kid": "not-a-key-we-have", "typ": "at+jwt"},
        ),
        "our kid, another key": jwt.encode(
            {**claims, "iat": now, "exp": now + 60}, stranger, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}
        ),
        "not an access token (typ)": runtime.keys.sign({**claims, "iat": now, "exp": now + 60}, typ="JWT"),
        "garbage": "abc.def.ghi",
    }
    for name, token in forged.items():
        r = await client.get("/api/auth/me", headers=bearer(token))
        assert r.status_code == 401, name
        assert r.json()["code"] in {"invalid_token", "token_expired"}, name
    # And the revoked jti: after logout the genuine token is refused.
    assert (await client.post("/api/auth/logout", headers=bearer(good))).status_code == 204
    r = await client.get("/api/auth/me", headers=bearer(good))
    assert r.status_code == 401 and r.json()["code"] == "token_revoked"


async def test_denial_reaches_another_process(client: httpx.AsyncClient, runtime: Runtime, settings: Settings) -> None:
    """A second app (as another worker would be) learns a logout through the deny list poll."""
    from simveb.http.app import create_app

    user = await make_user(runtime)
    tokens = (await login(client, user["email"]))["tokens"]
    other = create_app(settings, runtime=runtime)
    transport = httpx.ASGITransport(app=other, client=("127.0.0.1", 50001))
    async with httpx.AsyncClient(transport=transport, base_url="http://other.test") as second:
        assert (await second.get("/api/auth/me", headers=bearer(tokens["access_token"]))).status_code == 200
        assert (await client.post("/api/auth/logout", headers=bearer(tokens["access_token"]))).status_code == 204

        async def refused() -> bool:
            r = await second.get("/api/auth/me", headers=bearer(tokens["access_token"]))
            return r.status_code == 401

        started = time.monotonic()
        await wait_for(refused, timeout=5, interval=0.1)
        assert time.monotonic() - started < settings.auth.deny_list_poll_s + 1.5


# --- keys ---------------------------------------------------------------------------------------------


async def test_jwks_and_rotation(client: httpx.AsyncClient, runtime: Runtime, settings: Settings) -> None:
    user = await make_user(runtime)
    old = (await login(client, user["email"]))["tokens"]["access_token"]
    r = await client.get("/api/auth/.well-known/jwks.json")
    assert r.status_code == 200
    keys = r.json()["keys"]
    old_kid = jwt.get_unverified_header(old)["kid"]
    assert old_kid in {k["kid"] for k in keys}
    assert all(k["kty"] == "OKP" and k["crv"] == "Ed25519" and "d" not in k for k in keys)
    # The published key verifies the token, as a separately deployed service would do it.
    jwk = next(k for k in keys if k["kid"] == old_kid)
    public = jwt.PyJWK(jwk).key
    jwt.decode(old, public, algorithms=["EdDSA"], audience=settings.security.audience)

    new_path = write_new_key(settings.data_dir / "keys")
    try:
        await asyncio.sleep(1.1)  # the auth actor looks at the keys directory at most once a second
        new = (await login(client, user["email"]))["tokens"]["access_token"]
        new_kid = jwt.get_unverified_header(new)["kid"]
        assert new_kid != old_kid and new_path.stem == new_kid
        kids = {k["kid"] for k in (await client.get("/api/auth/.well-known/jwks.json")).json()["keys"]}
        assert {old_kid, new_kid} <= kids
        # This process's verifier did not know the new key: it re-reads the directory on the unknown kid.
        assert (await client.get("/api/auth/me", headers=bearer(new))).status_code == 200
        assert (await client.get("/api/auth/me", headers=bearer(old))).status_code == 200
    finally:
        # Other tests sign with the session's first key; the runtime of the next test reloads.
        new_path.unlink()


# --- one-time codes (from the SMS simulator) ---------------------------------------------------------


async def _seed_notifications(rt: Runtime) -> None:
    assert rt.bus is not None
    if rt.bus.handles(SeedNotifications):
        await rt.bus.ask(SeedNotifications(only_if_empty=True))


async def test_otp_login_by_npi(client: httpx.AsyncClient, runtime: Runtime, sms_url: str) -> None:
    await _seed_notifications(runtime)
    citizen = await make_user(runtime, "citizen", kind="person")
    r = await client.post("/api/auth/request-otp", json={"identifier": citizen["npi"]})
    assert r.status_code == 202, r.text
    sent = r.json()
    ghost = await client.post("/api/auth/request-otp", json={"identifier": "0000000001"})
    assert ghost.status_code == 202 and set(ghost.json()) == set(sent)
    code = await sms_code(sms_url, citizen["phone"])
    r = await client.post("/api/auth/verify-otp", json={"challenge_id": sent["challenge_id"], "code": code})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["sub"] == citizen["id"] and claims["roles"] == ["citizen"]
    # A code works once.
    r = await client.post("/api/auth/verify-otp", json={"challenge_id": sent["challenge_id"], "code": code})
    assert r.status_code == 401


async def test_register_confirmed_by_otp(client: httpx.AsyncClient, runtime: Runtime, sms_url: str) -> None:
    assert runtime.bus is not None
    await _seed_notifications(runtime)
    await runtime.bus.ask(SeedUsers(only_if_empty=True))
    n = next(_numbers)
    phone, npi = f"+22901{n:08d}", f"{n:010d}"
    reg = await runtime.bus.ask(RegisterCitizen(npi=npi, phone=phone, last_name="Hounsou", first_name="Koffi"))
    assert reg.user_id is not None
    # Not active yet: a login code is not sent to a pending account.
    r = await client.post("/api/auth/request-otp", json={"identifier": phone, "purpose": "register"})
    assert r.status_code == 202
    code = await sms_code(sms_url, phone)
    r = await client.post("/api/auth/verify-otp", json={"challenge_id": r.json()["challenge_id"], "code": code})
    assert r.status_code == 200, r.text
    token = r.json()["tokens"]["access_token"]
    me = (await client.get("/api/auth/me", headers=bearer(token))).json()
    assert me["user_id"] == str(reg.user_id) and me["roles"] == ["citizen"]


async def test_password_reset_by_otp(client: httpx.AsyncClient, runtime: Runtime, sms_url: str) -> None:
    await _seed_notifications(runtime)
    user = await make_user(runtime)
    before = (await login(client, user["email"]))["tokens"]
    r = await client.post("/api/auth/password/reset-request", json={"identifier": user["phone"]})
    assert r.status_code == 202
    challenge = r.json()["challenge_id"]
    code = await sms_code(sms_url, user["phone"])
    body = {"challenge_id": challenge, "code": code, "new_password": "short"}
    r = await client.post("/api/auth/password/reset", json=body)
    assert r.status_code == 422 and r.json()["code"] == "password_policy"
    r = await client.post("/api/auth/password/reset", json={**body, "new_password": PASSWORD})
    assert r.status_code == 422 and "last 5" in r.json()["detail"]
    r = await client.post("/api/auth/password/reset", json={**body, "new_password": "a brand new passphrase"})
    assert r.status_code == 204, r.text
    r = await client.post("/api/auth/password/reset", json={**body, "new_password": "yet another passphrase"})
    assert r.status_code == 401  # the code is spent
    assert (await client.get("/api/auth/me", headers=bearer(before["access_token"]))).status_code == 401
    r = await client.post("/api/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert r.status_code == 401
    await login(client, user["email"], "a brand new passphrase")


# --- second factor ------------------------------------------------------------------------------------


async def test_admin_two_factor_flow(client: httpx.AsyncClient, runtime: Runtime) -> None:
    admin = await make_user(runtime, "admin")
    first = await login(client, admin["email"])
    limited = first["tokens"]
    assert limited["limited"] is True
    claims = jwt.decode(limited["access_token"], options={"verify_signature": False})
    assert claims["permissions"] == [] and claims["roles"] == [] and claims["scope"] == "two_factor_setup"
    # Without the second factor the admin cannot use admin routes...
    r = await client.put(
        "/api/config/settings/site.name", json={"value": "x", "type": "string"}, headers=bearer(limited["access_token"])
    )
    assert r.status_code == 403
    # ... and a refresh keeps the session limited.
    r = await client.post("/api/auth/refresh", json={"refresh_token": limited["refresh_token"]})
    assert r.json()["tokens"]["limited"] is True
    limited = r.json()["tokens"]

    r = await client.post("/api/auth/2fa/setup", headers=bearer(limited["access_token"]))
    assert r.status_code == 200, r.text
    setup = r.json()
    assert setup["qr_svg"].startswith("<svg") and admin["email"].replace("@", "%40") in setup["otpauth_uri"]
    totp = pyotp.TOTP(setup["secret"])
    r = await client.post(
        "/api/auth/2fa/enable", json={"code": "12345x", "password": PASSWORD}, headers=bearer(limited["access_token"])
    )
    assert r.status_code == 422
    r = await client.post(
        "/api/auth/2fa/enable", json={"code": totp.now(), "password": PASSWORD}, headers=bearer(limited["access_token"])
    )
    assert r.status_code == 200, r.text
    recovery = r.json()["codes"]
    assert len(recovery) == 10 and len(set(recovery)) == 10

    second = await login(client, admin["email"])
    assert second["status"] == "two_factor_required" and second["tokens"] is None
    challenge = second["challenge"]["challenge_id"]
    r = await client.post("/api/auth/verify-otp", json={"challenge_id": challenge, "code": "000000"})
    assert r.status_code == 401
    r = await client.post("/api/auth/verify-otp", json={"challenge_id": challenge, "code": totp.at(time.time() + 30)})
    assert r.status_code == 200, r.text
    full = r.json()["tokens"]
    assert full["limited"] is False
    claims = jwt.decode(full["access_token"], options={"verify_signature": False})
    assert "users:roles" in claims["permissions"] and "otp_totp" in claims["amr"]
    r = await client.put(
        "/api/config/settings/site.name", json={"value": "x", "type": "string"}, headers=bearer(full["access_token"])
    )
    assert r.status_code == 200, r.text

    # A recovery code instead of the app, once.
    challenge = (await login(client, admin["email"]))["challenge"]["challenge_id"]
    r = await client.post("/api/auth/verify-otp", json={"challenge_id": challenge, "code": recovery[3]})
    assert r.status_code == 200 and r.json()["tokens"]["limited"] is False
    challenge = (await login(client, admin["email"]))["challenge"]["challenge_id"]
    r = await client.post("/api/auth/verify-otp", json={"challenge_id": challenge, "code": recovery[3]})
    assert r.status_code == 401


async def test_code_never_logged(client: httpx.AsyncClient, runtime: Runtime, sms_url: str, simveb_logs: Any) -> None:
    await _seed_notifications(runtime)
    user = await make_user(runtime)
    r = await client.post("/api/auth/request-otp", json={"identifier": user["phone"]})
    code = await sms_code(sms_url, user["phone"])
    with contextlib.suppress(Exception):
        await client.post("/api/auth/verify-otp", json={"challenge_id": r.json()["challenge_id"], "code": code})
    assert code not in simveb_logs.text()


async def test_verified_token_cache_still_checks_expiry_and_revocation(tmp_path: Any) -> None:
    from simveb.errors import Unauthorized
    from simveb.http.security import TokenVerifier
    from simveb.keys import KeyRing

    ring = KeyRing.from_directory(tmp_path, create=True)
    verifier = TokenVerifier(ring, issuer="simveb", audience="simveb-api", leeway=0)
    now = int(time.time())
    claims = {"iss": "simveb", "aud": "simveb-api", "sub": "u", "iat": now, "jti": "j1"}
    short = ring.sign({**claims, "exp": now + 1})
    assert verifier.verify(short).caller.sub == "u"
    assert short in verifier.verified
    verifier.is_revoked = lambda jti: jti == "j1"
    with pytest.raises(Unauthorized, match="revoked"):
        verifier.verify(short)
    verifier.is_revoked = lambda _jti: False
    await asyncio.sleep(1.1 + now + 1 - time.time())
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(short)
