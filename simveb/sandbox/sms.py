"""Simulator placeholder: filled by the integrations and notifications work (issue 3)."""

from __future__ import annotations

from typing import Any

ROUTES: list[Any] = []
