"""Adapters of the payment providers: their HTTP APIs and webhook proofs, in our own terms.

Each adapter turns the provider's wire shapes into a `ProviderTransaction` (status normalised to
approved | pending | declined | cancelled | refunded, amount and currency as the provider reports
them). The actor decides what that means for a payment; adapters decide nothing.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Outcome = Literal["approved", "pending", "declined", "cancelled", "unknown"]


class ProviderError(Exception):
    """The provider could not be reached or answered something unusable (retry later)."""


class ProviderRefused(Exception):
    """The provider answered and refused the operation (do not retry as is)."""


class ProviderTransaction(msgspec.Struct, kw_only=True, frozen=True):
    """A provider's view of one transaction."""

    ref: str
    outcome: Outcome
    status: str  # the provider's own word
    amount_xof: int | None
    currency: str | None
    state: str | None = None  # data we attached (KKiaPay `state`, FedaPay custom_metadata.payment_id)
    raw: dict[str, Any] = {}
