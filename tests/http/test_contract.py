"""The API contract: the OpenAPI document is valid OpenAPI 3.1 and says exactly what every operation
answers, checked by schemathesis over every operation (the /sandbox simulators aside) as a citizen, an
agent and an admin signed in for real, against a real server on a real port.

Checks: status codes, content types and response bodies conform to the document, and no 5xx. The
generation is seeded (derandomized) and small, so the run is the same on every machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from simveb.config import Settings
from tests.contract_support import Server, serve, sign_in

# schemathesis's own strategies use `random` (hypothesis warns about it at every operation).
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

ROLES = ("citizen", "agent", "admin")
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, not_a_server_error]
# Operations that may end the session of the token they are sent with (logout; revoking a session or
# resetting a second factor, which may be the caller's own): each call gets a session of its own.
SESSION_ENDING = {
    ("POST", "/api/auth/logout"),
    ("DELETE", "/api/auth/sessions/{session_id}"),
    ("POST", "/api/auth/users/{user_id}/2fa/reset"),
}


@pytest.fixture(scope="module")
def server(base_settings: Settings) -> Iterator[Server]:
    with serve(base_settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.url}/schema/openapi.json", timeout=30).json()


@pytest.fixture(scope="module")
def tokens(server: Server) -> dict[str, str]:
    return {role: sign_in(server, role) for role in ROLES}


@pytest.fixture(scope="module")
def api_schema(server: Server, document: dict[str, Any]) -> Any:
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=server.url)
    return schema.exclude(path_regex="^/sandbox")


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_examples_match_their_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    with_examples = {name for name, schema in schemas.items() if schema.get("examples")}
    assert {"LoginIn", "LoginResult", "Problem", "Vehicle", "FileIn", "Request"} <= with_examples
    for name in with_examples:
        validator = Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": document["components"]})
        for example in schemas[name]["examples"]:
            errors = [e.message for e in validator.iter_errors(example)]
            assert not errors, (name, errors)


def test_operation_ids_are_readable_and_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values() if isinstance(op, dict)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    bad = [i for i in ids if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z][A-Za-z0-9]*", i)]
    assert not bad
    assert {"vehicles.get", "immatriculations.validate", "auth.login", "users.list"} <= set(ids)


def test_every_error_is_a_documented_problem(document: dict[str, Any]) -> None:
    public = {"/api/auth/login", "/api/auth/refresh", "/api/auth/verify-otp"}
    for path, item in document["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            where = f"{method.upper()} {path}"
            assert op.get("summary") and not op["summary"].startswith(("Api", "Get", "Post")), where
            errors = {code: r for code, r in op["responses"].items() if code >= "400"}
            if path.startswith("/api/"):
                assert {"401", "429"} <= set(errors), where
            for code, response in errors.items():
                if where == "GET /verify/{number}" and code == "404":
                    continue  # the verification page: the same answer as found, in HTML or JSON
                assert set(response["content"]) == {"application/problem+json"}, (where, code)
                assert response["content"]["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
            # A public route declares no security (a generated client sends no token to sign in).
            assert op["security"] in ([], [{"bearer": []}]), where
            if path in public or not path.startswith("/api/"):
                assert op["security"] == [], where
            if op["security"] == []:
                assert "Public" in op["description"], where
    # Error codes are listed once, with their status.
    codes = document["components"]["schemas"]["ErrorCode"]
    for code, status in {"pay_through_payments": 409, "missing_permission": 403, "validation_error": 400}.items():
        assert code in codes["enum"] and codes["x-error-codes"][code]["status"] == status
    # The guard says which permission, in the operation's description.
    assert "`config:write`" in document["paths"]["/api/vehicles/brands"]["post"]["description"]
    assert "`vehicles:write` or `vehicles:file`" in document["paths"]["/api/vehicles"]["post"]["description"]


GENERATION = settings(
    max_examples=5,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failing case is reported as is
)


def _first_lines(exc: BaseException) -> str:
    found = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
    return " | ".join(" ".join(str(e).split())[:400] for e in found)


def run_operation(operation: Any, mode: GenerationMode, call: Callable[[Any], None]) -> None:
    @GENERATION
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        call(case)

    check()


@pytest.mark.parametrize("role", ROLES)
def test_every_operation_answers_as_documented(
    api_schema: Any, server: Server, tokens: dict[str, str], role: str
) -> None:
    """Valid and invalid requests to every operation, as this role: every answer is as documented."""

    seen: dict[str, set[int]] = {}

    def call(case: Any) -> None:
        token = tokens[role]
        if (case.method.upper(), case.path) in SESSION_ENDING:
            token = sign_in(server, role)
        response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS, timeout=30)
        seen.setdefault(f"{case.method.upper()} {case.path}", set()).add(response.status_code)

    failures: list[str] = []
    covered = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        covered += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                run_operation(operation, mode, call)
            except Unsatisfiable:
                pass  # nothing to make invalid (no parameter, no body): the positive run covered it
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis reports failures as a group
                failures.append(f"{operation.label} ({mode.value}): {_first_lines(exc)}")
    assert covered >= 100
    # The run was made as this role throughout: its token still works, and nearly every operation
    # answered something else than 401 (a few only ever can: a refresh with a made-up token …).
    me = httpx.get(f"{server.url}/api/auth/me", headers={"Authorization": f"Bearer {tokens[role]}"}, timeout=30)
    assert me.status_code == 200, me.text
    only_401 = sorted(label for label, statuses in seen.items() if statuses == {401})
    assert len(only_401) <= covered // 10, only_401
    assert not failures, f"{len(failures)} failures:\n" + "\n\n".join(failures)
