"""Template rendering in a sandboxed Jinja2 environment, and the sealing of secret-bearing bodies.

Templates are admin-edited text, so they run in `SandboxedEnvironment` (no attribute access to
internals, no imports) with `StrictUndefined` (a missing parameter is an error when the message is
queued, never a blank in a message).

Limits. An admin's template (or one planted in the table) must not freeze or crash the process:
`{{ 'x' * 10**10 }}`, nested loops, a macro calling itself. The sandbox here intercepts the
operations that allocate (`*` and `**` on big operands, `range` capped), caps the output while it
is generated, and the render runs in a separate worker process: the event loop only awaits it, a
deadline kills a runaway worker (a thread cannot be stopped), and the worker's address space is
capped so a huge allocation is a MemoryError there, not an out-of-memory kill here. A template
that breaks a limit with sample parameters is refused when it is saved.

Secret parameters (an OTP code). The requirement: the secret never appears in clear in the database
or the logs, yet a process restart between the write and the send still delivers. Options weighed:
- keep the secret only in memory until sent: simplest, but a restart loses the message;
- store only the non-secret parameters and re-render at send time: the secret still has to live
  somewhere between the two, so this is the same problem;
- store the real rendering encrypted (chosen). The row keeps `body` rendered with the secret masked
  (what operators and `GetDelivery` see), and `sealed` = AES-GCM(nonce, real subject and body),
  authenticated with the message id so a sealed body cannot be moved to another row. The worker that
  sends unseals it; `sealed` is wiped (NULL) as soon as the message is sent or dead.
Trade-offs: the seal key must be the same in every process that writes or sends (setting
`notifications.seal_key`; else derived from the token signing key by HKDF; else a development key
file), and losing or rotating it kills the messages still sealed (they go dead, "cannot be opened").
An attacker with both a database dump and the key reads only codes still waiting to be sent, which
expire within minutes. A dead secret-bearing message cannot be retried (its seal is gone): the user
asks for a new code instead.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from simveb.config import Settings
from simveb.errors import Invalid, Unavailable
from simveb.keys import Sealer as _Sealer
from simveb.keys import sealing_key

MASK = "******"

# Largest string/list a template may build by repetition, largest integer power, longest range.
MAX_REPEAT = 100_000
MAX_POWER_BITS = 4096
MAX_RANGE = 10_000
# Python frames a template may nest (macros calling macros); far below the interpreter's limit.
MAX_DEPTH = 400


class TemplateLimit(Exception):
    """A template went past one of the rendering limits (size, depth, time, memory)."""


def _capped_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise TemplateLimit(f"range of {len(r)} items (limit {MAX_RANGE})")
    return r


class LimitedEnvironment(SandboxedEnvironment):
    """The sandbox with the allocating operators intercepted (`'x' * 10**10` is refused before it runs)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.globals["range"] = _capped_range

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple | bytes) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                    raise TemplateLimit(f"repetition builds {len(seq) * n} items (limit {MAX_REPEAT})")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_POWER_BITS
            ):
                raise TemplateLimit("integer too large")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right > 0 and left.bit_length() * right > MAX_POWER_BITS:
                raise TemplateLimit("power too large")
        return super().call_binop(context, operator, left, right)


_env = LimitedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


def check_syntax(text: str, field: str) -> None:
    """Invalid naming the line and the problem when `text` is not a valid template."""
    try:
        _env.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise Invalid(
            f"{field}: template syntax error at line {exc.lineno}: {exc.message}",
            code="template_syntax_error",
            field=field,
            line=exc.lineno,
        ) from None


def _render_one(text: str, params: dict[str, Any], max_output: int) -> str:
    out: list[str] = []
    size = 0
    for piece in _env.from_string(text).generate(params):
        size += len(piece)
        if size > max_output:
            raise TemplateLimit(f"output longer than {max_output} characters")
        out.append(piece)
    return "".join(out)


def render_in_worker(jobs: list[tuple[str, dict[str, Any], str]], max_output: int) -> tuple[str, Any]:
    """Run in the worker process: ("ok", [texts]) or ("error", (code, message)); never raises."""
    done = []
    for text, params, field in jobs:
        try:
            done.append(_render_one(text, params, max_output))
        except TemplateLimit as exc:
            return "error", ("template_limit", f"{field}: template went past a limit ({exc})")
        except (RecursionError, MemoryError) as exc:
            return "error", ("template_limit", f"{field}: template went past a limit ({type(exc).__name__})")
        except jinja2.UndefinedError as exc:
            return "error", ("missing_parameter", f"{field}: missing template parameter ({exc.message})")
        except jinja2.TemplateSyntaxError as exc:
            return "error", ("template_syntax_error", f"{field}: template syntax error: {exc.message}")
        except jinja2.exceptions.SecurityError as exc:
            return "error", ("template_forbidden", f"{field}: operation not allowed in a template ({exc})")
        except Exception as exc:  # an admin's expression failing at run time: report it, never crash
            return "error", ("template_error", f"{field}: template failed ({type(exc).__name__})")
    return "ok", done


def _worker_init(memory_mb: int) -> None:
    sys.setrecursionlimit(MAX_DEPTH)
    if memory_mb:
        import resource  # POSIX only; the worker is where a runaway allocation must stop

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class Renderer:
    """Renders templates in worker processes with a deadline; the event loop only waits.

    A render past the deadline terminates the pool (its other renders fail as Unavailable, to be
    retried) and the next render starts a fresh one.
    """

    def __init__(self, timeout_s: float, max_output: int, memory_mb: int, processes: int = 1) -> None:
        self.timeout_s = timeout_s
        self.max_output = max_output
        self.memory_mb = memory_mb
        self.processes = processes
        self._pool: Any = None
        self._warm: asyncio.Future[Any] | None = None
        self._generation = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> Renderer:
        n = settings.notifications
        return cls(n.template_timeout_s, n.template_max_output, n.template_memory_mb, n.template_processes)

    async def _ready_pool(self) -> tuple[Any, int]:
        # The deadline is for the template, not for starting a worker: a new pool runs one empty
        # render first, without a deadline (a spawned interpreter takes a while on a busy machine).
        if self._pool is None:
            # spawn: forking a process that runs threads and an event loop is unsafe
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.processes, initializer=_worker_init, initargs=(self.memory_mb,))
            self._generation += 1
            self._warm = asyncio.ensure_future(self._submit(self._pool, [("", {}, "warm-up")]))
        pool, generation = self._pool, self._generation
        await asyncio.shield(self._warm)
        return pool, generation

    def _submit(self, pool: Any, jobs: list[tuple[str, dict[str, Any], str]]) -> asyncio.Future[tuple[str, Any]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[str, Any]] = loop.create_future()

        def ok(result: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_exception(exc))

        pool.apply_async(render_in_worker, (jobs, self.max_output), callback=ok, error_callback=failed)
        return done

    async def render_many(self, jobs: list[tuple[str, dict[str, Any], str]]) -> list[str]:
        """Each (text, params, field) rendered; Invalid naming the field when one fails or breaks a limit."""
        try:
            pool, generation = await self._ready_pool()
            done = self._submit(pool, jobs)
            status, value = await asyncio.wait_for(done, self.timeout_s)
        except TimeoutError:
            if generation == self._generation:
                await self._restart()
            raise Invalid(
                f"{jobs[0][2]}: template went past a limit (took longer than {self.timeout_s} s)",
                code="template_limit",
            ) from None
        except Exception as exc:
            await self._restart()  # a worker that died or never started: the next render starts afresh
            raise Unavailable(f"template renderer failed ({type(exc).__name__})", code="renderer_failed") from None
        if status == "error":
            code, message = value
            raise Invalid(message, code=code)
        return list(value)

    async def render(self, text: str, params: dict[str, Any], *, field: str) -> str:
        return (await self.render_many([(text, params, field)]))[0]

    async def check(self, text: str, field: str) -> None:
        """The save-time test render: every free variable given a sample value; refuse a limit breach.

        Type errors caused by the samples themselves (a number expected, a string given) are not
        the template's fault and do not refuse it; limits, forbidden operations and time do.
        """
        names = meta.find_undeclared_variables(_env.parse(text)) - set(_env.globals)
        sample = {name: "1" for name in names}
        try:
            await self.render(text, sample, field=field)
        except Invalid as exc:
            if exc.code in {"template_limit", "template_forbidden", "template_syntax_error"}:
                raise

    async def _restart(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.terminate)  # kills the runaway worker; joins its threads

    async def close(self) -> None:
        await self._restart()


def masked(params: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    return {k: (MASK if k in secrets else v) for k, v in params.items()}


class Sealer(_Sealer):
    """AES-GCM over the real rendering of a secret-bearing message, bound to the message id."""

    @classmethod
    def for_settings(cls, settings: Settings) -> Sealer:
        return cls(seal_key(settings))


def seal_key(settings: Settings) -> bytes:
    """notifications.seal_key; else derived from the token signing key; else a development key file."""
    return sealing_key(
        settings,
        configured=settings.notifications.seal_key,
        setting="notifications.seal_key",
        info=b"simveb notifications seal",
        filename="notifications-seal.key",
    )
