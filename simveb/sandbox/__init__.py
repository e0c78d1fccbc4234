"""Provider simulators, named as such: stand-ins for systems this deployment cannot reach.

Mounted under /sandbox by `simveb serve` in development (never in production), run alone by
`simveb sandbox --port N`, and started by tests on their own port so our clients talk real HTTP.
Each simulator module exposes ROUTES (Litestar route handlers, paths relative to /sandbox).
"""

from __future__ import annotations

from litestar import Router

from simveb.sandbox import fcm, fedapay, kkiapay, sms, xroad


def sandbox_router() -> Router:
    """Every simulator under /sandbox, public (simulators check their own fake credentials)."""
    return Router(
        path="/sandbox",
        route_handlers=[*xroad.ROUTES, *sms.ROUTES, *fcm.ROUTES, *fedapay.ROUTES, *kkiapay.ROUTES],
        opt={"public": True},
        include_in_schema=False,
    )
