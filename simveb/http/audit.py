"""HTTP route of the audit trail: GET /api/audit, for holders of `audit:read` (admins).

Each actor keeps its own chain (simveb/audit.py); this route asks every audited actor (or the one
named by `chain`) for its newest matching entries and merges them into one page, newest first by
(at, chain, seq), with a cursor that continues across every chain.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter, QueryParameter

from simveb.audit import PERMISSION, AuditFilter, AuditPage, ListAudit, merge_pages, read_cursor
from simveb.bus import Bus
from simveb.errors import Invalid
from simveb.http.inputs import CursorQuery, LimitQuery
from simveb.http.security import requires
from simveb.messages import PAGE_LIMIT_DEFAULT, Caller

READ = [requires(PERMISSION)]
# Printable text only: a NUL or control character never reaches PostgreSQL (which refuses NUL in text).
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]

    @get("/", guards=READ)
    async def list_entries(
        self,
        caller: Caller,
        bus: Bus,
        chain: Annotated[
            str | None, Parameter(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="Only this service's trail.")
        ] = None,
        actor: Annotated[
            str | None,
            Parameter(max_length=200, pattern=PRINTABLE, description="Who did it (a user id, system, ...)."),
        ] = None,
        subject: Annotated[
            str | None, Parameter(max_length=200, pattern=PRINTABLE, description="What it was done to.")
        ] = None,
        action: Annotated[
            str | None, Parameter(pattern=r"^[a-z][a-z0-9_]{0,99}$", description="What was done (roles_changed...).")
        ] = None,
        at_from: Annotated[datetime | None, QueryParameter(name="from", description="At or after.")] = None,
        at_to: Annotated[datetime | None, QueryParameter(name="to", description="Before.")] = None,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> AuditPage:
        """Audit entries of every service (or `chain`), newest first; filters: actor (who), subject, action, from/to."""
        chains = bus.addressees(ListAudit)
        if chain is not None:
            if chain not in chains:
                raise Invalid(f"no audit trail named {chain!r}; one of {', '.join(chains)}", code="unknown_chain")
            chains = [chain]
        read_cursor(cursor)  # a bad cursor is refused (400) before any actor is asked
        f = AuditFilter(actor=actor, subject=subject, action=action, at_from=at_from, at_to=at_to)
        pages = await asyncio.gather(
            *(bus.ask(ListAudit(to=name, caller=caller, filter=f, cursor=cursor, limit=limit)) for name in chains)
        )
        return merge_pages(list(pages), limit)


CONTROLLERS = [AuditController]
