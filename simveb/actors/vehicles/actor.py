"""The vehicles actor."""

from __future__ import annotations

from simveb.bus import Actor


class VehiclesActor(Actor):
    name = "vehicles"
