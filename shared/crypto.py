"""Small pure cryptographic functions: bytes in, bytes out, no global keys.

- Ed25519 for signatures (bundles, tasks, updates). Callers sign a sha256 digest,
  not a large payload: Ed25519 would hash a raw payload twice with SHA-512.
- Sealing to an X25519 public key: an ephemeral X25519 key agreement, HKDF-SHA256
  with a context string, then AES-256-GCM in 1 MiB chunks (a STREAM construction:
  the nonce holds a random prefix, the chunk index and a last-chunk flag), so a
  truncated, reordered or extended ciphertext fails to open, and large payloads
  stay fast. The caller's associated data is bound into every chunk.

Sealed layout: ``ephemeral_public(32) | nonce_prefix(7) | chunk_0 | ... | chunk_n``,
each chunk ``ciphertext || tag(16)`` of at most ``CHUNK_SIZE + 16`` bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import ConfigError, IntegrityError
from shared.files import write_atomic

CHUNK_SIZE: Final = 1 << 20
TAG_SIZE: Final = 16
NONCE_PREFIX_SIZE: Final = 7
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
SEAL_CONTEXT: Final = b"fedseg/seal/v1"
_HEADER_SIZE: Final = PUBLIC_KEY_SIZE + NONCE_PREFIX_SIZE


# --- Ed25519 -----------------------------------------------------------------------------


def generate_signing_key() -> Ed25519PrivateKey:
    """Make a new Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def sign(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Sign ``message`` (normally a sha256 digest); returns 64 bytes."""
    return private_key.sign(message)


def verify(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise `IntegrityError` unless ``signature`` is ``public_key``'s over ``message``."""
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise IntegrityError("signature does not verify", code="bad_signature") from None


def sha256(data: bytes) -> bytes:
    """Return the sha256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def domain_digest(domain: bytes, data: bytes) -> bytes:
    """sha256 of ``domain || 0x00 || data``: what gets signed, per kind of message.

    Separate domains keep a signature over one kind of message (a task, say) from
    being replayed as another (a bundle).
    """
    return hashlib.sha256(domain + b"\x00" + data).digest()


# --- key encoding and files --------------------------------------------------------------


def public_bytes(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    """Raw 32-byte encoding of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_public_from_bytes(raw: bytes) -> Ed25519PublicKey:
    """Parse a raw Ed25519 public key; raise `IntegrityError` when malformed or weak.

    Weak is `ed25519_key_problem`'s: a small-order or non-canonical point.
    """
    if len(raw) != PUBLIC_KEY_SIZE:
        raise IntegrityError("an Ed25519 public key is 32 bytes", code="malformed_envelope")
    problem = ed25519_key_problem(raw)
    if problem is not None:
        raise IntegrityError(f"unusable Ed25519 public key: {problem}", code="weak_key")
    return Ed25519PublicKey.from_public_bytes(raw)


def x25519_public_from_bytes(raw: bytes) -> X25519PublicKey:
    """Parse a raw X25519 public key; raise `IntegrityError` when malformed or low-order."""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise IntegrityError("an X25519 public key is 32 bytes", code="malformed_envelope")
    key = X25519PublicKey.from_public_bytes(raw)
    if x25519_key_problem(key) is not None:
        raise IntegrityError("unusable X25519 public key: low order", code="weak_key")
    return key


# --- weak keys -----------------------------------------------------------------------------
# A small-order Ed25519 key admits a universal forgery (R = identity, S = 0 verifies for
# every message under the identity key, and OpenSSL accepts it); a low-order X25519 key
# makes every shared secret zero. Both are refused wherever a key is parsed.

_P: Final = 2**255 - 19
_D: Final = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)


def _ed25519_decode(raw: bytes) -> tuple[int, int] | str:
    """The affine point ``raw`` encodes (RFC 8032 §5.1.3), or why it encodes none canonically."""
    value = int.from_bytes(raw, "little")
    sign, y = value >> 255, value & ((1 << 255) - 1)
    if y >= _P:
        return "non-canonical encoding (y >= p)"
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    if x2 == 0:
        return "non-canonical encoding (x = 0 with the sign bit set)" if sign else (0, y)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return "not a point on the curve"
    return (_P - x if (x & 1) != sign else x), y


def _ed25519_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """Affine addition on edwards25519 (complete: no special cases)."""
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def ed25519_key_problem(raw: bytes) -> str | None:
    """Why ``raw`` (32 bytes) is no safe Ed25519 public key, or None when it is one.

    Refused: encodings off the curve, non-canonical ones (y >= p, or a "negative"
    x = 0), and the eight points of small order (8·P is the identity), which
    include the identity itself.
    """
    if len(raw) != PUBLIC_KEY_SIZE:
        return "not 32 bytes"
    point = _ed25519_decode(raw)
    if isinstance(point, str):
        return point
    for _ in range(3):  # times the cofactor 8
        point = _ed25519_add(point, point)
    if point == (0, 1):
        return "a point of small order"
    return None


def x25519_key_problem(public_key: X25519PublicKey) -> str | None:
    """Why ``public_key`` is no safe X25519 key, or None when it is one.

    A low-order point (on the curve or its twist) gives the all-zero shared secret
    with every private key, since X25519 scalars are multiples of the cofactor:
    `cryptography` then raises, which is the test used here.
    """
    try:
        _x25519_probe().exchange(public_key)
    except ValueError:
        return "a point of low order (the shared secret would be zero)"
    return None


@functools.cache
def _x25519_probe() -> X25519PrivateKey:
    # any fixed scalar will do: clamping makes it a multiple of 8, which kills low order
    return X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def private_key_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a private key, unencrypted (the file mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def x25519_private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Parse a raw 32-byte X25519 private key."""
    return X25519PrivateKey.from_private_bytes(raw)


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte encoding of an X25519 private key."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte, atomically."""
    write_atomic(path, data, mode=0o600)


def save_signing_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Save an Ed25519 private key as PEM with mode 0600."""
    write_secret_file(path, private_key_pem(key))


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key saved by `save_signing_key`.

    Refuses a missing file, a key of another type, or a file others can read.
    """
    if not path.is_file():
        raise ConfigError(f"signing key {path} does not exist; create it first")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"signing key {path} is readable by others; run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} does not hold an Ed25519 private key")
    return key


# --- fingerprints ------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    """Stable identifier of a public key: hex sha256 of its raw bytes."""
    return hashlib.sha256(public_bytes(public_key)).hexdigest()


def fingerprint(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    """Readable fingerprint for pinning by eye: sha256 of the raw key in groups of four."""
    digest = key_id(public_key).upper()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """An Ed25519 public key as PEM (SubjectPublicKeyInfo), for people and files."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def normal_fingerprint(text: str) -> str | None:
    """A fingerprint as people type it, as 64 upper-case hex digits; None if malformed.

    Spaces, colons and case do not matter, so a pasted fingerprint is checked locally
    before anything is sent anywhere.
    """
    digits = "".join(ch for ch in text.upper() if ch not in " :\t-")
    if len(digits) != 64 or any(ch not in "0123456789ABCDEF" for ch in digits):
        return None
    return digits


def same_fingerprint(given: str, actual: str) -> bool:
    """Compare fingerprints as people type them: case, spaces and colons do not matter."""

    def normal(text: str) -> str:
        return "".join(ch for ch in text.upper() if ch not in " :\t")

    return normal(given) == normal(actual) and len(normal(actual)) == 64


# --- sealing -----------------------------------------------------------------------------


def generate_sealing_key() -> X25519PrivateKey:
    """Make a new X25519 key pair for receiving sealed payloads."""
    return X25519PrivateKey.generate()


def _derive_key(shared_secret: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral + recipient,
        info=SEAL_CONTEXT + b"|" + context,
    ).derive(shared_secret)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def seal(
    recipient: X25519PublicKey,
    plaintext: bytes,
    associated_data: bytes,
    *,
    context: bytes = b"",
) -> bytes:
    """Encrypt ``plaintext`` so that only ``recipient``'s private key opens it.

    ``associated_data`` is authenticated, not encrypted: opening with any other
    associated data fails. ``context`` separates uses (it enters the key derivation).
    """
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = public_bytes(ephemeral.public_key())
    key = _derive_key(
        ephemeral.exchange(recipient), ephemeral_raw, public_bytes(recipient), context
    )
    aead = AESGCM(key)
    prefix = secrets.token_bytes(NONCE_PREFIX_SIZE)
    view = memoryview(plaintext)
    parts = [ephemeral_raw, prefix]
    count = max(1, -(-len(plaintext) // CHUNK_SIZE))
    for index in range(count):
        chunk = view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
        parts.append(
            aead.encrypt(_nonce(prefix, index, index == count - 1), chunk, associated_data)
        )
    return b"".join(parts)


def unseal(
    private_key: X25519PrivateKey,
    sealed: bytes,
    associated_data: bytes,
    *,
    context: bytes = b"",
) -> bytes:
    """Open a payload made by `seal`; raise `IntegrityError` on any change to any byte.

    `unseal_stream` over the bytes in memory: one implementation of the checks.
    """
    reader = io.BytesIO(sealed)
    return bytes(
        unseal_stream(private_key, reader.read, len(sealed), associated_data, context=context)
    )


def unseal_stream(
    private_key: X25519PrivateKey,
    read: Callable[[int], bytes],
    length: int,
    associated_data: bytes,
    *,
    context: bytes = b"",
) -> bytearray:
    """Open a payload made by `seal` of ``length`` bytes, pulled through ``read``.

    Raises `IntegrityError`: ``truncated`` when the payload is too short to be one,
    ``decryption_failed`` on any change to any byte. The ciphertext is read chunk by chunk
    (``read`` is a file's ``read``), so memory holds the plaintext once and never
    the whole ciphertext. The result is a writable buffer arrays can view.
    """
    if length < _HEADER_SIZE + TAG_SIZE:
        raise IntegrityError("sealed payload is truncated", code="truncated")
    head = read(_HEADER_SIZE)
    if len(head) != _HEADER_SIZE:
        raise IntegrityError("sealed payload is truncated", code="truncated")
    ephemeral_raw, prefix = head[:PUBLIC_KEY_SIZE], head[PUBLIC_KEY_SIZE:]
    try:
        shared_secret = private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    except ValueError:
        raise IntegrityError("sealed payload does not open", code="decryption_failed") from None
    recipient_raw = public_bytes(private_key.public_key())
    aead = AESGCM(_derive_key(shared_secret, ephemeral_raw, recipient_raw, context))
    body_length = length - _HEADER_SIZE
    step = CHUNK_SIZE + TAG_SIZE
    count = max(1, -(-body_length // step))
    if body_length - count * TAG_SIZE < 0:
        raise IntegrityError("sealed payload does not open", code="decryption_failed")
    if body_length - (count - 1) * step < TAG_SIZE:  # a last chunk too short to hold a tag
        raise IntegrityError("sealed payload does not open", code="decryption_failed")
    out = bytearray(body_length - count * TAG_SIZE)
    view = memoryview(out)
    position = 0
    try:
        for index in range(count):
            expected = min(step, body_length - index * step)
            chunk = read(expected)
            if len(chunk) != expected:
                raise IntegrityError("sealed payload is truncated", code="truncated")
            plain = expected - TAG_SIZE
            # straight into the result: no plaintext copy per chunk
            aead.decrypt_into(
                _nonce(prefix, index, index == count - 1),
                chunk,
                associated_data,
                view[position : position + plain],
            )
            position += plain
    except InvalidTag:
        raise IntegrityError("sealed payload does not open", code="decryption_failed") from None
    return out
