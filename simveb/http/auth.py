"""HTTP routes of the auth service."""

from __future__ import annotations

from typing import Any

CONTROLLERS: list[Any] = []
