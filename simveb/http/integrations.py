"""HTTP routes of the integrations service."""

from __future__ import annotations

from typing import Any

CONTROLLERS: list[Any] = []
