"""Torch tensors on the wire: state dicts, deltas, and the format of `shared.arrays`.

The weight format, specs and checks live in `shared.arrays` (numpy only, so the
server never imports torch); this module converts torch tensors to and from
numpy arrays (no copy for CPU tensors) and adds what only torch code needs:
state dicts and deltas. bfloat16 tensors travel as `shared.arrays.BFLOAT16`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from shared import arrays
from shared.errors import TensorError
from shared.schemas import TensorSpec

Tensors = dict[str, torch.Tensor]

_DTYPES_BY_NAME: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in arrays.DTYPE_NAMES
}
_DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in _DTYPES_BY_NAME.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """Name of a supported dtype as written in specs (``float32``)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise TensorError(f"unsupported dtype {dtype}", code="tensor_mismatch") from None


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of `dtype_name`."""
    try:
        return _DTYPES_BY_NAME[name]
    except KeyError:
        raise TensorError(f"unsupported dtype {name!r}", code="tensor_mismatch") from None


def to_array(tensor: torch.Tensor, name: str = "") -> arrays.Array:
    """A numpy view of a tensor (copied to the CPU first if it lives elsewhere)."""
    if tensor.dtype not in _DTYPE_NAMES:
        raise TensorError(f"tensor {name!r}: unsupported dtype {tensor.dtype}")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(arrays.BFLOAT16)
    return tensor.numpy()


def to_arrays(tensors: Mapping[str, torch.Tensor]) -> arrays.Arrays:
    """`to_array` for each tensor."""
    return {name: to_array(tensor, name) for name, tensor in tensors.items()}


def from_array(array: arrays.Array) -> torch.Tensor:
    """A tensor sharing a writable array's memory; a read-only array is copied first."""
    if array.size == 0:  # from_numpy would give it zero strides
        return torch.empty(array.shape, dtype=dtype_from_name(arrays.dtype_name(array.dtype)))
    if not array.flags.writeable:
        array = array.copy()
    if array.dtype == arrays.BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def from_arrays(source: Mapping[str, arrays.Array]) -> Tensors:
    """`from_array` for each array."""
    return {name: from_array(array) for name, array in source.items()}


def state_tensors(state_dict: Mapping[str, torch.Tensor]) -> Tensors:
    """Detached, contiguous CPU copies of a state dict, one name per storage.

    Some MONAI networks list one storage under two names; safetensors refuses
    that, so only the first name of each storage is kept.
    """
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out: Tensors = {}
    for name, tensor in state_dict.items():
        key = (
            tensor.untyped_storage().data_ptr(),
            int(tensor.storage_offset()),
            tuple(int(size) for size in tensor.shape),
        )
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def to_safetensors(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise tensors (sorted by name) as a valid safetensors file."""
    return arrays.to_safetensors(to_arrays(tensors), metadata)


def from_safetensors(data: bytes | bytearray | memoryview) -> Tensors:
    """Parse safetensors bytes into tensors of their own (writable, not sharing ``data``).

    Raises `IntegrityError` (``malformed_envelope``) when they are not a valid file.
    """
    return from_arrays(arrays.from_safetensors(bytearray(data)))


def spec_of(tensors: Mapping[str, torch.Tensor]) -> list[TensorSpec]:
    """The names, shapes and dtypes of ``tensors``, sorted by name (reads no data)."""
    return [
        TensorSpec(
            name=name, shape=list(tensors[name].shape), dtype=dtype_name(tensors[name].dtype)
        )
        for name in sorted(tensors)
    ]


def validate_tensors(tensors: Mapping[str, torch.Tensor], spec: list[TensorSpec]) -> None:
    """`shared.arrays.validate_arrays` for tensors: names, shapes, dtypes, finiteness."""
    expected = {item.name for item in spec}
    arrays.validate_arrays(
        {
            # unknown names fail on their name, before any dtype is looked at
            name: to_array(tensor, name) if name in expected else np.empty(0)
            for name, tensor in tensors.items()
        },
        spec,
    )


def _check_same_shapes(
    tensors: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
) -> None:
    # Arithmetic would broadcast a mismatch silently, and could even change a shape.
    for name in sorted(base):
        if tensors[name].shape != base[name].shape:
            raise TensorError(
                f"tensor {name!r} has shape {list(tensors[name].shape)}, "
                f"expected {list(base[name].shape)}"
            )


def delta(local: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> Tensors:
    """``local - base`` per tensor; both must have the same names and shapes."""
    if set(local) != set(base):
        raise TensorError("local and base models have different tensor names")
    _check_same_shapes(local, base)
    return {name: (local[name].detach().cpu() - base[name].detach().cpu()) for name in sorted(base)}


def apply_delta(
    base: Mapping[str, torch.Tensor], change: Mapping[str, torch.Tensor], scale: float = 1.0
) -> Tensors:
    """``base + scale * change`` per tensor, in the base tensors' dtypes."""
    if set(change) != set(base):
        raise TensorError("delta and base model have different tensor names")
    _check_same_shapes(change, base)
    out: Tensors = {}
    for name in sorted(base):
        tensor = base[name].detach().cpu()
        if tensor.is_floating_point():
            out[name] = tensor + change[name].to(tensor.dtype) * scale
        else:
            out[name] = tensor + torch.round(change[name].double() * scale).to(tensor.dtype)
    return out
