"""Integrations service (seed §8): national registries (ANIP, DGI) over X-Road, behind breakers."""
