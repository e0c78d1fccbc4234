"""HTTP routes of the integrations service: staff lookups in ANIP and DGI, and the registries' status.

`integrations:lookup` is needed to verify an NPI or check an IFU, `integrations:status` to read the
breakers and recent error rates. Identifier format errors come back from the actor as 422.
"""

from __future__ import annotations

import msgspec
from litestar import Controller, get, post

from simveb.actors.integrations.messages import (
    CheckTax,
    CitizenVerification,
    GetIntegrationsStatus,
    IntegrationsStatus,
    TaxCheck,
    VerifyCitizen,
)
from simveb.bus import Bus
from simveb.http.inputs import body_of
from simveb.http.security import requires
from simveb.messages import Caller

LOOKUP = [requires("integrations:lookup")]
STATUS = [requires("integrations:status")]
VerifyNpiIn = body_of(VerifyCitizen, exclude=("requested_by",), name="VerifyNpiIn")
CheckTaxIn = body_of(CheckTax, exclude=("requested_by",), name="CheckTaxIn")


class IntegrationsController(Controller):
    path = "/api/integrations"
    tags = ["integrations"]

    @post("/anip/verify-npi", guards=LOOKUP, status_code=200)
    async def verify_npi(self, bus: Bus, caller: Caller, data: VerifyNpiIn) -> CitizenVerification:
        """Look an NPI up in ANIP and compare the given names and birth date with the registry's."""
        return await bus.ask(VerifyCitizen(requested_by=caller.sub, **msgspec.structs.asdict(data)))

    @post("/dgi/check-tax", guards=LOOKUP, status_code=200)
    async def check_tax(self, bus: Bus, caller: Caller, data: CheckTaxIn) -> TaxCheck:
        """Look an IFU up in DGI: the taxpayer and whether their tax standing is active."""
        return await bus.ask(CheckTax(requested_by=caller.sub, **msgspec.structs.asdict(data)))

    @get("/status", guards=STATUS)
    async def status(self, bus: Bus) -> IntegrationsStatus:
        """Per registry: circuit breaker state, recent error rate, latency p50/p95, queued lookups."""
        return await bus.ask(GetIntegrationsStatus())


CONTROLLERS = [IntegrationsController]
