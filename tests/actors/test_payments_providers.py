"""The providers' webhook proofs, checked against signatures computed independently (tests/payments_support)."""

from __future__ import annotations

import time

import pytest

from simveb.actors.payments.providers.fedapay import SignatureError, event_of, verify_signature
from simveb.actors.payments.providers.kkiapay import secret_matches
from tests.payments_support import sign

BODY = b'{"type":"transaction.approved","object_id":1001}'


def test_fedapay_signature_accepts_any_matching_s_within_the_tolerance() -> None:
    now = int(time.time())
    good = sign(BODY, secret="whsec", at=now)
    assert verify_signature(good, BODY, "whsec", tolerance_s=300) == now
    # A secret being rolled: the header carries several s=, one of which matches; unknown schemes ignored.
    rolled = f"t={now},s={'ab' * 32},v0=zzz,{good.split(',')[1]}"
    assert verify_signature(rolled, BODY, "whsec", tolerance_s=300) == now
    assert verify_signature(sign(BODY, secret="whsec", at=now - 299), BODY, "whsec", tolerance_s=300)


@pytest.mark.parametrize(
    ("header", "body"),
    [
        (None, BODY),
        ("", BODY),
        ("t=1", BODY),
        ("s=" + "0" * 64, BODY),
        ("t=x,s=" + "0" * 64, BODY),
        ("__good__", BODY + b"\n"),
        ("__stale__", BODY),
        ("__future__", BODY),
        ("__other_secret__", BODY),
    ],
)
def test_fedapay_signature_refusals(header: str | None, body: bytes) -> None:
    now = int(time.time())
    header = {
        "__good__": sign(BODY, secret="whsec", at=now),
        "__stale__": sign(BODY, secret="whsec", at=now - 310),
        "__future__": sign(BODY, secret="whsec", at=now + 310),
        "__other_secret__": sign(BODY, secret="whsec2", at=now),
    }.get(header or "", header)
    with pytest.raises(SignatureError):
        verify_signature(header, body, "whsec", tolerance_s=300)


def test_fedapay_event_type_may_be_named_name_and_wrapped() -> None:
    assert event_of(b'{"v1/event":{"name":"transaction.declined","entity":{"id":7}}}') == ("transaction.declined", "7")
    with pytest.raises(ValueError):
        event_of(b'{"type":"transaction.approved"}')


def test_kkiapay_secret_comparison() -> None:
    assert secret_matches("s3cret", "s3cret")
    assert not secret_matches("s3cre", "s3cret") and not secret_matches(None, "s3cret") and not secret_matches("", "")
