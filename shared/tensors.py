"""Tensors on the wire: state dicts as safetensors bytes, deltas, and spec checks.

We write the safetensors layout ourselves (an 8-byte header length, a JSON header,
then the raw little-endian tensor bytes): the library's ``save`` runs well below
memory speed, while its ``load`` is fast and strict, so we load with the library.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _safetensors_load

from shared.errors import IntegrityError, TensorError
from shared.schemas import TensorSpec

Tensors = dict[str, torch.Tensor]

_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_DTYPE_NAMES: dict[torch.dtype, str] = {
    dtype: str(dtype).removeprefix("torch.") for dtype in _DTYPE_CODES
}
_DTYPES_BY_NAME: dict[str, torch.dtype] = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


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
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    names = sorted(tensors)
    blobs: list[bytes] = []
    for name in names:
        tensor = tensors[name].detach().to("cpu").contiguous()
        code = _DTYPE_CODES.get(tensor.dtype)
        if code is None:
            raise TensorError(f"tensor {name!r}: unsupported dtype {tensor.dtype}")
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {
            "dtype": code,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
        blobs.append(raw)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    return b"".join([struct.pack("<Q", len(header_bytes)), header_bytes, *blobs])


def from_safetensors(data: bytes) -> Tensors:
    """Parse safetensors bytes; raise `IntegrityError` when they are not a valid file."""
    try:
        return dict(_safetensors_load(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise IntegrityError(
            f"not a valid safetensors payload: {exc}", code="malformed_envelope"
        ) from None


def spec_of(tensors: Mapping[str, torch.Tensor]) -> list[TensorSpec]:
    """The names, shapes and dtypes of ``tensors``, sorted by name."""
    return [
        TensorSpec(
            name=name, shape=list(tensors[name].shape), dtype=dtype_name(tensors[name].dtype)
        )
        for name in sorted(tensors)
    ]


def validate_tensors(tensors: Mapping[str, torch.Tensor], spec: list[TensorSpec]) -> None:
    """Check names, shapes, dtypes and finiteness against ``spec``.

    Each error names the offending tensor, so a site can tell what it sent wrong.
    """
    expected = {item.name: item for item in spec}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise TensorError(f"tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    if extra:
        raise TensorError(f"tensor {extra[0]!r} is not part of the model ({len(extra)} unknown)")
    for name, item in expected.items():
        tensor = tensors[name]
        if list(tensor.shape) != item.shape:
            raise TensorError(
                f"tensor {name!r} has shape {list(tensor.shape)}, expected {item.shape}"
            )
        if dtype_name(tensor.dtype) != item.dtype:
            raise TensorError(
                f"tensor {name!r} has dtype {dtype_name(tensor.dtype)}, expected {item.dtype}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TensorError(f"tensor {name!r} holds NaN or infinite values", code="non_finite")


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
