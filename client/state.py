"""The site's state directory: keys, the pinned server key, the credential, the ledger.

Layout (``STATE``)::

    keys/site_ed25519.pem          the site's signing key (0600)
    server.json                    server URL, pinned server key, its id and fingerprint,
                                   and the keys it replaced through verified rotations
    credentials.json               site name and bearer credential (0600)
    bundles/<run>/<version>.tar    downloaded model bundles (``.part`` while incomplete)
    ledger/<run>/<round:04d>/      what left the site in that round:
        header.json                  the update header (canonical JSON, as sealed)
        delta.safetensors            the plaintext delta
        digests.json                 sha256 of the delta and the envelope, clipping
        update.bin                   the sealed envelope exactly as sent
        receipt.json                 the server's receipt, once acknowledged
        dropped.json                 why the update was never accepted (closed round)
        decline.json                 the signed decline, when the site declined the round
        decline_receipt.json         the server's receipt of that decline
    privacy/policy.json            the site's privacy policy (`client.privacy.policy`)
    privacy/ledger.json            the site's ε ledger (`client.privacy.ledger`)

``update.bin`` is written last and atomically: its presence means the update for
that round is final, and a restart re-sends exactly those bytes. ``decline.json`` is
final the same way: a declined round is never trained later, and a restart re-sends
the same signed decline.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import crypto
from shared.errors import ConfigError
from shared.files import write_atomic

SITE_KEY: Final = Path("keys/site_ed25519.pem")
SERVER: Final = Path("server.json")
CREDENTIALS: Final = Path("credentials.json")


class RetiredKey(BaseModel):
    """A server key the site trusted before a verified rotation; valid only for older work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str
    signing_key: str
    retired_at: datetime


class ServerPin(BaseModel):
    """The server this site enrolled with, and the key it trusts for bundles and tasks.

    ``retired_keys`` are keys the server rotated away from (each step verified with
    the key before it): a bundle they signed before their retirement still opens;
    anything they sign afterwards is refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_url: str
    site: str
    server_signing_key: str
    server_key_id: str
    server_fingerprint: str
    retired_keys: list[RetiredKey] = Field(default_factory=list)

    def public_key(self) -> Ed25519PublicKey:
        """The pinned server key, checked against its stored id."""
        return _checked_key(self.server_signing_key, self.server_key_id)

    def retired(self) -> dict[str, tuple[Ed25519PublicKey, datetime]]:
        """The retired keys by id, with the time each was retired."""
        return {
            old.key_id: (_checked_key(old.signing_key, old.key_id), old.retired_at)
            for old in self.retired_keys
        }

    def rotated(self, new_key: Ed25519PublicKey, *, retired_at: datetime) -> ServerPin:
        """This pin moved to ``new_key`` (already verified), the current key retired."""
        retired = RetiredKey(
            key_id=self.server_key_id, signing_key=self.server_signing_key, retired_at=retired_at
        )
        return self.model_copy(
            update={
                "server_signing_key": base64.b64encode(crypto.public_bytes(new_key)).decode(),
                "server_key_id": crypto.key_id(new_key),
                "server_fingerprint": crypto.fingerprint(new_key),
                "retired_keys": [*self.retired_keys, retired],
            }
        )


def _checked_key(encoded: str, key_id: str) -> Ed25519PublicKey:
    key = crypto.ed25519_public_from_bytes(base64.b64decode(encoded))
    if crypto.key_id(key) != key_id:
        raise ConfigError("server.json is inconsistent: a key does not match its id")
    return key


class Credentials(BaseModel):
    """The site's bearer credential."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    credential: str


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """The files of one round's update."""

    folder: Path

    @property
    def header(self) -> Path:
        """The update header as sealed."""
        return self.folder / "header.json"

    @property
    def delta(self) -> Path:
        """The plaintext delta."""
        return self.folder / "delta.safetensors"

    @property
    def digests(self) -> Path:
        """Hashes of what was shared."""
        return self.folder / "digests.json"

    @property
    def update(self) -> Path:
        """The sealed envelope; written last, its presence makes the update final."""
        return self.folder / "update.bin"

    @property
    def receipt(self) -> Path:
        """The server's receipt."""
        return self.folder / "receipt.json"

    @property
    def dropped(self) -> Path:
        """Why a sealed update was never accepted."""
        return self.folder / "dropped.json"

    @property
    def decline(self) -> Path:
        """The signed decline of this round; written before it is sent, final once written."""
        return self.folder / "decline.json"

    @property
    def decline_receipt(self) -> Path:
        """The server's receipt of the decline."""
        return self.folder / "decline_receipt.json"

    @property
    def sealed(self) -> bool:
        """An update for this round is final (and must be re-sent byte for byte)."""
        return self.update.is_file()

    @property
    def settled(self) -> bool:
        """Acknowledged by the server, or dropped because its round closed."""
        return self.receipt.is_file() or self.dropped.is_file()


@dataclass(frozen=True, slots=True)
class StateDir:
    """Typed paths into a site's state directory."""

    root: Path

    @property
    def site_key_path(self) -> Path:
        """The site's Ed25519 signing key."""
        return self.root / SITE_KEY

    @property
    def server_path(self) -> Path:
        """The pinned server."""
        return self.root / SERVER

    @property
    def credentials_path(self) -> Path:
        """The bearer credential."""
        return self.root / CREDENTIALS

    def bundle_path(self, run_id: str, version: int) -> Path:
        """Where the bundle of ``version`` of a run is downloaded."""
        return self.root / "bundles" / _safe(run_id) / f"{version:04d}.tar"

    def ledger(self, run_id: str, round_number: int) -> LedgerEntry:
        """The ledger folder of one round."""
        return LedgerEntry(self.root / "ledger" / _safe(run_id) / f"{round_number:04d}")

    def ledger_entries(self) -> list[tuple[str, int, LedgerEntry]]:
        """Every ledger entry as (run id, round, entry), oldest round first."""
        out = []
        base = self.root / "ledger"
        if not base.is_dir():
            return []
        for run in sorted(p for p in base.iterdir() if p.is_dir()):
            for folder in sorted(p for p in run.iterdir() if p.is_dir() and p.name.isdigit()):
                out.append((run.name, int(folder.name), LedgerEntry(folder)))
        return out

    @property
    def enrolled(self) -> bool:
        """Whether enrollment finished (credential and pin both stored)."""
        return self.credentials_path.is_file() and self.server_path.is_file()

    def load_pin(self) -> ServerPin:
        """The pinned server; a clear error when the site has not enrolled."""
        return ServerPin.model_validate(self._read_json(self.server_path))

    def load_credentials(self) -> Credentials:
        """The stored credential; refuses a file others can read."""
        path = self.credentials_path
        if path.is_file() and path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others; run: chmod 600 {path}")
        return Credentials.model_validate(self._read_json(path))

    def load_site_key(self) -> Ed25519PrivateKey:
        """The site's signing key (mode 0600 enforced)."""
        return crypto.load_signing_key(self.site_key_path)

    def _read_json(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise ConfigError(
                f"{path} does not exist: enroll this site first "
                f"(fedseg client enroll --server URL --token T --state-dir {self.root})"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} does not hold a JSON object")
        return data

    def save_pin(self, pin: ServerPin) -> None:
        """Replace the pinned server key (after a verified rotation)."""
        write_atomic(self.server_path, pin.model_dump_json(indent=2).encode())

    def save_enrollment(self, pin: ServerPin, credentials: Credentials) -> None:
        """Store the pin (readable) and the credential (0600)."""
        write_atomic(self.server_path, pin.model_dump_json(indent=2).encode())
        crypto.write_secret_file(
            self.credentials_path, credentials.model_dump_json(indent=2).encode()
        )


def _safe(name: str) -> str:
    """A run id as a single path component (ids come from the server: never trust them)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if cleaned in {"", ".", ".."}:
        raise ConfigError(f"unusable run id {name!r}")
    return cleaned


def validate_model(model: type[BaseModel], data: bytes) -> BaseModel:
    """Parse JSON bytes into ``model``; a `ConfigError` on damage."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise ConfigError(f"stored {model.__name__} is invalid: {exc.errors()[0]['msg']}") from None
