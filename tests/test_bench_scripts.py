"""The bench scripts start: bench/ is first on their import path, where bench/http.py must not hide
the standard library's `http` package from them (litestar, httpx and urllib import it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "script",
    [
        "http.py",
        "vehicles.py",
        "auth.py",
        "documents.py",
        "placement.py",
        "audit.py",
        "payments.py",
        "notifications.py",
    ],
)
def test_bench_script_starts(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
