"""The protocol's messages after advertise: masked inputs and the unmask exchange.

Plain frozen dataclasses of bytes, arrays and names; the live server turns them into
wire models and rows. ``size`` is what each costs on the wire, for the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from shared.schemas import canonical_json
from shared.secagg.masks import Vector

SIGNATURE_SIZE: Final = 64  # a masked input travels signed, like any update

ShareKind = Literal["mask_key", "seed"]


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """A site's masked, quantised, weighted update with its weight as the last coordinate.

    ``partners`` are the sites whose pairwise masks it added (its neighbours that shared).
    """

    site: str
    run_id: str
    round: int
    partners: frozenset[str]
    vector: Vector

    def size(self) -> int:
        """Bytes on the wire: header, the uint32 vector, a signature."""
        header = canonical_json(
            {
                "site": self.site,
                "run_id": self.run_id,
                "round": self.round,
                "partners": sorted(self.partners),
            }
        )
        return len(header) + self.vector.nbytes + SIGNATURE_SIZE


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """The server's request: which sites sent a masked input, which shared but did not.

    ``signatures`` are the survivors' signatures over `body` (the consistency check):
    a holder answers only a request that at least t survivors signed.
    """

    run_id: str
    round: int
    survivors: frozenset[str]
    dropped: frozenset[str]
    signatures: tuple[tuple[str, bytes], ...] = ()

    def body(self) -> bytes:
        """The signed part: the round and the two sets, canonical JSON."""
        return canonical_json(
            {
                "run_id": self.run_id,
                "round": self.round,
                "survivors": sorted(self.survivors),
                "dropped": sorted(self.dropped),
            }
        )

    def size(self) -> int:
        """Bytes on the wire."""
        return len(self.body()) + sum(len(site) + len(sig) for site, sig in self.signatures)


@dataclass(frozen=True, slots=True)
class RevealedShare:
    """One holder's share of one peer's secret: of its seed, or of its mask key."""

    peer: str
    kind: ShareKind
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UnmaskAnswer:
    """A holder's answer: the shares it reveals, one kind per peer."""

    site: str
    run_id: str
    round: int
    shares: tuple[RevealedShare, ...]

    def size(self) -> int:
        """Bytes on the wire: names, kinds, indices and shares, and a signature."""
        per_share = sum(
            len(share.peer) + len(share.kind) + 2 + len(share.data) for share in self.shares
        )
        return len(self.site) + len(self.run_id) + 8 + per_share + SIGNATURE_SIZE
