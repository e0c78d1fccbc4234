"""Every Ask declares the errors its handler answers with (`Ask.errors`), and the declaration is true.

The OpenAPI document lists, on each route, the errors of the messages the route asks; a message
that forgets one makes the document lie. This test reads every actor's handlers (source, not
execution): the DomainErrors a handler raises, through the methods of its actor, the functions of
its own package, and the errors declared by the messages it asks in turn, each reduced to its
HTTP status, must be covered by the message's declaration. `python -m tests.test_message_errors`
prints the declarations the code implies.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import textwrap
import typing
from collections.abc import Callable, Iterator
from typing import Any

import simveb.actors
from simveb import errors as runtime_errors
from simveb.bus import Actor
from simveb.errors import DomainError
from simveb.messages import Ask


def actor_classes() -> Iterator[type[Actor]]:
    for info in pkgutil.iter_modules(simveb.actors.__path__):
        module = importlib.import_module(f"simveb.actors.{info.name}.actor")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Actor)
                and value is not Actor
                and value.__module__ == module.__name__
            ):
                yield value


def handlers() -> Iterator[tuple[type[Actor], type[Ask[Any]], Callable[..., Any]]]:
    for cls in actor_classes():
        for name, fn in vars(cls).items():
            if not getattr(fn, "__simveb_handler__", False):
                continue
            hints = typing.get_type_hints(fn)
            params = list(inspect.signature(fn).parameters)
            message = hints.get(params[1]) if len(params) > 1 else None
            if isinstance(message, type) and issubclass(message, Ask):
                yield cls, message, fn
            del name


def _resolve(node: ast.expr, namespace: dict[str, Any], owner: type | None) -> Any:
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls") and owner is not None:
            return inspect.getattr_static(owner, node.attr, None)
        base = _resolve(node.value, namespace, owner)
        if inspect.ismodule(base) or isinstance(base, type):
            return getattr(base, node.attr, None)
    return None


def _function(value: Any) -> Callable[..., Any] | None:
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    return value if inspect.isfunction(value) else None


@functools.cache
def _direct(fn: Callable[..., Any], owner: type | None) -> tuple[frozenset[type], frozenset[type], tuple[Any, ...]]:
    """(errors raised, messages asked, functions called) by one function, from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError):
        return frozenset(), frozenset(), ()
    namespace = fn.__globals__
    raised: set[type] = set()
    asked: set[type] = set()
    calls: list[tuple[Callable[..., Any], type | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = _resolve(node.func, namespace, owner)
        elif isinstance(node, ast.Raise) and node.exc is not None:
            target = _resolve(node.exc, namespace, owner)
        else:
            continue
        if isinstance(target, type):
            if issubclass(target, DomainError):
                raised.add(target)
            elif issubclass(target, Ask):
                asked.add(target)
            continue
        inner = _function(target)
        if inner is not None and inner is not fn and inner.__module__.startswith("simveb.actors"):
            calls.append(
                (inner, owner if inner.__qualname__.split(".")[0] == getattr(owner, "__name__", None) else None)
            )
    return frozenset(raised), frozenset(asked), tuple(calls)


def implied(fn: Callable[..., Any], owner: type) -> tuple[set[type], set[type]]:
    """Errors raised and messages asked by a handler and everything it calls in the actors' code."""
    raised: set[type] = set()
    asked: set[type] = set()
    seen: set[Any] = set()
    todo = [(fn, owner)]
    while todo:
        f, o = todo.pop()
        if (f, o) in seen:
            continue
        seen.add((f, o))
        r, a, calls = _direct(f, o)
        raised |= r
        asked |= a
        todo.extend(calls)
    return raised, asked


def statuses(errors: Any) -> set[int]:
    return {int(e.status) for e in errors if isinstance(getattr(e, "status", None), int) and e.status != 500}


def required_statuses() -> dict[type, set[int]]:
    """Per message: the statuses its handler can answer with (errors of asked messages included)."""
    direct: dict[type, set[int]] = {}
    asks: dict[type, set[type]] = {}
    for cls, message, fn in handlers():
        raised, asked = implied(fn, cls)
        direct[message] = statuses(raised)
        asks[message] = asked - {message}
    # An asked message's errors travel back through the asker: a fixpoint over the ask graph.
    changed = True
    while changed:
        changed = False
        for message, asked in asks.items():
            for other in asked:
                extra = direct.get(other, statuses(getattr(other, "errors", ()))) - direct[message]
                if extra:
                    direct[message] |= extra
                    changed = True
    # Unavailable (503) is always possible (ask timeout) and documented on every route that asks.
    return {m: s - {503} for m, s in direct.items()}


def test_every_ask_declares_the_errors_its_handler_answers() -> None:
    missing = {}
    for message, needed in required_statuses().items():
        declared = statuses(message.errors)
        if needed - declared:
            missing[f"{message.__module__}.{message.__name__}"] = sorted(needed - declared)
    assert not missing, f"undeclared error statuses (declare them in Ask.errors): {missing}"


def test_the_analysis_sees_errors() -> None:
    """The analysis is not vacuous: known raises are found."""
    from simveb.actors.vehicles.messages import GetVehicle

    assert 404 in required_statuses()[GetVehicle]


_BY_STATUS = {
    cls.status: cls
    for cls in vars(runtime_errors).values()
    if isinstance(cls, type) and issubclass(cls, DomainError) and cls.__module__ == runtime_errors.__name__
}


if __name__ == "__main__":
    for message, needed in sorted(required_statuses().items(), key=lambda kv: (kv[0].__module__, kv[0].__name__)):
        names = [(_BY_STATUS[s].__name__ if s in _BY_STATUS else f"?{s}") for s in sorted(needed)]
        print(f"{message.__module__}\t{message.__name__}\t{', '.join(names)}")
