"""Per-round key pairs and their signed advertisements.

Each site makes two fresh X25519 key pairs per round: the *mask* key agrees a
pairwise mask seed with each neighbour, the *share* key receives the neighbours'
sealed shares. It advertises both public keys signed with its enrolled Ed25519 key
over the run, the round and its own name, so the server, which relays adverts,
cannot substitute a key of its own (it could then unmask) nor replay last round's.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared import crypto
from shared.errors import IntegrityError
from shared.schemas import canonical_json

ADVERT_DOMAIN: Final = b"fedseg/secagg/advert/v1"
SEED_DOMAIN: Final = b"fedseg/secagg/seed/v1"
SEED_SIZE: Final = 32


@dataclass(frozen=True, slots=True)
class RoundContext:
    """What binds every protocol message to one round of one run."""

    run_id: str
    round: int

    def label(self) -> bytes:
        """Unambiguous bytes naming the round, for key derivation and associated data."""
        return canonical_json({"run_id": self.run_id, "round": self.round})


@dataclass(frozen=True, slots=True)
class RoundKeys:
    """A site's secrets for one round; they leave the site only as Shamir shares.

    ``seed`` is the 256-bit self-mask seed; the advert commits to it, so a wrong
    reconstruction is caught.
    """

    mask: X25519PrivateKey
    share: X25519PrivateKey
    seed: bytes


@dataclass(frozen=True, slots=True)
class KeyAdvert:
    """A site's two public keys for one round, signed with its enrolled key."""

    site: str
    run_id: str
    round: int
    mask_key: bytes
    share_key: bytes
    seed_commitment: bytes
    signature: bytes

    def size(self) -> int:
        """Bytes on the wire (signed body and signature)."""
        return len(_advert_body(self)) + len(self.signature)


def generate_round_keys() -> RoundKeys:
    """Fresh key pairs and self-mask seed for one round, from the OS CSPRNG."""
    return RoundKeys(
        mask=crypto.generate_sealing_key(),
        share=crypto.generate_sealing_key(),
        seed=secrets.token_bytes(SEED_SIZE),
    )


def round_keys_bytes(keys: RoundKeys) -> bytes:
    """The site's round secrets as 96 bytes, for its state file (mode 0600, atomic).

    The agent persists them before it advertises, so a restart resumes the round
    with the keys its peers already hold, and deletes them when the round closes.
    """
    return (
        crypto.x25519_private_bytes(keys.mask) + crypto.x25519_private_bytes(keys.share) + keys.seed
    )


def round_keys_from_bytes(raw: bytes) -> RoundKeys:
    """Inverse of `round_keys_bytes`; refuses anything but 96 bytes."""
    if len(raw) != 3 * SEED_SIZE:
        raise IntegrityError("round keys are 96 bytes", code="malformed_envelope")
    return RoundKeys(
        mask=crypto.x25519_private_from_bytes(raw[:SEED_SIZE]),
        share=crypto.x25519_private_from_bytes(raw[SEED_SIZE : 2 * SEED_SIZE]),
        seed=raw[2 * SEED_SIZE :],
    )


def seed_commitment(seed: bytes) -> bytes:
    """sha256 commitment to a self-mask seed: hides a 256-bit random seed, binds it."""
    return crypto.domain_digest(SEED_DOMAIN, seed)


def _advert_body(advert: KeyAdvert) -> bytes:
    return canonical_json(
        {
            "site": advert.site,
            "run_id": advert.run_id,
            "round": advert.round,
            "mask_key": base64.b64encode(advert.mask_key).decode(),
            "share_key": base64.b64encode(advert.share_key).decode(),
            "seed_commitment": base64.b64encode(advert.seed_commitment).decode(),
        }
    )


def advertise(
    keys: RoundKeys, *, site: str, context: RoundContext, signing_key: Ed25519PrivateKey
) -> KeyAdvert:
    """Sign ``keys``' public halves for this round with the site's enrolled key."""
    unsigned = KeyAdvert(
        site=site,
        run_id=context.run_id,
        round=context.round,
        mask_key=crypto.public_bytes(keys.mask.public_key()),
        share_key=crypto.public_bytes(keys.share.public_key()),
        seed_commitment=seed_commitment(keys.seed),
        signature=b"",
    )
    digest = crypto.domain_digest(ADVERT_DOMAIN, _advert_body(unsigned))
    return KeyAdvert(
        site=unsigned.site,
        run_id=unsigned.run_id,
        round=unsigned.round,
        mask_key=unsigned.mask_key,
        share_key=unsigned.share_key,
        seed_commitment=unsigned.seed_commitment,
        signature=crypto.sign(signing_key, digest),
    )


def verify_advert(
    advert: KeyAdvert, *, site: str, context: RoundContext, enrolled_key: Ed25519PublicKey
) -> None:
    """Raise `IntegrityError` unless ``site``'s enrolled key signed ``advert`` for this round.

    Checks the claimed site, run and round before the signature, so an advert
    replayed from another round or relabelled for another site is refused.
    """
    if (advert.site, advert.run_id, advert.round) != (site, context.run_id, context.round):
        raise IntegrityError(
            f"key advert is for {advert.site} in {advert.run_id} round {advert.round}, "
            f"expected {site} in {context.run_id} round {context.round}",
            code="bad_signature",
        )
    crypto.x25519_public_from_bytes(advert.mask_key)
    crypto.x25519_public_from_bytes(advert.share_key)
    if len(advert.seed_commitment) != SEED_SIZE:
        raise IntegrityError("a seed commitment is 32 bytes", code="malformed_envelope")
    if advert.mask_key == advert.share_key:
        raise IntegrityError("key advert reuses one key for both uses", code="malformed_envelope")
    crypto.verify(
        enrolled_key, advert.signature, crypto.domain_digest(ADVERT_DOMAIN, _advert_body(advert))
    )


def verify_adverts(
    adverts: dict[str, KeyAdvert],
    *,
    context: RoundContext,
    enrolled_keys: dict[str, Ed25519PublicKey],
) -> None:
    """`verify_advert` for every advert, each against the enrolled key of the site it names."""
    for site, advert in adverts.items():
        key = enrolled_keys.get(site)
        if key is None:
            raise IntegrityError(f"no enrolled key for {site}", code="bad_signature")
        verify_advert(advert, site=site, context=context, enrolled_key=key)
