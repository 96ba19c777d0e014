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
        if not self.database_url.startswith(("sqlite+aiosqlite://", "postgresql+psycopg://")):
            raise ConfigError(
                "FEDSEG_DATABASE_URL must use sqlite+aiosqlite:// or postgresql+psycopg://"
            )
