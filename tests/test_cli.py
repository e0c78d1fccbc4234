"""The `simveb` command as an admin runs it: real processes on the test database."""

from __future__ import annotations

import os
import re
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


def _wait_ready(proc: subprocess.Popen[str], base: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "server exited"
        time.sleep(0.3)
    raise AssertionError(f"{base} never became ready")


def test_serve_on_another_port_reaches_its_own_simulators(settings, tmp_path: Path) -> None:
    """`simveb serve --port N` with the default provider URLs: the OTP SMS and the NPI lookup go to the
    simulators of this server on port N (they used to name port 8000 whatever the server listened on)."""
    import asyncio

    from simveb.sandbox.xroad import fake_citizen
    from tests.conftest import truncate_all
    from tests.users_support import npi, phone

    asyncio.run(truncate_all(settings.database.url))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.endswith("_URL") or k == "SIMVEB_DATABASE__URL"},
        "SIMVEB_CONFIG": str(ROOT / "config.toml"),
        "SIMVEB_DATABASE__URL": settings.database.url,
        "SIMVEB_SERVER__DATA_DIR": str(tmp_path / "data"),
        "SIMVEB_SERVER__LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "simveb.cli", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(proc, base)
        while (number := npi())[-2:] in ("00", "01"):  # those the simulated registry does not know
            pass
        citizen = fake_citizen(number)
        mobile = phone()
        body = {
            "npi": number,
            "phone": mobile,
            "last_name": citizen["nom"],
            "first_name": citizen["prenoms"],
            "birth_date": citizen["date_naissance"],
        }
        r = httpx.post(f"{base}/api/users", json=body, timeout=10)
        assert r.status_code == 202, r.text
        code = None
        deadline = time.monotonic() + 20
        while code is None and time.monotonic() < deadline:
            sms = httpx.get(f"{base}/sandbox/sms/messages", params={"to": mobile}, timeout=5).json()
            found = re.search(r"\b(\d{6})\b", sms[-1]["text"]) if sms else None
            code = found.group(1) if found else time.sleep(0.2)
        assert code, "the one-time code never reached this server's SMS simulator"
        r = httpx.post(
            f"{base}/api/auth/verify-otp", json={"challenge_id": r.json()["challenge_id"], "code": code}, timeout=10
        )
        assert r.status_code == 200, r.text
        me = {"Authorization": f"Bearer {r.json()['tokens']['access_token']}"}
        user_id = httpx.get(f"{base}/api/auth/me", headers=me, timeout=5).json()["user_id"]
        r = httpx.post(f"{base}/api/users/{user_id}/verify-npi", headers=me, timeout=20)
        assert r.status_code == 200, r.text
        assert r.json()["kyc_status"] == "npi_verified"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_serve_refuses_provider_urls_at_its_own_unmounted_sandbox(settings, tmp_path: Path) -> None:
    done = simveb(settings, "serve", "--port", str(free_port()), env={"SIMVEB_SERVER__SANDBOX": "false"})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "simveb: error: integrations.xroad_url points at this server's /sandbox, but server.sandbox is false"
        " so the simulators are not mounted: set server.sandbox = true, or give the provider's URL"
    )
    # With the providers' real addresses it gets past that check (here: it only prints its address).
    real = {
        "SIMVEB_SERVER__SANDBOX": "false",
        "SIMVEB_INTEGRATIONS__XROAD_URL": "https://xroad.example.bj",
        "SIMVEB_NOTIFICATIONS__SMS_URL": "https://sms.example.bj",
        "SIMVEB_NOTIFICATIONS__FCM_URL": "https://fcm.googleapis.com",
        "SIMVEB_NOTIFICATIONS__FCM_TOKEN_URL": "https://oauth2.googleapis.com/token",
        "SIMVEB_PAYMENTS__FEDAPAY_URL": "https://api.fedapay.com",
        "SIMVEB_PAYMENTS__KKIAPAY_URL": "https://api.kkiapay.me",
    }
    from simveb.config import check_providers_reachable, load_settings

    check_providers_reachable(load_settings(ROOT / "config.toml", real))
