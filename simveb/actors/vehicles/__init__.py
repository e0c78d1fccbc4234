"""Vehicle service (seed §3): catalogue, vehicles, legal standing, history, import and export."""
