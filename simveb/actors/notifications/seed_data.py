"""Default templates and event subscriptions of the notifications service (placeholder wording).

Loaded by `SeedNotifications`; existing rows are kept, so an admin's edits survive a re-seed.
"""

from __future__ import annotations

import asyncpg

# (event, channel, language, subject, body, secret params)
TemplateRow = tuple[str, str, str, str, str, list[str]]

_OTP_PURPOSE = {
    "login": ("de connexion", "sign-in"),
    "two_factor": ("de vérification", "verification"),
    "register": ("d'inscription", "registration"),
    "password_reset": ("de réinitialisation du mot de passe", "password reset"),
    "email_change": ("de changement d'adresse e-mail", "email change"),
}


def _otp_templates() -> list[TemplateRow]:
    rows: list[TemplateRow] = []
    for purpose, (fr, en) in _OTP_PURPOSE.items():
        event = f"otp.{purpose}"
        rows += [
            (
                event,
                "sms",
                "fr",
                "",
                f"SIMVEB : votre code {fr} est {{{{ code }}}}. Il expire dans 5 minutes.",
                ["code"],
            ),
            (event, "sms", "en", "", f"SIMVEB: your {en} code is {{{{ code }}}}. It expires in 5 minutes.", ["code"]),
            (
                event,
                "email",
                "fr",
                f"SIMVEB : votre code {fr}",
                f"Bonjour,\n\nVotre code {fr} est : {{{{ code }}}}\n\nIl expire dans 5 minutes. "
                "Si vous n'avez rien demandé, ignorez ce message.\n\nSIMVEB",
                ["code"],
            ),
            (
                event,
                "email",
                "en",
                f"SIMVEB: your {en} code",
                f"Hello,\n\nYour {en} code is: {{{{ code }}}}\n\nIt expires in 5 minutes. "
                "If you did not ask for it, ignore this message.\n\nSIMVEB",
                ["code"],
            ),
        ]
    return rows


_WELCOME_FR = "Bienvenue sur SIMVEB{% if name is defined %}, {{ name }}{% endif %} ! Votre compte est actif."
_WELCOME_EN = "Welcome to SIMVEB{% if name is defined %}, {{ name }}{% endif %}! Your account is active."
# UserEmailChanged, sent to the OLD address: the owner of an account being taken learns it there.
_EMAIL_CHANGED_FR = (
    "Bonjour,\n\nL'adresse e-mail de votre compte SIMVEB vient d'être remplacée par {{ new_email }}.\n\n"
    "Si vous n'êtes pas à l'origine de ce changement, votre compte est peut-être compromis : contactez"
    " sans attendre le support SIMVEB pour le bloquer.\n\nSIMVEB"
)
_EMAIL_CHANGED_EN = (
    "Hello,\n\nThe email address of your SIMVEB account was just changed to {{ new_email }}.\n\n"
    "If you did not make this change, your account may be compromised: contact SIMVEB support at once"
    " to have it blocked.\n\nSIMVEB"
)
# RegistrationStatusChanged carries number / from_status / to_status; other publishers may use
# reference / old_status / new_status.
_STATUS_FR = (
    "{{ reference | default(number | default('Votre demande')) }} : statut {{ new_status | default(to_status) }}"
    "{% if old_status is defined %} (auparavant {{ old_status }})"
    "{% elif from_status is defined %} (auparavant {{ from_status }}){% endif %}."
)
_STATUS_EN = (
    "{{ reference | default(number | default('Your request')) }}: status {{ new_status | default(to_status) }}"
    "{% if old_status is defined %} (was {{ old_status }})"
    "{% elif from_status is defined %} (was {{ from_status }}){% endif %}."
)

TEMPLATES: list[TemplateRow] = [
    *_otp_templates(),
    ("email_changed", "email", "fr", "SIMVEB : adresse e-mail modifiée", _EMAIL_CHANGED_FR, []),
    ("email_changed", "email", "en", "SIMVEB: email address changed", _EMAIL_CHANGED_EN, []),
    (
        "email_changed",
        "in_app",
        "fr",
        "Adresse e-mail modifiée",
        "Votre adresse e-mail est maintenant {{ new_email }}.",
        [],
    ),
    ("email_changed", "in_app", "en", "Email address changed", "Your email address is now {{ new_email }}.", []),
    ("welcome", "email", "fr", "Bienvenue sur SIMVEB", _WELCOME_FR + "\n\nSIMVEB", []),
    ("welcome", "email", "en", "Welcome to SIMVEB", _WELCOME_EN + "\n\nSIMVEB", []),
    ("welcome", "sms", "fr", "", _WELCOME_FR, []),
    ("welcome", "sms", "en", "", _WELCOME_EN, []),
    ("welcome", "in_app", "fr", "Bienvenue", _WELCOME_FR, []),
    ("welcome", "in_app", "en", "Welcome", _WELCOME_EN, []),
    *[
        ("status_changed", channel, "fr", "SIMVEB : changement de statut", _STATUS_FR, [])
        for channel in ("email", "sms", "push", "in_app")
    ],
    *[
        ("status_changed", channel, "en", "SIMVEB: status change", _STATUS_EN, [])
        for channel in ("email", "sms", "push", "in_app")
    ],
    *[
        (
            "document_rejected",
            channel,
            "fr",
            "SIMVEB : document refusé",
            "Votre document « {{ type_label }} » a été refusé : {{ reason }}. Vous pouvez en déposer un nouveau.",
            [],
        )
        for channel in ("email", "sms", "push", "in_app")
    ],
    *[
        (
            "document_rejected",
            channel,
            "en",
            "SIMVEB: document rejected",
            "Your document {{ type_code }} was rejected: {{ reason }}. You may upload a new one.",
            [],
        )
        for channel in ("email", "sms", "push", "in_app")
    ],
    # Free text sent by staff through the API: the subject and text are the parameters.
    *[
        ("custom", channel, language, "{{ subject | default('SIMVEB') }}", "{{ text }}", [])
        for channel in ("email", "sms", "push", "in_app")
        for language in ("fr", "en")
    ],
]

# (event type tag, channel, template event, recipient field). Events named here that no service
# publishes yet are inert until one does: services add rows, not code.
SUBSCRIPTIONS: list[tuple[str, str, str, str]] = [
    ("UserRegistered", "email", "welcome", "user_id"),
    ("UserRegistered", "in_app", "welcome", "user_id"),
    ("UserEmailChanged", "email", "email_changed", "old_email"),
    ("UserEmailChanged", "in_app", "email_changed", "user_id"),
    ("RegistrationStatusChanged", "in_app", "status_changed", "applicant_id"),
    ("RegistrationStatusChanged", "sms", "status_changed", "applicant_id"),
    ("RegistrationStatusChanged", "push", "status_changed", "applicant_id"),
    ("DocumentRejected", "in_app", "document_rejected", "owner_id"),
    ("DocumentRejected", "sms", "document_rejected", "owner_id"),
]


async def load(con: asyncpg.Connection) -> int:
    """Insert what is missing; return rows added."""
    added = 0
    for event, channel, language, subject, body, secrets in TEMPLATES:
        status = await con.execute(
            "INSERT INTO notifications.templates (event, channel, language, subject, body, secret_params)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event, channel, language) DO NOTHING",
            event,
            channel,
            language,
            subject,
            body,
            secrets,
        )
        added += int(status.rsplit(" ", 1)[-1])
    for event_type, channel, template_event, field in SUBSCRIPTIONS:
        status = await con.execute(
            "INSERT INTO notifications.subscriptions (event_type, channel, template_event, recipient_field)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (event_type, channel, template_event, recipient_field) DO NOTHING",
            event_type,
            channel,
            template_event,
            field,
        )
        added += int(status.rsplit(" ", 1)[-1])
    return added
