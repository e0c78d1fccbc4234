"""`simveb keys rotate` and `keys list` as an operator runs them (a real process), and the actor signing
with the new key while tokens of the old one still verify."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt

from simveb.config import Settings, with_overrides
from simveb.keys import KeyRing
from tests.conftest import ROOT


def simveb_keys(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "SIMVEB_CONFIG": str(ROOT / "config.toml"),
        "SIMVEB_SERVER__DATA_DIR": str(data_dir),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "simveb.cli", "keys", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_keys_rotate_adds_a_signing_key(tmp_path: Path) -> None:
    settings = with_overrides(Settings(), server={"data_dir": str(tmp_path)})
    before = KeyRing.for_settings(settings)
    old_token = before.sign({"sub": "x"})
    done = simveb_keys(tmp_path, "rotate")
    assert done.returncode == 0, done.stderr
    after = KeyRing.for_settings(settings)
    assert after.kid != before.kid and after.kid in done.stdout
    assert before.kid in after.public  # the old key still verifies
    jwt.decode(old_token, after.public[before.kid], algorithms=["EdDSA"])
    listed = simveb_keys(tmp_path, "list").stdout.splitlines()
    assert f"signing   {after.kid}" in listed and f"verifying {before.kid}" in listed


def test_keys_rotate_refuses_an_environment_key(tmp_path: Path) -> None:
    from simveb.keys import generate_pem

    done = simveb_keys(tmp_path, "rotate", env={"SIMVEB_SECURITY__SIGNING_KEY": generate_pem().decode()})
    assert done.returncode == 1 and done.stderr.startswith("simveb: error: the signing key comes from")


def test_document_keys_rotate_apart_from_token_keys_and_are_listed(tmp_path: Path) -> None:
    from simveb.keys import document_ring

    settings = with_overrides(Settings(), server={"data_dir": str(tmp_path)})
    tokens = KeyRing.for_settings(settings)
    before = document_ring(settings)
    assert before.kid not in tokens.public  # a document key never verifies an access token
    done = simveb_keys(tmp_path, "rotate", "--documents")
    assert done.returncode == 0, done.stderr
    after = document_ring(settings)
    assert after.kid != before.kid and before.kid in after.public and after.kid in done.stdout
    assert KeyRing.for_settings(settings).kid == tokens.kid  # token keys untouched
    listed = simveb_keys(tmp_path, "list").stdout.splitlines()
    assert f"signing   {after.kid} (documents)" in listed and f"verifying {before.kid} (documents)" in listed
    assert f"signing   {tokens.kid}" in listed
