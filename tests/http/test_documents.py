"""The /api/documents routes: uploads of every type, sniffing (415), limits (413), hostile file names,
visibility (another user's document is a 404), downloads with ETag and ranges, agent validation with
the applicant told of a rejection, replacement, required documents, archiving."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from simveb.actors.documents.messages import CheckRequiredDocuments
from simveb.actors.documents.seed_data import TYPES
from simveb.actors.notifications.messages import SeedNotifications
from tests.documents_support import (
    SAMPLES,
    certificate_of,
    holder,
    pdf_bytes,
    png_bytes,
    prepare,
    upload,
    validated,
    vehicle,
)
from tests.support import wait_for

AGENT = ("documents:read", "documents:validate")


@pytest.fixture
async def api(runtime: Any, client: Any) -> Any:
    await prepare(runtime)
    return client


def me(auth: Any, user_id: uuid.UUID | str | None = None) -> tuple[str, dict[str, str]]:
    sub = str(user_id or uuid.uuid4())
    return sub, auth(sub=sub)


def staging_files(settings: Any) -> list[str]:
    folder = settings.data_dir / "documents" / "staging"
    return [p.name for p in folder.iterdir()] if folder.is_dir() else []


async def test_every_uploadable_type_is_accepted_hashed_and_read_back(api: Any, auth: Any, settings: Any) -> None:
    sub, headers = me(auth)
    uploadable = [t for t in TYPES if not t[5]]
    kinds = list(SAMPLES)
    for i, (code, *_rest, media_types, _issued) in enumerate(uploadable):
        media = media_types[i % len(media_types)]
        filename, make = SAMPLES[media]
        content = make()
        r = await upload(api, headers, content, type_code=code, filename=filename, content_type=media)
        assert r.status_code == 201, r.text
        doc = r.json()
        assert doc["type_code"] == code and doc["status"] == "pending" and doc["owner_id"] == sub
        assert doc["media_type"] == media and doc["size_bytes"] == len(content)
        assert doc["sha256"] == hashlib.sha256(content).hexdigest()
        got = await api.get(f"/api/documents/{doc['id']}/download", headers=headers)
        assert got.status_code == 200 and got.content == content
        assert got.headers["content-type"].startswith(media)
    assert set(kinds) <= {m for t in uploadable for m in t[4]}
    listed = (await api.get("/api/documents", headers=headers)).json()["items"]
    assert len(listed) == len(uploadable)
    assert staging_files(settings) == []


async def test_an_issued_type_cannot_be_uploaded(api: Any, auth: Any) -> None:
    _, headers = me(auth)
    r = await upload(api, headers, pdf_bytes(), type_code="issued_certificate")
    assert r.status_code == 404
    r = await upload(api, headers, pdf_bytes(), type_code="nope")
    assert r.status_code == 404


async def test_a_png_renamed_pdf_is_refused_with_415(api: Any, auth: Any, settings: Any) -> None:
    _, headers = me(auth)
    png = png_bytes()
    # the attacker's claim: a PDF by name and by Content-Type; the bytes say PNG
    r = await upload(api, headers, png, filename="facture.pdf", content_type="application/pdf")
    assert r.status_code == 415, r.text
    assert r.json()["code"] == "unsupported_media_type"
    # refused before the body was read to its end: the connection is not reused for another request
    assert r.headers["connection"] == "close"
    # a PNG honestly declared is still refused where only PDF is accepted
    r = await upload(api, headers, png, type_code="loan_agreement", filename="x.png", content_type="image/png")
    assert r.status_code == 415
    # bytes that are none of the accepted types
    r = await upload(api, headers, b"MZ\x90\x00" + b"\x00" * 100, filename="x.pdf", content_type="application/pdf")
    assert r.status_code == 415
    # declared generically, sniffed as PNG: accepted
    r = await upload(api, headers, png, filename="photo", content_type="application/octet-stream")
    assert r.status_code == 201 and r.json()["media_type"] == "image/png"
    assert staging_files(settings) == []


async def test_an_oversized_file_is_refused_with_413_and_nothing_is_kept(api: Any, auth: Any, settings: Any) -> None:
    _, headers = me(auth)
    limit = dict((t[0], t[3]) for t in TYPES)["owner_identity"]
    r = await upload(api, headers, pdf_bytes(pad=limit))
    assert r.status_code == 413, r.text
    assert staging_files(settings) == []
    assert (await api.get("/api/documents", headers=headers)).json()["items"] == []
    # the server-wide body limit does not apply to uploads: a file above it but within the type's passes
    r = await upload(api, headers, pdf_bytes(pad=settings.server.max_body_bytes + 10))
    assert r.status_code == 201, r.text


async def test_a_file_name_with_dot_dot_never_reaches_a_path_or_a_header(api: Any, auth: Any, settings: Any) -> None:
    _, headers = me(auth)
    hostile = '../../../etc/passwd";\r\nX-Evil: 1.pdf'
    r = await upload(api, headers, pdf_bytes(), filename=hostile)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert "/" not in doc["filename"] and ".." not in doc["filename"] and "\n" not in doc["filename"]
    store_root = settings.data_dir / "documents" / "store"
    stored = [p for p in store_root.rglob("*") if p.is_file()]
    assert [p.name for p in stored if p.name == doc["id"]] == [doc["id"]]  # our key, not the client's name
    assert not [p for p in settings.data_dir.parent.rglob("passwd*")]
    got = await api.get(f"/api/documents/{doc['id']}/download", headers=headers)
    assert got.status_code == 200
    disposition = got.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=")
    assert "\r" not in disposition and "\n" not in disposition and "x-evil" not in {k.lower() for k in got.headers}
    assert disposition.count('"') == 2


async def test_another_users_document_is_a_404_and_staff_may_read_it(api: Any, auth: Any) -> None:
    _, owner = me(auth)
    _, other = me(auth)
    doc = (await upload(api, owner, pdf_bytes())).json()
    for method, path in (
        ("GET", f"/api/documents/{doc['id']}"),
        ("GET", f"/api/documents/{doc['id']}/download"),
        ("DELETE", f"/api/documents/{doc['id']}"),
    ):
        r = await api.request(method, path, headers=other)
        assert r.status_code == 404, (method, path, r.text)
    # listing someone else's documents by owner gives only your own
    r = await api.get("/api/documents", params={"owner_id": doc["owner_id"]}, headers=other)
    assert r.json()["items"] == []
    # uploading "for" someone else is refused to a citizen
    r = await upload(api, other, pdf_bytes(), owner_id=doc["owner_id"])
    assert r.status_code == 403
    staff = auth(*AGENT, sub="agent-1")
    assert (await api.get(f"/api/documents/{doc['id']}/download", headers=staff)).status_code == 200
    r = await api.get("/api/documents", params={"owner_id": doc["owner_id"]}, headers=staff)
    assert [d["id"] for d in r.json()["items"]] == [doc["id"]]
    assert (await api.get(f"/api/documents/{doc['id']}")).status_code == 401


async def test_ranges_and_etags(api: Any, auth: Any) -> None:
    _, headers = me(auth)
    content = pdf_bytes(pad=3000)
    doc = (await upload(api, headers, content)).json()
    url = f"/api/documents/{doc['id']}/download"
    full = await api.get(url, headers=headers)
    tag = full.headers["etag"]
    assert full.headers["accept-ranges"] == "bytes" and tag == f'"{doc["sha256"][:32]}"'
    r = await api.get(url, headers={**headers, "Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == content[:10]
    assert r.headers["content-range"] == f"bytes 0-9/{len(content)}"
    r = await api.get(url, headers={**headers, "Range": "bytes=-7"})
    assert r.status_code == 206 and r.content == content[-7:]
    r = await api.get(url, headers={**headers, "Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == content[100:]
    r = await api.get(url, headers={**headers, "Range": f"bytes={len(content)}-"})
    assert r.status_code == 416
    r = await api.get(url, headers={**headers, "If-None-Match": tag})
    assert r.status_code == 304 and r.content == b""
    r = await api.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == content
    r = await api.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": tag})
    assert r.status_code == 206 and r.content == content[:10]


async def test_an_agent_rejects_the_owner_is_told_and_replaces_it(runtime: Any, api: Any, auth: Any) -> None:
    await runtime.bus.ask(SeedNotifications())
    user = await holder(runtime)
    headers = auth(sub=str(user.id))
    request_id = uuid.uuid4()
    doc = (await upload(api, headers, pdf_bytes(), request_id=request_id)).json()
    invoice = (await upload(api, headers, png_bytes(), type_code="purchase_invoice", request_id=request_id,
                            filename="f.png", content_type="image/png")).json()  # fmt: skip
    agent = auth(*AGENT, sub="agent-7")
    url = f"/api/documents/{doc['id']}/validate"
    assert (await api.post(url, json={"decision": "reject"}, headers=agent)).status_code == 422
    assert (await api.post(url, json={"decision": "approve"}, headers=headers)).status_code == 403
    r = await api.post(url, json={"decision": "reject", "reason": "Photo illisible"}, headers=agent)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected" and r.json()["rejection_reason"] == "Photo illisible"
    assert (await api.post(url, json={"decision": "approve"}, headers=agent)).status_code == 409
    ok = await api.post(f"/api/documents/{invoice['id']}/validate", json={"decision": "approve"}, headers=agent)
    assert ok.json()["status"] == "validated"

    async def notified() -> int:
        async with runtime.db.connection() as con:
            return await con.fetchval(
                "SELECT count(*) FROM notifications.messages WHERE user_id = $1 AND body LIKE '%Photo illisible%'",
                user.id,
            )

    await wait_for(notified, timeout=10)
    required = ("owner_identity", "purchase_invoice", "customs_clearance")
    check = await runtime.bus.ask(CheckRequiredDocuments(request_id=request_id, required=required))
    assert not check.complete and check.rejected == ("owner_identity",) and check.missing == ("customs_clearance",)

    again = await upload(api, headers, pdf_bytes("v2"), replaces_id=doc["id"])
    assert again.status_code == 201, again.text
    new = again.json()
    assert new["replaces_id"] == doc["id"] and new["request_id"] == str(request_id)
    old = (await api.get(f"/api/documents/{doc['id']}", headers=headers)).json()
    assert old["replaced_by"] == new["id"] and [v["decision"] for v in old["validations"]] == ["rejected"]
    assert (await upload(api, headers, pdf_bytes(), replaces_id=doc["id"])).status_code == 409
    await api.post(f"/api/documents/{new['id']}/validate", json={"decision": "approve"}, headers=agent)
    customs = (await upload(api, headers, pdf_bytes(), type_code="customs_clearance", request_id=request_id)).json()
    await api.post(f"/api/documents/{customs['id']}/validate", json={"decision": "approve"}, headers=agent)
    check = await runtime.bus.ask(CheckRequiredDocuments(request_id=request_id, required=required))
    assert check.complete, check
    # papers of another user do not complete this applicant's request
    stranger = uuid.uuid4()
    check = await runtime.bus.ask(
        CheckRequiredDocuments(request_id=request_id, required=required, applicant_id=stranger)
    )
    assert check.missing == required


async def test_delete_archives_but_not_what_supports_a_completed_registration(
    runtime: Any, api: Any, auth: Any
) -> None:
    user = await holder(runtime)
    headers = auth(sub=str(user.id))
    loose = (await upload(api, headers, pdf_bytes())).json()
    r = await api.delete(f"/api/documents/{loose['id']}", headers=headers)
    assert r.status_code == 200 and r.json()["archived_at"]
    assert (await api.get(f"/api/documents/{loose['id']}", headers=headers)).status_code == 404
    staff = auth(*AGENT, sub="agent-1")
    kept = await api.get(f"/api/documents/{loose['id']}/download", headers=staff)
    assert kept.status_code == 200  # archived, not erased

    car = await vehicle(runtime, [user.id], plate="AB 1234 RB")
    request_id = uuid.uuid4()
    proof = (await upload(api, headers, pdf_bytes(), request_id=request_id, vehicle_id=car.id)).json()
    await validated(runtime, vehicle_id=car.id, applicant_id=user.id, holder_ids=(user.id,), plate="AB 1234 RB",
                    request_id=request_id)  # fmt: skip
    await wait_for(lambda: certificate_of(runtime, request_id), timeout=30)
    r = await api.delete(f"/api/documents/{proof['id']}", headers=headers)
    assert r.status_code == 409 and r.json()["code"] == "supports_completed_request"
    assert (await upload(api, headers, pdf_bytes(), request_id=request_id)).status_code == 409
