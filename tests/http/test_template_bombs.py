"""Template bombs, tried as an admin gone rogue (or an attacker with a stolen admin token, or one
who can write the table): each is refused when saved, and one planted straight in the table fails
its own message while the event loop keeps answering."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from simveb.config import Settings, with_overrides
from tests import notifications_support as fixtures
from tests.http.test_notifications import EDIT, SEND, assert_problem, seed
from tests.notifications_support import Simulators
from tests.support import wait_for

simulators, sims, smtp_server = fixtures.simulators, fixtures.sims, fixtures.smtp_server

BOMBS = {
    "repeat": "{{ 'x' * 10**10 }}",
    "power": "{{ 9 ** 999999999 }}",
    "list repeat": "{{ ([1] * 100000) * 100000 }}",
    "huge range": "{% for i in range(10**9) %}{% endfor %}",
    "nested loops": (
        "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    ),
    "output": "{% for a in range(10000) %}{{ 'x' * 10000 }}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "memory": "{{ 'x' | center(10**9) }}",
}


@pytest.fixture
def settings(base_settings: Settings, sims: Simulators, smtp_server: Any) -> Settings:
    s = fixtures.notifications_settings(base_settings, sims, smtp_server[1])
    return with_overrides(s, notifications={"template_timeout_s": 1.0, "template_memory_mb": 256})


async def custom_template(client: Any, auth: Any) -> dict[str, Any]:
    r = await client.get(
        "/api/notifications/templates", params={"event": "custom", "channel": "sms"}, headers=auth(EDIT)
    )
    return {t["language"]: t for t in r.json()}["fr"]


class LoopWatch:
    """Measures the longest gap between two 10 ms ticks of the event loop while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.worst = max(self.worst, now - last)
            last = now

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.parametrize("name", list(BOMBS))
async def test_each_bomb_is_refused_at_save(client, runtime, auth, name: str) -> None:
    await seed(runtime)
    fr = await custom_template(client, auth)
    async with LoopWatch() as watch:
        r = await client.put(
            f"/api/notifications/templates/{fr['id']}", json={"body": BOMBS[name]}, headers=auth(EDIT, sub="admin-1")
        )
    assert_problem(r, 422, "template_limit")
    assert watch.worst < 0.5, f"event loop stalled {watch.worst:.2f} s"
    assert (await custom_template(client, auth))["body"] == fr["body"]  # nothing written


async def test_planted_bombs_fail_their_message_and_the_loop_stays_responsive(
    client, runtime, auth, settings: Settings, sims: Simulators
) -> None:
    await seed(runtime)
    fr = await custom_template(client, auth)
    sms = {"to": "+22997001122", "template": "custom", "params": {"text": "x"}}
    con = await asyncpg.connect(settings.database.url)
    try:
        for name, bomb in BOMBS.items():
            await con.execute("UPDATE notifications.templates SET body = $1 WHERE id = $2", bomb, fr["id"])
            async with LoopWatch() as watch:
                # A health probe sent while the bomb renders must be answered at once.
                started = time.monotonic()
                send = asyncio.create_task(client.post("/api/notifications/sms", json=sms, headers=auth(SEND)))
                await asyncio.sleep(0.2)
                probe = await client.get("/health/live")
                probe_s = time.monotonic() - started
                r = await send
            assert probe.status_code == 200
            assert_problem(r, 422, "template_limit")
            assert watch.worst < 0.5, f"{name}: event loop stalled {watch.worst:.2f} s"
            assert probe_s < 0.8, f"{name}: health answered after {probe_s:.2f} s"
        # The renderer recovers: a sane template renders and is delivered.
        await con.execute("UPDATE notifications.templates SET body = $1 WHERE id = $2", "{{ text }}", fr["id"])
    finally:
        await con.close()
    r = await client.post("/api/notifications/sms", json={**sms, "params": {"text": "ok"}}, headers=auth(SEND))
    assert r.status_code == 202, r.text
    await wait_for(lambda: sims.sms("+22997001122"), timeout=20)
    assert [m["text"] for m in sims.sms("+22997001122")] == ["ok"]  # no bomb reached the simulator
