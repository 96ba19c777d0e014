"""Simulated sites for the leakage bench: phantom cohorts and a federation in one process.

A cohort is one hospital's phantoms (one `client.phantoms` style per site): the members it
trains on, held-out cases of the same style that it never sees (the non-members of
membership inference), and disjoint reference cases for calibration models. Which cases
train is decided by the site's own split (`SiteData.split`, i.e. `client.data.split_ids`
under the run's training config), so a member here is a member as the real agent would
choose it. Cases are preprocessed once into an on-disk cache under the cohort's root.

`run_federation` is FedAvg over `uploads.site_upload`: each round every site trains from
the consensus, the mechanism protects each delta, and the consensus moves by the
weighted mean of the protected deltas, as the server would do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.attacks.mechanisms import MechanismConfig, Protect
from bench.attacks.uploads import SiteUpload, site_upload, weighted_mean
from client.data import Case, discover, split_ids
from client.data.cache import CachedCase
from client.phantoms import generate
from client.privacy.dp_sgd import DpSgdPlan
from client.training import SiteData, load_site_data
from shared import models
from shared.schemas import TrainingConfig
from shared.tensors import Tensors, apply_delta, state_tensors


@dataclass(frozen=True, slots=True)
class Cohort:
    """One simulated site's cases: what it trains on, held-out and reference cases."""

    data: SiteData  # the members plus the validation cases its split needs
    held_out: list[CachedCase]
    reference: SiteData  # as many other cases as members (same validation cases)


def _validation_count(members: int, config: TrainingConfig) -> int:
    """How many validation cases to add to ``members`` so the site's split trains on all of them.

    `split_ids` validates ``round(n * val_fraction)`` cases (at least one, at most
    ``n - min_train``), the lowest-ranked by the seeded hash. Cases from the validation
    side of a larger split rank below every training-side case, so adding exactly the
    count the split asks for leaves precisely the members training.
    """
    extra = 1
    while True:
        n = members + extra
        wanted = min(max(1, round(n * config.val_fraction)), max(1, n - config.min_train))
        if wanted == extra:
            return extra
        extra += 1


def make_cohort(
    root: Path,
    *,
    style: int,
    train_cases: int,
    held_out: int,
    size: int,
    config: TrainingConfig,
) -> Cohort:
    """Write phantoms of ``style`` under ``root`` until the split yields every group."""
    folder = root / f"style{style}"
    cache = root / "cache"
    needed = 2 * train_cases + held_out
    extra = _validation_count(train_cases, config)
    count = needed + 2
    while True:
        generate(folder, cases=count, size=size, seed=style + 1, style=style)
        cases: dict[str, Case] = {c.case_id: c for c in discover(folder).cases}
        plan = split_ids(
            list(cases), val_fraction=config.val_fraction, seed=config.seed,
            min_train=config.min_train,
        )  # fmt: skip
        train_side = [cases[i] for i in plan.train]
        val_side = [cases[i] for i in plan.val]
        if len(train_side) >= needed and len(val_side) >= extra:
            break
        count += max(2, needed // 4)
    members = list(train_side[:train_cases])
    reference = list(train_side[train_cases : 2 * train_cases])
    held = list(train_side[2 * train_cases : needed])
    validation = list(val_side[:extra])
    cohort = Cohort(
        data=load_site_data([*members, *validation], cache),
        held_out=list(load_site_data(held, cache).cases.values()),
        reference=load_site_data([*reference, *validation], cache),
    )
    for site, expected in ((cohort.data, members), (cohort.reference, reference)):
        train_set, _ = site.split(config)
        if {c.case_id for c in train_set} != {c.case_id for c in expected}:
            raise RuntimeError("the site's own split does not train on the chosen cases")
    return cohort


@dataclass(frozen=True, slots=True)
class Federation:
    """A finished simulated run: the final consensus and the first round as uploaded."""

    weights: Tensors
    base: Tensors  # the consensus the first round trained from
    uploads: list[SiteUpload]  # the first round's uploads, unprotected (the truth)
    views: list[Tensors]  # the first round's uploads as the mechanism left them


def initial_weights(model_name: str, model_params: Mapping[str, Any]) -> Tensors:
    """Round-0 weights as the server makes them (registry seed 0)."""
    return state_tensors(models.build(model_name, model_params, seed=0).state_dict())


def run_federation(
    *,
    model_name: str,
    model_params: Mapping[str, Any],
    sites: Sequence[SiteData],
    config: TrainingConfig,
    rounds: int,
    protect: Protect,
    mechanism: MechanismConfig,
    device: torch.device,
    seed: int = 0,
    dp_sgd: DpSgdPlan | None = None,
) -> Federation:
    """``rounds`` of FedAvg over ``sites``, each delta passed through ``protect``.

    With ``dp_sgd`` every site trains with DP-SGD, each round with its own noise seed.
    """
    weights = initial_weights(model_name, model_params)
    first: tuple[Tensors, list[SiteUpload], list[Tensors]] | None = None
    for round_number in range(rounds):
        uploads, views = [], []
        for index, data in enumerate(sites):
            noise_seed = seed + 7919 * (round_number + 1) + index
            upload = site_upload(
                model_name=model_name,
                model_params=model_params,
                base=weights,
                config=config,
                data=data,
                device=device,
                seed=seed + 1000 * round_number + index,
                dp_sgd=None if dp_sgd is None else replace(dp_sgd, seed=noise_seed),
            )
            view = protect(upload.delta, replace(mechanism, seed=noise_seed))
            uploads.append(upload)
            views.append(view)
        if first is None:
            first = (weights, uploads, views)
        mean = weighted_mean(views, [u.num_samples for u in uploads])
        weights = apply_delta(weights, mean)
    assert first is not None
    return Federation(weights=weights, base=first[0], uploads=first[1], views=first[2])
