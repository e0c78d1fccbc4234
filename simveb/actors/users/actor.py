"""The users actor."""

from __future__ import annotations

from simveb.bus import Actor


class UsersActor(Actor):
    name = "users"
