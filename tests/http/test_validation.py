"""Refused input answers problem+json 400 `validation_error` with `errors: [{field, message, source}]`:
the field named (nested as `vehicle.vin`, items as `declared_documents[0]`), what was expected said,
for a missing body, a body that is not JSON, wrong types, unknown and missing fields, query and path
parameters. 422 stays for well-formed input that a domain rule refuses."""

from __future__ import annotations

from typing import Any

import pytest

PROBLEM = "application/problem+json"


def refused(r: Any, source: str | None = "body") -> list[dict[str, str]]:
    """The errors of a validation problem; each has a message, and the source when one is expected."""
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["code"] == "validation_error" and body["status"] == 400
    errors = body["errors"]
    assert errors and all(e["message"] for e in errors)
    assert "'data'" not in r.text, "Litestar's internal name of the body leaks"
    if source:
        assert {e.get("source") for e in errors} == {source}
    for e in errors:  # the detail repeats every error, for a client that shows only the detail
        assert e["message"] in body["detail"]
    return errors


async def test_a_missing_body_says_that_a_json_object_is_expected(client) -> None:
    [error] = refused(await client.post("/api/auth/login"))
    assert "field" not in error
    assert error["message"] == "a JSON body is required: an object with password"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"{not json", "object keys must be strings"), (b'{"password": "x', "truncated"), (b"password=x", "invalid")],
)
async def test_a_body_that_is_not_json_is_named_as_such(client, raw: bytes, reason: str) -> None:
    r = await client.post("/api/auth/login", content=raw, headers={"content-type": "application/json"})
    [error] = refused(r)
    assert error["message"].startswith("not valid JSON (") and reason in error["message"]
    assert "a JSON object was expected" in error["message"]


async def test_a_body_that_is_not_an_object(client) -> None:
    [error] = refused(await client.post("/api/auth/login", json=["password", "x"]))
    assert error == {"message": "expected a JSON object, got an array", "source": "body"}


async def test_wrong_types_name_the_field_and_the_expected_type(client) -> None:
    [error] = refused(await client.post("/api/auth/login", json={"password": "x" * 12, "identifier": 5}))
    assert error == {"field": "identifier", "message": "expected a string or null, got an integer", "source": "body"}


async def test_an_unknown_field_is_named_with_the_fields_the_body_accepts(client) -> None:
    sent = {"password": "x" * 12, "email": "a@example.com", "roles": ["admin"]}
    [error] = refused(await client.post("/api/auth/login", json=sent))
    assert error["field"] == "roles"
    assert error["message"] == "not a field of this body (it accepts password, identifier, email, phone)"


async def test_a_missing_required_field(client) -> None:
    [error] = refused(await client.post("/api/auth/login", json={"email": "a@example.com"}))
    assert error == {"field": "password", "message": "required", "source": "body"}


async def test_nested_fields_and_list_items_are_named_by_their_path(client, seeded, auth) -> None:
    h = auth("registrations:submit", sub="00000000-0000-0000-0000-000000000001")
    r = await client.post(
        "/api/immatriculations", json={"procedure": "first_registration", "vehicle": {"vin": 5}}, headers=h
    )
    [error] = refused(r)
    assert error["field"] == "vehicle.vin" and error["message"] == "expected a string, got an integer"
    sent = {"procedure": "first_registration", "declared_documents": [1]}
    [error] = refused(await client.post("/api/immatriculations", json=sent, headers=h))
    assert error["field"] == "declared_documents[0]"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "abc"}, "expected an integer, got a string"),
        ({"limit": "0"}, "expected an integer >= 1"),
        ({"limit": "201"}, "expected an integer <= 200"),
        ({"status": "lost"}, "one of active, stolen, destroyed, exported expected, got 'lost'"),
        ({"owner": "not-a-uuid"}, "Invalid UUID"),
    ],
)
async def test_bad_query_parameters_are_named(client, auth, params: dict[str, str], message: str) -> None:
    [error] = refused(await client.get("/api/vehicles", params=params, headers=auth("vehicles:read")), "query")
    assert error == {"field": next(iter(params)), "message": message, "source": "query"}


async def test_a_path_parameter_breaking_its_rule_is_a_400_not_a_500(client, auth) -> None:
    r = await client.put("/api/config/features/BAD KEY", json={"enabled": True}, headers=auth("config:write"))
    [error] = refused(r, "path")
    assert error["field"] == "key" and error["message"].startswith("expected a string matching")


async def test_a_cursor_the_list_did_not_give(client, auth) -> None:
    # Well-formed (base64url) but not this list's keyset: a vehicles cursor holds an id only.
    r = await client.get("/api/vehicles", params={"cursor": "WyJ4Il0"}, headers=auth("vehicles:read"))
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"
    assert r.json()["errors"][0]["field"] == "cursor"


async def test_well_formed_input_a_rule_refuses_stays_422(client) -> None:
    r = await client.post("/api/auth/login", json={"password": "x" * 12})
    assert r.status_code == 422 and r.json()["code"] == "identifier_required"
