"""The remote transport on a real Redis: two buses in one test stand for two processes (the host of an
actor and a process that asks it); typed replies, errors kept, timeouts, late answers dropped, and
requests a dead consumer left pending reclaimed with XAUTOCLAIM."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
import redis.asyncio as aioredis

from simveb.bus import Actor, AskTimeout, Bus, current_request_id, handler
from simveb.config import Settings, with_overrides
from simveb.errors import Conflict, InternalError, TooManyRequests
from simveb.messages import Ask, Record, Tell
from simveb.remote import GROUP, RemoteTransport
from tests.support import wait_for


class Echoed(Record):
    text: str
    host: str
    tags: tuple[str, ...] = ()


class Shout(Ask[Echoed]):
    text: str
    delay: float = 0.0
    crash: bool = False
    refuse: bool = False
    throttle: bool = False


class Remember(Tell):
    n: int
    delay: float = 0.0


class Recall(Ask[list[int]]):
    pass


class WhichRequest(Ask[str]):
    """Answered with the request id the handler runs under."""


class WhoAreYou(Ask[str]):
    """Answered by both actors: routed by `to`, here or in the other process."""

    addressed: ClassVar[bool] = True
    to: str


class Remote(Actor):
    name = "remote_echo"
    concurrency = 4

    async def on_start(self) -> None:
        self.notes: list[int] = []

    @handler
    async def shout(self, msg: Shout) -> Echoed:
        if msg.delay:
            await asyncio.sleep(msg.delay)
        if msg.crash:
            raise RuntimeError("boom")
        if msg.refuse:
            raise Conflict("already shouted", code="already_shouted", previous="HELLO")
        if msg.throttle:
            raise TooManyRequests("slow down", retry_after=7)
        return Echoed(text=msg.text.upper(), host=self.bus.transport.process, tags=("a", "b"))

    @handler
    async def remember(self, msg: Remember) -> None:
        if msg.delay:
            await asyncio.sleep(msg.delay)
        self.notes.append(msg.n)

    @handler
    async def recall(self, msg: Recall) -> list[int]:
        return list(self.notes)

    @handler
    async def which_request(self, msg: WhichRequest) -> str:
        return current_request_id.get() or ""

    @handler
    async def who(self, msg: WhoAreYou) -> str:
        return self.name


class Local(Actor):
    name = "local_client"

    @handler
    async def who(self, msg: WhoAreYou) -> str:
        return self.name


@pytest.fixture
def placement(settings: Settings, redis_url: str) -> Settings:
    # A stream prefix of its own: Redis db 0 is shared with other test runs.
    return with_overrides(
        settings,
        placement={
            "redis_url": redis_url,
            "stream_prefix": f"simveb-test-{uuid.uuid4().hex[:10]}:",
            "reclaim_idle_s": 0.3,
            "reclaim_interval_s": 0.1,
        },
    )


async def _process(settings: Settings, *, host: bool) -> tuple[Bus, RemoteTransport]:
    bus = Bus(settings)
    if host:
        bus.add(Remote)
        bus.add_remote(Local)
    else:
        bus.add(Local)
        bus.add_remote(Remote)
    bus.declare_graph({})
    await bus.start()
    hosted = list(bus.cells)
    transport = RemoteTransport(bus, settings.placement, hosted=hosted, known=["remote_echo", "local_client"])
    bus.transport = transport
    await transport.start()
    return bus, transport


@pytest.fixture
async def processes(placement: Settings) -> AsyncIterator[Any]:
    started: list[tuple[Bus, RemoteTransport]] = []

    async def start(*, host: bool) -> tuple[Bus, RemoteTransport]:
        pair = await _process(placement, host=host)
        started.append(pair)
        return pair

    yield start
    for bus, transport in reversed(started):
        await transport.stop()
        await bus.stop()
    client = aioredis.from_url(placement.placement.redis_url)
    keys = [k async for k in client.scan_iter(match=placement.placement.stream_prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_a_remote_ask_answers_the_reply_type_the_request_declares(processes: Any) -> None:
    _host_bus, host = await processes(host=True)
    asker_bus, asker = await processes(host=False)
    assert asker_bus.handles(Shout) and "remote_echo" not in asker_bus.cells
    reply = await asker_bus.ask(Shout(text="hello"))
    assert reply == Echoed(text="HELLO", host=host.process, tags=("a", "b"))
    assert isinstance(reply, Echoed) and host.process != asker.process
    assert await asker_bus.ask(Recall()) == []
    assert asker.latency.counts["remote_echo"] == 2


async def test_the_request_id_and_addressed_messages_cross_to_the_other_process(processes: Any) -> None:
    await processes(host=True)
    asker_bus, _ = await processes(host=False)
    token = current_request_id.set("req-from-the-edge")
    try:
        assert await asker_bus.ask(WhichRequest()) == "req-from-the-edge"
    finally:
        current_request_id.reset(token)
    assert await asker_bus.ask(WhichRequest()) == ""
    assert asker_bus.addressees(WhoAreYou) == ["local_client", "remote_echo"]
    assert await asker_bus.ask(WhoAreYou(to="remote_echo")) == "remote_echo"
    assert await asker_bus.ask(WhoAreYou(to="local_client")) == "local_client"


async def test_a_remote_domain_error_arrives_as_the_same_class_with_status_code_and_fields(processes: Any) -> None:
    await processes(host=True)
    asker_bus, _ = await processes(host=False)
    with pytest.raises(Conflict) as refused:
        await asker_bus.ask(Shout(text="x", refuse=True))
    assert type(refused.value) is Conflict
    assert (refused.value.status, refused.value.code, refused.value.detail) == (
        409,
        "already_shouted",
        "already shouted",
    )
    assert refused.value.problem()["previous"] == "HELLO"
    with pytest.raises(TooManyRequests) as throttled:
        await asker_bus.ask(Shout(text="x", throttle=True))
    assert throttled.value.status == 429 and throttled.value.headers == {"Retry-After": "7"}


async def test_a_remote_crash_is_the_same_500_as_a_local_one(processes: Any) -> None:
    await processes(host=True)
    asker_bus, _ = await processes(host=False)
    with pytest.raises(InternalError) as crashed:
        await asker_bus.ask(Shout(text="x", crash=True))
    assert crashed.value.status == 500 and "boom" not in crashed.value.detail


async def test_a_remote_ask_times_out_and_its_late_answer_is_dropped(processes: Any) -> None:
    await processes(host=True)
    asker_bus, asker = await processes(host=False)
    with pytest.raises(AskTimeout):
        await asker_bus.ask(Shout(text="slow", delay=0.6), timeout=0.2)
    # The host still answers, after the asker gave up: the answer is dropped, not mistaken for another.
    await wait_for(lambda: asker.late_replies == 1, timeout=5)
    assert (await asker_bus.ask(Shout(text="next"))).text == "NEXT"


async def test_an_ask_to_an_actor_hosted_nowhere_times_out_and_is_dropped_by_a_later_host(processes: Any) -> None:
    asker_bus, _ = await processes(host=False)
    with pytest.raises(AskTimeout):
        await asker_bus.ask(Shout(text="nobody"), timeout=0.2)
    _, host = await processes(host=True)
    # The host that comes up later takes the old request from the stream and drops it unhandled.
    await wait_for(lambda: host.expired_requests == 1, timeout=5)
    assert host.served == 0


async def test_a_tell_reaches_the_remote_host(processes: Any) -> None:
    await processes(host=True)
    asker_bus, _ = await processes(host=False)
    for n in range(3):
        await asker_bus.tell(Remember(n=n))

    async def noted() -> Any:
        got = await asker_bus.ask(Recall())
        return got if len(got) == 3 else None

    assert sorted(await wait_for(noted, timeout=5)) == [0, 1, 2]


async def test_a_request_a_dead_consumer_left_pending_is_reclaimed_and_answered(
    processes: Any, placement: Settings
) -> None:
    asker_bus, asker = await processes(host=False)
    stream = asker.request_stream("remote_echo")
    client = aioredis.from_url(placement.placement.redis_url)
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        ask = asyncio.create_task(asker_bus.ask(Shout(text="orphan"), timeout=10))
        # A consumer takes the request and dies before answering (never acknowledges it).
        got: Any = None
        while not got:
            got = await client.xreadgroup(GROUP, "dead-consumer", {stream: ">"}, count=1, block=100)
        pending = await client.xpending(stream, GROUP)
        assert pending["pending"] == 1
        _, host = await processes(host=True)
        reply = await asyncio.wait_for(ask, timeout=8)
        assert reply.text == "ORPHAN" and host.reclaimed == 1
        assert (await client.xpending(stream, GROUP))["pending"] == 0
    finally:
        await client.aclose()


async def test_gone_consumers_are_forgotten_and_old_entries_trimmed(
    placement: Settings, processes: Any, redis_url: str
) -> None:
    _, host = await processes(host=True)
    host.settings = with_overrides(placement, placement={"stream_retention_s": 0.5}).placement
    stream = host.request_stream("remote_echo")
    client = aioredis.from_url(redis_url)
    try:
        await client.xadd(stream, {"id": "old", "kind": b"tell", "deadline": "0", "body": b""})
        await client.xreadgroup(GROUP, "gone-process", {stream: "0"}, count=1)  # a consumer with nothing pending
        await asyncio.sleep(0.7)
        await host.tidy_once()
        names = {c["name"] for c in await client.xinfo_consumers(stream, GROUP)}
        assert b"gone-process" not in names
        assert await client.xlen(stream) == 0
    finally:
        await client.aclose()


async def test_a_tell_is_acknowledged_once_handled_not_once_queued(processes: Any, redis_url: str) -> None:
    _, host = await processes(host=True)
    asker_bus, _ = await processes(host=False)
    stream = host.request_stream("remote_echo")
    client = aioredis.from_url(redis_url)
    try:
        await asker_bus.tell(Remember(n=7, delay=0.5))
        # Taken by the host and being handled: still pending, so a host dying now leaves it reclaimable.
        await wait_for(lambda: host._in_flight, timeout=5)
        assert (await client.xpending(stream, GROUP))["pending"] == 1
        await wait_for(lambda: not host._in_flight, timeout=5)
        assert (await client.xpending(stream, GROUP))["pending"] == 0
        assert await asker_bus.ask(Recall()) == [7]
    finally:
        await client.aclose()
