"""The `simveb` command as an admin runs it: real processes on the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import ROOT, free_port, simveb


def test_migrate_a_second_time_applies_nothing(settings, runtime) -> None:
    done = simveb(settings, "migrate")
    assert done.returncode == 0, done.stderr
    assert "0 migration(s) applied" in done.stdout
    dry = simveb(settings, "migrate", "--dry-run")
    assert "0 migration(s) pending" in dry.stdout
    status = simveb(settings, "db", "status")
    assert status.returncode == 0 and "applied  config/0001_init" in status.stdout
    assert " 0 not applied" in status.stdout


def test_seed_config_and_flags(settings, runtime) -> None:
    seeded = simveb(settings, "seed")
    assert seeded.returncode == 0, seeded.stderr
    assert "config:" in seeded.stdout
    again = simveb(settings, "seed")
    assert "config: 0 row(s) added" in again.stdout, "seeding is idempotent"

    got = simveb(settings, "config", "get", "registration.temporary_plate_days")
    assert got.stdout.startswith("registration.temporary_plate_days = 30")
    changed = simveb(settings, "config", "set", "registration.temporary_plate_days", "21")
    assert changed.returncode == 0 and "= 21" in changed.stdout
    assert "= 21" in simveb(settings, "config", "get", "registration.temporary_plate_days").stdout
    wrong = simveb(settings, "config", "set", "registration.temporary_plate_days", "soon")
    assert wrong.returncode != 0 and wrong.stderr.startswith("simveb: error:")
    assert len(wrong.stderr.strip().splitlines()) == 1

    assert simveb(settings, "flags", "disable", "online_payment").stdout.strip() == "online_payment: off"
    assert simveb(settings, "flags", "enable", "qr_verification", "--percent", "25").returncode == 0
    listing = simveb(settings, "flags", "list").stdout
    assert "off online_payment" in listing and "on  qr_verification 25%" in listing
    missing = simveb(settings, "flags", "disable", "no_such_flag")
    assert missing.returncode != 0 and "no feature flag" in missing.stderr


def test_a_bad_setting_is_one_line_and_a_non_zero_exit(settings) -> None:
    done = simveb(settings, "db", "status", env={"SIMVEB_SERVER__PORT": "eighty"})
    assert done.returncode == 1
    assert done.stderr.strip() == "simveb: error: invalid setting server.port: expected `int`, got `str`"


def test_openapi_prints_json(settings) -> None:
    done = simveb(settings, "openapi")
    assert done.returncode == 0 and '"/api/config/services"' in done.stdout


def test_serve_on_a_fresh_data_dir_becomes_ready(tmp_path: Path) -> None:
    """The README's run command: `simveb serve` on the embedded database, from nothing."""
    port = free_port()
    env = {
        **os.environ,
        "SIMVEB_CONFIG": str(ROOT / "config.toml"),
        "SIMVEB_SERVER__DATA_DIR": str(tmp_path / "data"),
        "SIMVEB_SERVER__PORT": str(port),
    }
    env.pop("SIMVEB_DATABASE__URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "simveb.cli", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "server exited"
            time.sleep(0.3)
        assert ready is not None and ready.status_code == 200, ready.text if ready else "never answered"
        services = httpx.get(f"http://127.0.0.1:{port}/api/config/services", timeout=5).json()
        assert len(services) >= 4, "development seeds reference data into the empty database"
        assert (tmp_path / "data" / "pgdata").is_dir() and list((tmp_path / "data" / "keys").glob("*.pem"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
