"""The remote transport: asks and tells to an actor hosted in another process, over Redis Streams.

`[placement]` says which actors this process hosts. An ask or tell for an actor hosted elsewhere is
written to the stream `<prefix>req:<actor>`; every process that hosts that actor reads the stream
in the consumer group `hosts` (one group per stream, so one group per actor: each request goes to
one hosting process) and answers on the asker's own stream `<prefix>rep:<process id>`.

- The messages are the same tagged msgspec structs as on the local bus, encoded with msgpack and
  decoded with the message's own type; a reply is decoded with the reply type the request declares
  (`Ask[R]`).
- The asker keeps the local bus's timeout (a `call_later` timer on a future). A reply arriving after
  it is dropped; a request whose deadline passed before a host took it is acknowledged unhandled.
- A `DomainError` raised remotely is raised here as the same class with the same status, code,
  detail, extra fields and headers; a remote crash arrives as `InternalError` (HTTP 500), as locally.
- Delivery is at least once: a host acknowledges a request after answering it, and the requests a
  dead consumer left pending are taken over by the others with `XAUTOCLAIM` once idle for
  `placement.reclaim_idle_s`. A handler's own idempotency makes a second handling harmless.

Events do not travel here: they stay in the shared outbox, whose relays deliver each event to the
subscribers hosted in their own process (see `simveb.outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
import typing
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from simveb.bus import ActorStopped, AskTimeout, current_request_id
from simveb.errors import DomainError, InternalError, Unavailable
from simveb.messages import Ask, Message

if TYPE_CHECKING:
    from simveb.bus import Bus
    from simveb.config import PlacementSettings

log = logging.getLogger("simveb.remote")
GROUP = "hosts"
# Remote ask latency buckets (seconds), for the Prometheus histogram of /metrics.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RemoteUnavailable(Unavailable):
    code = "remote_unavailable"
    title = "Service unreachable"


def process_id() -> str:
    """A name unique to this process: host, pid and a random part (a restarted pid is a new consumer)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_reply_types: dict[type, Any] = {}


def reply_type(message_type: type) -> Any:
    """The R of a request class declared as `Ask[R]` (Any when it cannot be resolved)."""
    found = _reply_types.get(message_type)
    if found is not None:
        return found
    resolved: Any = Any
    for klass in message_type.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is Ask:
                (arg,) = typing.get_args(base)
                if isinstance(arg, typing.ForwardRef):
                    arg = arg.__forward_arg__
                if isinstance(arg, str):
                    namespace = vars(sys.modules[klass.__module__])
                    try:
                        # A type expression from our own source (the contract), not from the wire.
                        arg = eval(arg, namespace)
                    except Exception:
                        arg = Any
                resolved = Any if isinstance(arg, typing.TypeVar) else arg
                break
        else:
            continue
        break
    _reply_types[message_type] = resolved
    return resolved


_error_classes: dict[str, type[DomainError]] = {}


def _error_class(name: str) -> type[DomainError]:
    """The DomainError class named `module:qualname` among those this process defines (DomainError
    itself for another); the subclass tree is walked again only for a name not found yet."""
    found = _error_classes.get(name)
    if found is not None:
        return found
    stack: list[type[DomainError]] = [DomainError]
    while stack:
        cls = stack.pop()
        _error_classes[f"{cls.__module__}:{cls.__qualname__}"] = cls
        stack.extend(cls.__subclasses__())
    return _error_classes.get(name, DomainError)


class ErrorBody(msgspec.Struct, kw_only=True):
    """A DomainError as it crosses the wire."""

    cls: str
    status: int
    code: str
    title: str
    detail: str
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}


def error_body(exc: DomainError) -> ErrorBody:
    return ErrorBody(
        cls=f"{type(exc).__module__}:{type(exc).__qualname__}",
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        extra=dict(exc.extra),
        headers=dict(exc.headers),
    )


def rebuild_error(body: ErrorBody) -> DomainError:
    """The same DomainError class (only classes this process knows: nothing is imported by name),
    with the status, code and fields the remote raised; DomainError itself for an unknown class."""
    cls = _error_class(body.cls)
    exc = cls.__new__(cls)
    Exception.__init__(exc, body.detail)
    exc.detail = body.detail
    exc.extra = body.extra
    exc.headers = body.headers
    # Instance attributes, so a refined code or an unknown class still answers as the remote did.
    if body.code != cls.code:
        exc.code = body.code  # type: ignore[misc]
    if body.status != cls.status:
        exc.status = body.status  # type: ignore[misc]
    if body.title != cls.title:
        exc.title = body.title  # type: ignore[misc]
    return exc


_encoder = msgspec.msgpack.Encoder(enc_hook=str)


def _expire(future: asyncio.Future[Any], message: Message, actor: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(AskTimeout(f"{type(message).__name__} got no answer from {actor} within {timeout:g} s"))


class RemoteLatency:
    """A cumulative histogram of remote ask latencies per actor (seconds), for /metrics."""

    def __init__(self) -> None:
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.recent: dict[str, deque[float]] = {}

    def add(self, actor: str, seconds: float) -> None:
        counts = self.buckets.get(actor)
        if counts is None:
            counts = self.buckets[actor] = [0] * len(LATENCY_BUCKETS)
            self.sums[actor] = 0.0
            self.counts[actor] = 0
            self.recent[actor] = deque(maxlen=2048)
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        self.sums[actor] += seconds
        self.counts[actor] += 1
        self.recent[actor].append(seconds)

    def quantile(self, actor: str, q: float) -> float:
        samples = sorted(self.recent.get(actor, ()))
        return samples[min(len(samples) - 1, int(q * len(samples)))] if samples else 0.0


class RemoteTransport:
    """Sends asks and tells to actors hosted elsewhere and serves the hosted actors' request streams."""

    def __init__(self, bus: Bus, settings: PlacementSettings, *, hosted: list[str], known: list[str]) -> None:
        import redis.asyncio as aioredis

        self.bus = bus
        self.settings = settings
        self.hosted = list(hosted)
        self.process = process_id()
        self.prefix = settings.stream_prefix
        self.reply_stream = f"{self.prefix}rep:{self.process}"
        self._ttl = max(1, int(settings.stream_retention_s))  # seconds a silent reply stream lives
        self.redis = aioredis.from_url(settings.redis_url)
        # Blocking reads hold a connection each: they get their own clients, so sends never wait.
        self._reader = aioredis.from_url(settings.redis_url)
        self._replies_reader = aioredis.from_url(settings.redis_url)
        self._pending: dict[str, tuple[asyncio.Future[Any], Any]] = {}
        self._types: dict[str, type[Message]] = {}
        for name in known:
            cell = bus.cells.get(name) or bus.remote_cells.get(name)
            if cell is not None:
                for msg_type in cell.actor_cls._handlers:
                    self._types[msg_type.__struct_config__.tag] = msg_type  # type: ignore[attr-defined]
        # One decoder for every message this process may be asked (a tagged union: one pass).
        self._decoder: Any = None
        if self._types:
            with contextlib.suppress(TypeError):
                self._decoder = msgspec.msgpack.Decoder(typing.Union[tuple(self._types.values())])  # noqa: UP007
        self._tasks: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._in_flight: set[bytes] = set()  # entry ids being handled here (never reclaimed from ourselves)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._stopping = False
        self.latency = RemoteLatency()
        self.sent = 0
        self.served = 0
        self.late_replies = 0
        self.expired_requests = 0
        self.reclaimed = 0

    def request_stream(self, actor: str) -> str:
        return f"{self.prefix}req:{actor}"

    # life cycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.redis.ping()
        for actor in self.hosted:
            # From the start of the stream: requests written before any host existed are taken (and
            # dropped if their deadline passed) rather than lost. The group exists once per stream.
            with contextlib.suppress(Exception):
                await self.redis.xgroup_create(self.request_stream(actor), GROUP, id="0", mkstream=True)
        # Replies are read from this entry on ("$" would miss a reply written before the first read).
        self._reply_from = await self.redis.xadd(self.reply_stream, {"hello": b"1"})
        await self.redis.expire(self.reply_stream, self._ttl)
        self._tasks.append(asyncio.create_task(self._read_replies(), name="remote:replies"))
        if self.hosted:
            self._tasks.append(asyncio.create_task(self._serve(), name="remote:serve"))
            self._tasks.append(asyncio.create_task(self._maintain(), name="remote:maintain"))

    async def stop(self) -> None:
        """Stop taking requests, let those being handled answer, fail the asks still waiting."""
        self._stopping = True
        # Stop taking requests first; the reply reader stops last, because the requests still being
        # handled here may be waiting for answers from other processes.
        serving, replies = self._tasks[1:], self._tasks[:1]
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
        if self._handling:
            await asyncio.wait(self._handling, timeout=self.bus.settings.shutdown_grace_s)
        for task in replies:
            task.cancel()
        await asyncio.gather(*replies, return_exceptions=True)
        for fut, _rtype in self._pending.values():
            if not fut.done():
                fut.set_exception(ActorStopped("this process stopped before the remote answer arrived"))
        self._pending.clear()
        with contextlib.suppress(Exception):
            await self.redis.delete(self.reply_stream)
        for client in (self.redis, self._reader, self._replies_reader):
            with contextlib.suppress(Exception):
                await client.aclose()

    async def ping(self) -> bool:
        """Is Redis answering (within a second)?"""
        try:
            async with asyncio.timeout(1.0):
                return bool(await self.redis.ping())
        except Exception:
            return False

    # sending --------------------------------------------------------------------------------------

    async def ask(self, actor: str, message: Ask[Any], timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        request_id = uuid.uuid4().hex
        self._pending[request_id] = (fut, reply_type(type(message)))
        timer = loop.call_later(timeout, _expire, fut, message, actor, timeout)
        started = time.perf_counter()
        try:
            try:
                await self.redis.xadd(
                    self.request_stream(actor),
                    {
                        "id": request_id,
                        "kind": b"ask",
                        "reply_to": self.reply_stream,
                        "deadline": repr(time.time() + timeout),
                        "rid": current_request_id.get() or "",
                        "body": _encoder.encode(message),
                    },
                )
            except Exception as exc:
                raise RemoteUnavailable(f"the request stream of {actor} cannot be reached: {exc}") from None
            self.sent += 1
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)
            self.latency.add(actor, time.perf_counter() - started)

    async def tell(self, actor: str, message: Message) -> None:
        try:
            await self.redis.xadd(
                self.request_stream(actor),
                {
                    "id": uuid.uuid4().hex,
                    "kind": b"tell",
                    "deadline": repr(time.time() + self.settings.tell_ttl_s),
                    "rid": current_request_id.get() or "",
                    "body": _encoder.encode(message),
                },
            )
        except Exception as exc:
            raise RemoteUnavailable(f"the request stream of {actor} cannot be reached: {exc}") from None
        self.sent += 1

    async def _read_replies(self) -> None:
        last = self._reply_from
        while not self._stopping:
            try:
                got = await self._replies_reader.xread({self.reply_stream: last}, count=500, block=1000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("reading the reply stream failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            ids = []
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id
                    ids.append(entry_id)
                    self._settle(fields)
            if ids:
                with contextlib.suppress(Exception):
                    await self.redis.xdel(self.reply_stream, *ids)

    def _settle(self, fields: dict[bytes, bytes]) -> None:
        request_id = fields.get(b"id", b"").decode()
        waiting = self._pending.get(request_id)
        if waiting is None or waiting[0].done():
            # The asker gave up (timeout) before the answer came: the late answer is dropped.
            self.late_replies += 1
            return
        fut, rtype = waiting
        try:
            if fields.get(b"ok") == b"1":
                fut.set_result(msgspec.msgpack.decode(fields[b"body"], type=rtype))
            else:
                fut.set_exception(rebuild_error(msgspec.msgpack.decode(fields[b"body"], type=ErrorBody)))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            fut.set_exception(InternalError(f"the remote answer does not decode: {exc}"))

    # serving --------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        streams = {self.request_stream(actor): ">" for actor in self.hosted}
        while not self._stopping:
            try:
                got = await self._reader.xreadgroup(GROUP, self.process, streams, count=100, block=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (FLUSHDB): create it again
                    for stream in streams:
                        with contextlib.suppress(Exception):
                            await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                else:
                    log.warning("reading the request streams failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for stream, entries in got or ():
                for entry_id, fields in entries:
                    await self._spawn(stream, entry_id, fields)

    async def _spawn(self, stream: bytes | str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        if entry_id in self._in_flight:
            return
        await self._slots.acquire()
        self._in_flight.add(entry_id)
        task = asyncio.create_task(self._handle(stream, entry_id, fields))
        self._handling.add(task)
        task.add_done_callback(lambda t: self._done(t, entry_id))

    def _done(self, task: asyncio.Task[None], entry_id: bytes) -> None:
        self._handling.discard(task)
        self._in_flight.discard(entry_id)
        self._slots.release()

    async def _handle(self, stream: bytes | str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        remaining = float(fields.get(b"deadline", b"0")) - time.time()
        kind = fields.get(b"kind")
        reply_to = fields.get(b"reply_to")
        if remaining <= 0:
            # Nobody waits for it any more (the asker timed out, or the tell outlived its ttl).
            self.expired_requests += 1
            await self._ack(stream, entry_id)
            return
        # The request id of the asker's process: this task's asks carry it into the actor's envelope.
        current_request_id.set(fields.get(b"rid", b"").decode("latin-1") or None)
        try:
            message = self._decode(fields.get(b"body", b""))
            if kind == b"ask":
                result: Any = await self.bus.ask(message, timeout=remaining)  # type: ignore[arg-type]
                reply = {"ok": b"1", "body": _encoder.encode(result)}
            else:
                # A tell is acknowledged once handled, not once queued: a host that dies before
                # handling it leaves it pending, for another host to reclaim (at least once).
                reply = None
                await self.bus.ask(message, timeout=remaining)  # type: ignore[arg-type]
        except DomainError as exc:
            if kind != b"ask":
                log.warning("remote %s refused: %s", type(exc).__name__, exc)
            reply = {"ok": b"0", "body": _encoder.encode(error_body(exc))}
        except Exception as exc:
            log.exception("remote request %s on %s failed", entry_id, stream)
            reply = {"ok": b"0", "body": _encoder.encode(error_body(InternalError(f"remote handling failed: {exc}")))}
        try:
            # The answer and the acknowledgement in one round trip (answer first: a crash between the
            # two leaves the request pending, reclaimed and answered again, never acknowledged unanswered).
            async with self.redis.pipeline(transaction=False) as pipe:
                if reply is not None and reply_to:
                    reply["id"] = fields.get(b"id", b"")
                    pipe.xadd(reply_to, reply, maxlen=10000, approximate=True)
                    # An asker that died leaves no stream behind for ever (ours re-creates it).
                    pipe.expire(reply_to, self._ttl)
                pipe.xack(stream, GROUP, entry_id)
                await pipe.execute()
            self.served += 1
        except Exception:
            # Unacknowledged, it stays pending and is reclaimed: at least once.
            log.warning("could not answer remote request %s; it will be reclaimed", entry_id, exc_info=True)

    def _decode(self, body: bytes) -> Message:
        if self._decoder is not None:
            try:
                return self._decoder.decode(body)  # type: ignore[no-any-return]
            except msgspec.ValidationError as exc:
                raise InternalError(f"the request does not decode here: {exc}") from None
        tag = msgspec.msgpack.decode(body, type=dict[str, Any]).get("msg_type")
        msg_type = self._types.get(tag)  # type: ignore[arg-type]
        if msg_type is None:
            raise InternalError(f"this process does not know the message {tag!r}")
        return msgspec.msgpack.decode(body, type=msg_type)

    async def _ack(self, stream: bytes | str, entry_id: bytes) -> None:
        await self.redis.xack(stream, GROUP, entry_id)

    async def _maintain(self) -> None:
        """Take over requests a dead consumer left pending (XAUTOCLAIM), trim old entries."""
        settings = self.settings
        while not self._stopping:
            await asyncio.sleep(settings.reclaim_interval_s)
            try:
                await self.reclaim_once()
                await self.tidy_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("remote maintenance failed; retrying", exc_info=True)

    async def tidy_once(self) -> None:
        """Trim entries older than the retention, forget consumers gone that long, keep our stream."""
        retention = self.settings.stream_retention_s
        minid = int((time.time() - retention) * 1000)
        for actor in self.hosted:
            stream = self.request_stream(actor)
            await self.redis.xtrim(stream, minid=minid, approximate=True)
            # Every process start is a new consumer name: those idle past the retention with nothing
            # pending are gone processes, removed so the group does not grow with every restart.
            for consumer in await self.redis.xinfo_consumers(stream, GROUP):
                name = consumer["name"]
                if isinstance(name, bytes):
                    name = name.decode()
                if name != self.process and consumer["pending"] == 0 and consumer["idle"] > retention * 1000:
                    await self.redis.xgroup_delconsumer(stream, GROUP, name)
        await self.redis.expire(self.reply_stream, self._ttl)

    async def reclaim_once(self) -> int:
        """Claim and handle requests idle in another consumer's pending list; return how many."""
        idle_ms = int(self.settings.reclaim_idle_s * 1000)
        taken = 0
        for actor in self.hosted:
            stream = self.request_stream(actor)
            start = "0-0"
            while True:
                answer = await self.redis.xautoclaim(stream, GROUP, self.process, idle_ms, start_id=start, count=100)
                start, entries = answer[0], answer[1]
                for entry_id, fields in entries:
                    if fields is None or entry_id in self._in_flight:  # trimmed, or being handled here
                        continue
                    taken += 1
                    self.reclaimed += 1
                    log.info("reclaimed remote request %s of %s from a silent consumer", entry_id, actor)
                    await self._spawn(stream, entry_id, fields)
                if start in (b"0-0", "0-0"):
                    break
        return taken
