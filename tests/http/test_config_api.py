"""The config service over HTTP: public reads, guarded writes, history, cache, bad input."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from simveb.actors.config.actor import rollout_bucket
from simveb.actors.config.messages import IsFeatureEnabled, QuoteFee
from tests.support import wait_for

ADMIN = ("config:write",)


async def count(url: str, table: str) -> int:
    con = await asyncpg.connect(url)
    try:
        return await con.fetchval(f"SELECT count(*) FROM config.{table}")
    finally:
        await con.close()


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    return body


async def test_public_reads_need_no_token(client, seeded) -> None:
    services = (await client.get("/api/config/services")).json()
    assert {"first_registration", "transfer", "duplicate", "re_registration"} <= {s["code"] for s in services}
    transfer = next(s for s in services if s["code"] == "transfer")
    assert transfer["label_fr"].startswith("Mutation") and transfer["workflow"]
    fees = (await client.get("/api/config/fees", params={"service": "transfer"})).json()
    assert fees and all(f["service_code"] == "transfer" and isinstance(f["amount"], int) for f in fees)
    flags = (await client.get("/api/config/features")).json()
    assert any(f["key"] == "online_payment" for f in flags)
    settings = (await client.get("/api/config/settings")).json()
    assert settings and all(s["public"] for s in settings)


async def test_private_settings_only_for_config_readers(client, seeded, auth) -> None:
    anonymous = {s["key"] for s in (await client.get("/api/config/settings")).json()}
    admin = {s["key"] for s in (await client.get("/api/config/settings", headers=auth("config:read"))).json()}
    assert "payments.receipt_prefix" in admin and "payments.receipt_prefix" not in anonymous


async def test_quote_prices_with_breakdown(client, seeded) -> None:
    r = await client.get(
        "/api/config/fees/quote",
        params={
            "service": "first_registration",
            "owner_type": "company",
            "vehicle_category": "four_wheels_plus",
            "characteristic": ["tinted_windows", "unknown_thing"],
        },
    )
    quote = r.json()
    assert r.status_code == 200, r.text
    assert quote["currency"] == "XOF"
    assert quote["total"] == 25_000 + 35_000 + 5_000 + 10_000
    assert quote["lines"][0]["kind"] == "base"
    assert sum(line["amount"] for line in quote["lines"]) == quote["total"]


async def test_quote_message_for_other_actors(seeded) -> None:
    quote = await seeded.bus.ask(
        QuoteFee(service_code="duplicate", owner_type="person", vehicle_category="two_three_wheels")
    )
    assert quote.total == 10_000


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"service": "nope", "owner_type": "person", "vehicle_category": "four_wheels_plus"}, 404, "unknown_service"),
        (
            {"service": "transfer", "owner_type": "alien", "vehicle_category": "four_wheels_plus"},
            422,
            "invalid_owner_type",
        ),
        ({"service": "transfer", "owner_type": "person", "vehicle_category": "boat"}, 422, "invalid_vehicle_category"),
        ({"service": "transfer"}, 400, "validation_error"),
    ],
)
async def test_bad_quotes(client, seeded, params, status, code) -> None:
    body = problem(await client.get("/api/config/fees/quote", params=params), status)
    assert body["code"] == code


async def test_writes_need_a_token_and_the_permission(client, seeded, auth) -> None:
    body = {"enabled": True}
    problem(await client.put("/api/config/features/online_payment", json=body), 401)
    problem(await client.put("/api/config/features/online_payment", json=body, headers=auth("users:read")), 403)
    r = await client.put("/api/config/features/online_payment", json=body, headers=auth(*ADMIN))
    assert r.status_code == 200, r.text


async def test_setting_change_is_typed_cached_and_kept_in_history(client, seeded, auth, settings) -> None:
    headers = auth(*ADMIN, sub="admin-42")
    before = (await client.get("/api/config/settings")).json()
    old = next(s for s in before if s["key"] == "registration.temporary_plate_days")
    r = await client.put("/api/config/settings/registration.temporary_plate_days", json={"value": 45}, headers=headers)
    assert r.status_code == 200 and r.json()["value"] == 45
    after = (await client.get("/api/config/settings")).json()
    assert next(s for s in after if s["key"] == old["key"])["value"] == 45, "the cache was invalidated"
    history = (await client.get("/api/config/history", params={"key": old["key"]}, headers=headers)).json()["items"]
    assert history[0]["actor"] == "admin-42"
    assert history[0]["old_value"]["value"] == old["value"] and history[0]["new_value"]["value"] == 45
    # wrong type for an existing integer setting: refused, nothing written
    rows = await count(settings.database.url, "history")
    body = problem(
        await client.put(
            "/api/config/settings/registration.temporary_plate_days", json={"value": "many"}, headers=headers
        ),
        422,
    )
    assert body["code"] == "invalid_setting_value"
    assert await count(settings.database.url, "history") == rows


async def test_new_setting_needs_a_type(client, seeded, auth) -> None:
    h = auth(*ADMIN)
    body = problem(await client.put("/api/config/settings/site.motto", json={"value": "x"}, headers=h), 422)
    assert body["code"] == "setting_type_required"
    r = await client.put(
        "/api/config/settings/site.motto", json={"value": "Fraternité", "type": "string", "public": True}, headers=h
    )
    assert r.status_code == 200
    assert any(s["key"] == "site.motto" for s in (await client.get("/api/config/settings")).json())


async def test_services_create_update_and_conflicts(client, seeded, auth) -> None:
    h = auth(*ADMIN)
    new = {"code": "glass_engraving", "label_fr": "Gravage des vitres", "label_en": "Glass engraving"}
    r = await client.post("/api/config/services", json=new, headers=h)
    assert r.status_code == 201, r.text
    problem(await client.post("/api/config/services", json=new, headers=h), 409)
    update = {"label_fr": "Gravage", "label_en": "Engraving", "active": False, "required_documents": ["carte_grise"]}
    r = await client.put("/api/config/services/glass_engraving", json=update, headers=h)
    assert r.status_code == 200 and r.json()["active"] is False
    codes = {s["code"] for s in (await client.get("/api/config/services")).json()}
    assert "glass_engraving" not in codes, "inactive services are hidden from the catalogue"
    problem(await client.put("/api/config/services/nope", json=update, headers=h), 404)


async def test_fees_create_update(client, seeded, auth) -> None:
    h = auth(*ADMIN)
    fee = {"service_code": "transfer", "kind": "characteristic", "match": "armoured", "amount": 50_000}
    r = await client.post("/api/config/fees", json=fee, headers=h)
    assert r.status_code == 201, r.text
    fee_id = r.json()["id"]
    problem(await client.post("/api/config/fees", json=fee, headers=h), 409)
    r = await client.put(f"/api/config/fees/{fee_id}", json={**fee, "amount": 60_000}, headers=h)
    assert r.status_code == 200 and r.json()["amount"] == 60_000
    quote = (
        await client.get(
            "/api/config/fees/quote",
            params={
                "service": "transfer",
                "owner_type": "person",
                "vehicle_category": "two_three_wheels",
                "characteristic": "armoured",
            },
        )
    ).json()
    assert quote["total"] == 20_000 + 60_000


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"service_code": "transfer", "kind": "base", "amount": -5}, 400),  # negative fee
        ({"service_code": "transfer", "kind": "base", "amount": "a thousand"}, 400),  # wrong type
        ({"service_code": "transfer", "kind": "base", "amount": [1]}, 400),  # wrong type
        ({"service_code": "transfer", "kind": "base", "amount": 1, "colour": "red"}, 400),  # unknown field
        ({"service_code": "transfer", "kind": "tax", "amount": 1}, 400),  # unknown kind
        ({"service_code": "nope", "kind": "base", "amount": 1}, 404),  # unknown service
        ({"service_code": "transfer", "kind": "base", "match": "x", "amount": 1}, 422),  # base with a match
        ({"service_code": "transfer", "kind": "base", "amount": 1}, 409),  # second base fee
    ],
)
async def test_bad_fee_input_writes_nothing(client, seeded, auth, settings, body, status) -> None:
    fees, history = await count(settings.database.url, "fees"), await count(settings.database.url, "history")
    problem(await client.post("/api/config/fees", json=body, headers=auth(*ADMIN)), status)
    assert await count(settings.database.url, "fees") == fees
    assert await count(settings.database.url, "history") == history


async def test_validation_errors_name_the_field(client, seeded, auth) -> None:
    r = await client.post(
        "/api/config/fees", json={"service_code": "transfer", "kind": "base", "amount": -1}, headers=auth(*ADMIN)
    )
    body = problem(r, 400)
    assert body["code"] == "validation_error" and "amount" in body["detail"]


async def test_oversized_body_is_refused(client, seeded, auth, settings) -> None:
    big = "x" * (settings.server.max_body_bytes + 10)
    r = await client.put(
        "/api/config/settings/site.name",
        content=f'{{"value": "{big}"}}',
        headers={**auth(*ADMIN), "content-type": "application/json"},
    )
    problem(r, 413)
    assert (await client.get("/api/config/settings")).json()[0]["value"] != big


async def test_feature_rollout_is_stable_per_subject(client, seeded, auth) -> None:
    r = await client.put(
        "/api/config/features/qr_verification", json={"enabled": True, "rollout_percent": 30}, headers=auth(*ADMIN)
    )
    assert r.status_code == 200
    subjects = [f"user-{i}" for i in range(400)]
    answers = [await seeded.bus.ask(IsFeatureEnabled(key="qr_verification", subject=s)) for s in subjects]
    again = [await seeded.bus.ask(IsFeatureEnabled(key="qr_verification", subject=s)) for s in subjects]
    assert answers == again
    assert answers == [rollout_bucket("qr_verification", s) < 30 for s in subjects]
    assert 0.2 < sum(answers) / len(answers) < 0.4
    state = (await client.get("/api/config/features/qr_verification/state", params={"subject": "user-1"})).json()
    assert state["enabled"] == answers[1]
    problem(
        await client.put(
            "/api/config/features/qr_verification", json={"enabled": True, "rollout_percent": 120}, headers=auth(*ADMIN)
        ),
        400,
    )


async def test_config_changes_are_published_through_the_outbox(client, seeded, auth, settings) -> None:
    await client.put("/api/config/features/sms_notifications", json={"enabled": False}, headers=auth(*ADMIN))

    async def published() -> bool:
        con = await asyncpg.connect(settings.database.url)
        try:
            return bool(
                await con.fetchval(
                    "SELECT published_at IS NOT NULL FROM bus.outbox WHERE type = 'ConfigChanged'"
                    " ORDER BY id DESC LIMIT 1"
                )
            )
        finally:
            await con.close()

    await wait_for(published)


async def test_a_supervisor_reads_the_config_history_with_config_read(client, seeded, auth) -> None:
    """README: `config:read` reads private settings and the config history (supervisors have it)."""
    from simveb.actors.users.messages import ListRoles

    await client.put("/api/config/features/online_payment", json={"enabled": False}, headers=auth(*ADMIN))
    roles = {r.code: r.permissions for r in await seeded.bus.ask(ListRoles())}
    supervisor = auth(*roles["supervisor"], sub="supervisor-1", roles=("supervisor",))
    assert "config:read" in roles["supervisor"] and "config:write" not in roles["supervisor"]
    r = await client.get("/api/config/history", params={"key": "online_payment"}, headers=supervisor)
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["key"] == "online_payment"
    # Still closed to a caller with neither config:read nor config:write.
    problem(await client.get("/api/config/history", headers=auth("vehicles:read")), 403)
    problem(await client.get("/api/config/history"), 401)
