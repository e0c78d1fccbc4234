"""The delivery channels: email over SMTP, SMS through an HTTP gateway adapter, push through FCM HTTP v1.

Each channel sends one rendered message and returns the provider's message id, or raises
`TransientFailure` (try again later: timeout, 5xx, garbage answer) or `PermanentFailure` (the
provider refused this message: retrying cannot help). Nothing here logs a message body.
"""

from __future__ import annotations

import asyncio
import json
import time
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol

import aiosmtplib
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from simveb.config import NotificationsSettings

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class TransientFailure(Exception):
    """Worth retrying later."""


class PermanentFailure(Exception):
    """The provider refused this message for good."""


class Outgoing:
    """What a channel needs to send one message (the real rendering, secrets included)."""

    __slots__ = ("data", "idempotency_key", "message_id", "recipient", "subject", "text")

    def __init__(
        self, *, message_id: str, recipient: str, subject: str, text: str, idempotency_key: str, data: dict[str, str]
    ) -> None:
        self.message_id = message_id
        self.recipient = recipient
        self.subject = subject
        self.text = text
        self.idempotency_key = idempotency_key
        self.data = data


class Channel(Protocol):
    async def send(self, out: Outgoing) -> str: ...


def _http_failure(response: httpx.Response, what: str) -> Exception:
    if response.status_code in (408, 429) or response.status_code >= 500:
        return TransientFailure(f"{what} answered HTTP {response.status_code}")
    return PermanentFailure(f"{what} refused the message: HTTP {response.status_code}")


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise TransientFailure(f"{what} answered a body that is not JSON") from None
    if not isinstance(body, dict):
        raise TransientFailure(f"{what} answered unexpected JSON")
    return body


# --- email ---------------------------------------------------------------------------------------------


class EmailChannel:
    """SMTP with aiosmtplib: plain (local relay), STARTTLS or implicit TLS, optional AUTH."""

    def __init__(self, settings: NotificationsSettings) -> None:
        self.s = settings

    async def send(self, out: Outgoing) -> str:
        s = self.s
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = out.recipient
        message["Subject"] = out.subject
        domain = s.smtp_from.rpartition("@")[2].rstrip(">") or "simveb.bj"
        message["Message-ID"] = make_msgid(idstring=out.message_id, domain=domain)
        message.set_content(out.text)
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username or None,
                password=s.smtp_password or None,
                use_tls=s.smtp_security == "tls",
                start_tls=True if s.smtp_security == "starttls" else False,
                timeout=s.send_timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise PermanentFailure(f"SMTP server refused the recipient ({len(exc.recipients)})") from None
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise PermanentFailure(f"SMTP server answered {exc.code}") from None
            raise TransientFailure(f"SMTP server answered {exc.code}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientFailure(f"SMTP: {type(exc).__name__}") from None
        return str(message["Message-ID"])


# --- SMS -----------------------------------------------------------------------------------------------


class HttpJsonSms:
    """A JSON SMS gateway: `POST {sms_url}/messages` {from, to, text, reference} with a bearer API key,
    answered 200/201 {"id": ...}. `reference` is our idempotency key, so a gateway that deduplicates on
    it (the simulator does) never sends a retried message twice."""

    def __init__(self, settings: NotificationsSettings, client: httpx.AsyncClient) -> None:
        self.s = settings
        self.client = client

    async def send(self, out: Outgoing) -> str:
        headers = {"Authorization": f"Bearer {self.s.sms_api_key}"} if self.s.sms_api_key else {}
        try:
            response = await self.client.post(
                f"{self.s.sms_url.rstrip('/')}/messages",
                json={
                    "from": self.s.sms_sender,
                    "to": out.recipient,
                    "text": out.text,
                    "reference": out.idempotency_key,
                },
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise TransientFailure(f"SMS gateway: {type(exc).__name__}") from None
        if response.status_code not in (200, 201, 202):
            raise _http_failure(response, "SMS gateway")
        provider_id = _json(response, "SMS gateway").get("id")
        if not isinstance(provider_id, str) or not provider_id:
            raise TransientFailure("SMS gateway answered without a message id")
        return provider_id


SMS_PROVIDERS = {"http_json": HttpJsonSms}


def sms_channel(settings: NotificationsSettings, client: httpx.AsyncClient) -> Channel:
    return SMS_PROVIDERS[settings.sms_provider](settings, client)


# --- push (FCM HTTP v1) --------------------------------------------------------------------------------


class FcmPush:
    """FCM HTTP v1: an OAuth access token from a service-account JWT (RS256), cached until near expiry."""

    def __init__(self, settings: NotificationsSettings, client: httpx.AsyncClient, *, development: bool) -> None:
        self.s = settings
        self.client = client
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        self.project = settings.fcm_project
        self.client_email = ""
        self.private_key: Any = None
        if settings.fcm_service_account:
            account = json.loads(settings.fcm_service_account)
            self.client_email = account["client_email"]
            self.private_key = account["private_key"]
            self.project = account.get("project_id") or self.project
        elif development:
            # The simulator accepts any RS256 assertion: a throwaway key keeps the real code path.
            self.client_email = f"simveb@{self.project}.iam.gserviceaccount.com"
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )

    async def _access_token(self) -> str:
        if self._token and time.time() < self._token_expires - 60:
            return self._token
        # One exchange at a time: a batch of sends must not stampede the token endpoint.
        async with self._token_lock:
            if self._token and time.time() < self._token_expires - 60:
                return self._token
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        if self.private_key is None:
            raise PermanentFailure("push is not configured (notifications.fcm_service_account)")
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": self.client_email, "scope": FCM_SCOPE, "aud": self.s.fcm_token_url, "iat": now, "exp": now + 3600},
            self.private_key,
            algorithm="RS256",
        )
        try:
            response = await self.client.post(
                self.s.fcm_token_url,
                data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
            )
        except httpx.HTTPError as exc:
            raise TransientFailure(f"FCM token endpoint: {type(exc).__name__}") from None
        if response.status_code != 200:
            # A refused assertion is a configuration problem an operator fixes: keep the message.
            raise TransientFailure(f"FCM token endpoint answered HTTP {response.status_code}")
        body = _json(response, "FCM token endpoint")
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TransientFailure("FCM token endpoint answered without an access token")
        self._token = token
        self._token_expires = time.time() + float(body.get("expires_in", 3600))
        return token

    async def send(self, out: Outgoing) -> str:
        token = await self._access_token()
        url = f"{self.s.fcm_url.rstrip('/')}/v1/projects/{self.project}/messages:send"
        payload = {
            "message": {
                "token": out.recipient,
                "notification": {"title": out.subject, "body": out.text},
                "data": out.data,
            }
        }
        try:
            response = await self.client.post(url, json=payload, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise TransientFailure(f"FCM: {type(exc).__name__}") from None
        if response.status_code == 401:
            self._token = None  # expired or revoked: the next attempt fetches a new one
            raise TransientFailure("FCM refused the access token")
        if response.status_code != 200:
            raise _http_failure(response, "FCM")
        name = _json(response, "FCM").get("name")
        if not isinstance(name, str) or not name:
            raise TransientFailure("FCM answered without a message name")
        return name
