"""shared.arrays: the one implementation of the weight format, with numpy only."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy
import torch

from shared import arrays
from shared.errors import IntegrityError, TensorError
from shared.tensors import from_arrays, spec_of, to_arrays, to_safetensors, validate_tensors
from tests.unit.helpers import tiny_tensors


def numpy_tensors() -> arrays.Arrays:
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "h": rng.standard_normal(5).astype(np.float16),
        "d": rng.standard_normal(2),
        "n": np.array(7, dtype=np.int64),
        "b": np.array([True, False]),
        "u": np.arange(3, dtype=np.uint8),
        "e": np.zeros((0, 2), dtype=np.float32),
    }


def raw_file(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_round_trip_and_the_library_reads_it() -> None:
    source = numpy_tensors()
    data = arrays.to_safetensors(source, metadata={"run": "r1"})
    back = arrays.from_safetensors(data)
    library = safetensors.numpy.load(data)
    for name, array in source.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array), name
        assert np.array_equal(library[name], array), name


def test_one_format_for_torch_and_numpy() -> None:
    tensors = tiny_tensors()
    tensors["bf"] = torch.randn(3, 2).bfloat16()
    data = to_safetensors(tensors)
    assert data == arrays.to_safetensors(to_arrays(tensors))
    assert arrays.spec_of(arrays.from_safetensors(data)) == spec_of(tensors)
    back = from_arrays(arrays.from_safetensors(bytearray(data)))
    assert all(torch.equal(back[name], tensors[name]) for name in tensors)
    assert back["bf"].dtype == torch.bfloat16


def test_views_share_the_buffer_and_bytes_give_read_only_views() -> None:
    data = arrays.to_safetensors({"a": np.arange(6, dtype=np.float32), "b": np.ones(2)})
    buffer = bytearray(data)
    views = arrays.from_safetensors(buffer)
    assert all(np.shares_memory(view, np.frombuffer(buffer, np.uint8)) for view in views.values())
    assert views["a"].flags.writeable
    assert not arrays.from_safetensors(data)["a"].flags.writeable


def test_misaligned_items_are_copied_aligned() -> None:
    source = {"a": np.ones(3, dtype=np.float16), "b": np.arange(2, dtype=np.int64)}
    back = arrays.from_safetensors(arrays.to_safetensors(source))  # "b" starts at byte 6
    assert back["b"].__array_interface__["data"][0] % 8 == 0
    assert np.array_equal(back["b"], source["b"])


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
MALFORMED = {
    "overlap": (
        {**GOOD, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
        bytes(8),
    ),
    "gap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
    "past the end": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
    "trailing bytes": (GOOD, bytes(12)),
    "shape and offsets disagree": (
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
        bytes(8),
    ),
    "unknown dtype": ({"a": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, bytes(8)),
    "bool in a shape": (
        {"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}},
        bytes(8),
    ),
    "negative offset": ({"a": {"dtype": "U8", "shape": [8], "data_offsets": [-1, 7]}}, bytes(8)),
    "float offset": ({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0.0, 8]}}, bytes(8)),
    "extra key": ({"a": {**GOOD["a"], "x": 1}}, bytes(8)),
    "metadata not strings": ({**GOOD, "__metadata__": {"k": 1}}, bytes(8)),
    "header not an object": ([], b""),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_files_are_refused(case: str) -> None:
    header, data = MALFORMED[case]
    with pytest.raises(IntegrityError) as info:
        arrays.from_safetensors(raw_file(header, data))
    assert info.value.code == "malformed_envelope"


def test_a_name_listed_twice_is_refused() -> None:
    entry = json.dumps(GOOD["a"])
    header = f'{{"a": {entry}, "a": {entry}}}'.encode()
    with pytest.raises(IntegrityError, match="twice"):
        arrays.from_safetensors(struct.pack("<Q", len(header)) + header + bytes(8))
    assert arrays.from_safetensors(raw_file(GOOD, bytes(8)))["a"].shape == (2,)


def test_unsupported_dtypes_name_the_tensor() -> None:
    with pytest.raises(TensorError, match="'z'"):
        arrays.to_safetensors({"z": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(TensorError, match="'z'"):
        arrays.validate_arrays(
            {"z": np.zeros(2, dtype=np.uint32)},
            [arrays.spec_of({"z": np.zeros(2, dtype=np.int32)})[0]],
        )


def test_validation_agrees_with_the_torch_wrapper() -> None:
    spec = spec_of(tiny_tensors())
    for name, bad in [
        ("conv.bias", torch.tensor([0.0, float("nan"), 0, 0])),
        ("conv.bias", torch.zeros(4, dtype=torch.float64)),
        ("scale", torch.zeros(1)),
        ("intruder", torch.zeros(1)),
    ]:
        tensors = {**tiny_tensors(), name: bad}
        with pytest.raises(TensorError) as from_numpy:
            arrays.validate_arrays(to_arrays(tensors), spec)
        with pytest.raises(TensorError) as from_torch:
            validate_tensors(tensors, spec)
        assert repr(name) in from_numpy.value.message
        assert (from_numpy.value.code, from_numpy.value.message) == (
            from_torch.value.code,
            from_torch.value.message,
        )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_bfloat16_is_caught(bad: float) -> None:
    tensors = {"bf": torch.tensor([1.0, bad, 2.0]).bfloat16()}
    with pytest.raises(TensorError) as info:
        arrays.validate_arrays(to_arrays(tensors), spec_of(tensors))
    assert info.value.code == "non_finite"
    arrays.validate_arrays(to_arrays({"bf": torch.ones(3).bfloat16()}), spec_of(tensors))


def test_bfloat16_conversions_round_like_torch() -> None:
    values = torch.cat(
        [
            torch.randn(10_000, generator=torch.Generator().manual_seed(3)) * 1e3,
            torch.tensor([0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.4e38, -3.4e38]),
            torch.tensor([float("inf"), float("-inf"), float("nan")]),
        ]
    )
    ours = arrays.float32_to_bfloat16(values.numpy())
    theirs = to_arrays({"x": values.bfloat16()})["x"]
    assert ours.dtype == arrays.BFLOAT16
    assert np.array_equal(ours.view(np.uint16)[:-1], theirs.view(np.uint16)[:-1])
    assert torch.isnan(from_arrays({"x": ours})["x"][-1])
    widened = arrays.bfloat16_to_float32(theirs)
    assert np.array_equal(widened, values.bfloat16().float().numpy(), equal_nan=True)
