"""SMS gateway simulator (sandbox only): records every message it receives, and misbehaves on request.

It speaks the JSON gateway protocol of the `http_json` adapter: `POST /sandbox/sms/messages`
{from, to, text, reference} answered 201 {"id", "status"}. A repeated `reference` is answered with
the first message's id and recorded as a duplicate (so tests can prove nothing was sent twice).
`GET /sandbox/sms/messages?to=...` lists what arrived; `DELETE` forgets it. `POST /sandbox/sms/control`
{"mode": "ok" | "fail" | "slow" | "garbage", "delay_s", "status", "times"} makes the next requests
(or the next `times` ones) fail with a 5xx, answer late, or answer a body that is not JSON.
State is per application, so a test's own simulator and a server's mounted one never mix.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, delete, get, post

Mode = Literal["ok", "fail", "slow", "garbage"]


class Control(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a simulator answers its next requests."""

    mode: Mode = "ok"
    delay_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 503
    times: Annotated[int, msgspec.Meta(ge=1)] | None = None  # then back to "ok"; None = until changed


class Behaviour:
    """The control state shared by the simulators: decides how the next request is answered."""

    def __init__(self) -> None:
        self.control = Control()
        self.requests = 0

    def next(self) -> Control:
        """The behaviour for this request (consumes one of `times`)."""
        self.requests += 1
        current = self.control
        if current.times is not None:
            left = current.times - 1
            self.control = (
                Control() if left <= 0 else msgspec.structs.replace(current, times=left)  # type: ignore[arg-type]
            )
        return current

    async def misbehave(self, control: Control) -> Response[Any] | None:
        """A failure or garbage response for this control, after its delay; None to answer normally."""
        if control.mode == "slow" or control.delay_s:
            await asyncio.sleep(control.delay_s or 2.0)
        if control.mode == "fail":
            return Response({"error": "simulated failure"}, status_code=control.status)
        if control.mode == "garbage":
            return Response(b"<html>not json", status_code=200, media_type="text/html")
        return None


class SmsMessageIn(msgspec.Struct, kw_only=True, rename={"sender": "from"}):
    sender: str = ""
    to: str
    text: str
    reference: str | None = None


class SmsGateway:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.messages: list[dict[str, Any]] = []
        self.by_reference: dict[str, str] = {}


def _state(request: Request[Any, Any, Any]) -> SmsGateway:
    state = request.app.state
    if "sandbox_sms" not in state:
        state["sandbox_sms"] = SmsGateway()
    return state["sandbox_sms"]


@post("/sms/messages", status_code=201)
async def receive(request: Request[Any, Any, Any]) -> Response[Any]:
    """Accept one SMS (simulated gateway)."""
    gw = _state(request)
    control = gw.behaviour.next()
    failure = await gw.behaviour.misbehave(control)
    if failure is not None:
        return failure
    try:
        msg = msgspec.json.decode(await request.body(), type=SmsMessageIn)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return Response({"error": f"invalid message: {exc}"}, status_code=400)
    if not msg.to.startswith("+") or not msg.to[1:].isdigit():
        return Response({"error": "invalid destination number"}, status_code=400)
    duplicate = msg.reference is not None and msg.reference in gw.by_reference
    message_id = gw.by_reference[msg.reference] if duplicate else f"sms_{uuid.uuid4().hex}"  # type: ignore[index]
    if msg.reference is not None and not duplicate:
        gw.by_reference[msg.reference] = message_id
    gw.messages.append(
        {
            "id": message_id,
            "from": msg.sender,
            "to": msg.to,
            "text": msg.text,
            "reference": msg.reference,
            "duplicate": duplicate,
            "authorization": request.headers.get("authorization") is not None,
            "received_at": time.time(),
        }
    )
    return Response({"id": message_id, "status": "accepted"}, status_code=200 if duplicate else 201)


@get("/sms/messages")
async def list_messages(request: Request[Any, Any, Any], to: str | None = None) -> list[dict[str, Any]]:
    """What the simulated gateway received, oldest first (optionally for one number)."""
    return [m for m in _state(request).messages if to is None or m["to"] == to]


@delete("/sms/messages", status_code=204)
async def clear_messages(request: Request[Any, Any, Any]) -> None:
    """Forget every recorded message."""
    gw = _state(request)
    gw.messages.clear()
    gw.by_reference.clear()


@post("/sms/control", status_code=200)
async def control(request: Request[Any, Any, Any], data: Control) -> Control:
    """Set how the next requests are answered."""
    _state(request).behaviour.control = data
    return data


@get("/sms/control")
async def get_control(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The current behaviour and how many requests arrived."""
    b = _state(request).behaviour
    return {"control": msgspec.to_builtins(b.control), "requests": b.requests}


ROUTES: list[Any] = [receive, list_messages, clear_messages, control, get_control]
