"""The consistency check: every holder sees the same survivors before revealing anything.

A malicious server could tell some holders that site X dropped (and collect shares
of X's mask key) and others that X survived (and collect shares of X's seed): with t
of each it could strip every mask from X's input, although each holder alone revealed
one kind only. So, as in Bonawitz et al. (CCS 2017, round 3), each survivor signs the
request's survivor and dropout sets with its enrolled key, at most one set per round,
and a holder answers only a request carrying t valid signatures over the very sets it
is asked about. Two different sets would then need t honest signers each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared import crypto
from shared.errors import Conflict, IntegrityError
from shared.secagg.keys import RoundContext
from shared.secagg.messages import UnmaskRequest

SURVIVORS_DOMAIN: Final = b"fedseg/secagg/survivors/v1"


def survivors_digest(request: UnmaskRequest) -> bytes:
    """What a survivor signs: the round and both sets, never the signatures."""
    return crypto.domain_digest(SURVIVORS_DOMAIN, request.body())


def sign_survivors(
    request: UnmaskRequest,
    *,
    site: str,
    context: RoundContext,
    signing_key: Ed25519PrivateKey,
    signed: bytes | None,
) -> tuple[bytes, bytes]:
    """Sign the request's sets; returns the signature and the digest to persist as ``signed``.

    ``signed`` is the digest this site already signed this round, if any: signing
    another set is refused with ``secagg_refused`` (the same set again is fine).
    """
    if (request.run_id, request.round) != (context.run_id, context.round):
        raise Conflict("survivor list is for another round", code="secagg_refused")
    if site not in request.survivors or site in request.dropped:
        raise Conflict("survivor list says this site dropped out", code="secagg_refused")
    if request.survivors & request.dropped:
        raise Conflict("survivor list names a site both ways", code="secagg_refused")
    digest = survivors_digest(request)
    if signed is not None and signed != digest:
        raise Conflict(
            "this site already signed another survivor list this round", code="secagg_refused"
        )
    return crypto.sign(signing_key, digest), digest


def check_signed(
    request: UnmaskRequest, *, threshold: int, enrolled_keys: Mapping[str, Ed25519PublicKey]
) -> None:
    """Raise unless ``threshold`` distinct survivors signed exactly this request's sets.

    ``IntegrityError`` (``bad_signature``) on a signature that does not verify, ``Conflict``
    (``secagg_threshold``) when too few survivors signed.
    """
    digest = survivors_digest(request)
    signers: set[str] = set()
    for signer, signature in request.signatures:
        key = enrolled_keys.get(signer)
        if signer not in request.survivors or key is None:
            raise IntegrityError(f"{signer} is not a survivor who could sign", code="bad_signature")
        crypto.verify(key, signature, digest)
        signers.add(signer)
    if len(signers) < threshold:
        raise Conflict(
            f"only {len(signers)} survivors signed this survivor list; {threshold} must",
            code="secagg_threshold",
        )
