"""The token key ring: Ed25519 keys that sign (auth actor) and verify (HTTP layer) access tokens;
and the AES-GCM sealer of secrets kept at rest (notifications' secret bodies, TOTP secrets).

Runtime module, shared by the HTTP layer and the auth actor, so neither imports the other. In
development the keys live in `<data_dir>/keys/<kid>.pem` and one is generated on first start; in
production the current private key comes from `security.signing_key` (the environment) and older
public keys may be kept in the same directory to verify tokens issued before a rotation.
The `kid` is the RFC 7638 thumbprint of the public key, so it is the same wherever the key is loaded.

Beside the token keys, the ring has document-signing keys (`document_ring`): they sign the payload
of a certificate's QR code and the PDF itself, are never accepted for access tokens (a separate
ring, a separate directory `<data_dir>/keys/documents`, `documents.signing_key` in production), and
their public keys are published with the JWKS so anyone can verify a certificate offline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from uuid import UUID

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from simveb.config import ConfigError, Settings

ALGORITHM = "EdDSA"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}


def thumbprint(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: sha256 of the canonical JWK members, base64url."""
    jwk = public_jwk(key)
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x")}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def generate_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private(pem: str | bytes) -> Ed25519PrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"security.signing_key: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("security.signing_key: expected an Ed25519 private key")
    return key


class KeyRing:
    """The current signing key plus every public key that still verifies tokens, by kid."""

    def __init__(self, current: Ed25519PrivateKey, older: list[Ed25519PublicKey] | None = None) -> None:
        self.private = current
        self.kid = thumbprint(current.public_key())
        self.public: dict[str, Ed25519PublicKey] = {self.kid: current.public_key()}
        for key in older or []:
            self.public.setdefault(thumbprint(key), key)

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, claims: dict[str, Any], *, typ: str = "at+jwt") -> str:
        return jwt.encode(claims, self.private, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": typ})

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {
            "keys": [
                {**public_jwk(key), "kid": kid, "alg": ALGORITHM, "use": "sig"} for kid, key in self.public.items()
            ]
        }

    @classmethod
    def from_directory(cls, directory: Path, *, create: bool) -> KeyRing:
        """Newest `*.pem` signs; all of them verify. Creates the first key when asked to."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = sorted(directory.glob("*.pem"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        if not files:
            if not create:
                raise ConfigError(f"no signing key in {directory}")
            files = [write_new_key(directory)]
        keys = [load_private(p.read_bytes()) for p in files]
        return cls(keys[-1], [k.public_key() for k in keys[:-1]])

    @classmethod
    def for_settings(cls, settings: Settings) -> KeyRing:
        directory = settings.data_dir / "keys"
        if settings.security.signing_key:
            current = load_private(settings.security.signing_key)
            older = []
            if directory.is_dir():
                older = [load_private(p.read_bytes()).public_key() for p in sorted(directory.glob("*.pem"))]
            return cls(current, older)
        if settings.is_production:
            raise ConfigError("security.signing_key: production needs SIMVEB_SECURITY__SIGNING_KEY")
        return cls.from_directory(directory, create=True)


def document_ring(settings: Settings) -> KeyRing:
    """The document-signing keys: the newest (or `documents.signing_key`) signs, every one verifies.

    Older keys stay in `<data_dir>/keys/documents` after a rotation: certificates printed years ago
    must still verify.
    """
    directory = settings.data_dir / "keys" / "documents"
    if settings.documents.signing_key:
        current = load_private(settings.documents.signing_key)
        older = []
        if directory.is_dir():
            older = [load_private(p.read_bytes()).public_key() for p in sorted(directory.glob("*.pem"))]
        return KeyRing(current, older)
    if settings.is_production:
        raise ConfigError("documents.signing_key: production needs SIMVEB_DOCUMENTS__SIGNING_KEY")
    return KeyRing.from_directory(directory, create=True)


def write_new_key(directory: Path) -> Path:
    """Write a new private key file named by its kid (the newest file is the signing key)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = generate_pem()
    kid = thumbprint(load_private(pem).public_key())
    path = directory / f"{kid}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return path


# --- secrets sealed at rest --------------------------------------------------------------------------


class Sealer:
    """AES-GCM over a (subject, body) pair bound to an id (the AAD), so a sealed value cannot be moved
    to another row. Notifications seal secret-bearing messages with it, auth the TOTP secrets."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, bound_to: UUID, subject: str, body: str) -> bytes:
        nonce = os.urandom(12)
        plain = json.dumps({"s": subject, "b": body}).encode()
        return nonce + self._aead.encrypt(nonce, plain, bound_to.bytes)

    def unseal(self, bound_to: UUID, sealed: bytes) -> tuple[str, str]:
        data = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], bound_to.bytes))
        return data["s"], data["b"]


def sealing_key(settings: Settings, *, configured: str, setting: str, info: bytes, filename: str) -> bytes:
    """A 32-byte AES key: the configured one (base64url); else derived from the token signing key by
    HKDF with `info` (a distinct key per use); else a development key file in <data_dir>/keys."""
    if configured:
        try:
            key = base64.urlsafe_b64decode(configured + "=" * (-len(configured) % 4))
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigError(f"{setting}: expected 32 bytes, base64url encoded")
        return key
    if settings.security.signing_key:
        # Production always has a signing key: one secret fewer to manage, a distinct key by HKDF.
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
            settings.security.signing_key.encode()
        )
    path = Path(settings.data_dir) / "keys" / filename
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # atomic create-if-absent: two processes starting at once agree on one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return base64.urlsafe_b64decode(path.read_text().strip())
