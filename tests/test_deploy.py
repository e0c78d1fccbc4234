"""The container recipe (Dockerfile, .dockerignore, compose files, deploy/simveb.env.example), tested
without Docker: this machine cannot build images.

Two kinds of test. The recipe's promises are read from the files themselves: a non-root user, a health
check on /health/ready, production settings, no secret or development key baked in, a build context
without local data, keys or virtual environments, and an environment template that names every secret
production needs, each a real setting. Then the recipe is replayed: the build stage's files make a wheel,
the wheel goes into a fresh virtual environment, the runtime stage's files and environment are laid out
as the image has them, and the image's entry point runs as an unprivileged user against the machine's
PostgreSQL and Redis with keys from the environment, until the image's own HEALTHCHECK command passes.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import pytest
import yaml

from simveb.config import ConfigError, Settings, check_providers_reachable, load_settings
from simveb.keys import generate_pem

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILES = sorted(ROOT.glob("compose*.yaml"))
ENV_TEMPLATE = ROOT / "deploy" / "simveb.env.example"
# The unprivileged user the entry point runs as when the tests run as root.
NOBODY = 65534

# --- reading the recipe -------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {args!r}: use the KEY=VALUE form"
                values[key] = value
        return values

    def copies(self) -> list[tuple[list[str], str]]:
        """(sources, destination) of each COPY, flags left out."""
        found = []
        for args in self.all("COPY"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            found.append((words[:-1], words[-1]))
        return found


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages with continuation lines joined and ARG defaults substituted in FROM."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    """An instruction in exec (JSON) form; the shell form would run through /bin/sh and lose signals."""
    flags = []
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        flags.append(flag)
        args = args.strip()
    if args.startswith("CMD "):
        args = args[4:]
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads an env file (double quotes may hold \\n for newlines)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace("\\n", "\n")
        values[key.strip()] = value
    return values


def compose(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def app_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this image (built from the repository, or overriding such a service)."""
    return {
        name: svc
        for name, svc in doc.get("services", {}).items()
        if "build" in svc or any(str(k).startswith("SIMVEB_") for k in svc.get("environment") or {})
    }


def merged(*paths: Path) -> dict[str, Any]:
    """Compose files merged as `docker compose -f a -f b` does for what these files use: mappings
    (environment, depends_on) merge key by key, anything else is replaced."""

    def merge(base: Any, override: Any) -> Any:
        if isinstance(base, dict) and isinstance(override, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in override.items()}}
        return override

    doc: dict[str, Any] = {}
    for path in paths:
        doc = merge(doc, compose(path))
    return doc


def hosted_actors(service: dict[str, Any]) -> list[str] | None:
    """The actors `serve --actors a,b` names in the service's command; None = all."""
    command = service.get("command") or []
    if "--actors" not in command:
        return None
    return [name.strip() for name in command[command.index("--actors") + 1].split(",")]


def interpolations(text: str) -> set[str]:
    """Variables compose substitutes (${VAR}, ${VAR:-default}, ${VAR:?error}); `$$` is a literal dollar."""
    return set(re.findall(r"(?<!\$)\$\{(\w+)", text))


def setting_of(name: str) -> tuple[str, str] | None:
    """(section, key) of a SIMVEB_SECTION__KEY variable, None when no such setting exists."""
    if not name.startswith("SIMVEB_") or "__" not in name:
        return None
    section, _, key = name[len("SIMVEB_") :].lower().partition("__")
    sections = {f.name: f.type for f in msgspec.structs.fields(Settings)}
    if section not in sections:
        return None
    keys = {f.name for f in msgspec.structs.fields(sections[section])}
    return (section, key) if key in keys else None


def secret_variables() -> set[str]:
    """Every variable config.toml says to set in the environment (`set SIMVEB_...`): the secrets."""
    return set(re.findall(r"set (SIMVEB_[A-Z0-9_]+__[A-Z0-9_]+)", (ROOT / "config.toml").read_text(encoding="utf-8")))


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore patterns exclude `path` (relative, '/'-separated): the last match wins,
    `!` re-includes, a pattern matching a directory excludes what is under it, `**` spans directories."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if _glob_match(prefix, pattern):
                result = not negate
                break
    return result


def _glob_match(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        rest = pattern[3:]
        parts = path.split("/")
        return any(_glob_match("/".join(parts[i:]), rest) for i in range(len(parts)))
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def build_context(root: Path) -> list[str]:
    """Every file Docker would send as the build context of `root` (what .dockerignore leaves)."""
    patterns = dockerignore_patterns()
    files = []
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if not ignored(rel + d, patterns)]
        files += [rel + n for n in names if not ignored(rel + n, patterns)]
    return files


# --- the recipe's promises ----------------------------------------------------------------------------


def test_dockerfile_builds_a_wheel_then_installs_it_in_a_slim_image() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    build, runtime = stages[0], stages[-1]
    for stage in (build, runtime):
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", stage.base), stage.base
    assert any("pip wheel" in run for run in build.all("RUN")), "the build stage makes wheels"
    install = " ".join(runtime.all("RUN"))
    assert "from=build" in install and "--no-index" in install, "the runtime installs the built wheels, offline"
    # The wheels are mounted for the install only: copying them in would keep them in a layer.
    assert not any("/wheels" in " ".join(src) for src, _ in runtime.copies())


def test_image_runs_simveb_serve_as_a_non_root_user_on_all_interfaces() -> None:
    runtime = dockerfile_stages()[-1]
    user = runtime.last("USER").split(":")[0]
    assert user not in {"root", "0"}, "the server must not run as root"
    assert user.isdigit(), "a numeric user, so runAsNonRoot can check it"
    assert exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD")) == ["simveb", "serve"]
    env = runtime.env()
    assert env["SIMVEB_SERVER__HOST"] == "0.0.0.0"
    assert env["SIMVEB_SERVER__ENV"] == "production"
    assert env["SIMVEB_SERVER__SANDBOX"] == "false"
    # Data lives under a volume.
    volumes = [
        v for args in runtime.all("VOLUME") for v in (json.loads(args) if args.startswith("[") else args.split())
    ]
    assert env["SIMVEB_SERVER__DATA_DIR"] in volumes
    assert runtime.last("EXPOSE").split("/")[0] == env["SIMVEB_SERVER__PORT"]
    for name in env:
        if name.startswith("SIMVEB_") and "__" in name:
            assert setting_of(name), f"Dockerfile ENV {name} is not a setting of simveb/config.py"


def test_healthcheck_asks_health_ready_with_python_alone() -> None:
    runtime = dockerfile_stages()[-1]
    check = exec_form(runtime.last("HEALTHCHECK"))
    assert check[0] == "python", "no curl in a slim image: the image's own Python probes"
    assert "/health/ready" in check[-1]


def test_nothing_secret_is_baked_into_the_recipe() -> None:
    secrets = secret_variables()
    assert "SIMVEB_SECURITY__SIGNING_KEY" in secrets and "SIMVEB_PAYMENTS__FEDAPAY_SECRET_KEY" in secrets
    stages = dockerfile_stages()
    for stage in stages:
        for name in stage.env():
            assert name not in secrets, f"Dockerfile ENV sets the secret {name}"
        for args in stage.all("ARG"):
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", args, re.I), (
                f"ARG {args} would be kept in the image history"
            )
    for path in [DOCKERFILE, *COMPOSE_FILES, ENV_TEMPLATE]:
        text = path.read_text(encoding="utf-8")
        unescaped = text.replace("\\n", "\n")
        assert not re.search(r"PRIVATE KEY-----\s*[A-Za-z0-9+/=]{40,}", unescaped), f"a private key in {path.name}"
    # Every secret of the template is empty: it is a template, not a set of credentials.
    template = read_env_file(ENV_TEMPLATE)
    for name in secrets | {"POSTGRES_PASSWORD", "REDIS_PASSWORD"}:
        assert template.get(name) == "", f"{ENV_TEMPLATE.name}: {name} must be listed and left empty"
    # compose never writes a credential itself: each one is an interpolation from the env file.
    for path in COMPOSE_FILES:
        for svc_name, svc in compose(path).get("services", {}).items():
            env = svc.get("environment") or {}
            for name, value in env.items():
                if re.search(r"PASSWORD|SECRET|ACCESS_KEY", name):
                    assert re.fullmatch(r"\$\{\w+(:[?-][^}]*)?\}", str(value)), (
                        f"{path.name} {svc_name}: {name} is literal"
                    )


def test_build_context_leaves_out_local_data_keys_and_environments(tmp_path: Path) -> None:
    # A checkout as a developer has it after running the server and the tests.
    for rel in [
        "pyproject.toml",
        "README.md",
        "config.toml",
        "simveb/__init__.py",
        "simveb/actors/documents/pdf.py",
        "migrations/auth/0001_schema.sql",
        ".venv/lib/python3.11/site-packages/x.py",
        ".git/config",
        "data/pgdata/PG_VERSION",
        "data/keys/abc.pem",
        "data/keys/documents/def.pem",
        "tests/data/vehicles.csv",
        "deploy/simveb.env",
        ".env",
        "keys/token.pem",
        "simveb/__pycache__/x.cpython-311.pyc",
        "simveb.egg-info/PKG-INFO",
        ".schemathesis/cache.json",
        "imports/2026.errors.csv",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    context = set(build_context(tmp_path))
    assert context == {
        "pyproject.toml",
        "README.md",
        "config.toml",
        "simveb/__init__.py",
        "simveb/actors/documents/pdf.py",
        "migrations/auth/0001_schema.sql",
    }
    # What the Dockerfile copies from the real repository is in its context.
    real = build_context(ROOT)
    for stage in dockerfile_stages():
        for sources, _ in stage.copies():
            for src in sources:
                assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in real), (
                    f"COPY {src}: not in the context"
                )
    assert not any(f.endswith(".pem") or f.startswith((".venv/", "data/", ".git/")) for f in real)


def test_env_template_names_real_settings_and_every_secret() -> None:
    template = read_env_file(ENV_TEMPLATE)
    for name in template:
        if name.startswith("SIMVEB_") and "__" in name:
            assert setting_of(name), f"{ENV_TEMPLATE.name}: {name} is not a setting of simveb/config.py"
    missing = secret_variables() - set(template)
    assert not missing, f"{ENV_TEMPLATE.name} does not list {sorted(missing)}"
    # Production refuses a provider URL on the simulators: the template sets each one away from them.
    defaults = load_settings(ROOT / "config.toml", environ={})
    for section in msgspec.structs.fields(defaults):
        for f in msgspec.structs.fields(getattr(defaults, section.name)):
            value = getattr(getattr(defaults, section.name), f.name)
            if f.name.endswith("url") and isinstance(value, str) and "/sandbox" in value:
                assert f"SIMVEB_{section.name.upper()}__{f.name.upper()}" in template, f"{section.name}.{f.name}"


def test_compose_runs_the_app_with_postgres_16_redis_and_an_s3_store() -> None:
    assert (ROOT / "compose.yaml") in COMPOSE_FILES
    doc = compose(ROOT / "compose.yaml")
    services = doc["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith(("redis:", "valkey/"))
    assert "s3" in services
    for name, svc in services.items():
        if svc.get("restart") != "no":  # one-shot jobs have nothing to probe
            assert "healthcheck" in svc or "build" in svc, f"{name} has no healthcheck"
    apps = app_services(doc)
    assert apps, "no service runs the image"
    for name, app in apps.items():
        env = app["environment"]
        assert env["SIMVEB_SERVER__ENV"] == "production"
        assert env["SIMVEB_DOCUMENTS__STORAGE_URL"].startswith("s3://")
        assert any(str(v).endswith(":/data") for v in app["volumes"]), f"{name}: /data is not on a volume"
        for dep, cond in app["depends_on"].items():
            assert cond["condition"] in {"service_healthy", "service_completed_successfully"}, f"{name} -> {dep}"


def test_split_variant_places_every_actor_once_and_shares_the_data_volume() -> None:
    from simveb.actors import ACTORS

    base = compose(ROOT / "compose.yaml")
    doc = merged(ROOT / "compose.yaml", ROOT / "compose.split.yaml")
    apps = app_services(doc)
    placements = {name: hosted_actors(svc) for name, svc in apps.items()}
    assert len(apps) >= 2 and all(p is not None for p in placements.values()), placements
    hosted = [actor for actors in placements.values() for actor in actors or []]
    assert sorted(hosted) == sorted(a.name for a in ACTORS), "each actor hosted by exactly one service"
    # Downloads read chunks from the documents host that opened them: one documents process.
    (documents_host,) = [name for name, actors in placements.items() if "documents" in (actors or [])]
    assert apps[documents_host].get("deploy", {}).get("replicas", 1) == 1
    volumes = {name: {v for v in svc["volumes"] if v.endswith(":/data")} for name, svc in apps.items()}
    assert len({frozenset(v) for v in volumes.values()}) == 1, f"uploads are staged on a shared /data: {volumes}"
    for name, svc in apps.items():
        assert setting_of("SIMVEB_PLACEMENT__REDIS_URL") and svc["environment"].get("SIMVEB_PLACEMENT__REDIS_URL")
        # Apart from where actors live, every app process is configured like compose.yaml's app.
        env = {k: v for k, v in svc["environment"].items() if k != "SIMVEB_PLACEMENT__REDIS_URL"}
        assert env == base["services"]["app"]["environment"], name
        for key in ("env_file", "depends_on", "init", "build", "image"):
            assert svc.get(key) == base["services"]["app"].get(key), f"{name}: {key} differs from app"


def test_every_compose_variable_is_in_the_template_and_every_setting_is_real() -> None:
    template = read_env_file(ENV_TEMPLATE)
    for path in COMPOSE_FILES:
        text = path.read_text(encoding="utf-8")
        unknown = interpolations(text) - set(template)
        assert not unknown, f"{path.name} uses {sorted(unknown)}, absent from {ENV_TEMPLATE.name}"
        for svc_name, app in app_services(compose(path)).items():
            for name in app.get("environment") or {}:
                if name.startswith("SIMVEB_"):
                    assert setting_of(name), f"{path.name} {svc_name}: {name} is not a setting of simveb/config.py"
            for env_file in app.get("env_file", []):
                assert (ROOT / env_file).with_name((ROOT / env_file).name + ".example") == ENV_TEMPLATE


def production_environment(service: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
    """The environment a container of `service` (compose.yaml's app by default) gets: the image's ENV,
    the filled template, the service's environment (its ${VAR} resolved from the template), then
    `extra`. Empty secrets are filled with fresh values."""
    template = read_env_file(ENV_TEMPLATE)
    filled = dict(template)
    for name, value in template.items():
        if value:
            continue
        if name.endswith("SIGNING_KEY"):
            filled[name] = generate_pem().decode()
        elif name in {"SIMVEB_AUTH__TOTP_KEY", "SIMVEB_NOTIFICATIONS__SEAL_KEY"}:
            filled[name] = "A" * 43  # 32 bytes, base64url
        elif name == "SIMVEB_NOTIFICATIONS__FCM_SERVICE_ACCOUNT":
            # The key file Firebase gives, on one line (its private key signs the token requests).
            filled[name] = json.dumps({"client_email": "push@simveb.iam.gserviceaccount.com", "private_key": "-"})
        elif name in {"SIMVEB_DOCUMENTS__SIGNING_CERT", "SIMVEB_SERVER__TRUSTED_PROXIES"}:
            continue  # optional: empty means self-signed, no proxy
        else:
            filled[name] = uuid.uuid4().hex
    env = dict(dockerfile_stages()[-1].env())
    env.update({k: v for k, v in filled.items()})
    app = service if service is not None else compose(ROOT / "compose.yaml")["services"]["app"]

    def resolve(value: str) -> str:
        return re.sub(
            r"(?<!\$)\$\{(\w+)(?::[?-]([^}]*))?\}", lambda m: filled.get(m.group(1)) or (m.group(2) or ""), value
        )

    env.update({k: resolve(str(v)) for k, v in app["environment"].items()})
    env.update(extra)
    return env


def test_filled_template_is_what_production_needs_to_start() -> None:
    env = production_environment(SIMVEB_CONFIG=str(ROOT / "config.toml"))
    settings = load_settings(environ=env)
    assert settings.is_production
    check_providers_reachable(settings)
    # Each secret production checks for comes from the template: without it, start-up is refused.
    for name in ["SIMVEB_SECURITY__SIGNING_KEY", "SIMVEB_DOCUMENTS__SIGNING_KEY", "SIMVEB_PAYMENTS__KKIAPAY_SECRET"]:
        without = {k: v for k, v in env.items() if k != name}
        with pytest.raises(ConfigError, match=name.removeprefix("SIMVEB_").lower().replace("__", ".")):
            load_settings(environ=without)


# --- the recipe replayed: wheel, fresh environment, entry point as a non-root user ---------------------


@dataclass
class Image:
    """The runtime stage laid out in a directory: paths of the image mapped to directories here."""

    root: Path
    venv: Path
    workdir: Path
    data: Path
    stage: Stage
    user: list[str]  # prefix that runs a command as the unprivileged user ([] when not root)

    def path(self, value: str) -> str:
        for image_path, local in (
            ("/opt/venv", self.venv),
            (self.stage.last("WORKDIR"), self.workdir),
            ("/data", self.data),
        ):
            value = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?=/|$|:)", str(local), value)
        return value

    def environment(self, port: int, service: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
        env = production_environment(service, **extra)
        # Paths of the image (the Dockerfile's ENV) point into this layout instead.
        env.update({k: self.path(v) for k, v in self.stage.env().items() if k not in extra})
        env["PATH"] = env["PATH"].replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
        env["SIMVEB_SERVER__PORT"] = str(port)
        env["HOME"] = str(self.data)
        env["LANG"] = "C.UTF-8"
        return env

    def command(self, argv: list[str], env: dict[str, str]) -> list[str]:
        exe = shutil.which(argv[0], path=env["PATH"])
        assert exe, f"{argv[0]} is not on the image's PATH"
        return [*self.user, exe, *argv[1:]]


def _run(*argv: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _unprivileged_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "nobody", "--"]
    pytest.skip("running as root without setpriv or runuser: cannot drop to an unprivileged user")


def apply_copies(stage: Stage, context: list[str], workdir: Path) -> None:
    """The stage's COPY instructions (from the build context, relative to its WORKDIR) into `workdir`:
    a file lands in a directory destination under its name, a directory's content lands in the destination."""
    for sources, dest in stage.copies():
        for source in sources:
            source = source.rstrip("/")
            for rel in context:
                if rel == source:
                    out = workdir / dest / Path(rel).name if dest.endswith("/") or dest == "." else workdir / dest
                elif rel.startswith(source + "/"):
                    out = workdir / dest / rel[len(source) + 1 :]
                else:
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, out)


def _interpreter_for(user: list[str]) -> str:
    """A Python >= 3.11 the unprivileged user can run as itself. This one may live where that user cannot
    read (a per-user installation under /root): the user would then get another Python's standard library
    behind the same binary, so the probe compares the prefix each of them sees."""
    candidates = [sys._base_executable, shutil.which("python3.11", path="/usr/local/bin:/usr/bin"), "/usr/bin/python3"]
    probe = "import sys; print(sys.prefix, sys.version_info >= (3, 11))"
    for exe in filter(None, candidates):
        if not Path(exe).exists():
            continue
        mine = subprocess.run([exe, "-c", probe], capture_output=True, text=True, env={})
        theirs = subprocess.run([*user, exe, "-c", probe], capture_output=True, text=True, env={})
        if (
            mine.returncode == theirs.returncode == 0
            and mine.stdout == theirs.stdout
            and mine.stdout.strip().endswith("True")
        ):
            return exe
    pytest.skip(f"no Python >= 3.11 on this machine that the unprivileged user can run: {candidates}")


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """Replays the Dockerfile: the build stage's COPYs make a wheel; a fresh virtual environment gets it;
    the runtime stage's COPYs land in its WORKDIR. Dependencies come from this environment (read through
    a .pth file, so the project itself is the wheel's copy, never the checkout)."""
    stages = dockerfile_stages()
    build, runtime = stages[0], stages[-1]
    user = _unprivileged_prefix()
    # Not under pytest's tmp_path: that is private to root, and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="simveb-image-"))
    root.chmod(0o755)
    try:
        context = build_context(ROOT)
        src = root / "src"
        apply_copies(build, context, src)
        wheels = root / "wheels"
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", wheels, src)
        (wheel,) = wheels.glob("simveb-*.whl")
        venv = root / "venv"
        _run(_interpreter_for(user), "-m", "venv", "--without-pip", venv)
        python = venv / "bin" / "python"
        _run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel)
        fresh_site = next((venv / "lib").glob("python3*/site-packages"))
        (fresh_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        # A dependency this environment does not need but that Python does (a backport for an older
        # patch release) is installed into the fresh environment, as the image's pip would.
        check = subprocess.run(
            [sys.executable, "-m", "pip", "--python", python, "check"], capture_output=True, text=True
        )
        missing = re.findall(r"requires ([A-Za-z0-9_.\-]+), which is not installed", check.stdout)
        if missing:
            _run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", *sorted(set(missing)))
        workdir = root / "app"
        apply_copies(runtime, context, workdir)
        data = root / "data"
        data.mkdir(mode=0o700)
        if user:
            os.chown(data, NOBODY, NOBODY)
        yield Image(root, venv, workdir, data, runtime, user)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_replayed_image_runs_the_wheel_not_the_checkout(image: Image) -> None:
    env = image.environment(_free_port())
    probe = subprocess.run(
        [*image.user, str(image.venv / "bin" / "python"), "-c", "import simveb, litestar; print(simveb.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=image.workdir,
        timeout=60,
    )
    if probe.returncode and "Permission denied" in probe.stderr:
        pytest.skip(f"this environment's packages are not readable by uid {NOBODY}: {probe.stderr.strip()[-200:]}")
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(image.venv), probe.stdout


def test_production_entry_point_refuses_to_start_without_the_signing_key(image: Image) -> None:
    port = _free_port()
    env = image.environment(port, SIMVEB_DATABASE__URL="postgresql://simveb@127.0.0.1:1/none")
    del env["SIMVEB_SECURITY__SIGNING_KEY"]
    argv = exec_form(image.stage.last("ENTRYPOINT")) + exec_form(image.stage.last("CMD"))
    result = subprocess.run(
        image.command(argv, env), capture_output=True, text=True, env=env, cwd=image.workdir, timeout=120
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "security.signing_key" in lines[0] and "SIMVEB_SECURITY__SIGNING_KEY" in lines[0]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _admin(url: str, sql: str) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute(sql)
    finally:
        await con.close()


def _serve(image: Image, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = exec_form(image.stage.last("ENTRYPOINT")) + command
    with log.open("w") as out:
        return subprocess.Popen(
            image.command(argv, env), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=image.workdir
        )


def _wait_ready(image: Image, proc: subprocess.Popen[bytes], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Until the image's own HEALTHCHECK command passes (as the unprivileged user); /health/ready's body."""
    url = f"http://127.0.0.1:{env['SIMVEB_SERVER__PORT']}/health/ready"
    health = image.command(exec_form(image.stage.last("HEALTHCHECK")), env)
    deadline = time.monotonic() + 120
    while subprocess.run(health, env=env, capture_output=True, timeout=30).returncode != 0:
        assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        if time.monotonic() > deadline:
            lines = [line for line in log.read_text().splitlines() if "/health/ready" not in line]
            raise AssertionError(
                f"not ready within 120 s: {httpx.get(url, timeout=10).text}\n" + "\n".join(lines)[-4000:]
            )
        time.sleep(1)
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 200 and reply.json()["status"] == "ready", reply.text
    return reply.json()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _services_database() -> tuple[str, str]:
    server_url = os.environ.get("SIMVEB_TEST_DATABASE_URL")
    if not server_url:
        pytest.skip("SIMVEB_TEST_DATABASE_URL is not set: production refuses the embedded database")
    name = f"simveb_deploy_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    return server_url, name


# The S3 store of compose is not on this machine: documents go to the local store under the data volume.
LOCAL_DOCUMENTS = {"SIMVEB_DOCUMENTS__STORAGE_URL": "", "SIMVEB_DOCUMENTS__S3_ENDPOINT": ""}


def test_image_entry_point_serves_ready_in_production_as_non_root(image: Image) -> None:
    server_url, name = _services_database()
    extra = {"SIMVEB_DATABASE__URL": _with_database(server_url, name), "SIMVEB_REDIS__URL": ""}
    if os.environ.get("SIMVEB_TEST_REDIS_URL"):
        extra["SIMVEB_REDIS__URL"] = os.environ["SIMVEB_TEST_REDIS_URL"]
    env = image.environment(_free_port(), **LOCAL_DOCUMENTS, **extra)
    log = image.root / "serve.log"
    proc = _serve(image, exec_form(image.stage.last("CMD")), env, log)
    try:
        _wait_ready(image, proc, env, log)
        # Listening on every interface, as the image's SIMVEB_SERVER__HOST says.
        assert env["SIMVEB_SERVER__HOST"] == "0.0.0.0"
        if image.user:
            assert _uid_of(proc.pid) == NOBODY
        assert _uid_of(proc.pid) != 0
        # Production took its keys from the environment: nothing was generated into the data volume.
        assert not list(image.data.rglob("*.pem"))
    finally:
        _stop(proc)
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_split_variant_processes_become_ready_hosting_their_actors(image: Image) -> None:
    redis_url = os.environ.get("SIMVEB_TEST_REDIS_URL")
    if not redis_url:
        pytest.skip("SIMVEB_TEST_REDIS_URL is not set: the split deployment talks through Redis Streams")
    server_url, name = _services_database()
    prefix = f"simveb-deploy-{uuid.uuid4().hex[:8]}:"
    apps = app_services(merged(ROOT / "compose.yaml", ROOT / "compose.split.yaml"))
    started: list[tuple[str, subprocess.Popen[bytes], dict[str, str], Path]] = []
    try:
        for service, svc in apps.items():
            env = image.environment(
                _free_port(),
                svc,
                **LOCAL_DOCUMENTS,
                SIMVEB_DATABASE__URL=_with_database(server_url, name),
                SIMVEB_REDIS__URL=redis_url,
                SIMVEB_PLACEMENT__REDIS_URL=redis_url,
                SIMVEB_PLACEMENT__STREAM_PREFIX=prefix,
            )
            log = image.root / f"{service}.log"
            started.append((service, _serve(image, svc["command"], env, log), env, log))
        for service, proc, env, log in started:
            body = _wait_ready(image, proc, env, log)
            hosted = hosted_actors(apps[service])
            assert body["placement"]["hosted"] == sorted(hosted or []), body
            assert set(body["placement"]["remote"]) == {a for s in apps.values() for a in hosted_actors(s) or []} - set(
                hosted or []
            )
            assert body["checks"]["transport"] == "ok"
    finally:
        for _, proc, _, _ in started:
            _stop(proc)
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
