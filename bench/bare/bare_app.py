"""The baseline of bench/http.py: a bare Litestar app with no SIMVEB code on its request path.

Three routes, the floor the project's shell, token check and read path are compared with:
- `GET /live`: a JSON answer, like the project's `GET /health/live`;
- `GET /me`: the bearer token verified with pyjwt alone (EdDSA pinned, `iss`, `aud`, `exp`) and its
  claims answered, like the project's `GET /api/auth/me` without shell, deny list or caller
  (bench/auth.py; the public key comes from BARE_JWT_PUBLIC_KEY, the issuer and audience from
  BARE_JWT_ISSUER and BARE_JWT_AUDIENCE);
- `GET /vehicles/{id}`: the same row of `vehicles.vehicles` read with asyncpg from a pool of the
  project's default size and serialised as JSON, like the project's `GET /api/vehicles/{id}`
  without token, bus, actor or shell.

    python bench/bare/bare_app.py PORT DATABASE_URL

serves it with the granian settings of `simveb serve` (one worker). It lives in its own directory
because bench/ holds a module named `http`, which must not shadow the standard library here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import jwt
from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException, NotFoundException

# The columns the vehicles store reads for one vehicle, written out: the baseline shares no code
# with what is measured.
COLUMNS = (
    "id, vin, plate, make, model, vehicle_type, category, commercial_name, year, colour, energy, cylinder_cc,"
    " power_kw, fiscal_hp, seats, max_mass_kg, service_mass_kg, empty_mass_kg, first_registration_date,"
    " customs_ref, characteristics, remarks, owners, status, filed_by, version, created_at, created_by,"
    " updated_at, updated_by, archived_at, archived_by"
)


@get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok", "version": "bare"}


@get("/me")
async def me(request: Request[Any, Any, Any]) -> dict[str, Any]:
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer ") or not os.environ.get("BARE_JWT_PUBLIC_KEY"):
        raise NotAuthorizedException()
    try:
        claims = jwt.decode(
            header[7:],
            os.environ["BARE_JWT_PUBLIC_KEY"],
            algorithms=["EdDSA"],
            audience=os.environ["BARE_JWT_AUDIENCE"],
            issuer=os.environ["BARE_JWT_ISSUER"],
        )
    except jwt.PyJWTError:
        raise NotAuthorizedException() from None
    return {
        "user_id": claims["sub"],
        "roles": claims.get("roles", []),
        "permissions": sorted(claims.get("permissions", [])),
        "expires_at": claims["exp"],
    }


@get("/vehicles/{vehicle_id:uuid}")
async def vehicle(vehicle_id: UUID, state: State) -> dict[str, Any]:
    async with state.pool.acquire() as con:
        row = await con.fetchrow(f"SELECT {COLUMNS} FROM vehicles.vehicles WHERE id = $1", vehicle_id)
    if row is None:
        raise NotFoundException()
    return dict(row)


def create() -> Litestar:
    """Granian factory: the database URL comes from BARE_DATABASE_URL."""
    url = os.environ["BARE_DATABASE_URL"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The project's defaults: database.pool_min = 2, database.pool_max = 10.
        app.state.pool = await asyncpg.create_pool(url, min_size=2, max_size=10)
        try:
            yield
        finally:
            await app.state.pool.close()

    return Litestar(route_handlers=[live, me, vehicle], lifespan=[lifespan], debug=False)


def main() -> None:
    from simveb.cli.server import granian_server
    from simveb.config import Settings, with_overrides

    port, url = int(sys.argv[1]), sys.argv[2]
    os.environ["BARE_DATABASE_URL"] = url
    settings = with_overrides(Settings(), server={"port": port, "workers": 1})
    granian_server("bare_app:create", settings).serve()


if __name__ == "__main__":
    main()
