"""Every list that grows pages one way: `limit` 1..200 (default 50), an opaque `cursor`, and the
envelope {items, next_cursor}; a walk with a small limit sees every row once, in the list's order;
a cursor from another list or an edited one is a 400 naming `cursor`."""

from __future__ import annotations

import pytest

from simveb.actors.config.messages import PutSetting

# Every paged route, with a token that may read it.
PAGED = {
    "/api/config/history": ("config:read",),
    "/api/users": ("users:read",),
    "/api/notifications": (),
    "/api/vehicles": ("vehicles:read",),
    "/api/immatriculations": ("registrations:read",),
    "/api/immatriculations/overdue": ("registrations:read",),
    "/api/payments/transactions": ("payments:read",),
    "/api/documents": ("documents:read",),
    "/api/vehicles/blacklist": ("vehicles:standing",),
    "/api/immatriculations/plates/reservations": ("registrations:plates",),
}
USER = "00000000-0000-0000-0000-0000000000aa"


@pytest.mark.parametrize("path", sorted(PAGED))
async def test_every_list_has_the_same_envelope_and_bounds(client, auth, path: str) -> None:
    h = auth(*PAGED[path], sub=USER)
    r = await client.get(path, headers=h)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"items", "next_cursor"}
    for limit, expected in (("0", ">= 1"), ("201", "<= 200")):
        r = await client.get(path, params={"limit": limit}, headers=h)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "limit", r.text
        assert expected in r.json()["errors"][0]["message"]
    assert (await client.get(path, params={"limit": 200}, headers=h)).status_code == 200
    # Not base64url at all: refused by the parameter's pattern; base64url but not a keyset: by the list.
    for cursor in ("%%%", "bm90LWpzb24", "WzEsMiwzLDRd"):
        r = await client.get(path, params={"cursor": cursor}, headers=h)
        assert r.status_code == 400, (path, cursor, r.text)
        assert r.json()["errors"][0]["field"] == "cursor"


async def test_a_walk_sees_every_row_once_newest_first(client, runtime, auth) -> None:
    for n in range(7):
        await runtime.bus.ask(PutSetting(key=f"paging.walk_{n}", type="integer", value=n, by="admin-1"))
    h = auth("config:read")
    everything = (await client.get("/api/config/history", params={"limit": 200}, headers=h)).json()
    assert everything["next_cursor"] is None and len(everything["items"]) >= 7
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/config/history", params=params, headers=h)).json()
        seen += [e["id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in everything["items"]], "every row once, in the list's order"
    assert seen == sorted(seen, reverse=True) and pages == -(-len(seen) // 3)


async def test_a_cursor_of_another_list_is_refused(client, runtime, auth) -> None:
    for n in range(3):
        await runtime.bus.ask(PutSetting(key=f"paging.other_{n}", type="integer", value=n, by="admin-1"))
    h = auth("config:read", "users:read")
    page = (await client.get("/api/config/history", params={"limit": 1}, headers=h)).json()
    assert page["next_cursor"]
    r = await client.get("/api/users", params={"cursor": page["next_cursor"]}, headers=h)
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"
