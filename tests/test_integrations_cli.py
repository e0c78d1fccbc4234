"""`simveb integrations status` and `simveb sandbox`, run as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from simveb.actors.integrations.actor import IntegrationsActor
from simveb.actors.integrations.messages import LookupCitizen
from simveb.config import Settings
from simveb.runtime import Runtime
from tests.support import free_port, simveb
from tests.xroad_support import settings_for, simulator_server


async def test_integrations_status_command(base_settings: Settings, runtime: Runtime) -> None:
    with simulator_server() as url:
        # Calls made by another process (this one) show up in the command's figures.
        async with Runtime(settings_for(base_settings, url), actors=[IntegrationsActor]) as rt:
            assert rt.bus is not None
            await rt.bus.ask(LookupCitizen(npi="1234567890"))
    done = simveb(base_settings, "integrations", "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("last 900 s")
    anip = next(line for line in lines if line.startswith("anip"))
    assert anip.split()[1:3] == ["1", "0"]
    assert "breaker: no state change recorded (closed)" in done.stdout
    as_json = simveb(base_settings, "integrations", "status", "--json")
    services = {s["service"]: s for s in json.loads(as_json.stdout)["services"]}
    assert services["anip"]["calls"] == 1 and services["dgi"]["calls"] == 0


def test_sandbox_command_serves_the_simulators() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simveb.cli", "sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/sandbox/xroad"
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(
                    f"{base}/r1/BJ/GOV/ANIP/RNP/CITIZEN_BY_NPI_LITE",
                    params={"npi": "1234567890"},
                    headers={"X-Road-Client": "BJ/GOV/ANATT/SIMVEB"},
                )
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "simveb sandbox did not start"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["npi"] == "1234567890"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
