"""Helpers for the integrations tests: drive the X-Road simulator over HTTP, fast test settings.

The simulator runs in its own server (tests/sandbox_server.py); tests tell it how to behave through
its control endpoint and read its call counters there, exactly as a person would with curl.

A test module takes the fixtures by name: `sim_url, sim = xroad.sim_url, xroad.sim`
(after `from tests import xroad_support as xroad`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from simveb.config import Settings, with_overrides
from simveb.sandbox import sandbox_router
from tests.sandbox_server import serve_app

# Small timeouts and delays so failure paths take milliseconds; retries=2 means 3 calls at most.
FAST = {
    "connect_timeout_s": 0.5,
    "read_timeout_s": 0.3,
    "lookup_budget_s": 3.0,
    "retries": 2,
    "retry_base_delay_s": 0.005,
    "retry_max_delay_s": 0.02,
    "breaker_failures": 4,
    "breaker_window_s": 30.0,
    "breaker_cooldown_s": 0.5,
    "queue_poll_s": 0.05,
    "queue_base_delay_s": 0.05,
    "queue_max_delay_s": 0.1,
    "queue_max_attempts": 3,
}


@contextlib.contextmanager
def simulator_server() -> Iterator[str]:
    """Every simulator, alone, on a free port; yields the base URL."""
    with serve_app(Litestar(route_handlers=[sandbox_router()])) as url:
        yield url


def settings_for(base: Settings, base_url: str, **integrations: Any) -> Settings:
    return with_overrides(base, integrations={"xroad_url": f"{base_url}/sandbox/xroad", **FAST, **integrations})


class Simulator:
    """The X-Road simulator's control endpoint."""

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/sandbox/xroad"
        self.http = httpx.Client(timeout=5)

    def reset(self) -> None:
        self.http.post(f"{self.url}/_reset").raise_for_status()

    def behave(self, mode: str, **options: Any) -> None:
        self.http.post(f"{self.url}/_control", json={"mode": mode, **options}).raise_for_status()

    def state(self) -> dict[str, Any]:
        return self.http.get(f"{self.url}/_control").json()

    def calls(self, service: str) -> int:
        return self.state()["calls"][service]

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """One simulator server per test module."""
    with simulator_server() as url:
        yield url


@pytest.fixture
def sim(sim_url: str) -> Iterator[Simulator]:
    """The control endpoint, reset before and after the test."""
    control = Simulator(sim_url)
    control.reset()
    yield control
    control.reset()
    control.close()
