"""In-process evaluation for ``simulate``: the final model, and the central baseline.

The sites report the Dice of the model they *received* each round, so the model
after the last round is never evaluated by them; `evaluate_on_sites` does it here
with the same code and the same validation split the sites use. `central_baseline`
trains one model on the union of the sites' training splits for as many steps as
the whole federation computed, and evaluates it at each round's equivalent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.schemas import TrainingConfig
from shared.tensors import Tensors, state_tensors


@dataclass(frozen=True, slots=True)
class SiteSplit:
    """One site's cached training and validation cases."""

    name: str
    train: list[Any]  # client.data.cache.CachedCase
    val: list[Any]


def load_splits(
    data_dirs: Mapping[str, Path], config: TrainingConfig, *, caches: Mapping[str, Path]
) -> list[SiteSplit]:
    """Each site's cases from its own cache, split as the site's client splits them."""
    from client.training import open_site_data

    splits = []
    for name, path in data_dirs.items():
        data, _report = open_site_data(path, caches[name], min_cases=1)
        train, val = data.split(config)
        splits.append(SiteSplit(name=name, train=train, val=val))
    return splits


def evaluate_on_sites(
    *,
    model: str,
    model_params: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    splits: Sequence[SiteSplit],
    config: TrainingConfig,
) -> dict[str, dict[str, float]]:
    """Dice and HD95 (``dice_tc`` … ``hd95_mean``) of ``weights`` on every validation case."""
    from client.training import evaluate, evaluation_roi

    device = torch.device("cpu")
    return {
        split.name: evaluate(
            model,
            model_params,
            weights,
            split.val,
            device,
            roi_size=evaluation_roi(config.crop_size),
        )
        for split in splits
    }


def central_baseline(
    *,
    model: str,
    model_params: Mapping[str, Any],
    initial: Mapping[str, torch.Tensor],
    splits: Sequence[SiteSplit],
    config: TrainingConfig,
    rounds: int,
    steps_per_round: int,
    on_round: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
) -> list[dict[str, dict[str, float]]]:
    """Train centrally on the union of the training splits; evaluate after each round.

    One optimiser for all ``rounds * steps_per_round`` steps, as a single site holding
    all the data would train. Entry ``v`` of the result is the model after ``v``
    rounds' worth of steps (entry 0 is the initial model), per site.
    """
    from client.training import SiteData, build_model, training_steps

    union = [case for split in splits for case in split.train]
    data = SiteData({f"{index:06d}-{case.case_id}": case for index, case in enumerate(union)})
    device = torch.device("cpu")
    network = build_model(model, model_params, initial)
    pool = data.pool(union, config.crop_size, device)

    def scores(weights: Tensors) -> dict[str, dict[str, float]]:
        return evaluate_on_sites(
            model=model, model_params=model_params, weights=weights, splits=splits, config=config
        )

    results = [scores(dict(initial))]
    if on_round is not None:
        on_round(0, results[0])
    steps = training_steps(
        network,
        pool,
        steps=rounds * steps_per_round,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        seed=config.seed,
    )
    for step, _loss in enumerate(steps, start=1):
        if step % steps_per_round == 0:
            results.append(scores(state_tensors(network.state_dict())))
            network.train()
            if on_round is not None:
                on_round(len(results) - 1, results[-1])
    return results
