"""The server's side: sum masked inputs as they arrive, then unmask the sum once.

Memory is O(model) for any number of sites: one uint32 vector holds the running sum
of masked inputs (each added in place as it arrives, then dropped), masks are removed
chunk by chunk, and the mean is produced tensor by tensor. No individual input is
kept, and none could be read from what is kept: every stored value carries at least
one mask the server cannot remove without shares it never asks for.

The server asks for nothing it could misuse: `MaskedSum.unmask_request` names each
site either a survivor (its input is in the sum) or dropped (it is not), and refuses
with ``secagg_threshold`` before asking anything when some needed secret has fewer
than t surviving holders, so a failed round reveals nothing about any site.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from shared import crypto
from shared.errors import Conflict, IntegrityError
from shared.schemas import TensorSpec
from shared.secagg import masks
from shared.secagg.graph import Graph, holders
from shared.secagg.keys import KeyAdvert, RoundContext, seed_commitment
from shared.secagg.messages import MaskedInput, ShareKind, UnmaskAnswer, UnmaskRequest
from shared.secagg.shares import Share, combine
from shared.secagg.site import layout_size


class MaskedSum:
    """One round's running sum of masked inputs and what it takes to unmask it."""

    def __init__(
        self,
        *,
        spec: Sequence[TensorSpec],
        context: RoundContext,
        graph: Graph,
        adverts: Mapping[str, KeyAdvert],
        shared: Iterable[str],
        threshold: int,
        clip_range: float,
        bits: int,
    ) -> None:
        """Start the sum after the share step; ``shared``: the sites whose shares went out."""
        self.spec = list(spec)
        self.context = context
        self.graph = graph
        self.adverts = dict(adverts)
        self.shared = frozenset(shared)
        self.threshold = threshold
        self.clip_range = clip_range
        self.bits = bits
        self.total = np.zeros(layout_size(self.spec), dtype=np.uint32)
        self.survivors: set[str] = set()
        self._requested = False  # survivors are fixed once the unmask request is out
        self._spent = False

    def add(self, masked: MaskedInput) -> None:
        """Add one site's masked input to the sum (once per site; it must have shared)."""
        if (masked.run_id, masked.round) != (self.context.run_id, self.context.round):
            raise Conflict("masked input is for another round", code="stale_round")
        if masked.site not in self.shared:
            raise Conflict(f"{masked.site} did not finish the share step", code="round_closed")
        if self._requested:
            raise Conflict(
                f"the masked inputs are closed; {masked.site} is counted as dropped",
                code="round_closed",
            )
        if masked.site in self.survivors:
            raise Conflict(f"{masked.site} already sent its masked input", code="update_conflict")
        expected = self.graph[masked.site] & self.shared
        if masked.partners != expected:
            raise IntegrityError(
                f"{masked.site} masked with other partners than the round's", code="hash_mismatch"
            )
        if masked.vector.dtype != np.uint32 or masked.vector.shape != self.total.shape:
            raise IntegrityError(
                f"masked input of {masked.site} has the wrong length", code="malformed_envelope"
            )
        np.add(self.total, masked.vector, out=self.total)
        self.survivors.add(masked.site)

    def unmask_request(self) -> UnmaskRequest:
        """What to ask every survivor; raise ``secagg_threshold`` when the sum cannot be opened.

        The check runs before any share is asked for: each survivor's seed and each
        dropped site's mask key needs ``threshold`` surviving holders.
        """
        survivors = frozenset(self.survivors)
        dropped = self.shared - survivors
        short = sorted(
            site
            for site in survivors | dropped
            if len(survivors.intersection(holders(self.graph, site))) < self.threshold
        )
        if len(survivors) < self.threshold or short:
            raise Conflict(
                f"{len(survivors)} sites sent masked inputs; unmasking needs {self.threshold} "
                "surviving share holders for every site: the round fails, nothing is revealed",
                code="secagg_threshold",
            )
        self._requested = True
        return UnmaskRequest(
            run_id=self.context.run_id,
            round=self.context.round,
            survivors=survivors,
            dropped=dropped,
        )

    def signed_request(
        self, request: UnmaskRequest, signatures: Mapping[str, bytes]
    ) -> UnmaskRequest:
        """Attach the survivors' signatures over ``request`` (the consistency check).

        Fails with ``secagg_threshold`` when fewer than t survivors signed: no holder
        would answer, and nothing has been revealed yet.
        """
        chosen = {site: sig for site, sig in signatures.items() if site in request.survivors}
        if len(chosen) < self.threshold:
            raise Conflict(
                f"only {len(chosen)} survivors signed the survivor list; "
                f"{self.threshold} must: the round fails, nothing is revealed",
                code="secagg_threshold",
            )
        return dataclasses.replace(request, signatures=tuple(sorted(chosen.items())))

    def _collect(
        self, answers: Iterable[UnmaskAnswer], request: UnmaskRequest
    ) -> dict[tuple[str, ShareKind], list[Share]]:
        collected: dict[tuple[str, ShareKind], list[Share]] = {}
        for answer in answers:
            if (answer.run_id, answer.round) != (self.context.run_id, self.context.round):
                raise Conflict("unmask answer is for another round", code="stale_round")
            if answer.site not in request.survivors:
                raise Conflict(f"{answer.site} is not a survivor", code="round_closed")
            for share in answer.shares:
                kind: ShareKind = "seed" if share.peer in request.survivors else "mask_key"
                owners = holders(self.graph, share.peer) if share.peer in self.graph else []
                if share.kind != kind or answer.site not in owners:
                    raise IntegrityError(
                        f"{answer.site} sent a share it does not hold", code="malformed_envelope"
                    )
                if share.index != owners.index(answer.site) + 1:
                    raise IntegrityError(
                        f"{answer.site} sent a share with a wrong index", code="malformed_envelope"
                    )
                collected.setdefault((share.peer, kind), []).append(
                    Share(index=share.index, data=share.data)
                )
        return collected

    def _rebuild(self, shares: list[Share], peer: str, kind: ShareKind) -> bytes:
        if len(shares) < self.threshold:
            raise Conflict(
                f"too few shares to unmask {peer}; the round fails", code="secagg_threshold"
            )
        secret = combine(shares, threshold=self.threshold)
        advert = self.adverts[peer]
        if kind == "seed":
            good = seed_commitment(secret) == advert.seed_commitment
        else:
            key = crypto.x25519_private_from_bytes(secret)
            good = crypto.public_bytes(key.public_key()) == advert.mask_key
        if not good:
            raise IntegrityError(
                f"shares of {peer}'s {kind} do not rebuild it", code="hash_mismatch"
            )
        return secret

    def unmask(
        self, answers: Iterable[UnmaskAnswer], request: UnmaskRequest
    ) -> tuple[dict[str, npt.NDArray[np.float32]], int]:
        """Remove every mask from the sum; return the weighted mean delta and the total weight."""
        if self._spent:
            raise Conflict("this round's sum is already unmasked", code="round_closed")
        if request.survivors != self.survivors or request.dropped != self.shared - self.survivors:
            raise Conflict("unmask request differs from the round's survivors", code="conflict")
        collected = self._collect(answers, request)
        removal: list[masks.Mask] = []
        for site in sorted(request.survivors):
            seed = self._rebuild(collected.get((site, "seed"), []), site, "seed")
            removal.append(masks.Mask(seed=seed, sign=-1))
        for site in sorted(request.dropped):
            key = crypto.x25519_private_from_bytes(
                self._rebuild(collected.get((site, "mask_key"), []), site, "mask_key")
            )
            for peer in sorted(self.graph[site] & request.survivors):
                seed = masks.pair_seed(
                    key,
                    own_site=site,
                    peer_site=peer,
                    peer_mask_key=self.adverts[peer].mask_key,
                    context=self.context,
                )
                # the survivor added pair_sign(peer, site) times this mask: take it out
                removal.append(masks.Mask(seed=seed, sign=-masks.pair_sign(peer, site)))
        self._spent = True  # from here on the masks are gone from ``total``: never twice
        masks.apply_masks(self.total, removal)
        total_weight = int(self.total[-1:].view(np.int32)[0])
        if total_weight <= 0:
            raise Conflict("the sites' weights sum to zero: no mean", code="secagg_threshold")
        mean: dict[str, npt.NDArray[np.float32]] = {}
        offset = 0
        for item in self.spec:
            size = int(np.prod(item.shape, dtype=np.int64))
            mean[item.name] = masks.dequantise(
                self.total[offset : offset + size],
                total_weight=total_weight,
                clip_range=self.clip_range,
                bits=self.bits,
            ).reshape(item.shape)
            offset += size
        return mean, total_weight
