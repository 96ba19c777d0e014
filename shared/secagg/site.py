"""What a site computes in each step; its secrets never leave it except as sealed shares.

The site's state between steps (its `RoundKeys`, the shares it holds, which kind it
has revealed for whom) is passed in and returned, never kept here: the agent persists
it before it sends anything, so a restart neither forgets nor repeats a step.

Mask once per round: `mask_input` draws fresh rounding each call, and two masked
inputs of one round carry the same masks, so their difference would be the difference
of the two quantised updates. The agent persists the masked input and re-sends those
bytes on a retry, never masks again.

The rule that keeps one site's input secret is enforced here, not trusted to the
server: a holder reveals, for one peer, either its share of the mask key (the peer
dropped: its pairwise masks must go) or its share of the seed (the peer's input is in
the sum: its self-mask must go), never both, across every request of the round.
Both would let the server strip every mask from that peer's input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared import crypto
from shared.errors import Conflict, IntegrityError, InvalidInput
from shared.schemas import TensorSpec
from shared.secagg import masks
from shared.secagg.config import weight_cap
from shared.secagg.consistency import check_signed
from shared.secagg.graph import Graph, holders
from shared.secagg.keys import KeyAdvert, RoundContext, RoundKeys
from shared.secagg.messages import (
    MaskedInput,
    RevealedShare,
    ShareKind,
    UnmaskAnswer,
    UnmaskRequest,
)
from shared.secagg.shares import HeldShares, SealedShare, open_shares, seal_shares, split

# A hook that perturbs one tensor before clipping (dp_fedavg adds its noise share here).
Perturb = Callable[[str, npt.NDArray[Any]], npt.NDArray[Any]]


def make_shares(
    keys: RoundKeys,
    *,
    site: str,
    context: RoundContext,
    graph: Graph,
    adverts: Mapping[str, KeyAdvert],
    threshold: int,
) -> list[SealedShare]:
    """Split the mask key and the seed t-of-n among the site's holders, sealed to each.

    ``graph`` is drawn over the sites that advertised, and ``adverts`` must already
    be verified (`keys.verify_adverts`). Share indices follow `graph.holders`.
    """
    owners = holders(graph, site)
    missing = [owner for owner in owners if owner not in adverts]
    if missing:
        raise InvalidInput(f"no key advert from {', '.join(missing)}")
    mask_shares = split(
        crypto.x25519_private_bytes(keys.mask), threshold=threshold, count=len(owners)
    )
    seed_shares = split(keys.seed, threshold=threshold, count=len(owners))
    return [
        seal_shares(
            HeldShares(mask_key=mask_share, seed=seed_share),
            context=context,
            sender=site,
            recipient=owner,
            sender_share_key=keys.share,
            recipient_share_key=adverts[owner].share_key,
        )
        for owner, mask_share, seed_share in zip(owners, mask_shares, seed_shares, strict=True)
    ]


def receive_shares(
    sealed: Sequence[SealedShare],
    *,
    keys: RoundKeys,
    site: str,
    context: RoundContext,
    graph: Graph,
    adverts: Mapping[str, KeyAdvert],
) -> dict[str, HeldShares]:
    """Open the shares relayed to this site; refuses one from a non-peer or out of place."""
    held: dict[str, HeldShares] = {}
    for item in sealed:
        sender = item.sender
        if sender in held:
            raise IntegrityError(f"a second share from {sender}", code="decryption_failed")
        if sender not in adverts or site not in holders(graph, sender):
            raise IntegrityError(f"{sender} does not share with {site}", code="decryption_failed")
        shares = open_shares(
            item,
            context=context,
            recipient=site,
            recipient_share_key=keys.share,
            sender_share_key=adverts[sender].share_key,
        )
        if shares.mask_key.index != holders(graph, sender).index(site) + 1:
            raise IntegrityError(
                f"share from {sender} has another holder's index", code="decryption_failed"
            )
        held[sender] = shares
    return held


def layout_size(spec: Sequence[TensorSpec]) -> int:
    """Coordinates of a masked input: every tensor's elements, then the weight."""
    return sum(int(np.prod(item.shape, dtype=np.int64)) for item in spec) + 1


def mask_input(
    tensors: Mapping[str, npt.NDArray[Any]],
    *,
    spec: Sequence[TensorSpec],
    weight: int,
    keys: RoundKeys,
    site: str,
    context: RoundContext,
    graph: Graph,
    adverts: Mapping[str, KeyAdvert],
    held: Mapping[str, HeldShares],
    clip_range: float,
    bits: int,
    perturb: Perturb | None = None,
) -> MaskedInput:
    """Clip, weight, quantise, append the weight, then add the self-mask and pairwise masks.

    Tensors go in ``spec`` order, flattened. The pairwise partners are the neighbours
    whose shares this site holds: exactly those that finished the share step, as the
    server also knows. ``perturb`` (dp_fedavg's noise share) runs on each float tensor
    before clipping, so what leaves the site is noised, and only the sum is ever seen.
    """
    sites = len(graph)
    cap = weight_cap(bits=bits, sites=sites)
    if not 0 <= weight <= cap:
        raise InvalidInput(
            f"weight {weight} is outside 0..{cap}, the most {sites} sites can give at "
            f"secure_aggregation.bits = {bits} without the sum overflowing"
        )
    if set(tensors) != {item.name for item in spec}:
        raise InvalidInput("update tensors differ from the round's model")
    vector = np.empty(layout_size(spec), dtype=np.uint32)
    stream = masks.rounding_stream()
    expander = masks.new_expander()
    offset = 0
    for item in spec:
        values = tensors[item.name]
        if list(values.shape) != list(item.shape):
            raise InvalidInput(
                f"tensor {item.name!r} has shape {list(values.shape)}, expected {item.shape}"
            )
        if perturb is not None:
            values = perturb(item.name, values)
        if not np.all(np.isfinite(values)):
            raise InvalidInput(f"tensor {item.name!r} holds a non-finite value")
        masks.quantise_into(
            vector[offset : offset + values.size],
            values,
            weight=weight,
            clip_range=clip_range,
            bits=bits,
            stream=stream,
            expander=expander,
        )
        offset += values.size
    vector[-1] = weight
    partners = frozenset(graph[site] & set(held))
    applied = [masks.Mask(seed=keys.seed, sign=1)]
    for peer in sorted(partners):
        seed = masks.pair_seed(
            keys.mask,
            own_site=site,
            peer_site=peer,
            peer_mask_key=adverts[peer].mask_key,
            context=context,
        )
        applied.append(masks.Mask(seed=seed, sign=masks.pair_sign(site, peer)))
    masks.apply_masks(vector, applied)
    return MaskedInput(
        site=site, run_id=context.run_id, round=context.round, partners=partners, vector=vector
    )


def answer_unmask(
    request: UnmaskRequest,
    *,
    site: str,
    context: RoundContext,
    held: Mapping[str, HeldShares],
    threshold: int,
    revealed: Mapping[str, ShareKind],
    enrolled_keys: Mapping[str, Ed25519PublicKey],
) -> tuple[UnmaskAnswer, dict[str, ShareKind]]:
    """Reveal seed shares of survivors and mask-key shares of dropped peers.

    ``revealed`` is what this site already revealed this round; the answer comes back
    with it updated (persist it before sending). Refused with ``secagg_refused``: a
    request for another round, a site listed both ways, this site listed as dropped or
    missing from the survivors, or one asking, now or across requests, for both kinds
    of share of one peer; with ``secagg_threshold``: fewer survivors than the threshold,
    or fewer than the threshold of them signed the request (`consistency.check_signed`,
    against ``enrolled_keys``); with ``bad_signature``: a signature that does not verify.
    """
    if (request.run_id, request.round) != (context.run_id, context.round):
        raise Conflict("unmask request is for another round", code="secagg_refused")
    both = request.survivors & request.dropped
    if both:
        raise Conflict(
            f"unmask request asks for both kinds of share of {', '.join(sorted(both))}",
            code="secagg_refused",
        )
    if site in request.dropped or site not in request.survivors:
        raise Conflict("unmask request says this site dropped out", code="secagg_refused")
    if len(request.survivors) < threshold:
        raise Conflict(
            f"{len(request.survivors)} survivors are fewer than the threshold {threshold}",
            code="secagg_threshold",
        )
    check_signed(request, threshold=threshold, enrolled_keys=enrolled_keys)
    wanted: dict[str, ShareKind] = {peer: "seed" for peer in request.survivors if peer in held}
    wanted.update({peer: "mask_key" for peer in request.dropped if peer in held})
    clash = sorted(peer for peer, kind in wanted.items() if revealed.get(peer, kind) != kind)
    if clash:
        raise Conflict(
            f"already revealed the other kind of share of {', '.join(clash)}",
            code="secagg_refused",
        )
    shares = []
    for peer in sorted(wanted):
        share = held[peer].seed if wanted[peer] == "seed" else held[peer].mask_key
        shares.append(
            RevealedShare(peer=peer, kind=wanted[peer], index=share.index, data=share.data)
        )
    answer = UnmaskAnswer(
        site=site, run_id=context.run_id, round=context.round, shares=tuple(shares)
    )
    return answer, {**revealed, **wanted}
