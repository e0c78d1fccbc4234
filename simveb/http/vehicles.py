"""HTTP routes of the vehicles service."""

from __future__ import annotations

from typing import Any

CONTROLLERS: list[Any] = []
