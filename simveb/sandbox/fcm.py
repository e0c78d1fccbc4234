"""Firebase Cloud Messaging simulator (sandbox only): the OAuth token endpoint and HTTP v1 send.

`POST /sandbox/fcm/token` takes the service-account JWT bearer grant (any well-formed RS256 assertion
with iss, aud, scope, iat, exp; the signature is not checked, there is no Google key to check it
with) and issues an access token. `POST /sandbox/fcm/v1/projects/{project}/messages:send` needs that
token and records the message; a device token starting with `invalid` is answered 404 UNREGISTERED,
like FCM does for an uninstalled app. `GET /sandbox/fcm/messages?token=...` lists what arrived,
`DELETE` forgets it, `POST /sandbox/fcm/control` makes it fail, slow or garbage (see sms.Control).
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import jwt
import msgspec
from litestar import Request, Response, delete, get, post

from simveb.sandbox.sms import Behaviour, Control

REQUIRED_CLAIMS = ("iss", "aud", "scope", "iat", "exp")


class FcmService:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.tokens: dict[str, float] = {}
        self.messages: list[dict[str, Any]] = []
        self.grants = 0


def _state(request: Request[Any, Any, Any]) -> FcmService:
    state = request.app.state
    if "sandbox_fcm" not in state:
        state["sandbox_fcm"] = FcmService()
    return state["sandbox_fcm"]


def _error(status: int, code: str, message: str) -> Response[Any]:
    return Response({"error": {"code": status, "status": code, "message": message}}, status_code=status)


@post("/fcm/token", status_code=200)
async def token(request: Request[Any, Any, Any]) -> Response[Any]:
    """OAuth 2.0 JWT bearer grant (simulated Google token endpoint)."""
    svc = _state(request)
    control = svc.behaviour.next()
    failure = await svc.behaviour.misbehave(control)
    if failure is not None:
        return failure
    form = await request.form()
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
        return Response({"error": "unsupported_grant_type"}, status_code=400)
    assertion = str(form.get("assertion") or "")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return Response({"error": "invalid_grant", "error_description": "malformed assertion"}, status_code=400)
    if header.get("alg") != "RS256" or any(c not in claims for c in REQUIRED_CLAIMS):
        return Response({"error": "invalid_grant", "error_description": "RS256 with iss, aud, scope"}, status_code=400)
    if claims["exp"] < time.time():
        return Response({"error": "invalid_grant", "error_description": "assertion expired"}, status_code=400)
    access = f"sim-{secrets.token_urlsafe(24)}"
    svc.tokens[access] = time.time() + 3600
    svc.grants += 1
    return Response({"access_token": access, "expires_in": 3600, "token_type": "Bearer"})


@post("/fcm/v1/projects/{project:str}/messages:send", status_code=200)
async def send(request: Request[Any, Any, Any], project: str) -> Response[Any]:
    """FCM HTTP v1 send (simulated)."""
    svc = _state(request)
    control = svc.behaviour.next()
    failure = await svc.behaviour.misbehave(control)
    if failure is not None:
        return failure
    scheme, _, access = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or svc.tokens.get(access, 0) < time.time():
        return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
    try:
        body = msgspec.json.decode(await request.body())
        message = body["message"]
        device = message["token"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return _error(400, "INVALID_ARGUMENT", "message.token is required")
    if not isinstance(device, str) or not device:
        return _error(400, "INVALID_ARGUMENT", "message.token is required")
    if device.startswith("invalid"):
        return _error(404, "NOT_FOUND", "Requested entity was not found. (UNREGISTERED)")
    name = f"projects/{project}/messages/{uuid.uuid4().int % 10**16}"
    svc.messages.append(
        {
            "name": name,
            "project": project,
            "token": device,
            "notification": message.get("notification", {}),
            "data": message.get("data", {}),
            "received_at": time.time(),
        }
    )
    return Response({"name": name})


@get("/fcm/messages")
async def list_messages(request: Request[Any, Any, Any], token: str | None = None) -> list[dict[str, Any]]:
    """What the simulated FCM received, oldest first (optionally for one device token)."""
    return [m for m in _state(request).messages if token is None or m["token"] == token]


@delete("/fcm/messages", status_code=204)
async def clear_messages(request: Request[Any, Any, Any]) -> None:
    """Forget every recorded message."""
    _state(request).messages.clear()


@post("/fcm/control", status_code=200)
async def control(request: Request[Any, Any, Any], data: Control) -> Control:
    """Set how the next requests (token and send) are answered."""
    _state(request).behaviour.control = data
    return data


@get("/fcm/control")
async def get_control(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The current behaviour, requests and token grants."""
    svc = _state(request)
    return {
        "control": msgspec.to_builtins(svc.behaviour.control),
        "requests": svc.behaviour.requests,
        "grants": svc.grants,
    }


ROUTES: list[Any] = [token, send, list_messages, clear_messages, control, get_control]
