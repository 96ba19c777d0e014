"""Shamir shares of 32-byte secrets, and their sealing: only the recipient opens, replays fail."""

from __future__ import annotations

import dataclasses
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import crypto
from shared.errors import IntegrityError
from shared.secagg.keys import RoundContext
from shared.secagg.shares import (
    HeldShares,
    SealedShare,
    Share,
    combine,
    open_shares,
    seal_shares,
    split,
)

CONTEXT = RoundContext(run_id="run-1", round=4)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    count=st.integers(min_value=2, max_value=20),
    data=st.data(),
)
def test_any_threshold_shares_rebuild_the_secret(
    secret: bytes, count: int, data: st.DataObject
) -> None:
    threshold = data.draw(st.integers(min_value=2, max_value=count))
    shares = split(secret, threshold=threshold, count=count)
    assert [share.index for share in shares] == list(range(1, count + 1))
    chosen = data.draw(st.permutations(shares))[: data.draw(st.integers(threshold, count))]
    assert combine(list(chosen), threshold=threshold) == secret


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), count=st.integers(min_value=3, max_value=12))
def test_fewer_than_threshold_shares_are_refused_and_would_not_rebuild(
    secret: bytes, count: int
) -> None:
    threshold = count  # the hardest case: t - 1 = n - 1 shares
    shares = split(secret, threshold=threshold, count=count)
    with pytest.raises(ValueError, match="cannot rebuild"):
        combine(shares[:-1], threshold=threshold)
    # forcing the maths with t - 1 shares gives some other secret, not this one
    assert combine(shares[:-1], threshold=threshold - 1) != secret


def test_shares_of_the_same_secret_differ_every_time() -> None:
    secret = secrets.token_bytes(32)
    assert split(secret, threshold=2, count=3) != split(secret, threshold=2, count=3)


def test_split_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        split(b"short", threshold=2, count=3)
    with pytest.raises(ValueError, match="between 2"):
        split(bytes(32), threshold=4, count=3)
    with pytest.raises(ValueError, match="between 2"):
        split(bytes(32), threshold=1, count=3)


@pytest.fixture
def parties() -> dict[str, object]:
    return {name: crypto.generate_sealing_key() for name in ("alice", "bob", "carol")}


def held() -> HeldShares:
    return HeldShares(
        mask_key=Share(2, secrets.token_bytes(32)), seed=Share(2, secrets.token_bytes(32))
    )


def sealed_from_alice_to_bob(parties: dict, shares: HeldShares) -> SealedShare:
    return seal_shares(
        shares,
        context=CONTEXT,
        sender="alice",
        recipient="bob",
        sender_share_key=parties["alice"],
        recipient_share_key=crypto.public_bytes(parties["bob"].public_key()),
    )


def open_as(
    parties: dict, sealed: SealedShare, *, recipient: str = "bob", sender: str = "alice", **kw
) -> HeldShares:
    return open_shares(
        sealed,
        context=kw.pop("context", CONTEXT),
        recipient=recipient,
        recipient_share_key=parties[recipient],
        sender_share_key=crypto.public_bytes(parties[sender].public_key()),
        **kw,
    )


def test_the_recipient_opens_its_shares(parties: dict) -> None:
    shares = held()
    sealed = sealed_from_alice_to_bob(parties, shares)
    assert open_as(parties, sealed) == shares
    assert shares.seed.data not in sealed.ciphertext
    assert sealed.size() < 120


def refused(call) -> str:
    with pytest.raises(IntegrityError) as info:
        call()
    return info.value.code


def test_a_replayed_share_from_another_round_is_refused(parties: dict) -> None:
    sealed = sealed_from_alice_to_bob(parties, held())
    assert (
        refused(lambda: open_as(parties, sealed, context=RoundContext("run-1", 5)))
        == "decryption_failed"
    )
    assert (
        refused(lambda: open_as(parties, sealed, context=RoundContext("run-2", 4)))
        == "decryption_failed"
    )


def test_a_share_relabelled_with_another_sender_or_recipient_is_refused(parties: dict) -> None:
    sealed = sealed_from_alice_to_bob(parties, held())
    as_carol = dataclasses.replace(sealed, sender="carol")
    assert refused(lambda: open_as(parties, as_carol, sender="carol")) == "decryption_failed"
    # reordered: the server hands bob's share to carol
    to_carol = dataclasses.replace(sealed, recipient="carol")
    assert refused(lambda: open_as(parties, to_carol, recipient="carol")) == "decryption_failed"
    assert refused(lambda: open_as(parties, sealed, recipient="carol")) == "decryption_failed"


def test_a_share_made_by_someone_else_does_not_pass_as_the_senders(parties: dict) -> None:
    forger = crypto.generate_sealing_key()  # the server, say, sealing with a key of its own
    forged = seal_shares(
        held(),
        context=CONTEXT,
        sender="alice",
        recipient="bob",
        sender_share_key=forger,
        recipient_share_key=crypto.public_bytes(parties["bob"].public_key()),
    )
    assert refused(lambda: open_as(parties, forged)) == "decryption_failed"


def test_a_share_presented_as_another_kind_of_message_is_refused(parties: dict) -> None:
    sealed = sealed_from_alice_to_bob(parties, held())
    assert refused(lambda: open_as(parties, sealed, kind="unmask")) == "decryption_failed"


def test_any_changed_byte_is_refused(parties: dict) -> None:
    sealed = sealed_from_alice_to_bob(parties, held())
    for position in (0, 12, len(sealed.ciphertext) - 1):
        changed = bytearray(sealed.ciphertext)
        changed[position] ^= 1
        tampered = dataclasses.replace(sealed, ciphertext=bytes(changed))
        assert refused(lambda t=tampered: open_as(parties, t)) == "decryption_failed"
    truncated = dataclasses.replace(sealed, ciphertext=sealed.ciphertext[:10])
    assert refused(lambda: open_as(parties, truncated)) == "decryption_failed"
