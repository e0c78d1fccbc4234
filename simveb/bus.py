"""The in-process message bus: actors, mailboxes, dispatch, connections for handlers, supervision.

Every domain is an `Actor` with one bounded mailbox. Callers `ask` (request/reply with a timeout),
`tell` (fire and forget) or `publish` (fan-out of an event). The message bases live in
`simveb.messages` (what contracts import) and durable events in `simveb.outbox`.

A handler that declares a connection parameter runs inside a transaction the runtime opened for it
(for an event, the one in which its inbox row is written). A handler never holds a connection while
it asks another actor: the asked actor may need one from the same pool. With
`bus.strict_connections` (development and tests) such an ask is refused at once.

The hot path (ask) is an `asyncio.Queue` carrying an envelope with a future, and a `call_later`
timer for the timeout: measured about 6x cheaper than an anyio stream guarded by `fail_after`.

An actor hosted by another process (`[placement]`) is a `RemoteCell`: asks and tells to it go
through `bus.transport` (`simveb.remote`, Redis Streams) with the same timeout and errors; the local
path only pays one attribute test for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import time
import typing
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from simveb.db import holding_connection
from simveb.errors import DomainError, InternalError, Unavailable
from simveb.messages import Ask, Event, Message, Tell, event_types
from simveb.outbox import emit

if typing.TYPE_CHECKING:
    import asyncpg

    from simveb.config import BusSettings, Settings
    from simveb.db import Database

log = logging.getLogger("simveb.bus")
R = TypeVar("R")


class BusError(RuntimeError):
    """A wiring mistake (unknown route, forbidden ask, cyclic graph, ask holding a connection): a bug."""


class AskTimeout(Unavailable):
    code = "ask_timeout"
    title = "Service timed out"


class ActorStopped(Unavailable):
    code = "actor_stopped"
    title = "Service stopped"


# ---------------------------------------------------------------------------------------------------
# Actors

current_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("simveb_actor", default=None)
# The id of the event being handled (outbox event id, or the id publish() gave it): consumers derive
# idempotency keys from it, so one event never produces the same effect twice.
current_event_id: contextvars.ContextVar[uuid.UUID | None] = contextvars.ContextVar("simveb_event", default=None)
# The id of the HTTP request (X-Request-ID) a message is part of. A contextvar does not cross into an
# actor's worker task by itself: the sender's value travels in the envelope (in the stream entry of
# a remote request, and in the outbox row of an event) and the worker sets it for the handling, so
# audit entries and log lines name the request that caused them however many actors it went through.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("simveb_request_id", default=None)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def handler(fn: F) -> F:
    """Mark an actor method as the handler of the message type its first parameter is annotated with.

    A handler may take a second parameter, a connection: it then runs inside a transaction the
    runtime opened (commit on return, rollback on any exception). For an event the event id is
    recorded in the inbox in that transaction, so its writes and the deduplication commit together.
    Such a handler must not ask another actor; one that needs to ask takes no connection, asks
    first, then opens `self.db.transaction()` and re-checks.
    """
    fn.__simveb_handler__ = True  # type: ignore[attr-defined]
    return fn


def reader(fn: F) -> F:
    """Like @handler, for a request that only reads and needs no snapshot shared by its statements
    (typically one SELECT): the connection it takes is outside any transaction, each statement
    its own. That saves the BEGIN and COMMIT round trips, a third of a read by id. A handler that
    writes, or reads twice and needs the two reads to agree, uses @handler. Events always get
    @handler's transaction (their inbox row commits with the handling).
    """
    fn.__simveb_handler__ = True  # type: ignore[attr-defined]
    fn.__simveb_reader__ = True  # type: ignore[attr-defined]
    return fn


@dataclasses.dataclass(slots=True)
class ActorContext:
    """What every actor instance receives: the bus to talk, the database, the settings."""

    bus: Bus
    db: Database | None
    settings: Settings


class Actor:
    """Base class of the domain actors. Subclasses set `name` and mark handlers with @handler."""

    name: ClassVar[str]
    # Actors that keep no in-memory state may take several messages at once (correctness then
    # comes from the database: constraints, row locks, SKIP LOCKED).
    concurrency: ClassVar[int] = 1
    _handlers: ClassVar[dict[type, tuple[str, bool, bool]]]  # message type -> (method, takes con, reader)

    def __init__(self, ctx: ActorContext) -> None:
        self.ctx = ctx
        self.bus = ctx.bus
        self.settings = ctx.settings

    @property
    def db(self) -> Database:
        if self.ctx.db is None:
            raise BusError(f"actor {self.name} needs a database and the bus has none")
        return self.ctx.db

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type, tuple[str, bool, bool]] = {}
        for base in reversed(cls.__mro__):
            for attr, fn in vars(base).items():
                if not getattr(fn, "__simveb_handler__", False):
                    continue
                hints = typing.get_type_hints(fn)
                params = list(inspect.signature(fn).parameters)
                if len(params) < 2 or params[1] not in hints:
                    raise BusError(f"{cls.__name__}.{attr}: annotate the message parameter")
                handlers[hints[params[1]]] = (attr, len(params) >= 3, getattr(fn, "__simveb_reader__", False))
        cls._handlers = handlers

    async def on_start(self) -> None:
        """Open what the actor needs (clients, caches). A failure leaves the actor down and retried."""

    async def on_stop(self) -> None:
        """Release what on_start opened."""

    async def emit(self, con: asyncpg.Connection, *events: Event) -> None:
        """Write events to the outbox in the caller's transaction; they are delivered after commit."""
        await emit(con, *events, source=self.name, request_id=current_request_id.get())


# ---------------------------------------------------------------------------------------------------
# Runtime: envelopes, cells (one per actor), the bus


class Envelope:
    __slots__ = ("event_id", "future", "message", "request_id", "sender")

    def __init__(
        self,
        message: Message,
        future: asyncio.Future[Any] | None,
        sender: str | None,
        event_id: uuid.UUID | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.future = future
        self.sender = sender
        self.event_id = event_id
        self.request_id = request_id


_STOP = object()


def _expire(future: asyncio.Future[Any], message: Message, timeout: float) -> None:
    if not future.done():
        future.set_exception(AskTimeout(f"{type(message).__name__} got no answer within {timeout:g} s"))


class LatencyWindow:
    """Recent ask latencies of one actor (seconds), for percentiles on /metrics and in the CLI."""

    __slots__ = ("count", "samples", "total")

    def __init__(self, size: int = 2048) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.count += 1
        self.total += seconds

    def quantile(self, q: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RemoteCell:
    """An actor hosted in another process (`[placement]`): its asks and tells go through the remote
    transport (`simveb.remote`); its event subscriptions are known here so the relay knows who else
    must still receive an event."""

    remote = True

    def __init__(self, actor_cls: type[Actor]) -> None:
        self.actor_cls = actor_cls
        self.name = actor_cls.name
        self.state = "remote"


class Cell:
    """The runtime side of one actor: its mailbox, workers, current instance, state and counters."""

    remote = False

    def __init__(self, bus: Bus, actor_cls: type[Actor], mailbox_size: int) -> None:
        self.bus = bus
        self.actor_cls = actor_cls
        self.name = actor_cls.name
        self.queue: asyncio.Queue[Any] = asyncio.Queue(mailbox_size)
        self.instance: Actor | None = None
        self.state = "new"  # new | up | restarting | down | stopped
        self.workers: list[asyncio.Task[None]] = []
        self.processed = 0
        self.failures = 0
        self.restarts = 0
        self.expired = 0
        self.latency = LatencyWindow()
        self._crashes: deque[float] = deque()
        self._restart_lock = asyncio.Lock()
        self._retry_task: asyncio.Task[None] | None = None

    # life cycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        instance = self.actor_cls(self.bus.context)
        try:
            await instance.on_start()
        except Exception:
            log.exception("actor %s failed to start; retrying in the background", self.name)
            self.state = "down"
            self._retry_task = asyncio.create_task(self._retry_start())
        else:
            self.instance = instance
            self.state = "up"
        self.workers = [
            asyncio.create_task(self._work(), name=f"actor:{self.name}:{i}") for i in range(self.actor_cls.concurrency)
        ]

    async def _retry_start(self) -> None:
        delay = 0.5
        while self.state == "down":
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            instance = self.actor_cls(self.bus.context)
            try:
                await instance.on_start()
            except Exception:
                log.warning("actor %s still cannot start", self.name, exc_info=True)
                continue
            self.instance = instance
            self.state = "up"
            log.info("actor %s is up", self.name)

    async def restart(self) -> None:
        async with self._restart_lock:
            self.state = "restarting"
            self.restarts += 1
            log.error("actor %s crashed too often: restarting it", self.name)
            old, self.instance = self.instance, None
            if old is not None:
                try:
                    await old.on_stop()
                except Exception:
                    log.exception("actor %s failed to stop cleanly", self.name)
            self._crashes.clear()
            instance = self.actor_cls(self.bus.context)
            try:
                await instance.on_start()
            except Exception:
                log.exception("actor %s failed to restart", self.name)
                self.state = "down"
                self._retry_task = asyncio.create_task(self._retry_start())
                return
            self.instance = instance
            self.state = "up"

    async def stop(self, grace: float) -> None:
        """Drain what is queued (within the grace period), then fail the rest with ActorStopped."""
        for _ in self.workers:
            await self.queue.put(_STOP)
        if self.workers:
            _done, pending = await asyncio.wait(self.workers, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        while not self.queue.empty():
            env = self.queue.get_nowait()
            if env is not _STOP and env.future is not None and not env.future.done():
                env.future.set_exception(ActorStopped(f"actor {self.name} stopped before handling it"))
        if self._retry_task is not None:
            self._retry_task.cancel()
        if self.instance is not None:
            try:
                # A stop that never ends must not keep the process alive: it is bounded and named.
                async with asyncio.timeout(grace):
                    await self.instance.on_stop()
            except TimeoutError:
                log.error("actor %s did not stop within %g s; leaving it", self.name, grace)
            except Exception:
                log.exception("actor %s failed to stop cleanly", self.name)
        self.state = "stopped"

    # handling -------------------------------------------------------------------------------------

    async def _work(self) -> None:
        current_actor.set(self.name)
        queue = self.queue
        while True:
            env = await queue.get()
            if env is _STOP:
                return
            fut = env.future
            if fut is not None and fut.done():
                # The asker gave up (timeout or cancellation) before we started: nobody waits for it.
                self.expired += 1
                continue
            while self.instance is None:
                # Restarting or down: keep the message until the actor is back (the ask timer runs).
                await asyncio.sleep(0.05)
                if fut is not None and fut.done():
                    break
            if fut is not None and fut.done():
                self.expired += 1
                continue
            current_request_id.set(env.request_id)
            try:
                result = await self._dispatch(env)
            except DomainError as exc:
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                elif fut is None:
                    log.warning("actor %s refused %s: %s", self.name, type(env.message).__name__, exc)
            except asyncio.CancelledError:
                if fut is not None and not fut.done():
                    fut.set_exception(ActorStopped(f"actor {self.name} stopped while handling it"))
                raise
            except Exception:
                self.failures += 1
                log.exception(
                    "actor %s crashed on %s from %s", self.name, type(env.message).__name__, env.sender or "-"
                )
                if fut is not None and not fut.done():
                    fut.set_exception(InternalError(f"{self.name} failed to handle {type(env.message).__name__}"))
                await self._crashed()
            else:
                if fut is not None and not fut.done():
                    fut.set_result(result)
            self.processed += 1

    async def _crashed(self) -> None:
        now = time.monotonic()
        window = self.bus.settings.crash_window_s
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > window:
            self._crashes.popleft()
        if len(self._crashes) >= self.bus.settings.max_crashes:
            await self.restart()

    async def _dispatch(self, env: Envelope) -> Any:
        instance = self.instance
        assert instance is not None
        entry = instance._handlers.get(type(env.message))
        if entry is None and isinstance(env.message, Event):
            entry = instance._handlers.get(Event)
        if entry is None:
            raise BusError(f"actor {self.name} has no handler for {type(env.message).__name__}")
        attr, wants_con, read_only = entry
        method = getattr(instance, attr)
        db = self.bus.context.db
        if env.event_id is None:
            if wants_con and db is not None:
                if read_only:
                    async with db.connection() as con:
                        return await method(env.message, con)
                async with db.transaction() as con:
                    return await method(env.message, con)
            return await method(env.message)
        current_event_id.set(env.event_id)
        # An event: deduplicate through the inbox so a redelivery changes nothing.
        if db is None:
            return await method(env.message)
        if wants_con:
            async with db.transaction() as con:
                fresh = await con.fetchval(
                    "INSERT INTO bus.inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
                    self.name,
                    env.event_id,
                )
                if fresh:
                    await method(env.message, con)
            return None
        async with db.connection() as con:
            seen = await con.fetchval(
                "SELECT true FROM bus.inbox WHERE consumer = $1 AND event_id = $2", self.name, env.event_id
            )
        if seen:
            return None
        await method(env.message)
        async with db.connection() as con:
            await con.execute(
                "INSERT INTO bus.inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                self.name,
                env.event_id,
            )
        return None


class Bus:
    """Routes messages to actors' mailboxes; owns their cells, the ask graph and the counters."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings: BusSettings = settings.bus
        # Refusing is for development and tests, where the mistake must show at once; production logs.
        self.strict_connections = settings.bus.strict_connections and not settings.is_production
        self.context = ActorContext(bus=self, db=db, settings=settings)
        self.cells: dict[str, Cell] = {}
        # Actors hosted by other processes, reached through `transport` (simveb.remote).
        self.remote_cells: dict[str, RemoteCell] = {}
        self.transport: Any = None
        self._routes: dict[type, Cell | RemoteCell] = {}
        # Messages several actors answer (`addressed = True`), routed by their `to` field.
        self._addressed: dict[type, dict[str, Cell | RemoteCell]] = {}
        # Every subscriber of an event type, hosted here or not, by name (the relay's "who must get it").
        self._all_subscribers: dict[type, list[str]] = {}
        self._all_wildcard: list[str] = []
        self._subscribers: dict[type, list[Cell]] = {}
        # Actors with a handler annotated with the base `Event` receive every event (notifications
        # decides from its subscription table which ones matter).
        self._wildcard: list[Cell] = []
        self._graph: dict[str, frozenset[str]] = {}
        self.accepting = False
        self.dead_letters = 0
        self.started = False

    # wiring ---------------------------------------------------------------------------------------

    def add(self, actor_cls: type[Actor]) -> None:
        if actor_cls.name in self.cells:
            raise BusError(f"two actors named {actor_cls.name}")
        cell = Cell(self, actor_cls, self.settings.mailbox_size)
        self.cells[actor_cls.name] = cell
        self._wire(cell)

    def add_remote(self, actor_cls: type[Actor]) -> None:
        """Know an actor another process hosts: requests to it go through the remote transport."""
        if actor_cls.name in self.cells or actor_cls.name in self.remote_cells:
            raise BusError(f"two actors named {actor_cls.name}")
        cell = RemoteCell(actor_cls)
        self.remote_cells[actor_cls.name] = cell
        self._wire(cell)

    def _wire(self, cell: Cell | RemoteCell) -> None:
        for msg_type in cell.actor_cls._handlers:
            if msg_type is Event:
                self._all_wildcard.append(cell.name)
                if isinstance(cell, Cell):
                    self._wildcard.append(cell)
            elif issubclass(msg_type, Event):
                self._all_subscribers.setdefault(msg_type, []).append(cell.name)
                if isinstance(cell, Cell):
                    self._subscribers.setdefault(msg_type, []).append(cell)
            elif getattr(msg_type, "addressed", False):
                self._addressed.setdefault(msg_type, {})[cell.name] = cell
            elif msg_type in self._routes:
                raise BusError(f"{msg_type.__name__} is handled by {self._routes[msg_type].name} and {cell.name}")
            else:
                self._routes[msg_type] = cell

    def declare_graph(self, graph: Mapping[str, Iterable[str]]) -> None:
        """Set which actor may ask which, and refuse unknown names and cycles (they deadlock)."""
        normalised = {name: frozenset(targets) for name, targets in graph.items()}
        for name, targets in normalised.items():
            for n in (name, *targets):
                if n not in self.cells and n not in self.remote_cells:
                    raise BusError(f"ask graph names an unknown actor {n!r}")
        check_acyclic(normalised)
        self._graph = normalised

    def start_order(self) -> list[str]:
        """Actors that are asked start before those that ask them."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            for target in sorted(self._graph.get(name, ())):
                if target in self.cells:  # an actor hosted elsewhere starts in its own process
                    visit(target)
            order.append(name)

        for name in self.cells:
            visit(name)
        return order

    async def start(self) -> None:
        event_types()  # refuse duplicate event tags before anything runs
        for name in self.start_order():
            await self.cells[name].start()
        self.accepting = True
        self.started = True

    async def stop(self) -> None:
        """Refuse new messages, drain mailboxes (askers first), stop actors in reverse start order."""
        self.accepting = False
        for name in reversed(self.start_order()):
            await self.cells[name].stop(self.settings.shutdown_grace_s)
        self.started = False

    # sending --------------------------------------------------------------------------------------

    def _target(self, message: Message) -> Any:
        cell = self._routes.get(type(message))
        if cell is None and (by_name := self._addressed.get(type(message))) is not None:
            cell = by_name.get(message.to)  # type: ignore[attr-defined]
        if cell is None:
            self.dead_letters += 1
            log.error("dead letter: no actor handles %s", type(message).__name__)
            raise BusError(f"no actor handles {type(message).__name__}")
        sender = current_actor.get()
        if sender is not None and sender != cell.name and cell.name not in self._graph.get(sender, ()):
            raise BusError(f"actor {sender} may not ask {cell.name} (not in the declared ask graph)")
        if not self.accepting or cell.state == "stopped":
            self.dead_letters += 1
            log.warning("dead letter: %s sent to stopped actor %s", type(message).__name__, cell.name)
            raise ActorStopped(f"actor {cell.name} is not running")
        return cell

    def _held_connection(self, message: Message) -> None:
        text = (
            f"{current_actor.get() or 'a caller'} sent {type(message).__name__} while holding a database"
            " connection: read first, ask, then open the transaction"
        )
        if self.strict_connections:
            raise BusError(text)
        log.warning(text)

    async def ask(self, message: Ask[R], *, timeout: float | None = None) -> R:
        """Send a request and wait for its reply; a DomainError raised by the handler is raised here."""
        if holding_connection.get():
            self._held_connection(message)
        cell = self._target(message)
        if cell.remote:
            return await self.transport.ask(cell.name, message, timeout or self.settings.ask_timeout_s)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        limit = timeout or self.settings.ask_timeout_s
        timer = loop.call_later(limit, _expire, fut, message, limit)
        started = time.perf_counter()
        try:
            env = Envelope(message, fut, current_actor.get(), None, current_request_id.get())
            try:
                cell.queue.put_nowait(env)
            except asyncio.QueueFull:
                await self._put_when_room(cell, env, fut)
            return await fut
        finally:
            timer.cancel()
            cell.latency.add(time.perf_counter() - started)

    async def _put_when_room(self, cell: Cell, env: Envelope, fut: asyncio.Future[Any]) -> None:
        # Backpressure: a full mailbox makes the sender wait, but never past its ask timeout.
        put = asyncio.ensure_future(cell.queue.put(env))
        await asyncio.wait({put, fut}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await put

    async def tell(self, message: Tell | Ask[Any]) -> None:
        """Queue a message without waiting for it to be handled (waits only while the mailbox is full)."""
        cell = self._target(message)
        if cell.remote:
            await self.transport.tell(cell.name, message)
            return
        await cell.queue.put(Envelope(message, None, current_actor.get(), None, current_request_id.get()))

    def subscribers(self, event_type: type[Event]) -> list[Cell]:
        return list(dict.fromkeys([*self._subscribers.get(event_type, ()), *self._wildcard]))

    def subscriber_names(self, event_type: type[Event]) -> list[str]:
        """Every actor that must receive this event, hosted in this process or not."""
        return list(dict.fromkeys([*self._all_subscribers.get(event_type, ()), *self._all_wildcard]))

    def handles(self, message_type: type[Message]) -> bool:
        """Is there an actor for this request type, in this process or reachable in another?"""
        return message_type in self._routes or bool(self._addressed.get(message_type))

    def addressees(self, message_type: type[Message]) -> list[str]:
        """The actors answering an addressed message type (`addressed = True`, routed by `to`)."""
        return sorted(self._addressed.get(message_type, {}))

    async def publish(self, event: Event, *, event_id: uuid.UUID | None = None) -> int:
        """Non-durable fan-out of an event to its subscribers; returns how many got it."""
        cells = self.subscribers(type(event))
        if not cells:
            self.dead_letters += 1
            log.debug("event %s has no subscriber", type(event).__name__)
        eid = event_id or uuid.uuid4()
        for cell in cells:
            await cell.queue.put(Envelope(event, None, current_actor.get(), eid, current_request_id.get()))
        return len(cells)

    async def deliver(
        self,
        event_id: uuid.UUID,
        event: Event,
        *,
        timeout: float | None = None,
        only: Iterable[str] | None = None,
        request_id: str | None = None,
    ) -> list[str]:
        """Deliver one outbox event to every subscriber hosted here (or those named in `only`) and
        wait; return the names that failed."""
        cells = self.subscribers(type(event))
        if only is not None:
            wanted = set(only)
            cells = [cell for cell in cells if cell.name in wanted]
        loop = asyncio.get_running_loop()
        waits = []
        for cell in cells:
            if cell.state == "stopped" or not self.accepting:
                waits.append((cell, None))
                continue
            fut: asyncio.Future[Any] = loop.create_future()
            await cell.queue.put(Envelope(event, fut, "relay", event_id, request_id))
            waits.append((cell, fut))
        limit = timeout or self.settings.ask_timeout_s
        failed = []
        for cell, fut in waits:
            if fut is None:
                failed.append(cell.name)
                continue
            try:
                async with asyncio.timeout(limit):
                    await fut
            except Exception:  # the subscriber failed or timed out: it gets the event again later
                failed.append(cell.name)
        return failed

    # observation ----------------------------------------------------------------------------------

    def down(self) -> list[str]:
        return [name for name, cell in self.cells.items() if cell.state != "up"]

    def stats(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "state": cell.state,
                "mailbox_depth": cell.queue.qsize(),
                "processed": cell.processed,
                "failures": cell.failures,
                "restarts": cell.restarts,
                "expired": cell.expired,
                "asks": cell.latency.count,
                "ask_seconds_sum": cell.latency.total,
                "ask_p50_s": cell.latency.quantile(0.5),
                "ask_p99_s": cell.latency.quantile(0.99),
            }
            for name, cell in self.cells.items()
        }


def check_acyclic(graph: Mapping[str, Iterable[str]]) -> None:
    """Raise BusError naming a cycle of the ask graph if there is one."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise BusError("ask graph has a cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in list(graph):
        if state.get(node) is None:
            visit(node)
