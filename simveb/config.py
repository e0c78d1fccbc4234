"""Process settings: `config.toml` decoded into msgspec Structs, overridden by `SIMVEB_<SECTION>__<KEY>`.

This module owns every setting of the process and the rules that refuse a dangerous combination
(production on the embedded database, on sandbox providers, or without a signing key). Domain
values that admins change at run time (fees, procedures, feature flags) are not here: they belong
to the config actor and live in its schema.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every section: unknown keys are an error, not silently ignored."""


class ServerSettings(Section):
    env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: Port = 8000
    workers: Positive = 1
    data_dir: str = "./data"
    public_url: str = "http://127.0.0.1:8000"
    cors_origins: list[str] = msgspec.field(default_factory=lambda: ["http://localhost:3000"])
    max_body_bytes: Positive = 1_048_576
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Mount the provider simulators under /sandbox and seed reference data on an empty database.
    sandbox: bool = True
    # Production refuses the embedded database unless this is set on purpose (a single-box pilot).
    allow_embedded_db: bool = False
    # Reverse proxies (addresses or CIDRs) whose X-Forwarded-For / Forwarded are believed.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)


class DatabaseSettings(Section):
    url: str = ""
    pool_min: NonNegative = 2
    pool_max: Positive = 10
    migrate_on_start: bool = True
    command_timeout_s: PositiveFloat = 30.0
    # Longest wait for a pooled connection; past it the caller gets a 503, never a hang.
    acquire_timeout_s: PositiveFloat = 5.0


class RedisSettings(Section):
    url: str = ""


class BusSettings(Section):
    mailbox_size: Positive = 1000
    ask_timeout_s: PositiveFloat = 10.0
    # Supervision: this many crashes inside the window restart the actor.
    max_crashes: Positive = 5
    crash_window_s: PositiveFloat = 10.0
    shutdown_grace_s: PositiveFloat = 10.0
    relay_batch: Positive = 200
    relay_poll_s: PositiveFloat = 5.0
    # A claimed batch is this relay's for this long; a relay that dies releases it by expiry.
    relay_lease_s: PositiveFloat = 60.0
    # A failing delivery is retried with exponential backoff (capped) until the horizon has passed
    # since its first failure; then the event is dead until redriven (`simveb events redrive`).
    event_backoff_max_s: PositiveFloat = 300.0
    event_retry_horizon_s: PositiveFloat = 21600.0
    # Delivered outbox rows and inbox rows older than this are purged (seconds; 7 days).
    retention_s: PositiveFloat = 604800.0
    purge_interval_s: PositiveFloat = 3600.0
    # Refuse an ask made while the asker holds a pooled connection (development and tests): the
    # mistake that starves the pool shows up at once. Production only logs it.
    strict_connections: bool = True


class PlacementSettings(Section):
    """Which actors this process hosts, and the transport to those hosted elsewhere (issue 14)."""

    # Actor names this process hosts; empty = every actor (`simveb serve --actors a,b` overrides it).
    actors: list[str] = msgspec.field(default_factory=list)
    # Redis URL of the transport to actors hosted in other processes; empty = one process hosts all.
    redis_url: str = ""
    # Prefix of the request and reply streams (several deployments, or test runs, on one Redis).
    stream_prefix: str = "simveb:"
    # A request left pending this long by a consumer that went silent is taken over (XAUTOCLAIM).
    reclaim_idle_s: PositiveFloat = 15.0
    reclaim_interval_s: PositiveFloat = 2.0
    # A tell not taken by a host within this is dropped (an ask uses its own timeout).
    tell_ttl_s: PositiveFloat = 300.0
    # Stream entries older than this are trimmed; a dead process's reply stream expires after it.
    stream_retention_s: PositiveFloat = 3600.0
    # Remote requests this process handles at once (the actors' mailboxes still order them).
    max_in_flight: Positive = 256


class SecuritySettings(Section):
    issuer: str = "simveb"
    audience: str = "simveb-api"
    # Ed25519 private key (PEM). Set it through SIMVEB_SECURITY__SIGNING_KEY, never in a file.
    # Empty in development: a key pair is generated into <data_dir>/keys on first start.
    signing_key: str = ""
    leeway_s: NonNegative = 5


class RateLimitSettings(Section):
    enabled: bool = True
    # Requests per minute per client address on the whole API.
    per_minute: Positive = 600
    # The shared store (redis.url) must answer within this, else the request is limited locally,
    # and the store is left alone for redis_retry_s (a slow store must not slow every request).
    redis_timeout_s: PositiveFloat = 0.05
    redis_retry_s: PositiveFloat = 5.0


class IntegrationsSettings(Section):
    """X-Road client, timeouts, retries and circuit breakers (issue 3)."""

    # Base URL of the organisation's X-Road security server (REST `/r1/...` paths are appended).
    # A path ("/sandbox/xroad") means this server itself: resolved from server.host and server.port.
    xroad_url: str = "/sandbox/xroad"
    # X-Road instance of the client and of the services (Benin: BJ).
    xroad_instance: str = "BJ"
    # Our own X-Road client subsystem, sent as `X-Road-Client: INSTANCE/CLASS/MEMBER/SUBSYSTEM`.
    client_member_class: str = "GOV"
    client_member_code: str = "ANATT"
    client_subsystem: str = "SIMVEB"
    # ANIP citizen lookup: service id parts, an optional path after the service code, the query key.
    anip_member_class: str = "GOV"
    anip_member_code: str = "ANIP"
    anip_subsystem: str = "RNP"
    anip_service: str = "CITIZEN_BY_NPI_LITE"
    anip_path: str = ""
    anip_query_param: str = "npi"
    # DGI company lookup, same parts.
    dgi_member_class: str = "GOV"
    dgi_member_code: str = "DGI"
    dgi_subsystem: str = "CFISC"
    dgi_service: str = "DETAIL-IFU"
    dgi_path: str = "V1"
    dgi_query_param: str = "ifu"
    connect_timeout_s: PositiveFloat = 2.0
    read_timeout_s: PositiveFloat = 5.0
    # Whole budget of one lookup, retries included; keep it below bus.ask_timeout_s.
    lookup_budget_s: PositiveFloat = 8.0
    # Extra attempts of a failed lookup (they are idempotent), with full-jitter exponential backoff.
    retries: NonNegative = 2
    retry_base_delay_s: PositiveFloat = 0.2
    retry_max_delay_s: PositiveFloat = 2.0
    # Circuit breaker, one per registry: open after this many failures within the window ...
    breaker_failures: Positive = 5
    breaker_window_s: PositiveFloat = 30.0
    # ... and let one probe through after the cool-down.
    breaker_cooldown_s: PositiveFloat = 30.0
    # Background retry queue of non-urgent lookups.
    queue_poll_s: PositiveFloat = 15.0
    queue_base_delay_s: PositiveFloat = 30.0
    queue_max_delay_s: PositiveFloat = 3600.0
    queue_max_attempts: Positive = 12
    queue_batch: Positive = 20
    # Window of `integrations status` (error rate, latency percentiles), in seconds.
    status_window_s: PositiveFloat = 900.0
    # integration_logs rows older than this are deleted by the background worker.
    log_retention_days: Positive = 90
    # HMAC key for the identifier hashes in integration_logs; set SIMVEB_INTEGRATIONS__HASH_KEY in
    # production (an unkeyed SHA-256 of a 10-digit NPI can be reversed by enumeration).
    hash_key: str = ""


class NotificationsSettings(Section):
    """SMTP, SMS gateway, FCM and the durable delivery queue (issue 3)."""

    # Delivery workers of this process (0: this process only writes; another one delivers).
    workers: NonNegative = 2
    batch: Positive = 50
    poll_s: PositiveFloat = 1.0
    max_attempts: Positive = 8
    retry_base_s: PositiveFloat = 2.0
    retry_max_s: PositiveFloat = 600.0
    # A claimed message not settled within the lease (crashed process) is retried by another worker.
    lease_s: PositiveFloat = 60.0
    send_timeout_s: PositiveFloat = 10.0
    # AES-GCM key (base64url, 32 bytes) sealing bodies that carry secret parameters until they are sent.
    # Empty: derived from security.signing_key when set, else generated into <data_dir>/keys.
    seal_key: str = ""
    # Template rendering limits (admin-edited text runs in a worker process): deadline of one
    # render, longest output, address space of the worker, worker processes.
    template_timeout_s: PositiveFloat = 2.0
    template_max_output: Positive = 100_000
    template_memory_mb: NonNegative = 512
    template_processes: Positive = 1
    smtp_host: str = "127.0.0.1"
    smtp_port: Port = 1025
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_from: str = "SIMVEB <no-reply@simveb.bj>"
    sms_provider: Literal["http_json"] = "http_json"
    # `*_url` paths ("/sandbox/...") mean this server itself: resolved from server.host and server.port.
    sms_url: str = "/sandbox/sms"
    sms_api_key: str = ""
    sms_sender: str = "SIMVEB"
    fcm_url: str = "/sandbox/fcm"
    fcm_token_url: str = "/sandbox/fcm/token"
    fcm_project: str = "simveb-dev"
    # Service-account key (the JSON file's content). Empty in development: a throwaway RSA key is made.
    fcm_service_account: str = ""


class AuthSettings(Section):
    """Tokens, OTP, lockout, second factor, passwords (issue 4)."""

    access_ttl_s: Positive = 900
    refresh_ttl_s: Positive = 2_592_000
    # One-time codes: validity, wrong guesses allowed per code, wait before another code is sent.
    otp_ttl_s: Positive = 300
    otp_max_attempts: Positive = 5
    otp_resend_cooldown_s: NonNegative = 60
    # Abuse budgets of code requests (each may send an SMS): per client address per hour, per
    # identifier (phone, email, NPI) per day, and for the whole country per day; 0 = no budget.
    otp_budget_address_hour: NonNegative = 10
    otp_budget_identifier_day: NonNegative = 5
    otp_budget_total_day: NonNegative = 50_000
    challenge_ttl_s: Positive = 300
    # Brute force: failures per account within the window lock it.
    max_failures: Positive = 5
    failure_window_s: Positive = 900
    lockout_s: Positive = 900
    # Per client address a token bucket, never a lockout (one address may be a whole NAT): each
    # failed attempt takes a token, one comes back every address_refill_s, at most address_burst.
    address_burst: Positive = 50
    address_refill_s: PositiveFloat = 6.0
    # Wrong second-factor codes per account (counted on their own, across challenges) that lock the second factor.
    two_factor_max_failures: Positive = 5
    password_min_length: Positive = 12
    password_history: NonNegative = 5
    # Roles whose sessions get full permissions only after a second factor (TOTP) was proved.
    require_2fa_roles: list[str] = msgspec.field(default_factory=lambda: ["admin"])
    totp_issuer: str = "SIMVEB"
    # AES-GCM key (base64url, 32 bytes) sealing TOTP secrets at rest; set SIMVEB_AUTH__TOTP_KEY.
    # Empty: derived from security.signing_key when set, else generated into <data_dir>/keys.
    totp_key: str = ""
    recovery_codes: Positive = 10
    # Pepper of one-time code hashes; set SIMVEB_AUTH__CODE_SECRET. Empty: derived from the oldest signing key.
    code_secret: str = ""
    # Verifiers poll the deny list this often (cross-process revocation lag) and re-read keys on an unknown kid.
    deny_list_poll_s: PositiveFloat = 1.0
    # A refresh token presented again this soon after its exchange (a lost answer) gets the same new
    # pair again; later, a reuse revokes the whole session (a replay).
    refresh_reuse_grace_s: NonNegative = 10
    key_reload_s: PositiveFloat = 5.0


class UsersSettings(Section):
    """User service (issue 4)."""

    # Longest wait for ANIP (through integrations) during an NPI verification; an open breaker
    # answers at once, this only bounds a slow registry.
    registry_timeout_s: PositiveFloat = 8.0
    # An unconfirmed self-registration holds its NPI and phone this long; after it, a new
    # registration with the same NPI or phone releases it (so a typo or a squatter cannot block).
    pending_ttl_h: Positive = 24
    # Self-service NPI verifications allowed per account in the window (staff are not limited).
    npi_verify_max_attempts: Positive = 5
    npi_verify_window_h: Positive = 24


class VehiclesSettings(Section):
    """Vehicle registry: search, import, export (issue 5)."""

    # Rows per chunk of a streamed CSV export (one server-side cursor fetch each).
    export_batch_rows: Positive = 2000
    # An export whose client went away without closing it gives its connection back after this long.
    export_idle_timeout_s: PositiveFloat = 60.0
    # Where uploaded import files and their rejected-row reports are kept; empty = <data_dir>/imports.
    import_dir: str = ""
    import_max_bytes: Positive = 536_870_912
    # work_mem, temp_buffers and maintenance_work_mem of the import's own session.
    import_work_mem: str = "256MB"
    # Rows an import inserts per transaction: each batch commits alone, so locks and WAL stay short.
    import_batch_rows: Positive = 50_000
    # Longest wait of an import for a lock on the registry (a migration's) before it backs off (seconds).
    import_lock_timeout_s: PositiveFloat = 2.0


class RegistrationsSettings(Section):
    """Registrations (issue 9): due time per status, assignment, pages."""

    # Hours a request may stay in a status before supervisors see it overdue; statuses absent
    # here have no due time.
    due_hours: dict[str, PositiveFloat] = msgspec.field(
        default_factory=lambda: {
            "pending": 168.0,
            "waiting_for_payment": 72.0,
            "paid": 4.0,
            "assigned_to_staff": 48.0,
            "verified": 24.0,
            "pre_validated": 48.0,
            "validated": 24.0,
            "print_order_emitted": 48.0,
            "printed": 72.0,
        }
    )
    # The list of staff who verify (for assignment) is asked of users at most this often.
    staff_cache_s: PositiveFloat = 30.0
    # Plates of the sequence found on other vehicles of the registry (typed in by hand, imported)
    # that one validation skips before it gives up with a 409.
    plate_collision_retries: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 20


class DocumentsSettings(Section):
    """Uploads, storage, certificate rendering and signing (issue 11)."""

    # Where document bytes live: empty = local files under local_dir; s3://BUCKET[/prefix] = any
    # S3-compatible store (then s3_* below).
    storage_url: str = ""
    local_dir: str = ""
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    # Upload staging (the HTTP layer streams there before the actor stores it); empty = <data_dir>/documents/staging.
    staging_dir: str = ""
    # Bytes per chunk of a streamed download.
    chunk_bytes: Positive = 262_144
    # An abandoned download releases its stream after this long (seconds).
    download_idle_timeout_s: PositiveFloat = 60.0
    # Processes rendering and signing PDFs, so rendering never blocks the event loop.
    render_workers: Positive = 2
    # Ed25519 PEM signing certificate payloads (QR) and PDFs; set SIMVEB_DOCUMENTS__SIGNING_KEY.
    # Empty in development: generated into <data_dir>/keys/documents.
    signing_key: str = ""
    # X.509 certificate (PEM) of the signing key for the PDF signature; empty = self-signed from the key.
    signing_cert: str = ""
    # Sign the PDF itself (PAdES) as well as the QR payload.
    pades: bool = True
    # Base of the verification link printed in the QR code; empty = server.public_url + "/verify/".
    verify_base_url: str = ""


class PaymentsSettings(Section):
    """Mobile money providers (FedaPay, KKiaPay), webhooks, idempotency, reconciliation (issue 10)."""

    # FedaPay API base (`/v1/transactions` is appended); the built-in simulator in development.
    fedapay_url: str = "/sandbox/fedapay"
    # Secret API key (Bearer) and webhook signing secret; set them in the environment.
    fedapay_secret_key: str = ""
    fedapay_webhook_secret: str = ""
    # KKiaPay API base (`/api/v1/transactions/...` is appended), keys and the webhook shared secret.
    kkiapay_url: str = "/sandbox/kkiapay"
    kkiapay_public_key: str = ""
    kkiapay_private_key: str = ""
    kkiapay_secret: str = ""
    # How providers reach our webhooks (`/api/payments/webhooks/<provider>` is appended);
    # empty = server.public_url.
    callback_base_url: str = ""
    # A FedaPay webhook signed longer ago than this (or this far ahead) is refused (seconds).
    webhook_tolerance_s: Positive = 300
    provider_timeout_s: PositiveFloat = 10.0
    # Reconciliation re-verifies pending transactions older than this (seconds).
    reconcile_after_s: NonNegative = 300
    # Idempotency-Key answers are replayed for this long (hours).
    idempotency_ttl_h: Positive = 24

    def secret(self, name: str, *, production: bool) -> str:
        """The secret setting `name`; in development an empty one is a fixed sandbox value shared with the
        built-in simulators (production refuses empty secrets at start-up, see check_safety)."""
        value = getattr(self, name)
        return value if value or production else f"sandbox_{name}"

    def callback_base(self, server: ServerSettings) -> str:
        return (self.callback_base_url or server.public_url).rstrip("/")


PAYMENT_SECRETS = (
    "fedapay_secret_key",
    "fedapay_webhook_secret",
    "kkiapay_public_key",
    "kkiapay_private_key",
    "kkiapay_secret",
)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    bus: BusSettings = msgspec.field(default_factory=BusSettings)
    placement: PlacementSettings = msgspec.field(default_factory=PlacementSettings)
    security: SecuritySettings = msgspec.field(default_factory=SecuritySettings)
    ratelimit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    integrations: IntegrationsSettings = msgspec.field(default_factory=IntegrationsSettings)
    notifications: NotificationsSettings = msgspec.field(default_factory=NotificationsSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    users: UsersSettings = msgspec.field(default_factory=UsersSettings)
    vehicles: VehiclesSettings = msgspec.field(default_factory=VehiclesSettings)
    registrations: RegistrationsSettings = msgspec.field(default_factory=RegistrationsSettings)
    documents: DocumentsSettings = msgspec.field(default_factory=DocumentsSettings)
    payments: PaymentsSettings = msgspec.field(default_factory=PaymentsSettings)

    def __post_init__(self) -> None:
        # Provider URLs given as a path ("/sandbox/sms") follow the address this server listens on,
        # so `simveb serve --port 9000` reaches its own simulators without touching any other setting.
        origin = local_origin(self.server)
        for section, name, value in url_settings(self):
            if value.startswith("/"):
                setattr(getattr(self, section), name, origin + value)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir).expanduser().resolve()

    @property
    def is_production(self) -> bool:
        return self.server.env == "production"


class ConfigError(Exception):
    """A setting is missing, malformed or unsafe. The message is one line naming the key."""


ENV_PREFIX = "SIMVEB_"


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (explicit path, `SIMVEB_CONFIG`, or `./config.toml`), apply overrides, validate."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    chosen = path or environ.get("SIMVEB_CONFIG")
    if chosen is None and Path("config.toml").is_file():
        chosen = "config.toml"
    if chosen is not None:
        file = Path(chosen)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    _apply_env(raw, environ)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    check_safety(settings, environ)
    return settings


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    fields = {f.name: f.type for f in msgspec.structs.fields(Settings)}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        section_type = fields.get(section)
        if section_type is None:
            raise ConfigError(f"{name}: unknown settings section {section!r}")
        key_types = {f.name: f.type for f in msgspec.structs.fields(section_type)}
        if key not in key_types:
            raise ConfigError(f"{name}: unknown setting {section}.{key}")
        raw.setdefault(section, {})[key] = _parse_env_value(value, key_types[key])


def _parse_env_value(value: str, target: Any) -> Any:
    """Environment values are strings; lists may be JSON or comma-separated, the rest JSON-ish scalars."""
    if target is str or (isinstance(target, type) and issubclass(target, str)):
        return value
    origin = getattr(target, "__origin__", None)
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        if origin is list:
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


def _describe(exc: msgspec.ValidationError) -> str:
    message = str(exc)
    text, _, where = message.partition(" - at `$.")
    if where:
        key = where.rstrip("`")
        return f"invalid setting {key}: {text[0].lower() + text[1:]}"
    return f"invalid settings: {message}"


def local_origin(server: ServerSettings) -> str:
    """How this process reaches its own HTTP server: `http://host:port`, a wildcard address as loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{server.port}"


def url_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """Every `*_url` setting as (section, key, value)."""
    found = []
    for section in msgspec.structs.fields(settings):
        value = getattr(settings, section.name)
        for field in msgspec.structs.fields(value):
            item = getattr(value, field.name)
            if field.name.endswith("url") and isinstance(item, str):
                found.append((section.name, field.name, item))
    return found


def own_sandbox_urls(settings: Settings) -> list[str]:
    """`*_url` settings that point at this server's own /sandbox (resolved from a path, or written out)."""
    own = local_origin(settings.server) + "/sandbox"
    return [
        f"{section}.{name}"
        for section, name, value in url_settings(settings)
        if value == own or value.startswith(own + "/")
    ]


def check_providers_reachable(settings: Settings) -> None:
    """Refuse to start when a provider URL points at this server's /sandbox but the simulators are not
    mounted there (server.sandbox false): every call would answer 404, far from the cause."""
    if settings.server.sandbox:
        return
    pointing = own_sandbox_urls(settings)
    if pointing:
        raise ConfigError(
            f"{pointing[0]} points at this server's /sandbox, but server.sandbox is false so the simulators"
            " are not mounted: set server.sandbox = true, or give the provider's URL"
        )


def sandbox_urls(settings: Settings) -> list[str]:
    """Every `*_url` setting that points at the built-in simulators."""
    found = []
    for section in msgspec.structs.fields(settings):
        value = getattr(settings, section.name)
        for field in msgspec.structs.fields(value):
            item = getattr(value, field.name)
            if field.name.endswith("url") and isinstance(item, str) and "/sandbox" in item:
                found.append(f"{section.name}.{field.name}")
    return found


def check_safety(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Refuse settings that are fine on a laptop and dangerous in production."""
    if not settings.is_production:
        return
    if not settings.database.url and not settings.server.allow_embedded_db:
        raise ConfigError(
            "database.url: production needs a PostgreSQL URL (the embedded database is for development;"
            " set server.allow_embedded_db = true to override on purpose)"
        )
    if settings.server.sandbox:
        raise ConfigError("server.sandbox: production refuses the provider simulators (set it to false)")
    sandboxed = sandbox_urls(settings)
    if sandboxed:
        raise ConfigError(f"{sandboxed[0]}: production refuses a sandbox provider endpoint")
    if not settings.security.signing_key:
        raise ConfigError(
            "security.signing_key: production needs the Ed25519 signing key in SIMVEB_SECURITY__SIGNING_KEY"
        )
    if not settings.documents.signing_key:
        raise ConfigError(
            "documents.signing_key: production needs the Ed25519 document key in SIMVEB_DOCUMENTS__SIGNING_KEY"
        )

    for name in PAYMENT_SECRETS:
        if not getattr(settings.payments, name):
            raise ConfigError(f"payments.{name}: production needs it in SIMVEB_PAYMENTS__{name.upper()}")


def with_overrides(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy of settings with some keys replaced, e.g. with_overrides(s, server={"port": 0}).

    A URL that points at this server's own /sandbox keeps following the server: with a new host or
    port it points at the new address.
    """
    raw = msgspec.to_builtins(settings)
    own = local_origin(settings.server)
    for section, name in (key.split(".") for key in own_sandbox_urls(settings)):
        raw[section][name] = raw[section][name].removeprefix(own)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
