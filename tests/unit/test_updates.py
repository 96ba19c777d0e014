from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared import crypto
from shared.errors import IntegrityError
from shared.schemas import UpdateHeader, canonical_json
from shared.updates import (
    MAGIC,
    MAX_HEADER_SIZE,
    UPDATE_CONTEXT,
    open_update,
    parse_envelope,
    seal_update,
    seal_update_payload,
    unseal_payload,
    verify_envelope,
)
from tests.unit.helpers import tiny_tensors

PREFIX = struct.Struct(">8sI")


def header(**changes: object) -> UpdateHeader:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "round": 2,
        "site": "site-a",
        "base_weights_sha256": "cd" * 32,
        "num_samples": 40,
        "metrics": {"dice_et": 0.25, "dice_tc": 0.5, "dice_wt": 0.75},
        "created_at": datetime(2025, 1, 2, tzinfo=UTC),
    }
    fields.update(changes)
    return UpdateHeader.model_validate(fields)


def envelope(site: Ed25519PrivateKey, round_key: X25519PrivateKey, **changes: object) -> bytes:
    return seal_update(
        header(**changes), tiny_tensors(), round_key=round_key.public_key(), site_key=site
    )


def refused(data: bytes, site: Ed25519PrivateKey, round_key: X25519PrivateKey) -> IntegrityError:
    with pytest.raises(IntegrityError) as info:
        open_update(data, site_key=site.public_key(), round_key=round_key)
    return info.value


def resign(body: bytes, site: Ed25519PrivateKey) -> bytes:
    return body + crypto.sign(site, crypto.sha256(body))


def split(data: bytes) -> tuple[bytes, bytes, bytes]:
    _, length = PREFIX.unpack_from(data)
    end = PREFIX.size + length
    return data[PREFIX.size : end], data[end : -crypto.SIGNATURE_SIZE], data[-64:]


def test_round_trip(signing_key, sealing_key) -> None:
    data = envelope(signing_key, sealing_key)
    assert data.startswith(MAGIC)
    got_header, tensors = open_update(
        data, site_key=signing_key.public_key(), round_key=sealing_key
    )
    assert got_header == header()
    want = tiny_tensors()
    assert set(tensors) == set(want)
    assert all(torch.equal(tensors[n], want[n]) and tensors[n].dtype == want[n].dtype for n in want)
    parsed = parse_envelope(data)
    assert parsed.header_bytes == canonical_json(header())
    assert parsed.digest == crypto.sha256(data[:-64])
    verify_envelope(parsed, signing_key.public_key())
    assert unseal_payload(parsed, sealing_key) == seal_payload_bytes()


def seal_payload_bytes() -> bytes:
    from shared.tensors import to_safetensors

    return to_safetensors(tiny_tensors())


def test_another_site_key_fails(signing_key, other_signing_key, sealing_key) -> None:
    data = envelope(other_signing_key, sealing_key)
    assert refused(data, signing_key, sealing_key).code == "bad_signature"


def test_a_wrong_round_key_fails(signing_key, sealing_key) -> None:
    data = envelope(signing_key, crypto.generate_sealing_key())
    assert refused(data, signing_key, sealing_key).code == "decryption_failed"


def test_a_swapped_header_fails_even_when_re_signed(signing_key, sealing_key) -> None:
    one = envelope(signing_key, sealing_key)
    two = envelope(signing_key, sealing_key, round=3, num_samples=4000)
    header_two, _, _ = split(two)
    _, sealed_one, _ = split(one)
    body = PREFIX.pack(MAGIC, len(header_two)) + header_two + sealed_one
    assert refused(body + split(one)[2], signing_key, sealing_key).code == "bad_signature"
    # the site itself cannot move a sealed payload under another header: AEAD binding
    assert refused(resign(body, signing_key), signing_key, sealing_key).code == "decryption_failed"


def test_a_modified_header_fails(signing_key, sealing_key) -> None:
    data = envelope(signing_key, sealing_key)
    header_bytes, sealed, _ = split(data)
    changed = header_bytes.replace(b'"num_samples":40', b'"num_samples":90')
    assert changed != header_bytes
    body = PREFIX.pack(MAGIC, len(changed)) + changed + sealed
    assert refused(body + data[-64:], signing_key, sealing_key).code == "bad_signature"
    assert refused(resign(body, signing_key), signing_key, sealing_key).code == "decryption_failed"


@pytest.mark.parametrize("part", ["magic", "length", "header", "sealed", "signature"])
def test_a_flipped_byte_anywhere_fails(signing_key, sealing_key, part: str) -> None:
    data = bytearray(envelope(signing_key, sealing_key))
    _, length = PREFIX.unpack_from(data)
    index = {
        "magic": 3,
        "length": 11,
        "header": PREFIX.size + length // 2,
        "sealed": PREFIX.size + length + 40,
        "signature": len(data) - 1,
    }[part]
    data[index] ^= 0x04
    refused(bytes(data), signing_key, sealing_key)


def test_truncated_envelopes_raise_a_typed_error(signing_key, sealing_key) -> None:
    data = envelope(signing_key, sealing_key)
    _, length = PREFIX.unpack_from(data)
    for cut in (0, 5, PREFIX.size, PREFIX.size + 10, PREFIX.size + length + 63):
        assert refused(data[:cut], signing_key, sealing_key).code == "truncated"
    for cut in (PREFIX.size + length + 64, PREFIX.size + length + 100, len(data) - 1):
        refused(data[:cut], signing_key, sealing_key)
    refused(data + b"\x00", signing_key, sealing_key)


def test_malformed_envelopes_are_refused_before_any_crypto(signing_key, sealing_key) -> None:
    data = envelope(signing_key, sealing_key)
    header_bytes, sealed, _ = split(data)
    cases = {
        "magic": b"FSEGUPD9" + data[8:],
        "oversized header": PREFIX.pack(MAGIC, MAX_HEADER_SIZE + 1) + data[12:],
        "not json": resign(PREFIX.pack(MAGIC, 5) + b"{nope" + sealed, signing_key),
        "extra field": resign(
            PREFIX.pack(MAGIC, len(header_bytes) + 8) + header_bytes[:-1] + b',"x":[1]}' + sealed,
            signing_key,
        ),
        "not canonical": resign(
            PREFIX.pack(MAGIC, len(header_bytes) + 1) + b" " + header_bytes + sealed, signing_key
        ),
    }
    for name, bad in cases.items():
        if name == "extra field":
            assert len(header_bytes[:-1] + b',"x":[1]}') == len(header_bytes) + 8
        with pytest.raises(IntegrityError) as info:
            parse_envelope(bad)
        assert info.value.code == "malformed_envelope", name


def test_a_payload_that_is_no_safetensors_is_refused(signing_key, sealing_key) -> None:
    data = seal_update_payload(
        header(), b"\x80\x04pickle", round_key=sealing_key.public_key(), site_key=signing_key
    )
    assert refused(data, signing_key, sealing_key).code == "malformed_envelope"


def test_the_payload_is_sealed_with_the_update_context(signing_key, sealing_key) -> None:
    data = envelope(signing_key, sealing_key)
    header_bytes, sealed, _ = split(data)
    assert crypto.unseal(sealing_key, sealed, header_bytes, context=UPDATE_CONTEXT)
    with pytest.raises(IntegrityError):
        crypto.unseal(sealing_key, sealed, header_bytes)
