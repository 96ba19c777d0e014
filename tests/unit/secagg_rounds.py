"""An in-process secure-aggregation round for the tests: every site and the server, step by step.

Each party's state is kept apart (a `Site` per site, a `MaskedSum` for the server),
and everything the server ever holds is recorded in ``Round.server_saw`` so the
tests can look for an individual delta in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import crypto
from shared.schemas import TensorSpec
from shared.secagg import keys as keys_module
from shared.secagg import site as site_steps
from shared.secagg.aggregation import MaskedSum
from shared.secagg.consistency import sign_survivors
from shared.secagg.graph import Graph, neighbours
from shared.secagg.keys import KeyAdvert, RoundContext, RoundKeys
from shared.secagg.messages import MaskedInput, ShareKind, UnmaskAnswer, UnmaskRequest
from shared.secagg.shares import HeldShares, SealedShare

CONTEXT = RoundContext(run_id="run-1", round=3)


@dataclass
class Site:
    name: str
    signing: Ed25519PrivateKey
    keys: RoundKeys
    held: dict[str, HeldShares] = field(default_factory=dict)
    revealed: dict[str, ShareKind] = field(default_factory=dict)
    signed: bytes | None = None


@dataclass
class Round:
    sites: dict[str, Site]
    adverts: dict[str, KeyAdvert]
    graph: Graph
    threshold: int
    clip_range: float
    bits: int
    spec: list[TensorSpec]
    server: MaskedSum | None = None
    relayed: dict[str, list[SealedShare]] = field(default_factory=dict)
    server_saw: list[Any] = field(default_factory=list)


def make_spec(shapes: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
    return [
        TensorSpec(name=name, shape=list(shape), dtype="float32") for name, shape in shapes.items()
    ]


def start(
    names: list[str],
    *,
    threshold: int,
    spec: list[TensorSpec],
    clip_range: float = 0.05,
    bits: int = 16,
    degree: int = 16,
    context: RoundContext = CONTEXT,
) -> Round:
    """Advertise: every site makes and signs its round keys; everyone verifies every advert."""
    sites = {
        name: Site(name, crypto.generate_signing_key(), keys_module.generate_round_keys())
        for name in names
    }
    adverts = {
        name: keys_module.advertise(s.keys, site=name, context=context, signing_key=s.signing)
        for name, s in sites.items()
    }
    enrolled = {name: s.signing.public_key() for name, s in sites.items()}
    keys_module.verify_adverts(adverts, context=context, enrolled_keys=enrolled)
    graph = neighbours(names, degree=degree, seed=context.label())
    state = Round(sites, adverts, graph, threshold, clip_range, bits, spec)
    state.server_saw.extend(adverts.values())
    return state


def share(state: Round, *, skip: frozenset[str] = frozenset()) -> None:
    """Share: each site but ``skip`` seals its shares, the server relays, holders open them."""
    outbox: dict[str, list[SealedShare]] = {name: [] for name in state.sites}
    shared = []
    for name, s in state.sites.items():
        if name in skip:
            continue
        shared.append(name)
        for sealed in site_steps.make_shares(
            s.keys,
            site=name,
            context=CONTEXT,
            graph=state.graph,
            adverts=state.adverts,
            threshold=state.threshold,
        ):
            outbox[sealed.recipient].append(sealed)
            state.server_saw.append(sealed)
    state.relayed = outbox
    for name, s in state.sites.items():
        if name in skip:
            continue
        s.held = site_steps.receive_shares(
            outbox[name],
            keys=s.keys,
            site=name,
            context=CONTEXT,
            graph=state.graph,
            adverts=state.adverts,
        )
    state.server = MaskedSum(
        spec=state.spec,
        context=CONTEXT,
        graph=state.graph,
        adverts=state.adverts,
        shared=shared,
        threshold=state.threshold,
        clip_range=state.clip_range,
        bits=state.bits,
    )


def mask(
    state: Round, name: str, delta: dict[str, npt.NDArray[Any]], weight: int, **extra: Any
) -> MaskedInput:
    s = state.sites[name]
    return site_steps.mask_input(
        delta,
        spec=state.spec,
        weight=weight,
        keys=s.keys,
        site=name,
        context=CONTEXT,
        graph=state.graph,
        adverts=state.adverts,
        held=s.held,
        clip_range=state.clip_range,
        bits=state.bits,
        **extra,
    )


def upload(state: Round, masked: MaskedInput) -> None:
    assert state.server is not None
    state.server.add(masked)
    state.server_saw.append(masked.vector.copy())
    state.server_saw.append(state.server.total.copy())


def enrolled(state: Round) -> dict[str, Any]:
    return {name: s.signing.public_key() for name, s in state.sites.items()}


def sign(state: Round, request: UnmaskRequest, signers: list[str]) -> UnmaskRequest:
    """Consistency check: ``signers`` sign the survivor list; the server attaches them."""
    assert state.server is not None
    signatures = {}
    for name in signers:
        s = state.sites[name]
        signatures[name], s.signed = sign_survivors(
            request, site=name, context=CONTEXT, signing_key=s.signing, signed=s.signed
        )
    return state.server.signed_request(request, signatures)


def answers_from(state: Round, request: UnmaskRequest, responders: list[str]) -> list[UnmaskAnswer]:
    out = []
    for name in responders:
        s = state.sites[name]
        answer, s.revealed = site_steps.answer_unmask(
            request,
            site=name,
            context=CONTEXT,
            held=s.held,
            threshold=state.threshold,
            revealed=s.revealed,
            enrolled_keys=enrolled(state),
        )
        out.append(answer)
        state.server_saw.append(answer)
    return out


def unmask(state: Round) -> tuple[dict[str, npt.NDArray[np.float32]], int]:
    assert state.server is not None
    request = state.server.unmask_request()
    signed = sign(state, request, sorted(request.survivors))
    return state.server.unmask(answers_from(state, signed, sorted(request.survivors)), signed)


def run_round(
    deltas: dict[str, dict[str, npt.NDArray[Any]]],
    weights: dict[str, int],
    *,
    threshold: int,
    spec: list[TensorSpec],
    drop_before_share: frozenset[str] = frozenset(),
    drop_before_input: frozenset[str] = frozenset(),
    **options: Any,
) -> tuple[Round, dict[str, npt.NDArray[np.float32]], int]:
    state = start(sorted(deltas), threshold=threshold, spec=spec, **options)
    share(state, skip=drop_before_share)
    for name in sorted(deltas):
        if name in drop_before_share | drop_before_input:
            continue
        upload(state, mask(state, name, deltas[name], weights[name]))
    mean, total = unmask(state)
    return state, mean, total


def fedavg(
    deltas: dict[str, dict[str, npt.NDArray[Any]]], weights: dict[str, int], clip: float
) -> dict[str, npt.NDArray[np.float64]]:
    total = sum(weights[name] for name in deltas)
    names = next(iter(deltas.values()))
    return {
        tensor: sum(
            weights[n] * np.clip(deltas[n][tensor].astype(np.float64), -clip, clip) for n in deltas
        )
        / total
        for tensor in names
    }
