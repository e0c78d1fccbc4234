"""The boundaries of ARCHITECTURE.md, checked on the source.

Every check is a function of a source tree (a folder holding `simveb/` and `migrations/`) returning
the violations it found, one readable line each; the tests run them on this repository, and on a
copy with a violation planted, to prove each check fails when it should. Nothing here imports the
code it checks (except the fresh-interpreter import test): a tree that does not import still gets
checked, and any actor package is covered, including ones added later.

What is checked:
- imports, absolute and relative, resolved to full module names; actor names compared exactly;
- an actor imports only the runtime, its own package and other actors' `messages` modules;
- an actor's SQL (string literals of its code, its migrations) never names another actor's schema;
- the CLI and the HTTP layer never import each other, nor an actor's store, actor or other module:
  only `messages` (and the runtime);
- every actor package has the fixed file names, its class is named like its folder, and it has
  `migrations/<name>/` whose first file creates schema `<name>`;
- the ask graph declared in `simveb/actors/__init__.py` equals the asks the actors' code makes;
- no import cycle in `simveb/`, and every module imports in a fresh interpreter.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUNTIME = {
    "simveb.messages",
    "simveb.bus",
    "simveb.outbox",
    "simveb.db",
    "simveb.config",
    "simveb.errors",
    "simveb.keys",
    "simveb.remote",
    "simveb.csvcells",
    "simveb.metrics",
    "simveb.audit",
}
# The one place the CLI may import the HTTP layer: `simveb serve` and `simveb openapi` host the
# application itself (its factory), they do not borrow HTTP logic.
CLI_MAY_IMPORT_HTTP = {("simveb/cli/server.py", "simveb.http.app")}
ACTOR_FILES = ("__init__.py", "messages.py", "actor.py", "store.py")


# --- reading a tree ---------------------------------------------------------------------------------


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(root: Path, dotted: str) -> bool:
    base = root / Path(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def python_files(folder: Path) -> Iterator[Path]:
    yield from sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or inside a function, except `if TYPE_CHECKING:` ones."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(getattr(node, "orelse", []))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports(root: Path, path: Path) -> list[str]:
    """The simveb modules a file imports, absolute or relative, by full name.

    `from simveb.actors.users import store` (or `from ..users import store`) is the module
    `simveb.actors.users.store`, not the package.
    """
    me = module_name(root, path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[str] = []
    for node in import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        submodules = [f"{module}.{a.name}" for a in node.names if is_module(root, f"{module}.{a.name}")]
        if submodules and len(submodules) == len(node.names):
            found += submodules
        else:
            found += [module, *submodules]
    return [n for n in found if n == "simveb" or n.startswith("simveb.")]


def actor_packages(root: Path) -> list[str]:
    """Every package under simveb/actors/ (implemented or, for now, only its contract)."""
    folder = root / "simveb" / "actors"
    return sorted(p.name for p in folder.iterdir() if (p / "__init__.py").is_file())


def implemented_actors(root: Path) -> list[str]:
    return [n for n in actor_packages(root) if (root / "simveb" / "actors" / n / "actor.py").is_file()]


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# --- the checks ---------------------------------------------------------------------------------------


def check_actor_imports(root: Path) -> list[str]:
    """An actor imports only the runtime, its own package and other actors' messages modules."""
    bad = []
    for domain in actor_packages(root):
        for path in python_files(root / "simveb" / "actors" / domain):
            for name in imports(root, path):
                parts = name.split(".")
                if name in RUNTIME or parts[:3] == ["simveb", "actors", domain]:
                    continue
                if len(parts) == 4 and parts[:2] == ["simveb", "actors"] and parts[3] == "messages":
                    continue  # another actor's contract
                bad.append(
                    f"{_rel(root, path)} imports {name}: an actor imports the runtime, its own package"
                    " and other actors' messages only"
                )
    return bad


def check_layer_imports(root: Path) -> list[str]:
    """CLI and HTTP never import each other, nor anything of an actor but its messages module."""
    bad = []
    for layer, other in (("cli", "http"), ("http", "cli")):
        for path in python_files(root / "simveb" / layer):
            for name in imports(root, path):
                parts = name.split(".")
                where = _rel(root, path)
                if parts[:2] == ["simveb", other] and (where, name) not in CLI_MAY_IMPORT_HTTP:
                    bad.append(f"{where} imports {name}: simveb/{layer} never imports simveb/{other}")
                elif parts[:2] == ["simveb", "actors"] and not (len(parts) == 4 and parts[3] == "messages"):
                    bad.append(f"{where} imports {name}: simveb/{layer} talks to actors through messages only")
    return bad


_SQL = re.compile(r"\b(select|insert|update|delete|from|join|into|table|schema|references)\b", re.IGNORECASE)


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """String literals that are not docstrings (f-strings: their literal parts)."""
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def check_sql_schemas(root: Path) -> list[str]:
    """An actor's SQL (code and migrations) names no other actor's schema (`<other>.<table>`)."""
    names = actor_packages(root)
    bad = []
    for domain in names:
        others = [n for n in names if n != domain]
        if not others:
            continue
        foreign = re.compile(r"(?<![\w.$:/-])(" + "|".join(map(re.escape, others)) + r")\.([a-z_][a-z0-9_]*)\b")
        sources: list[tuple[Path, int, str]] = []
        for path in python_files(root / "simveb" / "actors" / domain):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            sources += [(path, line, text) for line, text in _strings(tree) if _SQL.search(text)]
        for path in sorted((root / "migrations" / domain).glob("*.sql")):
            for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                sources.append((path, line, re.sub(r"--.*$", "", text)))
        for path, line, text in sources:
            for match in foreign.finditer(text):
                bad.append(
                    f"{_rel(root, path)}:{line}: {domain} names {match.group(0)}, a table of the"
                    f" {match.group(1)} schema (ask {match.group(1)} or keep a read model)"
                )
    return bad


def check_actor_layout(root: Path) -> list[str]:
    """Fixed file names, class named like the folder, and migrations/<name>/ creating schema <name>."""
    bad = []
    for domain in actor_packages(root):
        folder = root / "simveb" / "actors" / domain
        if not (folder / "messages.py").is_file():
            bad.append(f"simveb/actors/{domain} has no messages.py (its contract)")
        if not (folder / "actor.py").is_file():
            continue  # a contract published ahead of its actor
        bad += [f"simveb/actors/{domain} has no {f}" for f in ACTOR_FILES if not (folder / f).is_file()]
        tree = ast.parse((folder / "actor.py").read_text(encoding="utf-8"))
        declared = {
            node.value.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "name" for t in node.targets)
            and isinstance(node.value, ast.Constant)
        }
        if declared != {domain}:
            bad.append(f"simveb/actors/{domain}/actor.py declares name {sorted(declared)}, expected {domain!r}")
        migrations = sorted((root / "migrations" / domain).glob("*.sql"))
        if not migrations:
            bad.append(f"migrations/{domain}/ is missing (the actor's schema)")
            continue
        first = migrations[0].read_text(encoding="utf-8")
        if not re.search(rf"CREATE\s+SCHEMA\s+(IF\s+NOT\s+EXISTS\s+)?{re.escape(domain)}\b", first, re.IGNORECASE):
            bad.append(f"{_rel(root, migrations[0])} (first migration of {domain}) does not create schema {domain}")
    return bad


def declared_graph(root: Path) -> dict[str, set[str]]:
    """ASK_GRAPH as written in simveb/actors/__init__.py (read, not imported)."""
    tree = ast.parse((root / "simveb" / "actors" / "__init__.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign):
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "ASK_GRAPH" and isinstance(node.value, ast.Dict):
            graph: dict[str, set[str]] = {}
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                assert isinstance(key, ast.Constant)
                edges = value.elts if isinstance(value, ast.Set | ast.List | ast.Tuple) else []
                graph[key.value] = {e.value for e in edges if isinstance(e, ast.Constant)}
            return graph
    raise AssertionError("simveb/actors/__init__.py has no ASK_GRAPH dict literal")


def _defined_in(root: Path, module: str, name: str, seen: set[str] | None = None) -> str | None:
    """The module that defines class `name`, following re-exports from `module`."""
    seen = seen or set()
    base = root / Path(*module.split("."))
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    if module in seen or not path.is_file():
        return None
    seen.add(module)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
        return module
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
            return _defined_in(root, node.module, name, seen)
    return None


def _module_tree(root: Path, module: str) -> ast.Module | None:
    base = root / Path(*module.split("."))
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    return ast.parse(path.read_text(encoding="utf-8")) if path.is_file() else None


def _resolve(root: Path, me: str, tree: ast.Module, origin: dict[str, str], name: str) -> str | None:
    """The module defining class `name` as seen from module `me` (its own class, or an import)."""
    if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
        return me
    if name in origin:
        module, _, real = origin[name].partition(":")
        return _defined_in(root, module, real)
    return None


def _field_class(root: Path, module: str, cls: str, field: str) -> str | None:
    """The module defining the class of field `field` of class `cls` (defined in `module`)."""
    tree = _module_tree(root, module)
    for node in tree.body if tree else []:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == field:
                    annotation = item.annotation
                    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                        annotation = ast.parse(annotation.value, mode="eval").body
                    if isinstance(annotation, ast.Name):
                        origin = {
                            a.asname or a.name: f"{n.module}:{a.name}"
                            for n in tree.body
                            if isinstance(n, ast.ImportFrom) and n.module
                            for a in n.names
                        }
                        return _resolve(root, module, tree, origin, annotation.id)
    return None


def params(func: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """Parameter name -> annotation class name, for simply annotated parameters."""
    found = {}
    for a in func.args.args + func.args.kwonlyargs:
        annotation = a.annotation
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            annotation = ast.parse(annotation.value, mode="eval").body
        if isinstance(annotation, ast.Name):
            found[a.arg] = annotation.id
    return found


def asks_made(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Edges actor -> actor from `bus.ask(X(...))` / `bus.tell(X(...))` in each actor's code, and the
    asks that could not be resolved to a message class of an actor (reported as violations)."""
    made: dict[str, set[str]] = {d: set() for d in actor_packages(root)}
    unresolved = []
    for domain in actor_packages(root):
        for path in python_files(root / "simveb" / "actors" / domain):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            me = module_name(root, path)
            package = me if path.name == "__init__.py" else me.rpartition(".")[0]
            origin: dict[str, str] = {}  # local name -> module it was imported from
            for node in import_nodes(tree):
                if isinstance(node, ast.ImportFrom):
                    module = node.module or ""
                    if node.level:
                        base = package.split(".")
                        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                        module = ".".join([*base, *([node.module] if node.module else [])])
                    for a in node.names:
                        origin[a.asname or a.name] = f"{module}:{a.name}"
            for func in ast.walk(tree):
                if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                built = {  # `msg = X(...)` then `bus.ask(msg)`
                    t.id: n.value.func.id
                    for n in ast.walk(func)
                    if isinstance(n, ast.Assign)
                    and isinstance(n.value, ast.Call)
                    and isinstance(n.value.func, ast.Name)
                    for t in n.targets
                    if isinstance(t, ast.Name)
                }
                for call in ast.walk(func):
                    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                        continue
                    if call.func.attr not in {"ask", "tell"} or not call.args:
                        continue
                    receiver = ast.unparse(call.func.value)
                    if receiver != "bus" and not receiver.endswith(".bus"):
                        continue
                    arg = call.args[0]
                    defined = None
                    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name):
                        defined = _resolve(root, me, tree, origin, arg.func.id)
                    elif isinstance(arg, ast.Name) and arg.id in built:
                        defined = _resolve(root, me, tree, origin, built[arg.id])
                    elif isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
                        # `bus.ask(msg.user)`: a message carried by the handler's message
                        annotation = params(func).get(arg.value.id)
                        carrier = _resolve(root, me, tree, origin, annotation) if annotation else None
                        defined = _field_class(root, carrier, annotation, arg.attr) if carrier else None
                    parts = (defined or "").split(".")
                    owner = None
                    if len(parts) == 4 and parts[:2] == ["simveb", "actors"] and parts[3] == "messages":
                        owner = parts[2]
                    elif defined and defined.startswith(f"simveb.actors.{domain}."):
                        owner = domain  # a message of this actor's own package: a self-ask
                    if owner is None:
                        unresolved.append(
                            f"{_rel(root, path)}:{call.lineno}: cannot tell which actor `{ast.unparse(call)[:80]}`"
                            " asks (ask with `bus.ask(Message(...))` of an actor's messages module)"
                        )
                    elif owner != domain:
                        made[domain].add(owner)
    return made, unresolved


def check_ask_graph(root: Path) -> list[str]:
    """Declared ask edges equal the asks made: no undeclared ask, no unused declared edge."""
    declared = declared_graph(root)
    made, bad = asks_made(root)
    for domain in implemented_actors(root):
        if domain not in declared:
            bad.append(f"ASK_GRAPH has no entry for actor {domain}")
    running = set(implemented_actors(root))
    for domain in sorted(set(declared) | set(made)):
        # An ask to an actor that is only a contract so far (guarded by `bus.handles`) cannot be
        # declared yet: the runtime refuses a graph naming an actor it does not run.
        for target in sorted((made.get(domain, set()) & running) - declared.get(domain, set())):
            bad.append(f"{domain} asks {target}, but ASK_GRAPH does not declare {domain} -> {target}")
        for target in sorted(declared.get(domain, set()) - made.get(domain, set())):
            bad.append(f"ASK_GRAPH declares {domain} -> {target}, but {domain}'s code never asks {target}")
    return bad


def import_graph(root: Path) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in python_files(root / "simveb"):
        me = module_name(root, path)
        graph[me] = {n for n in imports(root, path) if n != me and is_module(root, n)}
    return graph


def check_import_cycles(root: Path) -> list[str]:
    """No import circle in simveb/, lazy (function-level) imports included; TYPE_CHECKING ones are not imports."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [f"import circle: {' <-> '.join(c)}" for c in cycles]


CHECKS = [
    check_actor_imports,
    check_layer_imports,
    check_sql_schemas,
    check_actor_layout,
    check_ask_graph,
    check_import_cycles,
]


# --- on this repository -------------------------------------------------------------------------------


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_repository_keeps_its_boundaries(check) -> None:  # type: ignore[no-untyped-def]
    bad = check(ROOT)
    assert not bad, "\n".join(bad)


def test_the_declared_ask_graph_is_acyclic_and_names_the_running_actors() -> None:
    from simveb.actors import ACTORS, ASK_GRAPH
    from simveb.bus import check_acyclic

    assert {cls.name for cls in ACTORS} == set(ASK_GRAPH) == set(implemented_actors(ROOT))
    check_acyclic(ASK_GRAPH)


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    modules = sorted(module_name(ROOT, p) for p in python_files(ROOT / "simveb"))
    modules = [m for m in modules if not m.endswith("__main__")]  # running it is the CLI itself
    # Each module first in its own interpreter would take a minute; one interpreter per module kind
    # (contracts, runtime, layers) is enough to catch an import that only works in a lucky order.
    groups = [
        [m for m in modules if m.endswith(".messages")],
        [m for m in modules if m.startswith("simveb.http")],
        [m for m in modules if m.startswith("simveb.cli")],
        modules,
    ]
    for group in groups:
        code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
        done = subprocess.run(
            [sys.executable, "-c", code, *group], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]


# --- each check fails on a planted violation ----------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the source tree (simveb/ and migrations/) to plant violations in."""
    shutil.copytree(ROOT / "simveb", tmp_path / "simveb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations")
    return tmp_path


def planted(check: Callable[[Path], list[str]], tree: Path) -> list[str]:
    """What `check` reports on the planted tree beyond what it reports on this repository."""
    before = set(check(ROOT))
    return [line for line in check(tree) if line not in before]


def plant(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def test_a_planted_cross_schema_query_is_reported(tree: Path) -> None:
    plant(
        tree / "simveb/actors/vehicles/store.py",
        "\n\nasync def owner_names(con, ids):\n"
        '    return await con.fetch("SELECT id, last_name FROM users.profiles WHERE id = ANY($1)", ids)\n',
    )
    bad = planted(check_sql_schemas, tree)
    print("\n".join(bad))
    assert len(bad) == 1 and bad[0].startswith("simveb/actors/vehicles/store.py:")
    assert "vehicles names users.profiles, a table of the users schema" in bad[0]


def test_a_planted_cross_schema_foreign_key_in_a_migration_is_reported(tree: Path) -> None:
    (tree / "migrations/vehicles/9999_owner_fk.sql").write_text(
        "ALTER TABLE vehicles.owners ADD FOREIGN KEY (user_id) REFERENCES users.users (id);\n"
    )
    bad = planted(check_sql_schemas, tree)
    assert bad == [
        "migrations/vehicles/9999_owner_fk.sql:1: vehicles names users.users, a table of the users schema"
        " (ask users or keep a read model)"
    ]


def test_a_planted_relative_import_of_another_actors_store_is_reported(tree: Path) -> None:
    plant(tree / "simveb/actors/vehicles/actor.py", "\nfrom ..users import store as users_store  # noqa\n")
    bad = planted(check_actor_imports, tree)
    print("\n".join(bad))
    assert bad == [
        "simveb/actors/vehicles/actor.py imports simveb.actors.users.store: an actor imports the runtime,"
        " its own package and other actors' messages only"
    ]


def test_actor_names_are_compared_exactly_not_as_prefixes(tree: Path) -> None:
    # An actor named like the prefix of another ("user" / "users") gets no access to the other's store.
    shutil.copytree(tree / "simveb/actors/config", tree / "simveb/actors/user")
    (tree / "migrations/user").mkdir()
    (tree / "migrations/user/0001_init.sql").write_text("CREATE SCHEMA user;\n")
    (tree / "simveb/actors/user/actor.py").write_text(
        '"""x"""\nfrom simveb.actors.users.store import get_user  # noqa\n\n\nclass UserActor:\n    name = "user"\n'
    )
    bad = planted(check_actor_imports, tree)
    assert "simveb/actors/user/actor.py imports simveb.actors.users.store" in "\n".join(bad)


def test_the_cli_and_http_importing_each_other_or_a_store_is_reported(tree: Path) -> None:
    plant(tree / "simveb/cli/integrations.py", "\nfrom simveb.http import integrations as routes  # noqa\n")
    plant(tree / "simveb/http/vehicles.py", "\nfrom simveb.actors.vehicles import store  # noqa\n")
    plant(tree / "simveb/http/config.py", "\nfrom simveb.cli.app import main  # noqa\n")
    assert planted(check_layer_imports, tree) == [
        "simveb/cli/integrations.py imports simveb.http.integrations: simveb/cli never imports simveb/http",
        "simveb/http/config.py imports simveb.cli.app: simveb/http never imports simveb/cli",
        "simveb/http/vehicles.py imports simveb.actors.vehicles.store: simveb/http talks to actors through"
        " messages only",
    ]


def test_a_missing_store_or_schema_of_a_new_actor_is_reported(tree: Path) -> None:
    new = tree / "simveb/actors/fines"  # an actor that does not exist (yet)
    new.mkdir()
    (new / "__init__.py").write_text('"""Fines."""\n')
    (new / "messages.py").write_text('"""Fines."""\n')
    (new / "actor.py").write_text('"""Fines."""\n\n\nclass FinesActor:\n    name = "fine"\n')
    (tree / "migrations/fines").mkdir()
    (tree / "migrations/fines/0001_init.sql").write_text("CREATE TABLE fine.x (id int);\n")
    assert planted(check_actor_layout, tree) == [
        "simveb/actors/fines has no store.py",
        "simveb/actors/fines/actor.py declares name ['fine'], expected 'fines'",
        "migrations/fines/0001_init.sql (first migration of fines) does not create schema fines",
    ]


def test_declared_edges_must_equal_the_asks_made(tree: Path) -> None:
    init = tree / "simveb/actors/__init__.py"
    text = init.read_text(encoding="utf-8")
    init.write_text(text.replace('"config": set(),', '"config": {"integrations"},', 1), encoding="utf-8")
    plant(
        tree / "simveb/actors/notifications/actor.py",
        "\n\nasync def _planted(self):\n"
        "    from simveb.actors.users.messages import GetUserAuthz\n"
        "    return await self.bus.ask(GetUserAuthz(user_id=None))\n",
    )
    bad = planted(check_ask_graph, tree)
    assert "ASK_GRAPH declares config -> integrations, but config's code never asks integrations" in bad
    assert "notifications asks users, but ASK_GRAPH does not declare notifications -> users" in bad
    assert len(bad) == 2


def test_an_import_circle_is_reported(tree: Path) -> None:
    plant(tree / "simveb/errors.py", "\n\ndef _late():\n    from simveb.http import security  # noqa\n")
    bad = planted(check_import_cycles, tree)
    assert len(bad) == 1 and "simveb.errors" in bad[0] and "simveb.http.security" in bad[0]
