"""The bus without a database: ordering, backpressure, timeouts, supervision, drain, graph, dead letters."""

from __future__ import annotations

import asyncio
import time

import pytest

from simveb.bus import Actor as BaseActor
from simveb.bus import ActorStopped, AskTimeout, Bus, BusError, check_acyclic, handler
from simveb.config import Settings, with_overrides
from simveb.errors import Conflict, InternalError
from simveb.messages import Ask, Event, Record, Tell


class Echo(Record):
    text: str
    handled_by: int


class Say(Ask[Echo]):
    text: str
    delay: float = 0.0
    crash: bool = False
    refuse: bool = False


class Note(Tell):
    n: int


class Happened(Event):
    n: int


class GetNotes(Ask[list[int]]):
    pass


class Parrot(BaseActor):
    name = "parrot"
    starts = 0
    stops = 0

    async def on_start(self) -> None:
        type(self).starts += 1
        self.instance_no = type(self).starts
        self.notes: list[int] = []

    async def on_stop(self) -> None:
        type(self).stops += 1

    @handler
    async def say(self, msg: Say) -> Echo:
        if msg.delay:
            await asyncio.sleep(msg.delay)
        if msg.crash:
            raise RuntimeError("boom")
        if msg.refuse:
            raise Conflict("refused on purpose")
        return Echo(text=msg.text, handled_by=self.instance_no)

    @handler
    async def note(self, msg: Note) -> None:
        self.notes.append(msg.n)

    @handler
    async def happened(self, event: Happened) -> None:
        self.notes.append(-event.n)

    @handler
    async def get_notes(self, msg: GetNotes) -> list[int]:
        return list(self.notes)


def bus_settings(**bus: object) -> Settings:
    return with_overrides(Settings(), bus={"ask_timeout_s": 2.0, "shutdown_grace_s": 2.0, **bus})


async def started(actor: type[BaseActor] = Parrot, **bus: object) -> Bus:
    Parrot.starts = Parrot.stops = 0
    b = Bus(bus_settings(**bus))
    b.add(actor)
    b.declare_graph({})
    await b.start()
    return b


async def test_ask_returns_the_typed_reply() -> None:
    bus = await started()
    reply = await bus.ask(Say(text="bonjour"))
    assert reply == Echo(text="bonjour", handled_by=1)
    await bus.stop()


async def test_messages_are_handled_in_order() -> None:
    bus = await started()
    for n in range(200):
        await bus.tell(Note(n=n))
    assert await bus.ask(GetNotes()) == list(range(200))
    await bus.stop()


async def test_full_mailbox_makes_senders_wait() -> None:
    bus = await started(mailbox_size=2)
    slow = asyncio.create_task(bus.ask(Say(text="slow", delay=0.3)))
    await asyncio.sleep(0.02)  # the actor is now busy with the slow message
    await bus.tell(Note(n=1))
    await bus.tell(Note(n=2))  # mailbox full now
    third = asyncio.create_task(bus.tell(Note(n=3)))
    await asyncio.sleep(0.1)
    assert not third.done(), "a full mailbox must make the sender wait"
    await slow
    await asyncio.wait_for(third, 1)
    assert await bus.ask(GetNotes()) == [1, 2, 3]
    await bus.stop()


async def test_ask_timeout_is_an_error_not_a_hang() -> None:
    bus = await started()
    started_at = time.monotonic()
    with pytest.raises(AskTimeout) as info:
        await bus.ask(Say(text="late", delay=1.0), timeout=0.1)
    assert time.monotonic() - started_at < 0.5
    assert info.value.status == 503
    await bus.stop()


async def test_expected_errors_travel_back_unchanged() -> None:
    bus = await started()
    with pytest.raises(Conflict, match="refused on purpose"):
        await bus.ask(Say(text="x", refuse=True))
    assert bus.cells["parrot"].failures == 0  # an expected error is not a crash
    await bus.stop()


async def test_a_crash_fails_only_its_own_message() -> None:
    bus = await started(max_crashes=10)
    first = asyncio.create_task(bus.ask(Say(text="a", crash=True)))
    second = asyncio.create_task(bus.ask(Say(text="b")))
    with pytest.raises(InternalError):
        await first
    assert (await second).text == "b"
    assert bus.cells["parrot"].failures == 1
    assert bus.cells["parrot"].restarts == 0
    await bus.stop()


async def test_repeated_crashes_restart_the_actor() -> None:
    bus = await started(max_crashes=3, crash_window_s=10)
    for _ in range(3):
        with pytest.raises(InternalError):
            await bus.ask(Say(text="x", crash=True))
    reply = await bus.ask(Say(text="after"))
    assert bus.cells["parrot"].restarts == 1
    assert Parrot.stops == 1
    assert reply.handled_by == 2, "a new instance answers after the restart"
    await bus.stop()


class Broken(BaseActor):
    name = "broken"

    async def on_start(self) -> None:
        raise RuntimeError("cannot open its resources")

    @handler
    async def say(self, msg: Say) -> Echo:
        return Echo(text=msg.text, handled_by=0)


async def test_an_actor_that_cannot_start_is_reported_down() -> None:
    bus = await started(Broken)
    assert bus.down() == ["broken"]
    with pytest.raises(AskTimeout):
        await bus.ask(Say(text="x"), timeout=0.1)
    await bus.stop()


async def test_shutdown_drains_the_mailbox() -> None:
    bus = await started(shutdown_grace_s=5)
    asks = [asyncio.create_task(bus.ask(Say(text=str(i), delay=0.01))) for i in range(20)]
    await asyncio.sleep(0)
    await bus.stop()
    assert [a.result().text for a in asks] == [str(i) for i in range(20)]
    with pytest.raises(ActorStopped):
        await bus.ask(Say(text="late"))


async def test_what_cannot_drain_in_time_fails_with_actor_stopped() -> None:
    bus = await started(shutdown_grace_s=0.2)
    asks = [asyncio.create_task(bus.ask(Say(text=str(i), delay=0.1), timeout=5)) for i in range(10)]
    await asyncio.sleep(0)
    await bus.stop()
    results = await asyncio.gather(*asks, return_exceptions=True)
    done = [r for r in results if isinstance(r, Echo)]
    stopped = [r for r in results if isinstance(r, ActorStopped)]
    assert done and stopped and len(done) + len(stopped) == 10


class Unrouted(Ask[int]):
    pass


async def test_dead_letters_are_counted() -> None:
    bus = await started()
    with pytest.raises(BusError):
        await bus.ask(Unrouted())
    assert bus.dead_letters == 1
    await bus.stop()


async def test_publish_fans_out_to_subscribers() -> None:
    bus = await started()
    assert await bus.publish(Happened(n=7)) == 1
    assert await bus.ask(GetNotes()) == [-7]
    await bus.stop()


class Busy(BaseActor):
    name = "busy"
    concurrency = 4

    @handler
    async def say(self, msg: Say) -> Echo:
        await asyncio.sleep(msg.delay)
        return Echo(text=msg.text, handled_by=0)


async def test_opt_in_concurrency_handles_messages_at_once() -> None:
    bus = await started(Busy)
    t0 = time.monotonic()
    await asyncio.gather(*(bus.ask(Say(text="x", delay=0.2)) for _ in range(4)))
    assert time.monotonic() - t0 < 0.6
    await bus.stop()


def test_cycles_in_the_ask_graph_are_refused() -> None:
    with pytest.raises(BusError, match="a -> b -> c -> a"):
        check_acyclic({"a": ["b"], "b": ["c"], "c": ["a"]})
    check_acyclic({"a": ["b", "c"], "b": ["c"], "c": []})


class AskVia(Ask[str]):
    pass


class Asker(BaseActor):
    name = "asker"

    @handler
    async def via(self, msg: AskVia) -> str:
        return (await self.bus.ask(Say(text="via asker"))).text


@pytest.mark.parametrize("declared", [True, False])
async def test_only_declared_asks_are_allowed(declared: bool) -> None:
    bus = Bus(bus_settings())
    bus.add(Parrot)
    bus.add(Asker)
    bus.declare_graph({"asker": {"parrot"} if declared else set()})
    await bus.start()
    if declared:
        assert await bus.ask(AskVia()) == "via asker"
    else:
        with pytest.raises(InternalError):  # the handler's forbidden ask is a bug, supervised as a crash
            await bus.ask(AskVia())
    await bus.stop()


def test_start_order_puts_the_asked_first() -> None:
    bus = Bus(bus_settings())
    bus.add(Asker)
    bus.add(Parrot)
    bus.declare_graph({"asker": {"parrot"}})
    assert bus.start_order() == ["parrot", "asker"]


def test_two_actors_cannot_answer_the_same_request() -> None:
    bus = Bus(bus_settings())
    bus.add(Parrot)

    class Copycat(BaseActor):
        name = "copycat"

        @handler
        async def say(self, msg: Say) -> Echo:
            raise AssertionError

    with pytest.raises(BusError, match="handled by parrot and copycat"):
        bus.add(Copycat)


def test_graph_must_name_known_actors() -> None:
    bus = Bus(bus_settings())
    bus.add(Parrot)
    with pytest.raises(BusError, match="unknown actor"):
        bus.declare_graph({"parrot": {"ghost"}})
