"""Server settings: typed, from ``FEDSEG_*`` environment variables, checked at start.

One class for the whole process. Paths derive from ``data_dir`` so that a single
directory holds the server's keys, database (SQLite by default) and blobs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

SIGNING_KEY_NAME = "server_ed25519.pem"


class Settings(BaseSettings):
    """Everything the coordination server reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="FEDSEG_", extra="ignore", frozen=True)

    data_dir: Path
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_update_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    max_wait_s: float = Field(default=30.0, ge=0, le=300)
    tick_s: float = Field(default=0.5, gt=0, le=60)
    verify_concurrency: int = Field(default=1, ge=1, le=64)
    site_offline_after_s: float = Field(
        default=120.0,
        gt=0,
        le=7 * 24 * 3600,
        description="a site silent (no poll) this long shows as offline",
    )
    build_models_in_subprocess: bool = Field(
        default=True,
        description="build initial weights in a child process, keeping torch out of the server",
    )
    # --- the HTTP edge (server/api/limits.py, server/api/gate.py, server/serving.py) ---
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="JSON bodies (every route but the upload)"
    )
    max_enroll_bytes: int = Field(default=8 * 1024, ge=512, description="POST /enroll bodies")
    auth_failure_limit: int = Field(
        default=20, ge=1, description="failed logins or enrollments per address per window"
    )
    auth_failure_window_s: float = Field(default=60.0, gt=0, le=86_400)
    rate_limit_addresses: int = Field(
        default=10_000, ge=1, description="addresses the failure counter remembers (memory bound)"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="a connection must send its headers within this"
    )
    keep_alive_s: int = Field(default=5, ge=1, le=600, description="idle keep-alive connections")
    max_header_bytes: int = Field(
        default=64 * 1024, ge=4096, description="request line and headers (h11 incomplete event)"
    )
    max_concurrency: int = Field(
        default=1000, ge=1, description="connections and tasks at once; beyond, uvicorn answers 503"
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain for HTTPS")
    tls_key: Path | None = Field(default=None, description="PEM private key for HTTPS (mode 0600)")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle: sites must present a certificate it issued"
    )
    tls_client_cert_required: bool = Field(
        default=True,
        description="with tls_client_ca: refuse connections without a client certificate "
        "(false: verify one when presented, e.g. to let probes and admins in without)",
    )
    trusted_proxies: str = Field(
        default="",
        description="comma-separated proxy addresses whose X-Forwarded-For names the client "
        "(the failure throttle keys on it); empty: the peer address, no header trusted",
    )

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            url = f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'fedseg.db'}"
            object.__setattr__(self, "database_url", url)
        return self

    @property
    def keys_dir(self) -> Path:
        """Directory of the server signing key and the open rounds' keys (0700)."""
        return self.data_dir / "keys"

    @property
    def signing_key_path(self) -> Path:
        """The server's Ed25519 key, PEM, mode 0600."""
        return self.keys_dir / SIGNING_KEY_NAME

    @property
    def rotations_path(self) -> Path:
        """Signed statements of every rotation of the signing key (public, served as is)."""
        return self.keys_dir / "rotations.json"

    @property
    def round_keys_dir(self) -> Path:
        """One X25519 key file per open round; deleted when the round ends."""
        return self.keys_dir / "rounds"

    @property
    def blob_dir(self) -> Path:
        """Content-addressed bundles and sealed updates."""
        return self.data_dir / "blobs"

    def check(self) -> None:
        """Refuse to start without an initialised data directory and a safe key file."""
        if not self.data_dir.is_dir():
            raise ConfigError(
                f"data directory {self.data_dir} does not exist; "
                f"run: fedseg server init --data-dir {self.data_dir}"
            )
        if not self.signing_key_path.is_file():
            raise ConfigError(
                f"server signing key {self.signing_key_path} is missing; "
                f"run: fedseg server init --data-dir {self.data_dir}"
            )
        if self.signing_key_path.stat().st_mode & 0o077:
            raise ConfigError(
                f"server signing key {self.signing_key_path} is readable by others; "
                f"run: chmod 600 {self.signing_key_path}"
            )
        self._check_tls()
        if not self.database_url.startswith(("sqlite+aiosqlite://", "postgresql+psycopg://")):
            raise ConfigError(
                "FEDSEG_DATABASE_URL must use sqlite+aiosqlite:// or postgresql+psycopg://"
            )

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together (FEDSEG_TLS_CERT/_KEY)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        # Others only: Kubernetes makes a mounted Secret group-readable for the pod's fsGroup.
        if self.tls_key is not None and self.tls_key.stat().st_mode & 0o007:
            raise ConfigError(
                f"TLS key {self.tls_key} is readable by others; run: chmod 600 {self.tls_key}"
            )
