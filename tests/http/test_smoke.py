"""Smoke: the app answers health and the public config reads on a seeded database."""


async def test_ready_and_services(client, seeded):
    r = await client.get("/health/ready")
    assert r.status_code == 200, r.text
    r = await client.get("/api/config/services")
    assert r.status_code == 200
    assert any(s["code"] == "transfer" for s in r.json())
