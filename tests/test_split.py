"""Actors split across processes (issue 14): two `simveb serve` processes on one database and one
Redis, one hosting registrations, payments and documents, the other the rest. A registration goes
from filing to its carte grise through HTTP against both, paid on the FedaPay simulator; the
payments-hosting process is killed mid-flow and started again, and nothing is lost; a DomainError
raised in the other process keeps its status, code and fields. Also, in one test process: an event
whose subscribers live in two processes reaches both (per-subscriber outbox delivery).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from simveb.actors.integrations.actor import IntegrationsActor
from simveb.actors.users.actor import UsersActor
from simveb.bus import Actor, handler
from simveb.config import Settings, with_overrides
from simveb.messages import Ask, Event
from simveb.runtime import Runtime
from tests.conftest import truncate_all
from tests.documents_support import pdf_bytes, upload
from tests.payments_support import checkout, simulators
from tests.registrations_support import FIRST_DOCS, new_vehicle, person
from tests.support import ROOT, free_port, simveb, wait_for

FRONT = "registrations,payments,documents"
BACK = "config,integrations,notifications,users,auth,vehicles"


# --- per-subscriber outbox delivery, two runtimes in this process ------------------------------------


class Pinged(Event):
    n: int


class Ping(Ask[None]):
    n: int


SEEN: dict[str, list[int]] = {"near": [], "far": []}


class Pinger(Actor):
    name = "split_pinger"

    @handler
    async def ping(self, msg: Ping, con: Any) -> None:
        await self.emit(con, Pinged(n=msg.n))


class NearListener(Actor):
    name = "split_near"

    @handler
    async def on_pinged(self, msg: Pinged, con: Any) -> None:
        SEEN["near"].append(msg.n)


class FarListener(Actor):
    name = "split_far"

    @handler
    async def on_pinged(self, msg: Pinged, con: Any) -> None:
        SEEN["far"].append(msg.n)


@pytest.fixture
def prefix() -> str:
    return f"simveb-test-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def forget_streams(redis_url: str, prefix: str) -> AsyncIterator[None]:
    yield
    client = aioredis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_an_event_with_subscribers_in_two_processes_reaches_both(
    settings: Settings, redis_url: str, prefix: str, forget_streams: None
) -> None:
    await truncate_all(settings.database.url)
    SEEN["near"].clear()
    SEEN["far"].clear()
    actors = [Pinger, NearListener, FarListener]

    def placed(*names: str) -> Settings:
        return with_overrides(
            settings,
            placement={"actors": list(names), "redis_url": redis_url, "stream_prefix": prefix},
            bus={"relay_poll_s": 30.0},  # only NOTIFY wakes the relays: the hand-over must wake the other
        )

    one = await Runtime(placed("split_pinger", "split_near"), actors=actors, graph={}).start(
        migrate_first=False, seed_if_empty=False
    )
    try:
        await one.bus.ask(Ping(n=1))  # type: ignore[union-attr]
        await wait_for(lambda: SEEN["near"] == [1], timeout=5)

        async def handed_on() -> Any:
            async with one.db.connection() as con:  # type: ignore[union-attr]
                return await con.fetchrow("SELECT pending, published_at FROM bus.outbox WHERE lease_until IS NULL")

        # The far subscriber's process is not running: the row waits for it, published by nobody.
        row = await wait_for(handed_on, timeout=5)
        assert row["pending"] == ["split_far"] and row["published_at"] is None and SEEN["far"] == []
        two = await Runtime(placed("split_far"), actors=actors, graph={}).start(
            migrate_first=False, seed_if_empty=False
        )
        try:
            await wait_for(lambda: SEEN["far"] == [1], timeout=5)
            await one.bus.ask(Ping(n=2))  # type: ignore[union-attr]
            await wait_for(lambda: SEEN["near"] == [1, 2] and SEEN["far"] == [1, 2], timeout=5)

            async def published() -> bool:
                async with one.db.connection() as con:  # type: ignore[union-attr]
                    return await con.fetchval("SELECT count(*) FROM bus.outbox WHERE published_at IS NOT NULL") == 2

            await wait_for(published, timeout=5)
            assert one.relay is not None and two.relay is not None
            # Each row was handed on once (by whichever relay claimed it first) and published once.
            assert one.relay.delivered + two.relay.delivered == 2
            assert one.relay.handed_on + two.relay.handed_on == 2
        finally:
            await two.stop()
    finally:
        await one.stop()


# --- N identical processes share the rate limit -------------------------------------------------------


async def test_a_client_spreading_requests_over_processes_gets_one_budget_through_the_transport_redis(
    runtime: Runtime, settings: Settings, redis_url: str
) -> None:
    from simveb.http.app import create_app

    # No rate-limit store of its own: the transport's Redis carries the counts.
    limited = with_overrides(
        settings, ratelimit={"per_minute": 3}, redis={"url": ""}, placement={"redis_url": redis_url}
    )
    address = f"10.14.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    apps = [create_app(limited, runtime=runtime) for _ in range(3)]  # three processes behind a balancer
    codes = []
    for _ in range(2):
        for app in apps:  # round robin, as a balancer would spread the attacker's requests
            transport = httpx.ASGITransport(app=app, client=(address, 1))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                codes.append((await c.get("/api/config/services")).status_code)
    assert codes == [200, 200, 200, 429, 429, 429]


# --- placement is checked before anything starts ---------------------------------------------------


def test_serve_refuses_an_unknown_actor_and_a_partial_placement_without_transport(settings: Settings) -> None:
    unknown = simveb(settings, "serve", "--actors", "payments,nope", env={"SIMVEB_PLACEMENT__REDIS_URL": ""})
    assert unknown.returncode == 1 and "placement.actors: unknown actor(s) nope" in unknown.stderr
    alone = simveb(settings, "serve", "--actors", "payments", env={"SIMVEB_PLACEMENT__REDIS_URL": ""})
    assert alone.returncode == 1 and "needs placement.redis_url" in alone.stderr


# --- two `simveb serve` processes ---------------------------------------------------------------------


class Server:
    """One `simveb serve --actors ...` in its own process group (granian forks workers)."""

    def __init__(self, name: str, actors: str, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.actors = actors
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simveb.cli", "serve", "--port", str(self.port), "--actors", self.actors],
            env={**self.env, "SIMVEB_SERVER__PUBLIC_URL": self.url},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        out.close()

    def kill(self) -> None:
        """SIGKILL the whole group: no drain, no acknowledgement, as a crashed machine."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    async def ready(self) -> dict[str, Any]:
        async def answered() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                async with httpx.AsyncClient() as c:
                    r = await c.get(f"{self.url}/health/ready", timeout=2)
                return r.json() if r.status_code == 200 else None
            except httpx.HTTPError:
                return None

        return await wait_for(answered, timeout=120, interval=0.3)


@pytest.fixture
def servers(
    settings: Settings, redis_url: str, prefix: str, forget_streams: None, tmp_path: Path
) -> Iterator[tuple[Server, Server]]:
    env = {
        **os.environ,
        "SIMVEB_CONFIG": str(ROOT / "config.toml"),
        "SIMVEB_DATABASE__URL": settings.database.url,
        "SIMVEB_DATABASE__POOL_MAX": "6",
        "SIMVEB_SERVER__DATA_DIR": settings.server.data_dir,
        "SIMVEB_SERVER__LOG_LEVEL": "WARNING",
        "SIMVEB_RATELIMIT__PER_MINUTE": "1000000",
        "SIMVEB_BUS__ASK_TIMEOUT_S": "5",
        # Events a killed relay had claimed come back when its lease ends (then the next poll).
        "SIMVEB_BUS__RELAY_LEASE_S": "10",
        "SIMVEB_BUS__RELAY_POLL_S": "1",
        "SIMVEB_PLACEMENT__REDIS_URL": redis_url,
        "SIMVEB_PLACEMENT__STREAM_PREFIX": prefix,
        "SIMVEB_PLACEMENT__RECLAIM_IDLE_S": "2",
        "SIMVEB_PLACEMENT__RECLAIM_INTERVAL_S": "0.5",
        "SIMVEB_NOTIFICATIONS__WORKERS": "0",  # no SMS or email leaves the test
    }
    front = Server("front", FRONT, env, tmp_path)
    back = Server("back", BACK, env, tmp_path)
    yield front, back
    front.stop()
    back.stop()


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with simulators() as url:
        yield url


async def test_a_registration_completes_across_two_processes_and_survives_killing_the_payments_host(
    settings: Settings, servers: tuple[Server, Server], sim_url: str
) -> None:
    await truncate_all(settings.database.url)
    front, back = servers
    for server in servers:
        # Payments goes to the simulator served by this test; the provider calls the webhook on the
        # process that does NOT host payments, which asks payments in the other one.
        server.env = {
            **server.env,
            "SIMVEB_PAYMENTS__FEDAPAY_URL": f"{sim_url}/sandbox/fedapay",
            "SIMVEB_PAYMENTS__KKIAPAY_URL": f"{sim_url}/sandbox/kkiapay",
            "SIMVEB_PAYMENTS__CALLBACK_BASE_URL": back.url,
        }
    front.start()
    placed = await front.ready()  # migrates and seeds the empty database first
    assert placed["placement"]["hosted"] == ["documents", "payments", "registrations"]
    assert placed["checks"]["transport"] == "ok"
    back.start()
    assert (await back.ready())["placement"]["remote"] == ["documents", "payments", "registrations"]

    # People and their tokens (same data directory, so the same development signing key).
    users = Runtime(
        with_overrides(settings, placement={"actors": [], "redis_url": ""}),
        actors=[IntegrationsActor, UsersActor],
        graph={"users": {"integrations"}, "integrations": set()},
        relay=False,
    )
    await users.start(migrate_first=False, seed_if_empty=False)
    try:
        citizen = await person(users, "citizen")
        agent = await person(users, "agent")
        validator = await person(users, "validator")
    finally:
        await users.stop()

    async with (
        httpx.AsyncClient(base_url=front.url, timeout=30) as a,
        httpx.AsyncClient(base_url=back.url, timeout=30) as b,
    ):
        # Filed through the process without registrations.
        r = await b.post("/api/immatriculations", json={"vehicle": new_vehicle(model="406")}, headers=citizen.headers)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        # A DomainError raised in the other process: the same status, code and fields on both.
        refused = [
            await api.put(f"/api/immatriculations/{rid}/status", json={"status": "submitted"}, headers=citizen.headers)
            for api in (a, b)
        ]
        assert [x.status_code for x in refused] == [409, 409]
        assert refused[0].headers["content-type"].startswith("application/problem+json")
        assert refused[1].json() == refused[0].json() and set(refused[1].json()["missing"]) == set(FIRST_DOCS)

        docs = []
        for code in FIRST_DOCS:
            r = await upload(a, citizen.headers, pdf_bytes(code), type_code=code, request_id=rid)
            assert r.status_code == 201, r.text
            docs.append(r.json())
        for doc in docs:
            r = await b.post(
                f"/api/documents/{doc['id']}/validate", json={"decision": "approve"}, headers=agent.headers
            )
            assert r.status_code == 200, r.text
        r = await b.put(f"/api/immatriculations/{rid}/status", json={"status": "submitted"}, headers=citizen.headers)
        assert r.status_code == 200 and r.json()["status"] == "waiting_for_payment", r.text

        # Mid-flow: the payments host dies (no drain) right after PaymentRequested was committed.
        front.kill()
        down = await b.get(f"/api/immatriculations/{rid}", headers=citizen.headers)
        assert down.status_code == 503 and down.json()["code"] == "ask_timeout"
        assert (await b.get("/health/ready")).status_code == 200  # the other process keeps serving
        front.start()
        await front.ready()

        async def started() -> Any:
            r = await b.post(
                "/api/payments/initiate", json={"payable_id": rid, "provider": "fedapay"}, headers=citizen.headers
            )
            last.append(r)
            return r if r.status_code == 201 else None  # the payable opens when the event is delivered

        last: list[httpx.Response] = []
        try:
            r = await wait_for(started, timeout=45, interval=0.3)
        except AssertionError:
            raise AssertionError(f"{last[-1].status_code} {last[-1].text} {await _outbox(settings)}") from None
        await checkout(r.json()["checkout_url"], "approve")

        async def paid() -> Any:
            got = await a.get(f"/api/immatriculations/{rid}", headers=citizen.headers)
            return got.json() if got.json()["status"] not in ("waiting_for_payment",) else None

        assert (await wait_for(paid, timeout=30, interval=0.3))["status"] in ("paid", "assigned_to_staff")
        for status, api in (("verified", b), ("pre_validated", a)):
            r = await api.put(f"/api/immatriculations/{rid}/status", json={"status": status}, headers=agent.headers)
            assert r.status_code == 200, r.text
        r = await b.post(f"/api/immatriculations/{rid}/validate", json={"note": "ok"}, headers=validator.headers)
        assert r.status_code == 200, r.text
        plate = r.json()["plate"]

        async def issued() -> Any:
            page = await b.get(
                "/api/documents", params={"request_id": rid, "type": "issued_certificate"}, headers=citizen.headers
            )
            items = page.json()["items"]
            return items[0] if items else None

        certificate = await wait_for(issued, timeout=90, interval=0.5)
        pdf = await b.get(f"/api/documents/{certificate['id']}/download", headers=citizen.headers)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert plate

        # Every event reached every subscriber, wherever it lives: nothing is left in the outbox.
        async def settled() -> Any:
            import asyncpg

            con = await asyncpg.connect(settings.database.url)
            try:
                return await con.fetchval("SELECT count(*) FROM bus.outbox WHERE published_at IS NULL") == 0
            finally:
                await con.close()

        await wait_for(settled, timeout=30, interval=0.5)
        metrics = (await b.get("/metrics")).text
        assert 'simveb_remote_ask_seconds_count{actor="registrations"}' in metrics
        assert 'simveb_actor_hosted{actor="payments"} 0.0' in metrics


async def _outbox(settings: Settings) -> list[Any]:
    """The outbox rows, to say what was left undelivered when a step does not happen."""
    import asyncpg

    con = await asyncpg.connect(settings.database.url)
    try:
        rows = await con.fetch(
            "SELECT id, type, pending, published_at, last_error, claimed_by FROM bus.outbox ORDER BY id"
        )
        return [dict(r) for r in rows]
    finally:
        await con.close()
