"""Privacy-utility table: what each DP mechanism costs in Dice on the phantom benchmark.

In-process, no server: 3 phantom sites (one style each), the real client training
(`client.training.train`, with the DP-SGD hook), the mechanisms of `client.privacy`,
each site's ε ledger priced by Opacus, and the server's streaming FedAvg
(`server.services.aggregation.Accumulator`). Every row starts from the same weights
and runs the same rounds and local steps with the same seeds; only the mechanism
changes. Dice (TC, WT, ET, mean) is of the final consensus model on every site's
validation cases; ε is the largest cumulative ε of any site at δ = 1e-5.

    python bench/privacy_utility.py                     # the table in docs/privacy.md
    python bench/privacy_utility.py --rounds 1 --steps 2 --rows none,svt-0.1   # a smoke run

The target (issue 11): some formal setting with ε ≤ 8 costs ≤ 0.03 mean Dice against
non-private FedAvg. The last line says PASS or MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.data import discover
from client.data.cache import CachedCase
from client.phantoms import generate
from client.privacy.accountant import Spend, noise_for_target
from client.privacy.dp_fedavg import EQUAL_WEIGHT, clip_to, privatise
from client.privacy.dp_sgd import DpSgdPlan
from client.privacy.ledger import EpsilonLedger
from client.privacy.noise import NoiseSource
from client.privacy.svt import share
from client.training import SiteData, evaluate, evaluation_roi, load_site_data, train
from server.services.aggregation import Accumulator
from shared import models
from shared.schemas import TrainingConfig
from shared.tensors import delta, from_arrays, spec_of, state_tensors, to_arrays

DELTA = 1e-5
MODEL = "segresnet-small"
TARGET_EPSILON, TARGET_COST = 8.0, 0.03
MIN_LEARNED = 0.1  # FedAvg must beat the untrained model by this for the verdict to mean anything


@dataclass(frozen=True)
class Row:
    """One line of the table: a mechanism and its parameters."""

    name: str
    mechanism: str
    params: dict[str, float]


def rows(args: argparse.Namespace) -> list[Row]:
    """The rows issue 11 asks for, in order."""
    svt = {"epsilon": args.svt_epsilon, "clip": args.svt_clip, "threshold": args.svt_threshold}
    return [
        Row("none", "none", {}),
        Row("dp_sgd-eps1", "dp_sgd", {"target_epsilon": 1.0, "max_grad_norm": args.grad_clip}),
        Row("dp_sgd-eps3", "dp_sgd", {"target_epsilon": 3.0, "max_grad_norm": args.grad_clip}),
        Row("dp_sgd-eps8", "dp_sgd", {"target_epsilon": 8.0, "max_grad_norm": args.grad_clip}),
        Row("dp_fedavg-0.5", "dp_fedavg", {"noise_multiplier": 0.5, "clip_norm": args.clip}),
        Row("dp_fedavg-1", "dp_fedavg", {"noise_multiplier": 1.0, "clip_norm": args.clip}),
        Row("dp_fedavg-2", "dp_fedavg", {"noise_multiplier": 2.0, "clip_norm": args.clip}),
        Row("svt-0.1", "svt", {"fraction": 0.1, **svt}),
        Row("svt-0.9", "svt", {"fraction": 0.9, **svt}),
    ]


@dataclass
class Site:
    """One phantom hospital: its data, training split and ε ledger."""

    name: str
    data: SiteData
    train: list[CachedCase]
    val: list[CachedCase]


def make_sites(args: argparse.Namespace, root: Path) -> list[Site]:
    """Generate and preprocess the phantom sites (one style each)."""
    sites = []
    for index in range(args.sites):
        folder = root / f"site-{index}"
        generate(folder, cases=args.cases, size=args.size, seed=args.seed + index, style=index)
        data = load_site_data(discover(folder).cases, root / f"cache-{index}")
        train_set, val_set = data.split(config(args))
        sites.append(Site(f"site-{index}", data, train_set, val_set))
    return sites


def config(args: argparse.Namespace, steps: int | None = None) -> TrainingConfig:
    """The local training every row uses."""
    return TrainingConfig(
        local_steps=steps or args.steps,
        batch_size=args.batch,
        crop_size=args.crop,
        learning_rate=args.lr,
        val_fraction=args.val_fraction,
        eval_max_cases=args.max_val_cases,
        seed=args.seed,
    )


def score(args: argparse.Namespace, weights: Any, sites: list[Site]) -> dict[str, float]:
    """Dice of ``weights`` over every site's validation cases."""
    volumes = [v for site in sites for v in site.val]
    roi = evaluation_roi(args.crop)
    return evaluate(MODEL, args.params, weights, volumes, torch.device("cpu"), roi_size=roi)


def run_row(args: argparse.Namespace, row: Row, sites: list[Site], ledgers: Path) -> dict[str, Any]:
    """Federated training with ``row``'s mechanism; returns Dice and the final ε."""
    base = state_tensors(models.build(MODEL, args.params, seed=args.seed).state_dict())
    ledger_of = {s.name: EpsilonLedger(ledgers / row.name / s.name) for s in sites}
    for round_number in range(1, args.rounds + 1):
        accumulator = Accumulator(spec_of(base))
        for index, site in enumerate(sites):
            seed = args.seed * 1000 + round_number * 10 + index
            noise = NoiseSource(seed=seed)
            plan, spend = None, None
            if row.mechanism == "dp_sgd":
                rate = min(1.0, args.batch / len(site.train))
                sigma = noise_for_target(
                    target_epsilon=row.params["target_epsilon"],
                    delta=DELTA,
                    sample_rate=rate,
                    steps=args.rounds * args.steps,
                )
                plan = DpSgdPlan(sigma, row.params["max_grad_norm"], rate, seed=seed)
                spend = Spend("dp_sgd", sigma, rate, args.steps, row.params["max_grad_norm"])
            result = train(
                MODEL,
                args.params,
                base,
                config(args),
                site.data,
                torch.device("cpu"),
                seed=seed,
                dp_sgd=plan,
            )
            change = delta(result.weights, base)
            weight = float(result.num_samples)
            if row.mechanism == "dp_fedavg":
                change = privatise(
                    change,
                    clip_norm=row.params["clip_norm"],
                    noise_multiplier=row.params["noise_multiplier"],
                    min_sites=len(sites),
                    noise=noise,
                )
                weight = EQUAL_WEIGHT
                spend = Spend(
                    "dp_fedavg", row.params["noise_multiplier"], 1.0, 1, row.params["clip_norm"]
                )
            elif row.mechanism == "svt":
                change, _ = share(
                    change,
                    fraction=row.params["fraction"],
                    epsilon=row.params["epsilon"],
                    threshold=row.params["threshold"],
                    clip=row.params["clip"],
                    noise=noise,
                )
                spend = Spend("svt", pure_epsilon=row.params["epsilon"], steps=1)
            elif row.mechanism == "none" and args.clip_plain:
                change, _ = clip_to(change, args.clip)
            if spend is not None:
                ledger_of[site.name].record("bench", round_number, spend, delta=DELTA)
            accumulator.add(to_arrays(change), weight)
        base = from_arrays(accumulator.consensus(to_arrays(base)))
    epsilons = [ledger.spent(delta=DELTA) for ledger in ledger_of.values()]
    return {**score(args, base, sites), "epsilon": max(epsilons) if spend_any(row) else None}


def spend_any(row: Row) -> bool:
    """Whether the row's mechanism has an ε at all."""
    return row.mechanism != "none"


def centralised(args: argparse.Namespace, sites: list[Site]) -> dict[str, Any]:
    """One model on every site's training cases, as many steps as all sites together."""
    pooled = SiteData({f"{s.name}/{v.case_id}": v for s in sites for v in s.train})
    weights = state_tensors(models.build(MODEL, args.params, seed=args.seed).state_dict())
    total = args.rounds * args.steps * len(sites)
    cfg = config(args, steps=total).model_copy(update={"val_fraction": 1e-9})
    result = train(MODEL, args.params, weights, cfg, pooled, torch.device("cpu"), seed=args.seed)
    return {**score(args, result.weights, sites), "epsilon": None}


def describe(row: Row) -> str:
    """The row's parameters in one short cell."""
    return ", ".join(f"{k}={v:g}" for k, v in row.params.items()) or "-"


def write_rows(
    path: Path,
    results: list[tuple[str, str, str, dict[str, Any]]],
    baseline: float | None,
    *,
    learned: bool,
) -> None:
    """The table as JSON: each row's ε, mean Dice and Dice cost against plain FedAvg.

    ``fedavg_learned`` says whether the costs mean anything (plain FedAvg gained at least
    MIN_LEARNED Dice over the untrained model).
    """
    rows_out = [
        {
            "row": name,
            "mechanism": mechanism,
            "parameters": params,
            "epsilon": r["epsilon"],
            "dice_mean": r["dice_mean"],
            "cost": None if baseline is None else baseline - r["dice_mean"],
        }
        for name, mechanism, params, r in results
    ]
    path.write_text(json.dumps({"fedavg_learned": learned, "rows": rows_out}, indent=2))


def main() -> int:
    """Run the rows and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--cases", type=int, default=16, help="phantom cases per site")
    parser.add_argument("--size", type=int, default=32, help="phantom volume edge")
    parser.add_argument("--crop", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="local steps per round")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--max-val-cases", type=int, default=4)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="dp_sgd max_grad_norm")
    parser.add_argument("--clip", type=float, default=1.0, help="dp_fedavg clip_norm C")
    parser.add_argument("--clip-plain", action="store_true", help="clip the none row too")
    parser.add_argument("--svt-epsilon", type=float, default=1.0, help="svt ε per round")
    parser.add_argument("--svt-clip", type=float, default=1e-4, help="svt γ (the paper's)")
    parser.add_argument("--svt-threshold", type=float, default=1e-6, help="svt τ (NVFlare's)")
    parser.add_argument("--rows", default="all", help="comma-separated row names, or all")
    parser.add_argument("--no-central", action="store_true", help="skip the central baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json", type=Path, help="also write the rows here (bench/privacy_attacks.py --utility)"
    )
    args = parser.parse_args()
    args.params = {"blocks_down": [1, 1], "blocks_up": [1]}
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)  # only MONAI's internals; privacy noise is `NoiseSource`
    selected = rows(args)
    if args.rows != "all":
        by_name = {r.name: r for r in selected}
        selected = [by_name[name] for name in args.rows.split(",") if name in by_name]
    started = time.perf_counter()
    results: list[tuple[str, str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sites = make_sites(args, Path(tmp))
        untrained = state_tensors(models.build(MODEL, args.params, seed=args.seed).state_dict())
        results.append(
            ("untrained", "-", "round-0 model", {**score(args, untrained, sites), "epsilon": None})
        )
        print("  untrained scored", file=sys.stderr, flush=True)
        for row in selected:
            t0 = time.perf_counter()
            results.append(
                (row.name, row.mechanism, describe(row), run_row(args, row, sites, Path(tmp)))
            )
            done = results[-1][3]
            print(
                f"  {row.name}: {time.perf_counter() - t0:.0f} s, ε {done['epsilon']}, "
                f"Dice mean {done['dice_mean']:.3f} TC {done['dice_tc']:.3f} "
                f"WT {done['dice_wt']:.3f} ET {done['dice_et']:.3f}",
                file=sys.stderr,
                flush=True,
            )
        if not args.no_central:
            results.append(("central", "central", "all cases, one model", centralised(args, sites)))
    baseline = next((r[3]["dice_mean"] for r in results if r[0] == "none"), None)
    print(
        f"phantoms: {args.sites} sites x {args.cases} cases at {args.size}^3, crop {args.crop}, "
        f"{args.rounds} rounds x {args.steps} steps, batch {args.batch}, lr {args.lr}, "
        f"seed {args.seed}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}; {time.perf_counter() - started:.0f} s"
    )
    header = ["row", "mechanism", "parameters", "final ε (δ=1e-5)", "mean Dice"]
    header += ["TC", "WT", "ET", "cost vs FedAvg"]
    print("| " + " | ".join(header) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    best: float | None = None
    for name, mechanism, params, r in results:
        eps = "∞ (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        cost = "" if baseline is None else f"{baseline - r['dice_mean']:+.3f}"
        print(
            f"| {name} | {mechanism} | {params} | {eps} | {r['dice_mean']:.3f} | "
            f"{r['dice_tc']:.3f} | {r['dice_wt']:.3f} | {r['dice_et']:.3f} | {cost} |"
        )
        if r["epsilon"] is not None and r["epsilon"] <= TARGET_EPSILON and baseline is not None:
            c = baseline - r["dice_mean"]
            best = c if best is None else min(best, c)
    start = next(r[3]["dice_mean"] for r in results if r[0] == "untrained")
    learned = baseline is not None and baseline - start >= MIN_LEARNED
    if args.json is not None:
        write_rows(args.json, results, baseline, learned=learned)
    verdict = "PASS" if learned and best is not None and best <= TARGET_COST else "MISS"
    shown = "no formal row" if best is None else f"{best:.3f}"
    note = "" if learned else f" (FedAvg itself gained < {MIN_LEARNED} Dice: not a valid test)"
    print(
        f"{verdict}: smallest Dice cost of a formal setting with ε ≤ {TARGET_EPSILON:g}: "
        f"{shown} (target ≤ {TARGET_COST}){note}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
