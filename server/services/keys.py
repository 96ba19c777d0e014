"""Round keys: one X25519 private key file (0600) per open round, deleted at its end.

Sites seal their updates to the round's public key; once the round is closed the
private key goes, so stored sealed updates of closed rounds can no longer be opened.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared import crypto

_RUN_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class RoundKeys:
    """Files ``<dir>/<run_id>/<round>.x25519`` holding raw 32-byte private keys."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, run_id: str, number: int) -> Path:
        if not _RUN_ID.match(run_id):
            raise ValueError(f"unsafe run id {run_id!r}")
        return self.directory / run_id / f"{number}.x25519"

    def create(self, run_id: str, number: int) -> X25519PrivateKey:
        """Make, durably store and return a new round key."""
        key = crypto.generate_sealing_key()
        path = self._path(run_id, number)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        crypto.write_secret_file(path, crypto.x25519_private_bytes(key))
        return key

    def load(self, run_id: str, number: int) -> X25519PrivateKey | None:
        """The stored key of a round, or None when it is gone."""
        path = self._path(run_id, number)
        if not path.is_file():
            return None
        return crypto.x25519_private_from_bytes(path.read_bytes())

    def delete(self, run_id: str, number: int) -> None:
        """Forget a round's key for good."""
        self._path(run_id, number).unlink(missing_ok=True)

    def sweep(self, keep: set[tuple[str, int]]) -> None:
        """Delete every key file not in ``keep`` (left behind by a crash)."""
        for path in self.directory.glob("*/*.x25519"):
            stem = path.stem
            if not stem.isdigit() or (path.parent.name, int(stem)) not in keep:
                path.unlink(missing_ok=True)
