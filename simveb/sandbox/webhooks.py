"""Webhook delivery shared by the payment simulators: retries, and the misbehaviour tests ask for.

A real provider retries a webhook that did not get a 2xx, may deliver one twice, late, or after a
later one. `WebhookControl` makes the simulator do each of these on purpose: drop them, delay them,
send each `duplicates` times, or hold them (`hold`, or `reorder`) until `flush`, which sends the
held ones newest first. Every attempt is recorded (URL, status, error) for tests to read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import httpx
import msgspec


class WebhookControl(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["deliver", "drop", "hold"] = "deliver"
    delay_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0
    duplicates: Annotated[int, msgspec.Meta(ge=1, le=50)] = 1
    reorder: bool = False  # hold every webhook; flush sends them newest first
    attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5
    retry_base_s: Annotated[float, msgspec.Meta(ge=0, le=30)] = 0.2
    url: str | None = None  # where webhooks go (the provider dashboard's setting); None = per transaction


Headers = Callable[[bytes], dict[str, str]]


class WebhookSender:
    def __init__(self) -> None:
        self.control = WebhookControl()
        self.deliveries: list[dict[str, Any]] = []
        self.held: list[tuple[str, bytes, Headers, str]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        return self._client

    def send(self, url: str | None, body: bytes, headers: Headers, label: str) -> None:
        """Queue one webhook according to the current control."""
        target = self.control.url or url
        if not target:
            self.deliveries.append({"event": label, "url": None, "status": None, "error": "no webhook URL"})
            return
        if self.control.mode == "drop":
            self.deliveries.append({"event": label, "url": target, "status": None, "error": "dropped on purpose"})
            return
        if self.control.mode == "hold" or self.control.reorder:
            self.held.append((target, body, headers, label))
            return
        for _ in range(self.control.duplicates):
            self._spawn(self._deliver(target, body, headers, label, self.control.delay_s))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def flush(self) -> int:
        """Send the held webhooks, newest first, one after the other; return how many."""
        held, self.held = self.held, []
        for target, body, headers, label in reversed(held):
            for _ in range(self.control.duplicates):
                await self._deliver(target, body, headers, label, 0.0)
        return len(held)

    async def _deliver(self, url: str, body: bytes, headers: Headers, label: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        for attempt in range(1, self.control.attempts + 1):
            record: dict[str, Any] = {"event": label, "url": url, "attempt": attempt, "at": time.time()}
            try:
                # A fresh signature each attempt, as providers sign at send time.
                r = await self.client.post(
                    url, content=body, headers={"Content-Type": "application/json", **headers(body)}
                )
                record["status"] = r.status_code
                record["error"] = None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                record["status"] = None
                record["error"] = type(exc).__name__
            self.deliveries.append(record)
            if record["status"] is not None and 200 <= record["status"] < 300:
                return
            await asyncio.sleep(self.control.retry_base_s * 2 ** (attempt - 1))

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until no delivery is in flight."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
