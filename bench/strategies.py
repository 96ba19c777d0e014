"""Aggregation strategies side by side on heterogeneous phantom sites, in one process.

No server and no network: the same local training the sites run (`client.training`)
and the same aggregation the server runs (`server.services.strategies`), so every
row differs only in the strategy. Five sites from ``site_plans(5, "strong")``
(4/12/30/4/12 cases, scanner styles, tumour-size mix, a label shift at site-5);
the same rounds, local steps and seeds for every row (site ``i`` in round ``r``
always trains with the same seed). Reported: the final model's Dice (TC, WT, ET,
mean) on every site's validation split, averaged over the sites with equal weight.

Rows:
- each strategy, honest;
- centralised: one model trained on the union of the training splits for as many
  steps as the whole federation computed (rounds x sites x local steps), and for
  only rounds x local steps (what the federation does one step after another);
- each site alone (``train-local``): rounds x local steps on its own data;
- poisoning: site-2 (12 cases) uploads its delta x 50 (model replacement), or
  Gaussian noise with the norm of that scaled delta; FedAvg against trimmed mean,
  median and the norm bound.

Targets (PASS/MISS): the best strategy within 0.01 mean Dice of centralised; each
robust strategy under attack within 0.02 of the honest FedAvg run.

    python bench/strategies.py --quick                       # minutes: plumbing only
    python bench/strategies.py --size 48 --rounds 6 --local-steps 20
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.phantoms import generate_sites, site_plans
from client.training import SiteData, build_model, training_steps
from fedseg.simulate_eval import SiteSplit, evaluate_on_sites, load_splits
from server.services.strategies import aggregate, from_memory
from shared import models
from shared.aggregation import (
    AggregationConfig,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Median,
    TrimmedMean,
    proximal_mu,
)
from shared.schemas import TrainingConfig
from shared.tensors import Tensors, delta, from_arrays, state_tensors, to_arrays

SITES = 5
HOSTILE = 1  # site-2: 12 cases, neither the largest nor the label-shifted site
SCALE = 50.0
TINY: dict[str, Any] = {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}

STRATEGIES: dict[str, AggregationConfig] = {
    "fedavg": FedAvg(),
    "fedprox (mu 0.01)": FedProx(mu=0.01),
    "fedavgm (lr 1, momentum 0.5)": FedAvgM(server_learning_rate=1.0, momentum=0.5),
    "fedadam (lr 0.01)": FedAdam(server_learning_rate=0.01),
    "fedyogi (lr 0.01)": FedYogi(server_learning_rate=0.01),
    "fedavg, equal weights": FedAvg(weighting="equal"),
    "fedavg, capped at 0.35": FedAvg(weighting="capped", max_share=0.35),
    "trimmed mean (beta 0.2)": TrimmedMean(trim_fraction=0.2),
    "median": Median(),
    "fedavg + norm bound (x1)": FedAvg(norm_bound_factor=1.0),
}
ROBUST_ROWS = ("trimmed mean (beta 0.2)", "median", "fedavg + norm bound (x1)")
ATTACKS = ("scaled x50", "noise")


@dataclass(frozen=True, slots=True)
class Setting:
    """What every row shares."""

    model: str
    params: dict[str, Any]
    training: TrainingConfig
    rounds: int
    seed: int
    device: torch.device


@dataclass(slots=True)
class Site:
    """One site's training data (its crop pool is built once) and case count."""

    split: SiteSplit
    data: SiteData

    @property
    def cases(self) -> int:
        return len(self.split.train)


def local_train(
    setting: Setting,
    site: Site,
    weights: Mapping[str, torch.Tensor],
    *,
    steps: int,
    seed: int,
    mu: float = 0.0,
) -> Tensors:
    """``steps`` of the sites' own training step from ``weights``."""
    model = build_model(setting.model, setting.params, weights)
    pool = site.data.pool(site.split.train, setting.training.crop_size, setting.device)
    for _ in training_steps(
        model,
        pool,
        steps=steps,
        batch_size=setting.training.batch_size,
        learning_rate=setting.training.learning_rate,
        weight_decay=setting.training.weight_decay,
        seed=seed,
        proximal_mu=mu,
    ):
        pass
    return state_tensors(model.cpu().state_dict())


def poison(change: Tensors, attack: str, seed: int) -> Tensors:
    """The hostile site's upload: its delta x 50, or noise with that norm."""
    scaled = {name: tensor * SCALE for name, tensor in change.items()}
    if attack == "scaled x50":
        return scaled
    norm = float(torch.sqrt(sum((t.double() ** 2).sum() for t in scaled.values())))
    generator = torch.Generator().manual_seed(seed)
    noise = {name: torch.randn(t.shape, generator=generator) for name, t in scaled.items()}
    noise_norm = float(torch.sqrt(sum((t.double() ** 2).sum() for t in noise.values())))
    return {name: (t * (norm / noise_norm)).to(scaled[name].dtype) for name, t in noise.items()}


def federate(
    setting: Setting,
    sites: Sequence[Site],
    initial: Tensors,
    config: AggregationConfig,
    attack: str | None = None,
) -> Tensors:
    """``rounds`` rounds of local training and aggregation under ``config``."""
    weights, state = dict(initial), None
    mu = proximal_mu(config)
    for round_number in range(1, setting.rounds + 1):
        pairs = []
        for index, site in enumerate(sites):
            seed = setting.seed * 100_000 + round_number * 100 + index
            local = local_train(
                setting, site, weights, steps=setting.training.local_steps, seed=seed, mu=mu
            )
            change = delta(local, weights)
            if attack is not None and index == HOSTILE:
                change = poison(change, attack, seed)
            pairs.append((to_arrays(change), site.cases))
        result = aggregate(config, base=to_arrays(weights), updates=from_memory(pairs), state=state)
        weights, state = (
            {k: v.clone() for k, v in from_arrays(result.weights).items()},
            result.state,
        )
    return weights


def centralised(
    setting: Setting, sites: Sequence[Site], initial: Tensors, *, sequential: bool = False
) -> Tensors:
    """One model on the union of the training splits.

    As many steps as the whole federation computed (rounds x sites x local steps), or,
    with ``sequential``, as many as one site runs one after another (rounds x local
    steps): the federation's wall-clock budget.
    """
    union = [volume for site in sites for volume in site.split.train]
    data = SiteData({f"{i:06d}-{v.case_id}": v for i, v in enumerate(union)})
    split = SiteSplit(name="union", train=union, val=[])
    steps = setting.rounds * setting.training.local_steps
    if not sequential:
        steps *= len(sites)
    return local_train(setting, Site(split, data), initial, steps=steps, seed=setting.seed)


def score(setting: Setting, sites: Sequence[Site], weights: Tensors) -> dict[str, float]:
    """Dice on every site's validation split, averaged over the sites."""
    per_site = evaluate_on_sites(
        model=setting.model,
        model_params=setting.params,
        weights=weights,
        splits=[site.split for site in sites],
        config=setting.training,
    )
    keys = ("dice_tc", "dice_wt", "dice_et", "dice_mean")
    return {key: float(np.mean([scores[key] for scores in per_site.values()])) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48, help="phantom edge in voxels")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="segresnet-small")
    parser.add_argument("--tiny", action="store_true", help="a smaller network (plumbing)")
    parser.add_argument("--quick", action="store_true", help="size 24, 2 rounds x 2 steps, tiny")
    parser.add_argument("--only", nargs="*", help="strategy rows to run (default: all)")
    parser.add_argument("--baselines-only", action="store_true", help="the centralised rows")
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=ATTACKS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.rounds, args.local_steps, args.crop, args.tiny = 24, 2, 2, 16, True
    torch.set_num_threads(args.threads)
    setting = Setting(
        model=args.model,
        params=TINY if args.tiny else {},
        training=TrainingConfig(
            local_steps=args.local_steps,
            batch_size=args.batch,
            crop_size=min(args.crop, args.size),
            learning_rate=args.lr,
            val_fraction=0.25,
            eval_max_cases=4,
            seed=args.seed,
        ),
        rounds=args.rounds,
        seed=args.seed,
        device=torch.device("cpu"),
    )
    started = time.perf_counter()
    # the cached cases are memory-mapped from here: the folder lives as long as the bench
    tmp = tempfile.mkdtemp(prefix="fedseg-strategies-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    plans = site_plans(SITES, heterogeneity="strong")
    folders = generate_sites(Path(tmp), plans, size=args.size, seed=args.seed)
    caches = {name: Path(tmp) / "cache" / name for name in folders}
    splits = load_splits(folders, setting.training, caches=caches)
    sites = [Site(split, SiteData({v.case_id: v for v in split.train})) for split in splits]
    print(
        f"# {SITES} sites: "
        + ", ".join(f"{p.name} {p.cases} cases ({p.style.name})" for p in plans)
        + f"; {args.size}^3, {args.rounds} rounds x {args.local_steps} local steps, crop "
        f"{setting.training.crop_size}, batch {args.batch}, lr {args.lr}, model {args.model}"
        f"{' (tiny)' if args.tiny else ''}, seed {args.seed}"
    )
    print(
        f"# machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.threads} threads, CPU only"
    )
    initial = state_tensors(
        models.build(setting.model, setting.params, seed=args.seed).state_dict()
    )
    rows: list[tuple[str, dict[str, float], float]] = []

    def row(label: str, make: Callable[[], Tensors]) -> dict[str, float]:
        begun = time.perf_counter()
        result = score(setting, sites, make())
        took = time.perf_counter() - begun
        rows.append((label, result, took))
        print(
            f"{label:<42} mean {result['dice_mean']:.3f}  TC {result['dice_tc']:.3f}  "
            f"WT {result['dice_wt']:.3f}  ET {result['dice_et']:.3f}  ({took:.0f} s)",
            flush=True,
        )
        return result

    chosen = {k: v for k, v in STRATEGIES.items() if not args.only or k in args.only}
    central = row("centralised (union of the sites)", lambda: centralised(setting, sites, initial))
    row(
        "centralised, rounds x local steps only",
        lambda: centralised(setting, sites, initial, sequential=True),
    )
    if args.baselines_only:
        return
    honest = {
        label: row(label, lambda c=config: federate(setting, sites, initial, c))
        for label, config in chosen.items()
    }
    attacked: dict[tuple[str, str], dict[str, float]] = {}
    for attack in args.attacks:
        for label in ("fedavg", *ROBUST_ROWS):
            if label not in chosen:
                continue
            attacked[(label, attack)] = row(
                f"{label}, site-2 hostile ({attack})",
                lambda c=chosen[label], a=attack: federate(setting, sites, initial, c, a),
            )
    for index, site in enumerate(sites):
        row(
            f"{site.split.name} alone ({site.cases} training cases)",
            lambda s=site, i=index: local_train(
                setting,
                s,
                initial,
                steps=setting.rounds * setting.training.local_steps,
                seed=args.seed * 100_000 + i,
            ),
        )

    print(f"# total {time.perf_counter() - started:.0f} s")
    if honest:
        best_label = max(honest, key=lambda k: honest[k]["dice_mean"])
        best = honest[best_label]["dice_mean"]
        gap = central["dice_mean"] - best
        print(
            f"best strategy {best_label}: {best:.3f} vs centralised {central['dice_mean']:.3f} "
            f"(gap {gap:+.3f}; target <= 0.01): {'PASS' if gap <= 0.01 else 'MISS'}"
        )
    if "fedavg" in honest:
        reference = honest["fedavg"]["dice_mean"]
        if reference < 0.5 * central["dice_mean"]:
            print(
                f"INCONCLUSIVE: honest fedavg reached {reference:.3f}, under half of "
                f"centralised ({central['dice_mean']:.3f}): the federation has not learned at "
                "this budget, so robustness cannot be judged; raise --rounds / --local-steps"
            )
            return
        for (label, attack), result in attacked.items():
            if label == "fedavg":
                continue
            drop = reference - result["dice_mean"]
            print(
                f"{label} with site-2 hostile ({attack}): {result['dice_mean']:.3f} vs honest "
                f"fedavg {reference:.3f} (drop {drop:+.3f}; target <= 0.02): "
                f"{'PASS' if drop <= 0.02 else 'MISS'}"
            )


if __name__ == "__main__":
    main()
