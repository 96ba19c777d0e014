"""Arrays on the wire with numpy only: safetensors bytes, specs and checks.

This is the one implementation of the weight format. The server works on numpy
arrays (it never needs torch); `shared.tensors` wraps these functions for torch
tensors, which convert to and from numpy without a copy on the CPU.

We write the safetensors layout ourselves (an 8-byte little-endian header length,
a JSON header padded with spaces to 8 bytes, then the raw little-endian tensor
bytes, in name order, with no gaps): the library's ``save`` runs well below
memory speed. We parse it ourselves too, as strictly as the library does, into
arrays that view the input buffer without copying it.

numpy has no bfloat16: such tensors are arrays of the opaque 2-byte dtype
`BFLOAT16`, which refuses arithmetic; `bfloat16_to_float32` and
`float32_to_bfloat16` convert them (round to nearest even, as torch does).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from shared.errors import IntegrityError, TensorError
from shared.schemas import TensorSpec

Array = npt.NDArray[Any]
Arrays = dict[str, Array]

BFLOAT16: Final = np.dtype("V2")

# name as written in specs -> (safetensors code, numpy dtype)
_DTYPES: Final[dict[str, tuple[str, np.dtype[Any]]]] = {
    "float64": ("F64", np.dtype("<f8")),
    "float32": ("F32", np.dtype("<f4")),
    "float16": ("F16", np.dtype("<f2")),
    "bfloat16": ("BF16", BFLOAT16),
    "int64": ("I64", np.dtype("<i8")),
    "int32": ("I32", np.dtype("<i4")),
    "int16": ("I16", np.dtype("<i2")),
    "int8": ("I8", np.dtype("i1")),
    "uint8": ("U8", np.dtype("u1")),
    "bool": ("BOOL", np.dtype("?")),
}
DTYPE_NAMES: Final = tuple(_DTYPES)
FLOATING: Final = frozenset({"float64", "float32", "float16", "bfloat16"})
_NAMES_BY_DTYPE: Final = {dtype: name for name, (_code, dtype) in _DTYPES.items()}
_BY_CODE: Final = {code: dtype for _name, (code, dtype) in _DTYPES.items()}
_HEADER_LENGTH: Final = struct.Struct("<Q")
MAX_HEADER_SIZE: Final = 100 * 1024 * 1024


# --- dtypes ------------------------------------------------------------------------------


def dtype_name(dtype: np.dtype[Any]) -> str:
    """Name of a supported dtype as written in specs (``float32``)."""
    name = _NAMES_BY_DTYPE.get(_little(dtype))
    if name is None:
        raise TensorError(f"unsupported dtype {dtype}", code="tensor_mismatch")
    return name


def dtype_from_name(name: str) -> np.dtype[Any]:
    """Inverse of `dtype_name`."""
    try:
        return _DTYPES[name][1]
    except KeyError:
        raise TensorError(f"unsupported dtype {name!r}", code="tensor_mismatch") from None


def safetensors_code(name: str) -> str:
    """The safetensors dtype code of a dtype name (``float32`` -> ``F32``)."""
    dtype_from_name(name)
    return _DTYPES[name][0]


def _little(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


# --- safetensors -------------------------------------------------------------------------


def to_safetensors(arrays: Mapping[str, Array], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise arrays (sorted by name) as a valid safetensors file, in one copy."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    blobs: list[memoryview] = []
    for name in sorted(arrays):
        array = arrays[name]
        try:
            code = safetensors_code(dtype_name(array.dtype))
        except TensorError:
            raise TensorError(f"tensor {name!r}: unsupported dtype {array.dtype}") from None
        raw = np.ascontiguousarray(array, dtype=_little(array.dtype)).reshape(-1).view(np.uint8)
        header[name] = {
            "dtype": code,
            "shape": [int(size) for size in array.shape],
            "data_offsets": [offset, offset + raw.size],
        }
        offset += raw.size
        blobs.append(raw.data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    return b"".join([_HEADER_LENGTH.pack(len(header_bytes)), header_bytes, *blobs])


def _bad(message: str) -> IntegrityError:
    return IntegrityError(f"not a valid safetensors payload: {message}", code="malformed_envelope")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _bad(f"entry {key!r} is listed twice")
        out[key] = value
    return out


def _is_index(value: object) -> bool:
    return type(value) is int and value >= 0


def from_safetensors(data: bytes | bytearray | memoryview) -> Arrays:
    """Arrays viewing a safetensors buffer without copying it (copies only misaligned ones).

    Refuses what safetensors refuses, with `IntegrityError` (``malformed_envelope``):
    a bad header, names listed twice, unknown dtypes, offsets that overlap, leave
    gaps, run past the data or disagree with the shape, and trailing bytes. Views
    of a read-only buffer (``bytes``) are read-only; the buffer must outlive them.
    """
    buffer = memoryview(data)
    if buffer.ndim != 1 or buffer.itemsize != 1:
        buffer = buffer.cast("B")
    if len(buffer) < _HEADER_LENGTH.size:
        raise _bad("too short")
    (header_length,) = _HEADER_LENGTH.unpack_from(buffer)
    if header_length > min(MAX_HEADER_SIZE, len(buffer) - _HEADER_LENGTH.size):
        raise _bad("header length out of range")
    start = _HEADER_LENGTH.size + header_length
    try:
        header: Any = json.loads(
            bytes(buffer[_HEADER_LENGTH.size : start]), object_pairs_hook=_unique_keys
        )
    except (UnicodeDecodeError, ValueError):
        raise _bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad("header is not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise _bad("metadata is not a map of strings")
    data_length = len(buffer) - start
    entries: list[tuple[int, int, str, np.dtype[Any], tuple[int, ...]]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _bad(f"entry {name!r} is malformed")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        dtype = _BY_CODE.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise _bad(f"entry {name!r} has an unsupported dtype")
        if not (
            isinstance(shape, list)
            and all(_is_index(size) for size in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(_is_index(offset) for offset in offsets)
        ):
            raise _bad(f"entry {name!r} has a malformed shape or offsets")
        begin, end = offsets
        if not begin <= end <= data_length or end - begin != math.prod(shape) * dtype.itemsize:
            raise _bad(f"entry {name!r} has offsets that do not match its shape")
        entries.append((begin, end, name, dtype, tuple(shape)))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    position = 0
    for begin, end, name, _dtype, _shape in entries:
        if begin != position:
            raise _bad(f"entry {name!r} overlaps another or leaves a gap")
        position = end
    if position != data_length:
        raise _bad("data section has trailing bytes")
    arrays: Arrays = {}
    for begin, end, name, dtype, shape in entries:
        if begin == end:
            arrays[name] = np.zeros(shape, dtype=dtype)
            continue
        array = np.frombuffer(
            buffer, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin
        ).reshape(shape)
        if array.__array_interface__["data"][0] % dtype.itemsize:
            array = array.copy()  # numpy and torch work on aligned items
        arrays[name] = array
    return arrays


# --- specs and checks --------------------------------------------------------------------


def spec_of(arrays: Mapping[str, Array]) -> list[TensorSpec]:
    """The names, shapes and dtypes of ``arrays``, sorted by name."""
    return [
        TensorSpec(
            name=name,
            shape=[int(size) for size in arrays[name].shape],
            dtype=dtype_name(arrays[name].dtype),
        )
        for name in sorted(arrays)
    ]


def all_finite(array: Array) -> bool:
    """Whether a floating-point array holds no NaN or infinity (other dtypes: always)."""
    if array.dtype == BFLOAT16:
        exponent = np.bitwise_and(array.view(np.uint16), 0x7F80)
        return not bool((exponent == 0x7F80).any())
    if array.dtype.kind == "f":
        return bool(np.isfinite(array).all())
    return True


def validate_arrays(arrays: Mapping[str, Array], spec: list[TensorSpec]) -> None:
    """Check names, shapes, dtypes and finiteness against ``spec``; raise `TensorError`.

    Each error names the offending tensor, so a site can tell what it sent wrong.
    """
    expected = {item.name: item for item in spec}
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing:
        raise TensorError(f"tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    if extra:
        raise TensorError(f"tensor {extra[0]!r} is not part of the model ({len(extra)} unknown)")
    for name, item in expected.items():
        array = arrays[name]
        shape = [int(size) for size in array.shape]
        if shape != item.shape:
            raise TensorError(f"tensor {name!r} has shape {shape}, expected {item.shape}")
        try:
            dtype = dtype_name(array.dtype)
        except TensorError:
            raise TensorError(f"tensor {name!r} has unsupported dtype {array.dtype}") from None
        if dtype != item.dtype:
            raise TensorError(f"tensor {name!r} has dtype {dtype}, expected {item.dtype}")
        if not all_finite(array):
            raise TensorError(f"tensor {name!r} holds NaN or infinite values", code="non_finite")


# --- bfloat16 ----------------------------------------------------------------------------


def bfloat16_to_float32(array: Array) -> npt.NDArray[np.float32]:
    """The float32 values of a `BFLOAT16` array (exact: bfloat16 is float32's top half)."""
    widened = array.view(np.uint16).astype(np.uint32)
    np.left_shift(widened, 16, out=widened)
    return widened.view(np.float32)


def float32_to_bfloat16(array: npt.NDArray[np.float32]) -> Array:
    """Round float32 values to `BFLOAT16` (to nearest, ties to even; NaN stays NaN)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.right_shift(bits, 16) & 1) + np.uint32(0x7FFF)
    out = np.right_shift(rounded, 16).astype(np.uint16)
    out[np.isnan(array)] = 0x7FC0
    return out.view(BFLOAT16)
