"""The boundaries of ARCHITECTURE.md, checked on the source: what an actor and the HTTP layer may import."""

from __future__ import annotations

import ast
from pathlib import Path

from simveb.actors import ACTORS, ASK_GRAPH
from simveb.bus import check_acyclic

PACKAGE = Path(__file__).resolve().parent.parent / "simveb"
RUNTIME = {
    "simveb.messages",
    "simveb.bus",
    "simveb.outbox",
    "simveb.db",
    "simveb.config",
    "simveb.errors",
    "simveb.keys",
    "simveb.csvcells",
}


def is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            # `from simveb.actors.users import store` imports a module: check it by its full name
            found += [f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")]
    return [name for name in found if name.startswith("simveb")]


def allowed_for_actor(domain: str, name: str) -> bool:
    if name in RUNTIME or name.startswith(f"simveb.actors.{domain}"):
        return True
    parts = name.split(".")
    # another actor's contract (its messages module), nothing else of it
    return len(parts) >= 4 and parts[:2] == ["simveb", "actors"] and parts[3] == "messages"


def test_actors_import_only_the_runtime_their_package_and_other_contracts() -> None:
    bad = []
    for domain_dir in sorted(p for p in (PACKAGE / "actors").iterdir() if p.is_dir() and p.name != "__pycache__"):
        for path in domain_dir.rglob("*.py"):
            for name in imports(path):
                if name in {"simveb.actors", f"simveb.actors.{domain_dir.name}"}:
                    continue
                if not allowed_for_actor(domain_dir.name, name):
                    bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)


def test_http_layer_talks_to_actors_only_through_messages() -> None:
    bad = []
    for path in (PACKAGE / "http").rglob("*.py"):
        for name in imports(path):
            parts = name.split(".")
            if parts[:2] == ["simveb", "actors"] and len(parts) >= 4 and parts[3] not in {"messages"}:
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)


def test_every_domain_has_the_fixed_file_names() -> None:
    for cls in ACTORS:
        domain = PACKAGE / "actors" / cls.name
        for name in ("__init__.py", "messages.py", "actor.py"):
            assert (domain / name).is_file(), f"{cls.name} lacks {name}"


def test_the_declared_ask_graph_is_acyclic_and_complete() -> None:
    names = {cls.name for cls in ACTORS}
    assert set(ASK_GRAPH) == names
    check_acyclic(ASK_GRAPH)
