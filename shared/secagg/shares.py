"""Shamir t-of-n shares of a site's two round secrets, each sealed to its holder.

Splitting uses pycryptodome's `Shamir` (GF(2^128), shares of 16-byte secrets): a
32-byte secret is split as two independent 16-byte halves with the same indices.
Fewer than t shares of a half reveal nothing about it.

A site's shares go to its neighbours and itself (`graph.holders`; the share index
is the holder's position there, from 1). Each is sealed with AES-256-GCM under a key
agreed between the sender's and the recipient's per-round *share* keys (X25519, then
HKDF-SHA256 over the round, the kind, the sender and the recipient), with the same
facts as associated data: only the sender could have made it, only the recipient can
open it, and a share replayed from another round, relabelled with another sender or
recipient, or presented as another kind of message does not open.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import Final, Literal

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared import crypto
from shared.errors import IntegrityError
from shared.schemas import canonical_json
from shared.secagg.keys import RoundContext

SECRET_SIZE: Final = 32
_HALF: Final = 16
SHARE_SIZE: Final = 2 * _HALF  # one share of a 32-byte secret: a share of each half
SHARE_CONTEXT: Final = b"fedseg/secagg/share/v1"
NONCE_SIZE: Final = 12
_INDEX = struct.Struct(">H")
_PLAIN_SIZE: Final = _INDEX.size + 2 * SHARE_SIZE

MessageKind = Literal["share"]


@dataclass(frozen=True, slots=True)
class Share:
    """One holder's share (``index`` from 1) of one 32-byte secret."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class HeldShares:
    """What a holder keeps of one sender: its shares of the mask key and of the seed."""

    mask_key: Share
    seed: Share


@dataclass(frozen=True, slots=True)
class SealedShare:
    """Ciphertext of `HeldShares` from ``sender`` to ``recipient``; the server relays it."""

    sender: str
    recipient: str
    ciphertext: bytes

    def size(self) -> int:
        """Bytes on the wire (names and ciphertext)."""
        return len(self.sender) + len(self.recipient) + len(self.ciphertext)


def split(secret: bytes, *, threshold: int, count: int) -> list[Share]:
    """Shamir-split a 32-byte secret into ``count`` shares; any ``threshold`` rebuild it."""
    if len(secret) != SECRET_SIZE:
        raise ValueError("secrets shared here are 32 bytes")
    if not 2 <= threshold <= count:
        raise ValueError(f"threshold {threshold} must be between 2 and the holders ({count})")
    low = Shamir.split(threshold, count, secret[:_HALF])
    high = Shamir.split(threshold, count, secret[_HALF:])
    return [
        Share(index=index, data=low_share + high_share)
        for (index, low_share), (_same, high_share) in zip(low, high, strict=True)
    ]


def combine(shares: list[Share], *, threshold: int) -> bytes:
    """Rebuild a secret from ``threshold`` distinct shares (extra ones are ignored).

    Fewer shares give no error from the maths, only a wrong secret: refuse them here.
    """
    distinct = {share.index: share for share in shares}
    if len(distinct) < threshold:
        raise ValueError(f"{len(distinct)} shares cannot rebuild a {threshold}-of-n secret")
    chosen = [distinct[index] for index in sorted(distinct)[:threshold]]
    low = Shamir.combine([(share.index, share.data[:_HALF]) for share in chosen])
    high = Shamir.combine([(share.index, share.data[_HALF:]) for share in chosen])
    return low + high


def _associated_data(
    context: RoundContext, kind: MessageKind, sender: str, recipient: str
) -> bytes:
    return canonical_json(
        {
            "run_id": context.run_id,
            "round": context.round,
            "kind": kind,
            "sender": sender,
            "recipient": recipient,
        }
    )


def _pair_cipher(own: X25519PrivateKey, peer_key: bytes, *, salt: bytes, info: bytes) -> AESGCM:
    """AES-GCM under a key only ``own``'s holder and ``peer_key``'s holder can derive."""
    secret = own.exchange(crypto.x25519_public_from_bytes(peer_key))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)
    return AESGCM(key)


def seal_shares(
    held: HeldShares,
    *,
    context: RoundContext,
    sender: str,
    recipient: str,
    sender_share_key: X25519PrivateKey,
    recipient_share_key: bytes,
    kind: MessageKind = "share",
) -> SealedShare:
    """Seal one holder's shares so that only ``recipient`` opens them, and knows who sent them."""
    data = _associated_data(context, kind, sender, recipient)
    cipher = _pair_cipher(
        sender_share_key,
        recipient_share_key,
        salt=crypto.public_bytes(sender_share_key.public_key()) + recipient_share_key,
        info=SHARE_CONTEXT + b"|" + data,
    )
    if held.mask_key.index != held.seed.index:
        raise ValueError("both shares of one holder carry the same index")
    plain = _INDEX.pack(held.mask_key.index) + held.mask_key.data + held.seed.data
    nonce = secrets.token_bytes(NONCE_SIZE)
    return SealedShare(
        sender=sender, recipient=recipient, ciphertext=nonce + cipher.encrypt(nonce, plain, data)
    )


def open_shares(
    sealed: SealedShare,
    *,
    context: RoundContext,
    recipient: str,
    recipient_share_key: X25519PrivateKey,
    sender_share_key: bytes,
    kind: MessageKind = "share",
) -> HeldShares:
    """Open shares sealed by `seal_shares`; raise `IntegrityError` if anything differs.

    ``sender_share_key`` comes from the sender's verified advert, never from the message.
    """
    if sealed.recipient != recipient:
        raise IntegrityError(
            f"share is addressed to {sealed.recipient}, not {recipient}", code="decryption_failed"
        )
    data = _associated_data(context, kind, sealed.sender, recipient)
    cipher = _pair_cipher(
        recipient_share_key,
        sender_share_key,
        salt=sender_share_key + crypto.public_bytes(recipient_share_key.public_key()),
        info=SHARE_CONTEXT + b"|" + data,
    )
    nonce, body = sealed.ciphertext[:NONCE_SIZE], sealed.ciphertext[NONCE_SIZE:]
    try:
        plain = cipher.decrypt(nonce, body, data)
    except (InvalidTag, ValueError):
        raise IntegrityError("sealed share does not open", code="decryption_failed") from None
    if len(plain) != _PLAIN_SIZE:
        raise IntegrityError("sealed share has the wrong length", code="malformed_envelope")
    (index,) = _INDEX.unpack_from(plain)
    body_start = _INDEX.size
    return HeldShares(
        mask_key=Share(index=index, data=plain[body_start : body_start + SHARE_SIZE]),
        seed=Share(index=index, data=plain[body_start + SHARE_SIZE :]),
    )
