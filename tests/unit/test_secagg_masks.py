"""Masks from AES-256-CTR seeds and the stochastic fixed point they are added to."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared import crypto
from shared.secagg import masks
from shared.secagg.keys import RoundContext

CONTEXT = RoundContext(run_id="run-1", round=1)


def expanded(seed: bytes, size: int) -> np.ndarray:
    vector = np.zeros(size, dtype=np.uint32)
    masks.apply_masks(vector, [masks.Mask(seed=seed, sign=1)])
    return vector


def test_a_mask_is_the_aes_256_ctr_stream_of_its_seed() -> None:
    seed = secrets.token_bytes(32)
    size = masks.CHUNK * 2 + 7  # over chunk boundaries
    stream = Cipher(algorithms.AES(seed), modes.CTR(masks._MASK_NONCE)).encryptor()
    reference = np.frombuffer(stream.update(bytes(size * 4)), dtype=np.uint32)
    np.testing.assert_array_equal(expanded(seed, size), reference)
    assert not np.array_equal(expanded(secrets.token_bytes(32), 1000), expanded(seed, 1000))


def test_masks_add_and_subtract_mod_two_to_the_32() -> None:
    rng = np.random.default_rng(0)
    original = rng.integers(0, 2**32, size=masks.CHUNK + 11, dtype=np.uint32)
    vector = original.copy()
    seeds = [secrets.token_bytes(32) for _ in range(3)]
    masks.apply_masks(vector, [masks.Mask(seed, 1) for seed in seeds])
    assert np.mean(vector == original) < 0.001
    masks.apply_masks(vector, [masks.Mask(seed, -1) for seed in reversed(seeds)])
    np.testing.assert_array_equal(vector, original)


def test_pairwise_seeds_agree_at_both_ends_and_signs_cancel() -> None:
    a, b, c = (crypto.generate_sealing_key() for _ in range(3))
    public = {
        name: crypto.public_bytes(key.public_key())
        for name, key in zip("abc", (a, b, c), strict=True)
    }
    ab = masks.pair_seed(a, own_site="a", peer_site="b", peer_mask_key=public["b"], context=CONTEXT)
    ba = masks.pair_seed(b, own_site="b", peer_site="a", peer_mask_key=public["a"], context=CONTEXT)
    ac = masks.pair_seed(a, own_site="a", peer_site="c", peer_mask_key=public["c"], context=CONTEXT)
    later = masks.pair_seed(
        a, own_site="a", peer_site="b", peer_mask_key=public["b"], context=RoundContext("run-1", 2)
    )
    assert ab == ba and len({ab, ac, later}) == 3
    assert masks.pair_sign("a", "b") == -masks.pair_sign("b", "a") == 1
    with pytest.raises(ValueError):
        masks.pair_sign("a", "a")
    vector = np.zeros(100, dtype=np.uint32)
    masks.apply_masks(
        vector,
        [masks.Mask(ab, masks.pair_sign("a", "b")), masks.Mask(ba, masks.pair_sign("b", "a"))],
    )
    assert not vector.any()


def quantised(
    values: np.ndarray, *, weight: int = 1, clip_range: float = 1.0, bits: int = 8
) -> np.ndarray:
    out = np.empty(values.size, dtype=np.uint32)
    masks.quantise_into(
        out, values, weight=weight, clip_range=clip_range, bits=bits, stream=masks.rounding_stream()
    )
    return out.view(np.int32)


def test_stochastic_rounding_is_unbiased_and_off_by_less_than_one_unit() -> None:
    value = 0.3  # 0.3 * 127 = 38.1: rounds to 38 nine times in ten, 39 once
    levels = quantised(np.full(200_000, value, dtype=np.float32))
    assert set(np.unique(levels)) == {38, 39}
    assert abs(levels.mean() - value * 127) < 0.01
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, 10_000).astype(np.float32)
    scaled = values.astype(np.float64) * 3 * 127
    assert np.all(np.abs(quantised(values, weight=3) - scaled) < 1)


def test_rounding_streams_are_fresh_each_time() -> None:
    values = np.full(1000, 0.5 / 127, dtype=np.float32)  # half a unit: a coin per coordinate
    assert not np.array_equal(quantised(values), quantised(values))


def test_values_are_clipped_to_the_range_and_negative_ones_wrap() -> None:
    values = np.array([-5.0, -1.0, 0.0, 1.0, 5.0], dtype=np.float32)
    assert quantised(values, weight=2).tolist() == [-254, -254, 0, 254, 254]
    out = np.empty(5, dtype=np.uint32)
    masks.quantise_into(
        out, values, weight=2, clip_range=1.0, bits=8, stream=masks.rounding_stream()
    )
    assert out[0] == 2**32 - 254


def test_dequantise_inverts_the_scale_and_refuses_no_weight() -> None:
    total = np.array([254, 2**32 - 127], dtype=np.uint32)
    mean = masks.dequantise(total, total_weight=2, clip_range=1.0, bits=8)
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, [1.0, -0.5])
    with pytest.raises(ValueError, match="positive"):
        masks.dequantise(total, total_weight=0, clip_range=1.0, bits=8)


def test_seeds_must_be_256_bits() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        masks.apply_masks(np.zeros(4, dtype=np.uint32), [masks.Mask(seed=bytes(16), sign=1)])
