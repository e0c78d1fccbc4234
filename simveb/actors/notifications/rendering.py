"""Template rendering in a sandboxed Jinja2 environment, and the sealing of secret-bearing bodies.

Templates are admin-edited text, so they run in `SandboxedEnvironment` (no attribute access to
internals, no imports) with `StrictUndefined` (a missing parameter is an error when the message is
queued, never a blank in a message).

Secret parameters (an OTP code). The requirement: the secret never appears in clear in the database
or the logs, yet a process restart between the write and the send still delivers. Options weighed:
- keep the secret only in memory until sent: simplest, but a restart loses the message;
- store only the non-secret parameters and re-render at send time: the secret still has to live
  somewhere between the two, so this is the same problem;
- store the real rendering encrypted (chosen). The row keeps `body` rendered with the secret masked
  (what operators and `GetDelivery` see), and `sealed` = AES-GCM(nonce, real subject and body),
  authenticated with the message id so a sealed body cannot be moved to another row. The worker that
  sends unseals it; `sealed` is wiped (NULL) as soon as the message is sent or dead.
Trade-offs: the seal key must be the same in every process that writes or sends (setting
`notifications.seal_key`; else derived from the token signing key by HKDF; else a development key
file), and losing or rotating it kills the messages still sealed (they go dead, "cannot be opened").
An attacker with both a database dump and the key reads only codes still waiting to be sent, which
expire within minutes. A dead secret-bearing message cannot be retried (its seal is gone): the user
asks for a new code instead.
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from simveb.config import Settings
from simveb.errors import Invalid
from simveb.keys import Sealer as _Sealer
from simveb.keys import sealing_key

MASK = "******"

_env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


def check_syntax(text: str, field: str) -> None:
    """Invalid naming the line and the problem when `text` is not a valid template."""
    try:
        _env.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise Invalid(
            f"{field}: template syntax error at line {exc.lineno}: {exc.message}",
            code="template_syntax_error",
            field=field,
            line=exc.lineno,
        ) from None


def render(text: str, params: dict[str, Any], *, field: str) -> str:
    """Render one template text; a missing parameter or a forbidden operation is Invalid."""
    try:
        return _env.from_string(text).render(params)
    except jinja2.UndefinedError as exc:
        raise Invalid(f"{field}: missing template parameter ({exc.message})", code="missing_parameter") from None
    except jinja2.TemplateSyntaxError as exc:
        raise Invalid(f"{field}: template syntax error: {exc.message}", code="template_syntax_error") from None
    except jinja2.exceptions.SecurityError as exc:
        raise Invalid(f"{field}: operation not allowed in a template ({exc})", code="template_forbidden") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        # Runtime errors inside an admin's expression: report them, never crash the actor.
        raise Invalid(f"{field}: template failed ({type(exc).__name__})", code="template_error") from None


def masked(params: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    return {k: (MASK if k in secrets else v) for k, v in params.items()}


class Sealer(_Sealer):
    """AES-GCM over the real rendering of a secret-bearing message, bound to the message id."""

    @classmethod
    def for_settings(cls, settings: Settings) -> Sealer:
        return cls(seal_key(settings))


def seal_key(settings: Settings) -> bytes:
    """notifications.seal_key; else derived from the token signing key; else a development key file."""
    return sealing_key(
        settings,
        configured=settings.notifications.seal_key,
        setting="notifications.seal_key",
        info=b"simveb notifications seal",
        filename="notifications-seal.key",
    )
