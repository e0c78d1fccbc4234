"""The notifications actor."""

from __future__ import annotations

from simveb.bus import Actor


class NotificationsActor(Actor):
    name = "notifications"
