"""SIMVEB: vehicle registration system of Benin, its domain actors (listed in simveb.actors) on one in-process bus."""

__version__ = "0.1.0"
