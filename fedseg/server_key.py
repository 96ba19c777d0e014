"""Reading the server's public key from what a person passes to ``--server-key``.

Accepted, inline or as a file: a PEM public key (what ``fedseg admin server-key``
prints and ``GET /api/v1/server/key`` returns), the raw 32-byte key in base64 (as
enrollment hands it out), the JSON of ``admin server-key --json`` or a site's
``server.json``, or the key's fingerprint. A fingerprint is not a key: it is
checked against the key the server publishes, so it needs the server (``fetch``).
A private key is refused: whoever holds it can sign bundles, so it must never be
copied to where bundles are only verified.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared import crypto
from shared.errors import FedsegError, IntegrityError, InvalidInput
from shared.schemas import ServerKey

WHERE_TO_GET = "run `fedseg admin server-key` (or GET /api/v1/server/key) for the public PEM"


def _read(spec: str) -> tuple[bytes, str]:
    path = Path(spec)
    if path.is_dir() and (path / "server.json").is_file():
        path = path / "server.json"
    try:
        if path.is_file():
            return path.read_bytes().strip(), f"--server-key file {path}"
    except OSError as exc:
        raise InvalidInput(f"cannot read --server-key file {path}: {exc.strerror}") from None
    return spec.encode().strip(), "--server-key value"


def _from_pem(text: bytes, what: str) -> Ed25519PublicKey:
    if b"PRIVATE KEY" in text:
        raise InvalidInput(
            f"{what} is a PRIVATE key; --server-key wants the server's public key "
            f"(never copy the private key): {WHERE_TO_GET}"
        )
    try:
        key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{what} is not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{what} is not an Ed25519 key")
    problem = crypto.ed25519_key_problem(crypto.public_bytes(key))
    if problem is not None:
        raise InvalidInput(f"{what} is not a usable Ed25519 key: {problem}")
    return key


def _from_raw(value: str, what: str) -> Ed25519PublicKey:
    try:
        return crypto.ed25519_public_from_bytes(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError, FedsegError):
        raise InvalidInput(f"{what} holds no 32-byte Ed25519 key in base64") from None


def _from_json(text: bytes, what: str) -> Ed25519PublicKey:
    try:
        document = json.loads(text)
    except ValueError:
        raise InvalidInput(f"{what} is not valid JSON") from None
    for field in ("public_key", "server_signing_key"):
        if isinstance(document, dict) and isinstance(document.get(field), str):
            return _from_raw(document[field], what)
    raise InvalidInput(f"{what} is JSON without a public_key or server_signing_key")


def key_from_server(fetch: Callable[[], ServerKey], fingerprint: str) -> Ed25519PublicKey:
    """The server's published key, accepted only if it has ``fingerprint``."""
    published = fetch()
    key = _from_raw(published.public_key, "the server's published key")
    if crypto.key_id(key) != published.key_id:
        raise IntegrityError("the server's published key does not match its own key id")
    if not crypto.same_fingerprint(fingerprint, crypto.fingerprint(key)):
        raise IntegrityError(
            f"the server's key fingerprint is {crypto.fingerprint(key)}, not the expected "
            f"{fingerprint}; refusing it",
            code="unknown_key",
        )
    return key


def load_server_key(spec: str, *, fetch: Callable[[], ServerKey] | None = None) -> Ed25519PublicKey:
    """The server's Ed25519 public key from ``spec`` (see the module docstring).

    ``fetch`` gets the server's published key; only a fingerprint needs it.
    """
    text, what = _read(spec)
    if text.startswith(b"-----BEGIN"):
        return _from_pem(text, what)
    if text.startswith(b"{"):
        return _from_json(text, what)
    digits = crypto.normal_fingerprint(text.decode(errors="replace"))
    if digits is not None:
        if fetch is None:
            raise InvalidInput(
                f"{what} is a fingerprint, which cannot verify anything offline; "
                f"pass the key itself: {WHERE_TO_GET}"
            )
        return key_from_server(fetch, digits)
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"{what} is neither a PEM public key, base64 key, JSON nor a fingerprint: "
            f"{WHERE_TO_GET}"
        ) from None
    return _from_raw(text.decode(), what)  # base64: a key, or a clear "not 32 bytes"
