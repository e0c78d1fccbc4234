"""The actors this process runs and the declared ask graph between them.

ASK_GRAPH says which actor may `ask` which (checked at start-up, cycles refused: two actors asking
each other would deadlock on their mailboxes). Everything not in the graph goes by event.
"""

from __future__ import annotations

from simveb.actors.config.actor import ConfigActor
from simveb.bus import Actor

ACTORS: list[type[Actor]] = [
    ConfigActor,
]

ASK_GRAPH: dict[str, set[str]] = {
    "config": set(),
}
