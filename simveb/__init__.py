"""SIMVEB: vehicle registration system of Benin, nine domain actors on one in-process bus."""

__version__ = "0.1.0"
