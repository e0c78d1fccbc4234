"""Registrations and documents in one process, as served: an applicant files, uploads the required
papers, an agent validates them, the request goes through payment, verification and validation, and
the validated registration produces a carte grise whose QR code opens the verification page."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from simveb.runtime import Runtime
from tests.documents_support import pdf_bytes, upload
from tests.http.test_documents_certificates import pdf_text, qr_of
from tests.registrations_support import FIRST_DOCS, new_vehicle, pay_at_counter, person
from tests.support import wait_for


async def test_upload_validate_register_and_verify_the_carte_grise(seeded: Runtime, client: Any) -> None:
    api = client
    citizen = await person(seeded, "citizen")
    agent = await person(seeded, "agent")
    validator = await person(seeded, "validator")
    r = await api.post("/api/immatriculations", json={"vehicle": new_vehicle(model="406")}, headers=citizen.headers)
    assert r.status_code == 201, r.text
    req = r.json()
    rid = req["id"]
    assert req["status"] == "pending"
    r = await api.put(f"/api/immatriculations/{rid}/status", json={"status": "submitted"}, headers=citizen.headers)
    assert r.status_code == 409 and set(r.json()["missing"]) == set(FIRST_DOCS)

    docs = []
    for code in FIRST_DOCS:
        r = await upload(api, citizen.headers, pdf_bytes(code), type_code=code, request_id=rid)
        assert r.status_code == 201, r.text
        docs.append(r.json())
    # uploaded is not enough: an agent validates them
    r = await api.put(f"/api/immatriculations/{rid}/status", json={"status": "submitted"}, headers=citizen.headers)
    assert r.status_code == 409
    queue = await api.get("/api/documents", params={"request_id": rid, "status": "pending"}, headers=agent.headers)
    assert {d["id"] for d in queue.json()["items"]} == {d["id"] for d in docs}
    for doc in docs:
        r = await api.post(f"/api/documents/{doc['id']}/validate", json={"decision": "approve"}, headers=agent.headers)
        assert r.status_code == 200, r.text
    r = await api.put(f"/api/immatriculations/{rid}/status", json={"status": "submitted"}, headers=citizen.headers)
    assert r.status_code == 200 and r.json()["status"] == "waiting_for_payment", r.text

    await pay_at_counter(api, agent, rid)
    for status in ("verified", "pre_validated"):
        r = await api.put(f"/api/immatriculations/{rid}/status", json={"status": status}, headers=agent.headers)
        assert r.status_code == 200, r.text
    r = await api.post(f"/api/immatriculations/{rid}/validate", json={"note": "ok"}, headers=validator.headers)
    assert r.status_code == 200, r.text
    plate = r.json()["plate"]

    async def issued() -> dict[str, Any] | None:
        page = await api.get(
            "/api/documents", params={"request_id": rid, "type": "issued_certificate"}, headers=citizen.headers
        )
        items = page.json()["items"]
        return items[0] if items else None

    certificate = await wait_for(issued, timeout=60)
    data = (await api.get(f"/api/documents/{certificate['id']}/download", headers=citizen.headers)).content
    assert plate in pdf_text(data)
    url = urlsplit(qr_of(data))
    page = await api.get(f"{url.path}?{url.query}")  # what the phone opens
    assert page.status_code == 200 and "Certificat authentique et en vigueur" in page.text and plate in page.text
    # the papers now support a completed registration: they are kept
    r = await api.delete(f"/api/documents/{docs[0]['id']}", headers=citizen.headers)
    assert r.status_code == 409
    # and nobody else sees them
    stranger = await person(seeded, "citizen")
    assert (await api.get(f"/api/documents/{docs[0]['id']}", headers=stranger.headers)).status_code == 404
    assert uuid.UUID(certificate["id"])
