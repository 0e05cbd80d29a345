"""The one typed configuration object of the server.

Read from a TOML file (documented key by key in ``config/mssante.example.toml``) and
overridden by ``MSSANTE_<SECTION>__<KEY>`` environment variables, e.g.
``MSSANTE_DATABASE__URL``. Unknown keys are an error rather than silently ignored: a
typo in a security setting must never fall back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# The MSSanté client-side suite list (Référentiel #2), as OpenSSL names.
MSSANTE_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256"
)
# TLS 1.3: the AES-GCM suites of OpenSSL's default list (no CHACHA20 unless configured).
TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"

Port = int


class ConfigError(Exception):
    """A configuration problem, with the dotted key it concerns."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_port(value: int) -> int:
    # 0 asks the operating system for a free port: used by tests, never in production.
    if not 0 <= value <= 65535:
        raise ValueError(f"port must be between 1 and 65535 (0 = any free port), got {value}")
    return value


class ServerSection(_Section):
    hostname: str = "mx.demo.mssante.fr"
    data_dir: Path = Path("data")
    domains: list[str] = Field(default_factory=lambda: ["demo.mssante.fr"])
    patient_domain: str = "patient.mssante.fr"
    shutdown_grace_seconds: float = 10.0
    # Processes serving the SMTP and IMAP ports together (SO_REUSEPORT: the kernel spreads new
    # connections over them), so that one machine's cores all serve; 1 = one process.
    workers: int = Field(default=1, ge=1, le=64)


class DatabaseSection(_Section):
    url: str = ""
    echo: bool = False
    pool_size: int = 5
    # PostgreSQL: executions of a statement on a connection before the server prepares it
    # (parsed and planned once); 0 prepares at once, -1 never (PgBouncer in transaction mode).
    prepare_threshold: int = Field(default=5, ge=-1)


class StorageSection(_Section):
    keyring: Path | None = None
    group_commit: bool = True
    max_batch: int = Field(default=256, ge=1, le=10_000)
    chunk_size: int = Field(default=64 * 1024, ge=4096, le=4 * 1024 * 1024)
    default_quota_mb: int = Field(default=2048, ge=0)


class KeysSection(_Section):
    """The key ring: a file kept apart from the database (another volume, a secrets mount)."""

    # Default: storage.keyring (its older name) if set, else <data_dir>/keyring.json.
    path: Path | None = None


class TLSSection(_Section):
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    max_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.3"
    ciphers: str = MSSANTE_CIPHERS
    # TLS 1.3 suites (OpenSSL names); CHACHA20 only if listed here.
    ciphersuites: str = TLS13_SUITES
    # TLS 1.3 session tickets sent after each full handshake (0: no resumption, TLS 1.2 tickets off).
    session_tickets: int = Field(default=2, ge=0, le=10)

    @model_validator(mode="after")
    def _versions_in_order(self) -> TLSSection:
        if self.min_version == "TLSv1.3" and self.max_version == "TLSv1.2":
            raise ValueError("max_version is below min_version")
        return self


class ListenerSection(_Section):
    host: str = "127.0.0.1"
    # Behind load balancers (HAProxy): connections from ``proxy_trusted`` (addresses or networks)
    # must start with a PROXY protocol header (v1 or v2) naming the real client; others are
    # served directly under their own address, and their headers are never believed.
    proxy_protocol: bool = False
    proxy_trusted: list[str] = Field(default_factory=list)

    @field_validator("proxy_trusted")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _trusted_needed(self) -> ListenerSection:
        if self.proxy_protocol and not self.proxy_trusted:
            raise ValueError("proxy_protocol = true needs proxy_trusted (the balancers' addresses)")
        return self


class SMTPSection(ListenerSection):
    submission_port: Port = 2587
    submissions_port: Port = 2465
    relay_port: Port = 2525
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    # A message larger than this is received into a file of <data_dir>/spool, not memory (0: never).
    spool_threshold: int = Field(default=1024 * 1024, ge=0)
    max_recipients: int = Field(default=100, ge=1, le=10_000)
    max_connections: int = Field(default=500, ge=1)
    max_connections_per_ip: int = Field(default=20, ge=1)
    timeout_seconds: float = Field(default=300.0, gt=0)
    # From the connection to AUTH on submission (to TLS on relay-in), whatever the client sends.
    login_timeout_seconds: float = Field(default=60.0, gt=0)
    # When submission answers 250: "delivered" once the message is in its mailboxes (a full
    # mailbox is refused while the client waits); "queued" once it is sealed in the node's
    # <data_dir>/queue.db and committed, delivered an instant later by a process of its own (a
    # full mailbox is then told by a delivery status notification). Relay-in stays "delivered".
    acknowledge: Literal["delivered", "queued"] = "delivered"

    _ports = field_validator("submission_port", "submissions_port", "relay_port")(_check_port)


class RelaySection(_Section):
    """Delivery to other operators of the trust space (the outbound queue's workers)."""

    enabled: bool = True
    # Static routes, domain → "host:port" (closed networks, tests); other domains use DNS MX.
    routes: dict[str, str] = Field(default_factory=dict)
    # Seconds to wait before each retry of a temporary failure; the last one repeats.
    retry_schedule: list[float] = Field(default=[60, 300, 900, 3600, 14400], min_length=1)
    # A message still undelivered after this long is returned to its sender (5 days).
    max_age_seconds: float = Field(default=5 * 24 * 3600, gt=0)
    # Warn the sender once when a message has waited this long (0: never).
    delay_warning_seconds: float = Field(default=4 * 3600, ge=0)
    poll_seconds: float = Field(default=5.0, gt=0)
    concurrency: int = Field(default=10, ge=1, le=500)
    lease_seconds: float = Field(default=300.0, gt=0)
    timeout_seconds: float = Field(default=60.0, gt=0)
    # Certificate presented to other operators (default: tls.cert_file / tls.key_file).
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: dict[str, str]) -> dict[str, str]:
        for domain, target in value.items():
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"route of {domain}: {target!r} is not host:port")
        return {d.lower(): t for d, t in value.items()}


class DKIMSection(_Section):
    # Per-domain keys <keys_dir>/<domain>.<selector>.key; default <data_dir>/dkim.
    keys_dir: Path | None = None
    selector: str = "mssante"
    reject_on_fail: bool = False
    # TXT records of other operators' keys, one file "<selector>._domainkey.<domain>.txt" each,
    # consulted before DNS (closed networks, tests).
    records_dir: Path | None = None


class IMAPSection(ListenerSection):
    port: Port = 1143
    tls_port: Port = 1993
    # Both IMAP ports together: in total and per client address (a clinic behind NAT counts once).
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_ip: int = Field(default=50, ge=1)
    # Before login: the largest literal (a LOGIN password, an ID value), the time to log in
    # from the connection on, the time to finish a command once begun, the invalid commands
    # tolerated.
    preauth_max_literal: int = Field(default=16 * 1024, ge=256, le=1024 * 1024)
    login_timeout_seconds: float = Field(default=60.0, gt=0)
    preauth_command_timeout_seconds: float = Field(default=15.0, gt=0)
    preauth_max_errors: int = Field(default=10, ge=1)
    # Once logged in: no command for this long ends the session (RFC 3501 §5.4: at least 30 min).
    idle_timeout_seconds: float = Field(default=1800.0, gt=0)

    _ports = field_validator("port", "tls_port")(_check_port)


class HTTPSection(ListenerSection):
    enabled: bool = True
    port: Port = 8443
    # Largest request body, in bytes (413 beyond, decided while reading).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024 * 1024 * 1024)

    _ports = field_validator("port")(_check_port)


class MetricsSection(_Section):
    """``/metrics`` on the HTTP listener (Prometheus exposition format, ``mssante.metrics``).

    Deny by default: a scrape is answered only from an address of ``allow`` or with the bearer
    ``token``; anyone else gets ``403``."""

    enabled: bool = True
    allow: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    token: str | None = Field(default=None, min_length=16)

    @field_validator("allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value


class LogSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


# -- [auth] (identities and authentication, mssante/auth/) ------------------------------------
class IssuerSection(_Section):
    """One trusted OIDC issuer whose JWT access tokens are checked offline."""

    kind: Literal["professional", "staff", "patient"] = "professional"
    issuer: str
    audience: list[str] = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_url: str | None = None
    # Pro Santé Connect puts the IdNat_PS in ``preferred_username`` (and ``SubjectNameID``).
    id_claim: str = "preferred_username"
    algorithms: list[Literal["RS256", "ES256"]] = Field(default=["RS256", "ES256"], min_length=1)

    @model_validator(mode="after")
    def _one_jwks_source(self) -> IssuerSection:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("exactly one of jwks_file and jwks_url must be set")
        return self


class BruteForceSection(_Section):
    """Counters per (login, client address) and per address (``mssante.auth.throttle``);
    the account itself is never locked."""

    window_seconds: float = Field(default=900.0, gt=0)
    free_failures: int = Field(default=3, ge=0)
    ip_free_failures: int = Field(default=10, ge=0)
    base_delay_seconds: float = Field(default=0.5, ge=0)
    max_delay_seconds: float = Field(default=15.0, ge=0)
    lockout_failures: int = Field(default=10, ge=1)
    ip_lockout_failures: int = Field(default=50, ge=1)
    lockout_seconds: float = Field(default=900.0, ge=0)


class CredentialCacheSection(_Section):
    """Verified passwords remembered in memory (``mssante.auth.credcache``); 0 disables."""

    ttl_seconds: float = Field(default=300.0, ge=0, le=3600)
    max_entries: int = Field(default=10_000, ge=0, le=1_000_000)


class AuthSection(_Section):
    mechanisms: list[Literal["EXTERNAL", "OAUTHBEARER", "XOAUTH2", "PLAIN"]] = Field(
        default=["EXTERNAL", "OAUTHBEARER", "XOAUTH2", "PLAIN"]
    )
    cleartext_on_loopback: bool = False
    clock_skew_seconds: float = Field(default=60.0, ge=0, le=600)
    max_response_bytes: int = Field(default=16 * 1024, ge=512, le=1024 * 1024)
    jwks_cache_seconds: float = Field(default=3600.0, ge=0)
    jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    demo_idp: bool = False
    issuers: dict[str, IssuerSection] = Field(default_factory=dict)
    bruteforce: BruteForceSection = Field(default_factory=BruteForceSection)
    credential_cache: CredentialCacheSection = Field(default_factory=CredentialCacheSection)
    # Password hashes (argon2id) are checked in their own pool of this many threads (0: half
    # the CPUs, at least 1); at most hash_queue checks wait, further logins get a temporary error.
    hash_workers: int = Field(default=0, ge=0, le=64)
    hash_queue: int = Field(default=256, ge=1, le=100_000)


# -- [notify] (events to patients and others, mssante/notify.py) ------------------------------
class NotifySection(_Section):
    """Where notification events go: a webhook (HMAC-SHA256 signed POST) or, unset, the log."""

    webhook_url: str | None = None
    secret: str | None = None
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_base_seconds: float = Field(default=1.0, ge=0)
    backoff_max_seconds: float = Field(default=300.0, ge=0)
    queue_size: int = Field(default=10_000, ge=1)
    # The e-mail channel (a patient's personal address, outside the trust space): an outbound
    # relay reserved for notices, since the trust-space relay never sends outside it.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_starttls: bool = True
    smtp_ca_file: Path | None = None
    smtp_from: str | None = None
    smtp_username: str | None = None
    smtp_password: str | None = None
    patient_url: str | None = None

    @model_validator(mode="after")
    def _secret_with_webhook(self) -> NotifySection:
        if self.webhook_url and not self.secret:
            raise ValueError("a webhook_url needs a secret (the HMAC-SHA256 key)")
        if self.webhook_url and not self.webhook_url.startswith(("https://", "http://")):
            raise ValueError("webhook_url must be an http(s) URL")
        if self.smtp_host and not self.smtp_from:
            raise ValueError("an smtp_host needs smtp_from (the notices' sender address)")
        if bool(self.smtp_username) != bool(self.smtp_password):
            raise ValueError("smtp_username and smtp_password go together")
        return self


# -- [dmp] (the DMP store, dmp/) ----------------------------------------------------------------
class DMPSection(_Section):
    """The DMP store: gateway address for XDM deposits, reference tables, unpacking bounds."""

    gateway_address: str = "dmp@demo.mssante.fr"
    config_dir: Path | None = None
    staff_profession: str = "54"
    max_package_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_file_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_files: int = Field(default=64, ge=1)
    max_ratio: int = Field(default=100, ge=1)
    # Accept the INS-NIR test (.10) and demo (.11) OIDs besides INS-NIR (.8) and INS-NIA (.9).
    test_ins_oids: bool = False


# -- [annuaire] and [whitelist] (lists fetched by the server on a schedule, annuaire/updates.py) --
class _ScheduledListSection(_Section):
    """A list the server downloads itself over HTTPS (empty ``url``: imported by hand only)."""

    # Certificate authorities that sign the source's HTTPS certificate (default: the system's).
    ca_file: Path | None = None
    max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    timeout_seconds: float = Field(default=120.0, gt=0)
    # Past this age without a successful fetch, every check logs a warning (and /health says so).
    stale_after_seconds: int = Field(default=3 * 86400, ge=60)


class AnnuaireSection(_ScheduledListSection):
    extraction_url: str = ""
    interval_seconds: int = Field(default=86400, ge=10)


class WhitelistSection(_ScheduledListSection):
    url: str = ""
    interval_seconds: int = Field(default=3600, ge=10)
    stale_after_seconds: int = Field(default=86400, ge=60)


# -- [web] (patient space and DMP web, mssante/web/) ------------------------------------------
class WebSection(_Section):
    """The pages under /patient/ and /pro/ on the HTTP listener."""

    session_minutes: int = Field(default=30, ge=1, le=24 * 60)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    dsfr_dir: Path | None = None
    # OpenID Connect login of the patient space (FranceConnect style: code flow with PKCE);
    # endpoints unset are read from <issuer>/.well-known/openid-configuration.
    patient_oidc_issuer: str | None = None
    patient_oidc_client_id: str | None = None
    patient_oidc_client_secret: str | None = None
    patient_oidc_authorization_endpoint: str | None = None
    patient_oidc_token_endpoint: str | None = None
    patient_oidc_jwks_uri: str | None = None
    patient_oidc_scope: str = "openid"
    patient_oidc_ins_claim: str = "sub"
    patient_oidc_label: str = "FranceConnect"

    @model_validator(mode="after")
    def _oidc_client(self) -> WebSection:
        if self.patient_oidc_issuer and not self.patient_oidc_client_id:
            raise ValueError("patient_oidc_issuer needs patient_oidc_client_id")
        for url in (self.patient_oidc_issuer, self.patient_oidc_authorization_endpoint,
                    self.patient_oidc_token_endpoint, self.patient_oidc_jwks_uri):  # fmt: skip
            if url and not url.startswith("https://"):
                raise ValueError(f"{url}: OpenID Connect endpoints must be https:// URLs")
        return self


class Settings(BaseSettings):
    """Effective configuration: TOML file, then ``MSSANTE_*`` environment on top."""

    model_config = SettingsConfigDict(
        env_prefix="MSSANTE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    server: ServerSection = Field(default_factory=ServerSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    keys: KeysSection = Field(default_factory=KeysSection)
    tls: TLSSection = Field(default_factory=TLSSection)
    smtp: SMTPSection = Field(default_factory=SMTPSection)
    imap: IMAPSection = Field(default_factory=IMAPSection)
    http: HTTPSection = Field(default_factory=HTTPSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    log: LogSection = Field(default_factory=LogSection)
    dkim: DKIMSection = Field(default_factory=DKIMSection)
    relay: RelaySection = Field(default_factory=RelaySection)
    auth: AuthSection = Field(default_factory=AuthSection)
    notify: NotifySection = Field(default_factory=NotifySection)
    dmp: DMPSection = Field(default_factory=DMPSection)
    web: WebSection = Field(default_factory=WebSection)
    annuaire: AnnuaireSection = Field(default_factory=AnnuaireSection)
    whitelist: WhitelistSection = Field(default_factory=WhitelistSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file (passed as init values), as operators expect.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        data = self.server.data_dir
        old, new = self.storage.keyring, self.keys.path
        if old is not None and new is not None and old != new:
            raise ValueError(
                f"keys.path ({new}) and storage.keyring ({old}, its older name) differ: keep keys.path only"
            )
        ring = new or old or data / "keyring.json"
        if self.keys.path != ring:
            self.keys.path = ring
        if self.storage.keyring != ring:
            self.storage.keyring = ring
        if self.dkim.keys_dir is None:
            self.dkim.keys_dir = data / "dkim"
        return self

    # Derived values -----------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def database_url(self) -> str:
        """The configured URL, or the embedded SQLite database in the data directory."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.server.data_dir / 'mssante.db').resolve()}"

    @property
    def keyring_path(self) -> Path:
        assert self.keys.path is not None
        return self.keys.path

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration with secrets in URLs masked, for display."""
        data = self.model_dump(mode="json")
        url = data["database"]["url"]
        if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
            scheme, rest = url.split("//", 1)
            creds, host = rest.split("@", 1)
            data["database"]["url"] = f"{scheme}//{creds.split(':', 1)[0]}:***@{host}"
        if data["metrics"]["token"]:
            data["metrics"]["token"] = "***"
        data["database"]["effective_url"] = (
            self.database_url if not self.database.url else data["database"]["url"]
        )
        return data


DEFAULT_CONFIG_ENV = "MSSANTE_CONFIG"


def _key_of(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(file)"


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load the configuration from ``path`` (or ``$MSSANTE_CONFIG``), raising ConfigError.

    ``overrides`` are dotted-free nested dicts applied on top of the file, used by the
    CLI (``--data-dir``) and by tests.
    """
    if path is None and os.environ.get(DEFAULT_CONFIG_ENV):
        path = Path(os.environ[DEFAULT_CONFIG_ENV])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("(file)", f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("(file)", f"{path} is not valid TOML: {exc}") from None
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = (
            "unknown key"
            if first["type"] == "extra_forbidden"
            else first["msg"].removeprefix("Value error, ")
        )
        raise ConfigError(_key_of(first["loc"]), problem) from None
    from mssante import audit

    # The audit key of this database lives in this key ring: read when first needed.
    audit.bind(settings.database_url, settings.keyring_path, from_config=True)
    return settings


def check_settings(settings: Settings) -> None:
    """Checks that need the file system: certificate files and the data directory."""
    for key in ("cert_file", "key_file", "ca_file"):
        value = getattr(settings.tls, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"tls.{key}", f"file {value} does not exist")
    for name, issuer in settings.auth.issuers.items():
        if issuer.jwks_file is not None and not Path(issuer.jwks_file).is_file():
            raise ConfigError(f"auth.issuers.{name}.jwks_file", f"file {issuer.jwks_file} does not exist")
    data_dir = settings.server.data_dir
    if data_dir.exists():
        if not data_dir.is_dir():
            raise ConfigError("server.data_dir", f"{data_dir} is not a directory")
        if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError("server.data_dir", f"{data_dir} is not readable and writable by this user")
    else:
        parent = data_dir.resolve().parent
        if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
            raise ConfigError("server.data_dir", f"{data_dir} does not exist and cannot be created")
