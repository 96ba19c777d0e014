"""The server's streaming envelope path agrees with shared.updates, byte for byte."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from server.services.envelopes import peek_header, receive_body, verify_signature
from shared import arrays, crypto
from shared.errors import IntegrityError, PayloadTooLarge
from shared.schemas import UpdateHeader
from shared.tensors import from_arrays, to_safetensors
from shared.updates import (
    open_update,
    read_envelope_header,
    seal_update,
    unseal_envelope,
)


def _tensors(size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    return {
        "a.weight": torch.randn(size, generator=generator),
        "b.bias": torch.randn(3, 2, generator=generator).half(),
        "c.count": torch.arange(5, dtype=torch.int64),
        "d.empty": torch.zeros(0),
    }


def _envelope(size: int) -> tuple[bytes, dict[str, torch.Tensor], object, object]:
    site_key = crypto.generate_signing_key()
    round_key = crypto.generate_sealing_key()
    header = UpdateHeader(
        run_id="run-1",
        round=1,
        site="site-a",
        base_weights_sha256="0" * 64,
        num_samples=3,
        created_at=datetime.now(UTC),
    )
    change = _tensors(size)
    data = seal_update(header, change, round_key=round_key.public_key(), site_key=site_key)
    return data, change, site_key, round_key


async def _stream(data: bytes, step: int):
    for start in range(0, len(data), step):
        yield data[start : start + step]


# 300_000 floats make a payload larger than one 1 MiB chunk
@pytest.mark.parametrize("size", [7, 300_000])
@pytest.mark.parametrize("step", [1000, 65536])
def test_streamed_open_equals_open_update(tmp_path: Path, size: int, step: int) -> None:
    data, change, site_key, round_key = _envelope(size)
    body = asyncio.run(
        receive_body(_stream(data, step), tmp_path / "u", limit=len(data), declared=len(data))
    )
    assert body.sha256 == crypto.sha256(data).hex() and body.size == len(data)
    verify_signature(body, site_key.public_key())  # type: ignore[attr-defined]
    with body.path.open("rb") as handle:
        envelope = read_envelope_header(handle, body.size)
        buffer = unseal_envelope(handle, envelope, round_key)  # type: ignore[arg-type]
    tensors = from_arrays(arrays.from_safetensors(buffer))
    header, reference = open_update(
        data,
        site_key=site_key.public_key(),  # type: ignore[attr-defined]
        round_key=round_key,  # type: ignore[arg-type]
    )
    assert envelope.header == header
    assert set(tensors) == set(reference) == set(change)
    for name in change:
        assert (
            torch.equal(tensors[name], reference[name])
            and tensors[name].dtype == change[name].dtype
        )


async def _ragged(data: bytes):
    """Chunks of every size around the 64-byte signature, and empty ones."""
    sizes = [1, 0, 63, 64, 65, 7, 200_000, 3, 1_500_000, 64, 2]
    start = 0
    for index in range(len(data)):
        step = sizes[index % len(sizes)]
        yield data[start : start + step]
        start += step
        if start >= len(data):
            return


def test_hashes_hold_back_the_signature_for_any_chunking(tmp_path: Path) -> None:
    data, _change, site_key, _round_key = _envelope(600_000)
    body = asyncio.run(
        receive_body(_ragged(data), tmp_path / "u", limit=len(data), declared=len(data))
    )
    assert body.size == len(data) and (tmp_path / "u").read_bytes() == data
    assert body.sha256 == crypto.sha256(data).hex()
    assert body.digest == crypto.sha256(data[:-64]) and body.signature == data[-64:]
    verify_signature(body, site_key.public_key())  # type: ignore[attr-defined]


def test_limit_and_short_bodies(tmp_path: Path) -> None:
    data, *_ = _envelope(7)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(
            receive_body(_stream(data, 100), tmp_path / "u", limit=len(data) - 1, declared=None)
        )
    with pytest.raises(IntegrityError) as caught:
        asyncio.run(
            receive_body(_stream(data, 100), tmp_path / "v", limit=10**6, declared=len(data) + 1)
        )
    assert caught.value.code == "truncated"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda raw: raw[:-1],  # short data section
        lambda raw: raw + b"\0",  # trailing bytes
        lambda raw: b"\xff" * 8 + raw[8:],  # header length out of range
        lambda raw: raw[:8] + b"[" + raw[9:],  # header not an object / not JSON
    ],
)
def test_tensor_parser_is_strict(mutate) -> None:
    raw = to_safetensors(_tensors(7))
    with pytest.raises(IntegrityError):
        arrays.from_safetensors(bytearray(mutate(raw)))


def test_tensor_parser_reads_what_to_safetensors_writes() -> None:
    change = _tensors(11)
    parsed = from_arrays(arrays.from_safetensors(bytearray(to_safetensors(change))))
    assert all(torch.equal(parsed[name], change[name]) for name in change)
    readonly = from_arrays(arrays.from_safetensors(memoryview(to_safetensors(change))))
    assert all(torch.equal(readonly[name], change[name]) for name in change)


@pytest.mark.parametrize("step", [1, 7, 65536])
def test_peek_header_reads_the_front_and_replays_every_byte(step: int) -> None:
    data, *_ = _envelope(7)

    async def peek() -> tuple[UpdateHeader, bytes, int]:
        pulled = 0

        async def counted():
            nonlocal pulled
            async for chunk in _stream(data, step):
                pulled += len(chunk)
                yield chunk

        header, whole = await peek_header(counted(), declared=len(data), limit=len(data))
        before = pulled
        replayed = b"".join([chunk async for chunk in whole])
        return header, replayed, before

    header, replayed, pulled_for_header = asyncio.run(peek())
    assert replayed == data
    assert header.run_id == "run-1" and header.num_samples == 3
    if step == 1:  # byte by byte: the header is parsed before the payload is read
        assert pulled_for_header < len(data) - 64


def test_peek_header_refuses_a_body_that_ends_inside_the_header() -> None:
    data, *_ = _envelope(7)

    async def peek() -> None:
        await peek_header(_stream(data[:20], 5), declared=None, limit=1 << 20)

    with pytest.raises(IntegrityError) as raised:
        asyncio.run(peek())
    assert raised.value.code == "truncated"
