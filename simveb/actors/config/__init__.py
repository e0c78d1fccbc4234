"""Config service (seed §9): settings, procedure catalogue, fee grid, feature flags."""
