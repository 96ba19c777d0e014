"""Key adverts: signed with the enrolled key, so the relaying server cannot substitute a key."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import crypto
from shared.errors import IntegrityError
from shared.secagg.keys import (
    KeyAdvert,
    RoundContext,
    advertise,
    generate_round_keys,
    round_keys_bytes,
    round_keys_from_bytes,
    seed_commitment,
    verify_advert,
    verify_adverts,
)

CONTEXT = RoundContext(run_id="run-1", round=2)


def advert(signing_key: Ed25519PrivateKey) -> KeyAdvert:
    return advertise(generate_round_keys(), site="site-a", context=CONTEXT, signing_key=signing_key)


def test_round_keys_are_fresh_and_distinct() -> None:
    first, second = generate_round_keys(), generate_round_keys()
    assert first.seed != second.seed and len(first.seed) == 32
    raw = {
        crypto.x25519_private_bytes(k) for k in (first.mask, first.share, second.mask, second.share)
    }
    assert len(raw) == 4


def test_a_genuine_advert_verifies(signing_key: Ed25519PrivateKey) -> None:
    keys = generate_round_keys()
    made = advertise(keys, site="site-a", context=CONTEXT, signing_key=signing_key)
    verify_advert(made, site="site-a", context=CONTEXT, enrolled_key=signing_key.public_key())
    assert made.mask_key == crypto.public_bytes(keys.mask.public_key())
    assert made.seed_commitment == seed_commitment(keys.seed)
    assert 150 < made.size() < 400


@pytest.mark.parametrize("field", ["mask_key", "share_key", "seed_commitment"])
def test_a_substituted_key_is_refused(signing_key: Ed25519PrivateKey, field: str) -> None:
    made = advert(signing_key)
    server_key = crypto.public_bytes(crypto.generate_sealing_key().public_key())
    forged = dataclasses.replace(made, **{field: server_key})
    with pytest.raises(IntegrityError) as info:
        verify_advert(forged, site="site-a", context=CONTEXT, enrolled_key=signing_key.public_key())
    assert info.value.code == "bad_signature"


def test_an_advert_signed_by_another_key_is_refused(
    signing_key: Ed25519PrivateKey, other_signing_key: Ed25519PrivateKey
) -> None:
    made = advert(other_signing_key)  # the server signing an advert of its own making
    with pytest.raises(IntegrityError, match="signature does not verify"):
        verify_advert(made, site="site-a", context=CONTEXT, enrolled_key=signing_key.public_key())


def test_a_replayed_or_relabelled_advert_is_refused(signing_key: Ed25519PrivateKey) -> None:
    made = advert(signing_key)
    enrolled = signing_key.public_key()
    with pytest.raises(IntegrityError, match="expected site-a in run-1 round 3"):
        verify_advert(made, site="site-a", context=RoundContext("run-1", 3), enrolled_key=enrolled)
    with pytest.raises(IntegrityError, match="expected site-b"):
        verify_advert(made, site="site-b", context=CONTEXT, enrolled_key=enrolled)
    relabelled = dataclasses.replace(made, round=3)
    with pytest.raises(IntegrityError, match="signature does not verify"):
        verify_advert(
            relabelled, site="site-a", context=RoundContext("run-1", 3), enrolled_key=enrolled
        )


def test_one_key_for_both_uses_is_refused(signing_key: Ed25519PrivateKey) -> None:
    keys = generate_round_keys()
    same = dataclasses.replace(keys, share=keys.mask)
    made = advertise(same, site="site-a", context=CONTEXT, signing_key=signing_key)
    with pytest.raises(IntegrityError, match="one key for both"):
        verify_advert(made, site="site-a", context=CONTEXT, enrolled_key=signing_key.public_key())


def test_verify_adverts_checks_each_against_its_own_site(
    signing_key: Ed25519PrivateKey, other_signing_key: Ed25519PrivateKey
) -> None:
    made = advert(signing_key)
    verify_adverts(
        {"site-a": made}, context=CONTEXT, enrolled_keys={"site-a": signing_key.public_key()}
    )
    with pytest.raises(IntegrityError):
        verify_adverts(
            {"site-a": made},
            context=CONTEXT,
            enrolled_keys={"site-a": other_signing_key.public_key()},
        )
    with pytest.raises(IntegrityError, match="no enrolled key for site-a"):
        verify_adverts({"site-a": made}, context=CONTEXT, enrolled_keys={})


def test_round_keys_survive_a_restart_through_their_bytes(signing_key: Ed25519PrivateKey) -> None:
    keys = generate_round_keys()
    raw = round_keys_bytes(keys)
    assert len(raw) == 96
    again = round_keys_from_bytes(raw)
    assert advertise(again, site="site-a", context=CONTEXT, signing_key=signing_key) == advertise(
        keys, site="site-a", context=CONTEXT, signing_key=signing_key
    )
    with pytest.raises(IntegrityError, match="96 bytes"):
        round_keys_from_bytes(raw[:-1])
