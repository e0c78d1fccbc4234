"""The integrations actor."""

from __future__ import annotations

from simveb.bus import Actor


class IntegrationsActor(Actor):
    name = "integrations"
