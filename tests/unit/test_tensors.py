from __future__ import annotations

from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import IntegrityError, TensorError
from shared.schemas import TensorSpec
from shared.tensors import (
    apply_delta,
    delta,
    dtype_from_name,
    dtype_name,
    from_safetensors,
    spec_of,
    state_tensors,
    to_safetensors,
    validate_tensors,
)
from tests.unit.helpers import tiny_tensors

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        values = torch.randn(shape, generator=generator, dtype=torch.float64) * 1e3
        if values.numel():
            values.view(-1)[0] = float("inf")
            values.view(-1)[-1] = float("-0.0")
        return values.to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**40)), min(info.max, 2**40)
    return torch.randint(low, high, shape, generator=generator, dtype=torch.int64).to(dtype)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    raw = lambda t: t.contiguous().reshape(-1).view(torch.uint8).tolist()  # noqa: E731
    return raw(a) == raw(b)


tensor_sets = st.dictionaries(
    keys=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters='"\\'),
        min_size=1,
        max_size=12,
    ).filter(lambda name: name != "__metadata__"),
    values=st.tuples(
        st.lists(st.integers(min_value=0, max_value=4), max_size=4).map(tuple),
        st.sampled_from(DTYPES),
        st.integers(min_value=0, max_value=2**31),
    ),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(specs=tensor_sets)
def test_safetensors_round_trip_is_exact(specs, tmp_path_factory) -> None:
    tensors = {name: random_tensor(*spec) for name, spec in specs.items()}
    data = to_safetensors(tensors, metadata={"run": "r1"})
    back = from_safetensors(data)
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert same_bytes(back[name], tensor), name
    # the bytes are a valid file for the library itself, through its other reader too
    library = safetensors.torch.load(data)
    assert all(same_bytes(library[name], tensors[name]) for name in tensors)
    path = tmp_path_factory.mktemp("st") / "weights.safetensors"
    path.write_bytes(data)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"run": "r1"}
        assert set(handle.keys()) == set(tensors)
        for name in handle.keys():  # noqa: SIM118 - safe_open is no mapping
            assert same_bytes(handle.get_tensor(name), tensors[name]), name


def test_safetensors_bytes_are_deterministic_and_match_the_library_layout() -> None:
    tensors = tiny_tensors()
    data = to_safetensors(tensors)
    assert data == to_safetensors(dict(reversed(list(tensors.items()))))
    reference = safetensors.torch.load(safetensors.torch.save(tensors))
    assert all(same_bytes(from_safetensors(data)[n], reference[n]) for n in tensors)


def test_non_contiguous_input_is_written_as_its_values() -> None:
    matrix = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    back = from_safetensors(to_safetensors({"t": matrix.t(), "s": matrix[:, 1]}))
    assert torch.equal(back["t"], matrix.t())
    assert torch.equal(back["s"], matrix[:, 1])


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 8, b"garbage!", b"\x10" + b"\x00" * 7 + b"{}", b"\xff" * 64]
)
def test_invalid_safetensors_bytes_raise_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError) as info:
        from_safetensors(data)
    assert info.value.code == "malformed_envelope"


def test_truncated_safetensors_bytes_are_refused() -> None:
    data = to_safetensors(tiny_tensors())
    with pytest.raises(IntegrityError):
        from_safetensors(data[:-1])


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(TensorError, match="'z'"):
        to_safetensors({"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(TensorError):
        dtype_name(torch.complex64)
    with pytest.raises(TensorError):
        dtype_from_name("complex64")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_names_round_trip(dtype: torch.dtype) -> None:
    assert dtype_from_name(dtype_name(dtype)) is dtype


# --- specs and validation ----------------------------------------------------------------


def test_spec_of_is_sorted_and_describes_the_tensors() -> None:
    spec = spec_of(tiny_tensors())
    assert [item.name for item in spec] == sorted(tiny_tensors())
    by_name = {item.name: item for item in spec}
    assert by_name["conv.weight"] == TensorSpec(
        name="conv.weight", shape=[4, 2, 3], dtype="float32"
    )
    assert by_name["scale"].shape == []
    assert by_name["empty"].shape == [0, 3]
    assert by_name["half"].dtype == "float16"
    validate_tensors(tiny_tensors(seed=5), spec)


def broken(name: str, value: torch.Tensor | None) -> dict[str, torch.Tensor]:
    tensors = tiny_tensors()
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    return tensors


@pytest.mark.parametrize(
    ("tensors", "name", "code", "words"),
    [
        (broken("conv.bias", None), "conv.bias", "tensor_mismatch", "missing"),
        (broken("intruder", torch.zeros(1)), "intruder", "tensor_mismatch", "not part"),
        (broken("conv.bias", torch.zeros(5)), "conv.bias", "tensor_mismatch", "shape"),
        (broken("scale", torch.zeros(1)), "scale", "tensor_mismatch", "shape"),
        (broken("conv.bias", torch.zeros(4, dtype=torch.float64)), "conv.bias", None, "dtype"),
        (
            broken("norm.num_batches_tracked", torch.tensor(7.0)),
            "norm.num_batches_tracked",
            "tensor_mismatch",
            "dtype",
        ),
        (
            broken("conv.bias", torch.tensor([0.0, float("nan"), 0, 0])),
            "conv.bias",
            "non_finite",
            "NaN",
        ),
        (broken("scale", torch.tensor(float("inf"))), "scale", "non_finite", "infinite"),
        (broken("half", torch.full((5,), float("-inf")).half()), "half", "non_finite", "NaN"),
    ],
    ids=["missing", "extra", "shape", "0-d shape", "dtype", "int dtype", "nan", "inf", "-inf"],
)
def test_validation_errors_name_the_offending_tensor(
    tensors: dict[str, torch.Tensor], name: str, code: str | None, words: str
) -> None:
    with pytest.raises(TensorError) as info:
        validate_tensors(tensors, spec_of(tiny_tensors()))
    assert repr(name) in info.value.message
    assert words in info.value.message
    assert info.value.code == (code or "tensor_mismatch")


# --- deltas ------------------------------------------------------------------------------


def test_delta_and_apply_delta_round_trip() -> None:
    base, local = tiny_tensors(seed=1), tiny_tensors(seed=2)
    local["norm.num_batches_tracked"] = torch.tensor(11)
    change = delta(local, base)
    assert set(change) == set(base)
    assert torch.equal(change["norm.num_batches_tracked"], torch.tensor(4))
    rebuilt = apply_delta(base, change)
    for name, tensor in local.items():
        assert rebuilt[name].dtype == base[name].dtype
        assert rebuilt[name].shape == tensor.shape
        tolerance = 1e-2 if tensor.dtype == torch.float16 else 1e-6
        assert torch.allclose(rebuilt[name].double(), tensor.double(), atol=tolerance), name
    half = apply_delta(base, change, scale=0.5)
    expected = base["conv.weight"] + 0.5 * (local["conv.weight"] - base["conv.weight"])
    assert torch.allclose(half["conv.weight"], expected)
    zero = apply_delta(base, change, scale=0.0)
    assert all(torch.equal(zero[name], base[name]) for name in base)


def test_delta_refuses_different_names_and_shapes() -> None:
    base = tiny_tensors()
    with pytest.raises(TensorError):
        delta({**base, "x": torch.zeros(1)}, base)
    with pytest.raises(TensorError):
        apply_delta(base, {k: v for k, v in base.items() if k != "scale"})
    # broadcasting would hide these, or even change a shape
    with pytest.raises(TensorError, match=r"'conv\.bias'"):
        delta({**base, "conv.bias": torch.zeros(1)}, base)
    with pytest.raises(TensorError, match="'scale'"):
        apply_delta(base, {**base, "scale": torch.zeros(3)})


# --- state dicts -------------------------------------------------------------------------


def test_state_tensors_dedupes_shared_storage() -> None:
    tied = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    state = tied.state_dict()
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    with pytest.raises(RuntimeError):  # the library refuses shared storage ...
        safetensors.torch.save(dict(state))
    out = state_tensors(state)
    assert set(out) == {"0.weight", "0.bias", "1.bias"}  # ... so only the first name stays
    safetensors.torch.save(out)
    assert from_safetensors(to_safetensors(out)).keys() == out.keys()


def test_state_tensors_keeps_distinct_tensors_and_copies_off_the_graph() -> None:
    base = torch.arange(10.0, requires_grad=True)
    state = {
        "whole": base,
        "alias": base.view(10),
        "head": base[:5],
        "tail": base[5:],
        "equal_values": torch.arange(10.0),
        "empty_a": torch.zeros(0),
        "empty_b": torch.zeros(0),
        "transposed": torch.ones(2, 3).t(),
    }
    out = state_tensors(state)
    assert set(out) == set(state) - {"alias"}
    assert all(not t.requires_grad and t.is_contiguous() for t in out.values())
    assert torch.equal(out["tail"], torch.arange(5.0, 10.0))


def test_state_tensors_of_a_real_network_serialise() -> None:
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    out = state_tensors(net.state_dict())
    back = from_safetensors(to_safetensors(out))
    validate_tensors(back, spec_of(out))
    assert back["1.num_batches_tracked"].dtype == torch.int64


def test_written_file_loads_with_safe_open(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(to_safetensors(tiny_tensors()))
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(tiny_tensors())
