"""A closing round's consensus: the live sum, or the run's ``aggregation:`` strategy.

FedAvg by cases (the default, and FedProx, whose server side is the same mean) is
the running sum intake built, unchanged: today's bytes, nothing read again. Every
other strategy runs `strategies.aggregate` over the round's counted updates,
re-opened from the blob store with the round key, in the order of their rows:

- the mean family (other weightings, the norm bound, the server optimisers) reads
  them through `StoredUpdates`: each update is decrypted when it is read and
  dropped after, so memory stays one model (the norm bound reads each twice);
- ``trimmed_mean`` and ``median`` hold every decrypted update in memory at once:
  order statistics need all the sites' values of a coordinate together. They are
  not spilled to disk in the clear: the round key is deleted once the round closes
  so the sealed blobs can no longer be read, and a plaintext copy would undo that.

Retryable like the rest of the close: a server optimiser's state is loaded from
the previous round's ``server_state`` blob on every attempt (a new one in round 1),
advanced, and stored content-addressed; the caller commits its key with the round,
so a failed close starts again from the same state and a restarted server
continues with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import overload

from anyio import to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from server.db.engine import Database
from server.services.live import LiveRound
from server.services.publishing import build_bundle
from server.services.strategies import SiteUpdate, aggregate, load_state
from server.storage import BlobStore
from shared.aggregation import (
    AggregationConfig,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
)
from shared.arrays import Array, Arrays, from_safetensors, to_safetensors
from shared.bundle import Bundle
from shared.updates import read_envelope_header, unseal_envelope


@dataclass(frozen=True, slots=True)
class Consensus:
    """The signed next model, and what the round's row and audit record keep of it."""

    bundle: Bundle
    server_state: str | None = None
    """Blob key of the server optimiser's state after the round (stored already)."""
    detail: Mapping[str, object] = field(default_factory=dict)
    """For the ``round.closed`` audit event: the strategy and each update's weight."""


def reopen(blobs: BlobStore, blob: str, key: X25519PrivateKey) -> Arrays:
    """Decrypt a stored update again (it passed every check when it was accepted)."""
    with blobs.open(blob) as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        envelope = read_envelope_header(handle, size)
        return from_safetensors(unseal_envelope(handle, envelope, key))


def uses_live_sum(config: AggregationConfig) -> bool:
    """Whether the server's maths is plain FedAvg by cases: the sum intake keeps."""
    return (
        isinstance(config, FedAvg | FedProx)
        and config.weighting == "cases"
        and config.norm_bound_factor is None
    )


class _Decrypted(Mapping[str, Array]):
    """One update's arrays, decrypted on first use (not when `aggregate` reads its count)."""

    def __init__(self, load: Callable[[], Arrays]) -> None:
        self._load = load
        self._arrays: Arrays | None = None

    def _get(self) -> Arrays:
        if self._arrays is None:
            self._arrays = self._load()
        return self._arrays

    def __getitem__(self, name: str) -> Array:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class StoredUpdates(Sequence[SiteUpdate]):
    """A round's stored updates as `aggregate` reads them: each item opens its blob anew.

    Nothing is cached here, so streaming over the sequence holds one update at a
    time; a caller that keeps the items (the robust strategies) keeps them all.
    """

    def __init__(self, stored: Sequence[tuple[str, int]], open_blob: Callable[[str], Arrays]):
        self._stored = list(stored)
        self._open = open_blob

    def __len__(self) -> int:
        return len(self._stored)

    @overload
    def __getitem__(self, index: int) -> SiteUpdate: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[SiteUpdate]: ...

    def __getitem__(self, index: int | slice) -> SiteUpdate | Sequence[SiteUpdate]:
        if isinstance(index, slice):
            return [self[item] for item in range(*index.indices(len(self)))]
        blob, num_samples = self._stored[index]
        return SiteUpdate(arrays=_Decrypted(partial(self._open, blob)), num_samples=num_samples)


def _sign(live: LiveRound, weights: Arrays, signing_key: Ed25519PrivateKey) -> Bundle:
    return build_bundle(
        run_id=live.run_id,
        version=live.number,
        config=live.config,
        weights=to_safetensors(weights),
        signing_key=signing_key,
    )


def _live_sum(live: LiveRound, base: Bundle, signing_key: Ed25519PrivateKey) -> Consensus:
    """Today's path: the sum is only read, so a retry computes the same bytes."""
    return Consensus(_sign(live, live.accumulator.consensus(base.arrays), signing_key))


def _strategy(
    blobs: BlobStore,
    signing_key: Ed25519PrivateKey,
    live: LiveRound,
    base: Bundle,
    stored: list[tuple[str, int]],
    previous_state: str | None,
) -> Consensus:
    config = live.config.aggregation
    state = None
    if isinstance(config, FedAvgM | FedAdam | FedYogi) and previous_state is not None:
        state = load_state(blobs.get_bytes(previous_state), config, live.spec)
    updates = StoredUpdates(stored, partial(reopen, blobs, key=live.private_key))
    result = aggregate(config, base=base.arrays, updates=updates, state=state)
    state_key = None if result.state is None else blobs.put_bytes(result.state.to_bytes())
    detail = {"strategy": config.strategy, "site_weights": result.site_weights}
    return Consensus(_sign(live, result.weights, signing_key), state_key, detail)


async def consensus(
    db: Database,
    blobs: BlobStore,
    signing_key: Ed25519PrivateKey,
    live: LiveRound,
    base: Bundle,
) -> Consensus:
    """Caller holds ``live.lock``: the round's signed consensus under the run's strategy."""
    if uses_live_sum(live.config.aggregation):
        return await to_thread.run_sync(_live_sum, live, base, signing_key)
    async with db.read() as repo:
        rows = await repo.updates_of_round(live.round_id)
        previous = await repo.round(live.run_id, live.number - 1) if live.number > 1 else None
    stored = [(row.blob, row.num_samples) for row in rows if row.site_id in live.counted]
    previous_state = None if previous is None else previous.server_state
    return await to_thread.run_sync(
        _strategy, blobs, signing_key, live, base, stored, previous_state
    )
