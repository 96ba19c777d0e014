"""Client settings from the environment (prefix ``FEDSEG_``); command-line flags win."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """Where the server, the state directory and the data are, when flags do not say."""

    model_config = SettingsConfigDict(env_prefix="FEDSEG_", extra="ignore")

    server_url: str | None = None
    state_dir: Path | None = None
    data_dir: Path | None = None
    enroll_token: SecretStr | None = None
    ca_file: Path | None = None  # the server's CA, or its own certificate to pin
    tls_client_cert: Path | None = None  # the site's certificate, when the server asks
    tls_client_key: Path | None = None
