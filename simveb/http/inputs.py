"""The base of every HTTP request body.

Bodies refuse unknown fields: a typo is an error, not a silently ignored key, and a field such as
`roles`, `status`, `kyc_status` or `id` sent where it is not accepted is a 400, never a silent
privilege change (mass assignment). Fields are keyword-only, so a required one may follow an
optional one.
"""

from __future__ import annotations

import msgspec

from simveb.messages import KwOnlyMeta


class Input(msgspec.Struct, metaclass=KwOnlyMeta, forbid_unknown_fields=True):
    """Base of HTTP input structs."""
