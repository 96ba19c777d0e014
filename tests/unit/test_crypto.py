from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import crypto
from shared.errors import ConfigError, IntegrityError

AD = b'{"run":"r","round":1}'
HEADER = crypto.PUBLIC_KEY_SIZE + crypto.NONCE_PREFIX_SIZE
SMALL_CHUNK = 64
STEP = SMALL_CHUNK + crypto.TAG_SIZE


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "CHUNK_SIZE", SMALL_CHUNK)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


# --- signatures --------------------------------------------------------------------------


def test_sign_and_verify(signing_key: Ed25519PrivateKey, other_signing_key: Ed25519PrivateKey):
    digest = crypto.sha256(b"payload")
    signature = crypto.sign(signing_key, digest)
    assert len(signature) == crypto.SIGNATURE_SIZE
    crypto.verify(signing_key.public_key(), signature, digest)
    with pytest.raises(IntegrityError) as info:
        crypto.verify(other_signing_key.public_key(), signature, digest)
    assert info.value.code == "bad_signature"
    with pytest.raises(IntegrityError):
        crypto.verify(signing_key.public_key(), signature, crypto.sha256(b"payloaD"))
    with pytest.raises(IntegrityError):
        crypto.verify(signing_key.public_key(), flip(signature, 10), digest)


def test_domain_digests_separate_kinds_of_message() -> None:
    assert crypto.domain_digest(b"a", b"x") != crypto.domain_digest(b"b", b"x")
    assert crypto.domain_digest(b"a", b"x") != crypto.sha256(b"x")
    assert crypto.domain_digest(b"a", b"x") == crypto.domain_digest(b"a", b"x")


def test_public_keys_round_trip_through_raw_bytes(
    signing_key: Ed25519PrivateKey, sealing_key: X25519PrivateKey
) -> None:
    raw = crypto.public_bytes(signing_key.public_key())
    assert len(raw) == 32
    assert crypto.public_bytes(crypto.ed25519_public_from_bytes(raw)) == raw
    raw_x = crypto.public_bytes(sealing_key.public_key())
    assert crypto.public_bytes(crypto.x25519_public_from_bytes(raw_x)) == raw_x
    private = crypto.x25519_private_bytes(sealing_key)
    assert crypto.x25519_private_bytes(crypto.x25519_private_from_bytes(private)) == private
    for parse in (crypto.ed25519_public_from_bytes, crypto.x25519_public_from_bytes):
        with pytest.raises(IntegrityError):
            parse(raw[:31])


# --- key files and fingerprints ----------------------------------------------------------


def test_saved_key_has_mode_0600_and_loads(tmp_path: Path, signing_key: Ed25519PrivateKey):
    path = tmp_path / "keys" / "server.pem"
    crypto.save_signing_key(signing_key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = crypto.load_signing_key(path)
    assert crypto.key_id(loaded.public_key()) == crypto.key_id(signing_key.public_key())
    assert [p.name for p in path.parent.iterdir()] == ["server.pem"]  # no temp file left


def test_saving_over_a_readable_file_tightens_its_mode(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "server.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    crypto.save_signing_key(signing_key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_readable_by_others_is_refused(
    tmp_path: Path, signing_key: Ed25519PrivateKey, mode: int
) -> None:
    path = tmp_path / "server.pem"
    crypto.save_signing_key(signing_key, path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        crypto.load_signing_key(path)
    assert info.value.code == "config_invalid"


def test_missing_garbage_and_wrong_type_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        crypto.load_signing_key(tmp_path / "absent.pem")
    garbage = tmp_path / "garbage.pem"
    crypto.write_secret_file(garbage, b"not a key")
    with pytest.raises(ConfigError):
        crypto.load_signing_key(garbage)
    x25519 = tmp_path / "x25519.pem"
    crypto.write_secret_file(x25519, crypto.private_key_pem(crypto.generate_sealing_key()))
    with pytest.raises(ConfigError, match="Ed25519"):
        crypto.load_signing_key(x25519)


def test_fingerprint_format(signing_key: Ed25519PrivateKey) -> None:
    public = signing_key.public_key()
    key_id = crypto.key_id(public)
    assert re.fullmatch(r"[0-9a-f]{64}", key_id)
    assert bytes.fromhex(key_id) == crypto.sha256(crypto.public_bytes(public))
    fingerprint = crypto.fingerprint(public)
    assert re.fullmatch(r"([0-9A-F]{4} ){15}[0-9A-F]{4}", fingerprint)
    assert fingerprint.replace(" ", "").lower() == key_id
    other = crypto.generate_signing_key().public_key()
    assert crypto.fingerprint(other) != fingerprint


# --- sealing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 2 * SMALL_CHUNK, 5 * SMALL_CHUNK + 7],
)
def test_seal_round_trip_over_chunk_boundaries(
    small_chunks: None, sealing_key: X25519PrivateKey, size: int
) -> None:
    plaintext = bytes(range(256)) * (size // 256 + 1)
    plaintext = plaintext[:size]
    sealed = crypto.seal(sealing_key.public_key(), plaintext, AD)
    chunks = max(1, -(-size // SMALL_CHUNK))
    assert len(sealed) == HEADER + size + chunks * crypto.TAG_SIZE
    assert plaintext == crypto.unseal(sealing_key, sealed, AD)
    if size >= 16:
        assert plaintext[:16] not in sealed


@pytest.mark.parametrize("size", [0, 1000, 1 << 20, (1 << 20) + 1])
def test_seal_round_trip_with_the_real_chunk_size(sealing_key: X25519PrivateKey, size: int):
    plaintext = b"\xa5" * size
    sealed = crypto.seal(sealing_key.public_key(), plaintext, AD, context=b"ctx")
    assert crypto.unseal(sealing_key, sealed, AD, context=b"ctx") == plaintext


def test_each_seal_is_fresh(sealing_key: X25519PrivateKey) -> None:
    one = crypto.seal(sealing_key.public_key(), b"same", AD)
    two = crypto.seal(sealing_key.public_key(), b"same", AD)
    assert one[:HEADER] != two[:HEADER]
    assert one != two


def sealed_in_chunks(key: X25519PrivateKey, chunks: int = 3) -> tuple[bytes, bytes]:
    plaintext = bytes(i % 251 for i in range(chunks * SMALL_CHUNK - 5))
    return plaintext, crypto.seal(key.public_key(), plaintext, AD)


def assert_does_not_open(key: X25519PrivateKey, sealed: bytes, ad: bytes = AD, **kw) -> str:
    with pytest.raises(IntegrityError) as info:
        crypto.unseal(key, sealed, ad, **kw)
    assert info.value.code in {"decryption_failed", "truncated"}
    return info.value.code


TAMPERED_POSITIONS = {
    "ephemeral key": 0,
    "nonce prefix first": crypto.PUBLIC_KEY_SIZE,
    "nonce prefix last": HEADER - 1,
    "first ciphertext byte": HEADER,
    "first tag byte": HEADER + SMALL_CHUNK,
    "second chunk ciphertext": HEADER + STEP + 3,
    "last tag byte": -1,
}


@pytest.mark.parametrize("where", TAMPERED_POSITIONS)
def test_a_flipped_byte_does_not_open(
    small_chunks: None, sealing_key: X25519PrivateKey, where: str
) -> None:
    _, sealed = sealed_in_chunks(sealing_key)
    position = TAMPERED_POSITIONS[where] % len(sealed)
    assert_does_not_open(sealing_key, flip(sealed, position))
    assert_does_not_open(sealing_key, flip(sealed, position, 0x80))


def test_changed_associated_data_or_context_does_not_open(
    small_chunks: None, sealing_key: X25519PrivateKey
) -> None:
    _, sealed = sealed_in_chunks(sealing_key)
    for index in (0, len(AD) // 2, len(AD) - 1):
        assert_does_not_open(sealing_key, sealed, flip(AD, index))
    assert_does_not_open(sealing_key, sealed, AD + b" ")
    assert_does_not_open(sealing_key, sealed, b"")
    assert_does_not_open(sealing_key, sealed, context=b"other")


def test_wrong_private_key_does_not_open(small_chunks: None, sealing_key: X25519PrivateKey):
    _, sealed = sealed_in_chunks(sealing_key)
    assert_does_not_open(crypto.generate_sealing_key(), sealed)


def test_truncated_extended_dropped_and_reordered_chunks_do_not_open(
    small_chunks: None, sealing_key: X25519PrivateKey
) -> None:
    _, sealed = sealed_in_chunks(sealing_key, chunks=3)
    header, body = sealed[:HEADER], sealed[HEADER:]
    chunks = [body[i : i + STEP] for i in range(0, len(body), STEP)]
    assert len(chunks) == 3
    cases = {
        "last byte cut": sealed[:-1],
        "last chunk dropped": header + chunks[0] + chunks[1],
        "first chunk dropped": header + chunks[1] + chunks[2],
        "middle chunk dropped": header + chunks[0] + chunks[2],
        "chunks swapped": header + chunks[1] + chunks[0] + chunks[2],
        "chunk repeated": header + chunks[0] + chunks[0] + chunks[1] + chunks[2],
        "one byte appended": sealed + b"\x00",
        "a full chunk appended": sealed + chunks[2],
        "short tail": header + chunks[0] + chunks[1] + chunks[2][:10],
    }
    for name, data in cases.items():
        with pytest.raises(IntegrityError):
            crypto.unseal(sealing_key, data, AD)
        assert data != sealed, name
    for cut in (0, 1, HEADER, HEADER + crypto.TAG_SIZE - 1):
        assert assert_does_not_open(sealing_key, sealed[:cut]) == "truncated"


def test_an_ephemeral_key_of_low_order_is_refused(sealing_key: X25519PrivateKey) -> None:
    sealed = crypto.seal(sealing_key.public_key(), b"x", AD)
    assert_does_not_open(sealing_key, bytes(32) + sealed[32:])


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=300),
    position=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_of_a_sealed_payload_is_refused(
    data: bytes, position: int, mask: int
) -> None:
    key = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    sealed = crypto.seal(key.public_key(), data, AD)
    assert crypto.unseal(key, sealed, AD) == data
    with pytest.raises(IntegrityError):
        crypto.unseal(key, flip(sealed, position % len(sealed), mask), AD)


def test_same_fingerprint_ignores_case_spaces_and_colons():
    actual = crypto.fingerprint(crypto.generate_signing_key().public_key())
    assert crypto.same_fingerprint(actual, actual)
    assert crypto.same_fingerprint(actual.lower().replace(" ", ":"), actual)
    assert crypto.same_fingerprint(actual.replace(" ", ""), actual)
    assert not crypto.same_fingerprint(actual[:-1] + ("0" if actual[-1] != "0" else "1"), actual)
    assert not crypto.same_fingerprint(actual[:20], actual)
    assert not crypto.same_fingerprint("", "")
