"""The vehicle service's public contract."""

from __future__ import annotations

from simveb.bus import Ask


class SeedVehicles(Ask[int]):
    """Load the catalogue (brands, models, types, categories, energies, characteristics)."""

    only_if_empty: bool = False
