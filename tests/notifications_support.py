"""Fixtures of the notifications tests: the SMS/FCM simulators and a real SMTP server, on their own ports.

The simulators are the sandbox apps served by uvicorn (real HTTP, real TCP); the SMTP server is
aiosmtpd. Settings point the notifications actor at them, with short retry delays so tests are fast.
"""

from __future__ import annotations

import email
from collections.abc import Iterator
from email.message import Message
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from litestar import Litestar

from simveb.config import Settings, with_overrides
from simveb.sandbox import sandbox_router
from tests.sandbox_server import serve_app
from tests.support import free_port


class Simulators:
    """The simulators' base URL and helpers to read and steer them over HTTP."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=10)

    def reset(self) -> None:
        for sim in ("sms", "fcm"):
            self.http.delete(f"/sandbox/{sim}/messages").raise_for_status()
            self.http.post(f"/sandbox/{sim}/control", json={"mode": "ok"}).raise_for_status()

    def control(self, sim: str, **behaviour: Any) -> None:
        self.http.post(f"/sandbox/{sim}/control", json=behaviour).raise_for_status()

    def sms(self, to: str | None = None) -> list[dict[str, Any]]:
        return self.http.get("/sandbox/sms/messages", params={"to": to} if to else None).json()

    def push(self, token: str | None = None) -> list[dict[str, Any]]:
        return self.http.get("/sandbox/fcm/messages", params={"token": token} if token else None).json()

    def fcm_state(self) -> dict[str, Any]:
        return self.http.get("/sandbox/fcm/control").json()


class SmtpRecorder:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


@pytest.fixture(scope="session")
def simulators() -> Iterator[Simulators]:
    with serve_app(Litestar(route_handlers=[sandbox_router()])) as base:
        sims = Simulators(base)
        yield sims
        sims.http.close()


@pytest.fixture
def sims(simulators: Simulators) -> Simulators:
    simulators.reset()
    return simulators


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[tuple[SmtpRecorder, int]]:
    recorder = SmtpRecorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()


@pytest.fixture
def smtp(smtp_server: tuple[SmtpRecorder, int]) -> SmtpRecorder:
    recorder, _port = smtp_server
    recorder.messages.clear()
    recorder.envelopes.clear()
    return recorder


def notifications_settings(base: Settings, sims: Simulators, smtp_port: int, **overrides: Any) -> Settings:
    """Settings pointing at the test simulators and SMTP server, with fast retries."""
    values: dict[str, Any] = {
        "sms_url": f"{sims.base}/sandbox/sms",
        "fcm_url": f"{sims.base}/sandbox/fcm",
        "fcm_token_url": f"{sims.base}/sandbox/fcm/token",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "poll_s": 0.05,
        "retry_base_s": 0.05,
        "retry_max_s": 0.2,
        "max_attempts": 4,
        "lease_s": 5.0,
        "send_timeout_s": 2.0,
        **overrides,
    }
    return with_overrides(base, notifications=values)


@pytest.fixture
def settings(base_settings: Settings, sims: Simulators, smtp_server: tuple[SmtpRecorder, int]) -> Settings:
    return notifications_settings(base_settings, sims, smtp_server[1])
