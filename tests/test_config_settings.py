"""Process settings: config.toml, SIMVEB_<SECTION>__<KEY> overrides, one-line errors, production rules."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from simveb.config import (
    PAYMENT_SECRETS,
    ConfigError,
    Settings,
    check_safety,
    load_settings,
    sandbox_urls,
    with_overrides,
)
from simveb.keys import generate_pem
from tests.conftest import ROOT

CONFIG = ROOT / "config.toml"


def test_config_toml_holds_exactly_the_defaults() -> None:
    assert load_settings(CONFIG, environ={}) == Settings()


def test_every_setting_is_documented_in_config_toml_and_readme() -> None:
    toml = CONFIG.read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for section in msgspec.structs.fields(Settings):
        assert f"[{section.name}]" in toml
        for field in msgspec.structs.fields(section.type):
            assert f"\n{field.name} = " in toml, f"{section.name}.{field.name} missing from config.toml"
            assert f"`{section.name}.{field.name}`" in readme, f"{section.name}.{field.name} missing from README"


def test_environment_overrides_any_key() -> None:
    s = load_settings(
        CONFIG,
        environ={
            "SIMVEB_SERVER__PORT": "8001",
            "SIMVEB_SERVER__CORS_ORIGINS": "https://a.bj, https://b.bj",
            "SIMVEB_BUS__ASK_TIMEOUT_S": "2.5",
            "SIMVEB_DATABASE__MIGRATE_ON_START": "false",
            "SIMVEB_REDIS__URL": "redis://127.0.0.1:6379/0",
        },
    )
    assert s.server.port == 8001
    assert s.server.cors_origins == ["https://a.bj", "https://b.bj"]
    assert s.bus.ask_timeout_s == 2.5
    assert s.database.migrate_on_start is False
    assert s.redis.url == "redis://127.0.0.1:6379/0"


def test_simveb_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text("[server]\nport = 9100\n[bus]\nmailbox_size = 7\n", encoding="utf-8")
    s = load_settings(environ={"SIMVEB_CONFIG": str(path)})
    assert (s.server.port, s.bus.mailbox_size, s.server.host) == (9100, 7, "127.0.0.1")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SIMVEB_SERVER__PORT": "eighty"}, "invalid setting server.port: expected `int`, got `str`"),
        ({"SIMVEB_SERVER__PORT": "70000"}, "invalid setting server.port: expected `int` <= 65535"),
        ({"SIMVEB_SERVER__ENV": "staging"}, "invalid setting server.env"),
        ({"SIMVEB_BUS__NOPE": "1"}, "SIMVEB_BUS__NOPE: unknown setting bus.nope"),
        ({"SIMVEB_NOPE__X": "1"}, "unknown settings section 'nope'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(CONFIG, environ=environ)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nprot = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(path, environ={})


def production(**sections: dict[str, object]) -> Settings:
    base = {
        "server": {"env": "production", "sandbox": False},
        "database": {"url": "postgresql://db.example/simveb"},
        "security": {"signing_key": generate_pem().decode()},
        "documents": {"signing_key": generate_pem().decode()},
        "payments": {name: f"live-{name}" for name in PAYMENT_SECRETS},
    }
    # Point every provider at a real-looking host instead of the built-in simulators.
    for name in sandbox_urls(Settings()):
        section, field = name.split(".")
        base.setdefault(section, {})[field] = "https://provider.example/api"
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return with_overrides(Settings(), **base)


def test_a_complete_production_configuration_is_accepted() -> None:
    check_safety(production())


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"database": {"url": ""}}, "database.url"),
        ({"server": {"sandbox": True}}, "server.sandbox"),
        ({"security": {"signing_key": ""}}, "security.signing_key"),
        ({"documents": {"signing_key": ""}}, "documents.signing_key"),
        ({"payments": {"fedapay_webhook_secret": ""}}, "payments.fedapay_webhook_secret"),
        ({"payments": {"kkiapay_secret": ""}}, "payments.kkiapay_secret"),
        ({"payments": {"fedapay_url": "http://127.0.0.1:8000/sandbox/fedapay"}}, "payments.fedapay_url"),
    ],
)
def test_production_refuses_unsafe_settings(change: dict[str, dict[str, object]], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_safety(production(**change))


def test_production_refuses_a_sandbox_provider() -> None:
    names = sandbox_urls(Settings())
    if not names:
        pytest.skip("no provider URL points at the simulators by default")
    section, field = names[0].split(".")
    with pytest.raises(ConfigError, match="sandbox provider"):
        check_safety(production(**{section: {field: "http://127.0.0.1:8000/sandbox/x"}}))


def test_production_may_run_embedded_on_purpose() -> None:
    check_safety(production(database={"url": ""}, server={"allow_embedded_db": True}))
