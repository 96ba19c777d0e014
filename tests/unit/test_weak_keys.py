"""Weak public keys: small-order and non-canonical Ed25519 points, low-order X25519 points."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import crypto
from shared.errors import IntegrityError

P = 2**255 - 19

# The eight points of small order on edwards25519, canonically encoded: the identity
# (order 1), (0, -1) (order 2), the two points with y = 0 (order 4) and four of order 8.
SMALL_ORDER = [
    bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000080"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
]

# Non-canonical encodings: y >= p (with either sign bit), and x = 0 marked negative.
NON_CANONICAL = [
    (P).to_bytes(32, "little"),  # y = p: the identity's y, unreduced
    (P + 1).to_bytes(32, "little"),
    (2**255 - 1).to_bytes(32, "little"),
    ((P + 2) | 1 << 255).to_bytes(32, "little"),
    (1 | 1 << 255).to_bytes(32, "little"),  # the identity with the sign bit set
]


def test_the_eight_small_order_points_are_distinct_and_all_refused() -> None:
    assert len(set(SMALL_ORDER)) == 8
    for raw in SMALL_ORDER:
        assert crypto.ed25519_key_problem(raw) == "a point of small order", raw.hex()
        with pytest.raises(IntegrityError) as info:
            crypto.ed25519_public_from_bytes(raw)
        assert info.value.code == "weak_key"


def test_the_identity_key_really_admits_a_universal_forgery() -> None:
    """Why the check exists: OpenSSL verifies (R = identity, S = 0) for any message."""
    identity = Ed25519PublicKey.from_public_bytes(SMALL_ORDER[0])
    identity.verify(SMALL_ORDER[0] + bytes(32), b"any message at all")  # does not raise


@pytest.mark.parametrize("raw", NON_CANONICAL, ids=lambda raw: raw.hex()[-8:])
def test_non_canonical_encodings_are_refused(raw: bytes) -> None:
    problem = crypto.ed25519_key_problem(raw)
    assert problem is not None and "non-canonical" in problem
    with pytest.raises(IntegrityError):
        crypto.ed25519_public_from_bytes(raw)


def test_an_encoding_off_the_curve_is_refused() -> None:
    raw = (2).to_bytes(32, "little")  # y = 2 has no x on edwards25519
    assert crypto.ed25519_key_problem(raw) == "not a point on the curve"


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_real_keys_pass(_: int) -> None:
    key = crypto.generate_signing_key().public_key()
    raw = crypto.public_bytes(key)
    assert crypto.ed25519_key_problem(raw) is None
    assert crypto.public_bytes(crypto.ed25519_public_from_bytes(raw)) == raw


def test_a_wrong_length_is_a_problem() -> None:
    assert crypto.ed25519_key_problem(bytes(31)) == "not 32 bytes"


# --- X25519 ------------------------------------------------------------------------------

# u-coordinates of low order on Curve25519 and its twist, and their non-canonical forms.
LOW_ORDER_U = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
    P,
    P + 1,
]


@pytest.mark.parametrize("u", LOW_ORDER_U, ids=lambda u: hex(u)[-6:])
def test_low_order_x25519_keys_are_refused(u: int) -> None:
    raw = u.to_bytes(32, "little")
    public = X25519PublicKey.from_public_bytes(raw)
    # cryptography itself refuses the all-zero shared secret these give
    with pytest.raises(ValueError):
        X25519PrivateKey.generate().exchange(public)
    assert crypto.x25519_key_problem(public) is not None
    with pytest.raises(IntegrityError) as info:
        crypto.x25519_public_from_bytes(raw)
    assert info.value.code == "weak_key"


def test_real_x25519_keys_pass_and_seal() -> None:
    private = crypto.generate_sealing_key()
    raw = crypto.public_bytes(private.public_key())
    public = crypto.x25519_public_from_bytes(raw)
    sealed = crypto.seal(public, b"payload", b"ad")
    assert crypto.unseal(private, sealed, b"ad") == b"payload"


@pytest.mark.parametrize("u", LOW_ORDER_U[:4], ids=lambda u: hex(u)[-6:])
def test_a_sealed_payload_with_a_low_order_ephemeral_does_not_open(u: int) -> None:
    private = crypto.generate_sealing_key()
    sealed = crypto.seal(private.public_key(), b"payload", b"ad")
    forged = u.to_bytes(32, "little") + sealed[crypto.PUBLIC_KEY_SIZE :]
    with pytest.raises(IntegrityError) as info:
        crypto.unseal(private, forged, b"ad")
    assert info.value.code == "decryption_failed"
