"""The auth actor."""

from __future__ import annotations

from simveb.bus import Actor


class AuthActor(Actor):
    name = "auth"
