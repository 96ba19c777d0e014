"""A hospital-scale site on CPU: peak memory, first start and warm restart at 10 and 60 cases.

Usage: .venv/bin/python bench/site_memory.py [--cases 10,60] [--workdir DIR] [--unique 10]

Generates full-size phantoms (240x240x155, four modalities, int16 like BraTS) once
with `client.phantoms` in the BraTS 2018 layout (``--unique`` distinct cases, the
rest hard links under other case ids, so 60 cases cost 10 cases of generation),
then for each case count runs a fresh client process that does what ``fedseg
client run`` does before and during a round: intake through the on-disk cache
(cold: every case read once, checked and preprocessed; then warm: a second
process with the cache in place), a few training steps on memory-mapped crops and
the evaluation of one whole validation case. It prints, each with PASS or MISS:

- peak RSS of the client process <= 1.5 GB at every case count, and flat: the
  largest count within 10% + 50 MB of the smallest;
- first start <= 1.5 s per case of preprocessing (the time spent building entries);
- warm restart <= 0.1 s per case (the whole intake with the cache in place).

``--workdir`` keeps the generated cases (and reuses them on the next run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (240, 240, 155)
RSS_LIMIT_MB = 1.5 * 1024
COLD_LIMIT_S = 1.5
WARM_LIMIT_S = 0.1


def generate(root: Path, *, total: int, unique: int) -> Path:
    """``root/data<total>/HGG/<case>/...``: ``unique`` phantoms, hard-linked to ``total``."""
    from client.phantoms import Phantom, make_phantom, site_style, write_case

    source = root / "unique"
    style = site_style(0)
    for index in range(unique):
        case_id = f"Brats18_U_{index:03d}"
        if (source / "HGG" / case_id).is_dir():
            continue
        started = time.perf_counter()
        full = make_phantom(SHAPE[0], np.random.default_rng([7, index]), style)
        z0 = (SHAPE[0] - SHAPE[2]) // 2
        window = (slice(None), slice(None), slice(z0, z0 + SHAPE[2]))
        phantom = Phantom(
            images={name: data[window] for name, data in full.images.items()},
            label=full.label[window],
            brain=full.brain[window],
            affine=np.diag([-1.0, -1.0, 1.0, 1.0]),
        )
        scratch = source / "HGG" / f".{case_id}"
        shutil.rmtree(scratch, ignore_errors=True)
        folder = write_case(phantom, source / "HGG", f".{case_id}")
        for file in folder.iterdir():
            file.rename(folder / file.name.replace(f".{case_id}", case_id))
        folder.rename(source / "HGG" / case_id)
        print(
            f"  phantom {index + 1}/{unique} in {time.perf_counter() - started:.1f} s", flush=True
        )
    target = root / f"data{total}"
    if not target.is_dir():
        for index in range(total):
            origin = source / "HGG" / f"Brats18_U_{index % unique:03d}"
            case_id = f"Brats18_S_{index:03d}"
            folder = target / "HGG" / case_id
            folder.mkdir(parents=True)
            for file in origin.iterdir():
                link = folder / file.name.replace(origin.name, case_id)
                try:
                    os.link(file, link)
                except OSError:
                    shutil.copy2(file, link)
    return target


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; ``ru_maxrss`` would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One client start: intake, a few steps, one evaluation; prints one JSON line."""
    import torch

    from client.training import configure_device, evaluate, open_site_data, train
    from shared import models
    from shared.schemas import TrainingConfig
    from shared.tensors import state_tensors

    device = torch.device("cpu")
    configure_device(device, args.threads)
    started = time.perf_counter()
    data, _report = open_site_data(Path(args.data), Path(args.cache), min_cases=2)
    intake_s = time.perf_counter() - started
    config = TrainingConfig(local_steps=args.steps, batch_size=1, crop_size=args.crop)
    rss_after_intake = peak_rss_mb()
    if args.intake_only:
        print(json.dumps({"cases": len(data.cases), "built": data.stats.built,
                          "reused": data.stats.reused, "building_s": data.stats.seconds_building,
                          "intake_s": intake_s, "rss_after_intake_mb": rss_after_intake,
                          "peak_rss_mb": peak_rss_mb()}), flush=True)  # fmt: skip
        return
    weights = state_tensors(models.build("segresnet-small", {}, seed=0).state_dict())
    started = time.perf_counter()
    result = train("segresnet-small", {}, weights, config, data, device)
    train_s = time.perf_counter() - started
    _, val = data.split(config)
    started = time.perf_counter()
    scores = (
        evaluate("segresnet-small", {}, result.weights, val[: args.eval_cases], device, roi_size=64)
        if args.eval_cases
        else {}
    )
    eval_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "cases": len(data.cases),
                "built": data.stats.built,
                "reused": data.stats.reused,
                "building_s": data.stats.seconds_building,
                "intake_s": intake_s,
                "train_s": train_s,
                "eval_s": eval_s,
                "dice_mean": scores.get("dice_mean"),
                "rss_after_intake_mb": rss_after_intake,
                "peak_rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


def start(
    data: Path, cache: Path, args: argparse.Namespace, *, intake_only: bool = False
) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--data",
        str(data),
        "--cache",
        str(cache),
        "--steps",
        str(args.steps),
        "--crop",
        str(args.crop),
        "--eval-cases",
        str(args.eval_cases),
        "--threads",
        str(args.threads),
        *(["--intake-only"] if intake_only else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    answer = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if answer.returncode != 0:
        sys.exit(f"client process failed:\n{answer.stderr[-4000:]}")
    result: dict[str, float] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="10,60", help="case counts, comma-separated")
    parser.add_argument("--unique", type=int, default=10, help="distinct phantoms generated")
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated cases here")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--eval-cases", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--intake-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    counts = sorted(int(c) for c in args.cases.split(","))
    began = time.perf_counter()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fedseg-site-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    caches = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
    try:
        print(f"generating {min(args.unique, max(counts))} phantoms of {SHAPE} in {root}")
        results = {}
        for count in counts:
            data = generate(root, total=count, unique=min(args.unique, count))
            cache = caches / f"cache{count}"
            cold = start(data, cache, args)
            warm = start(data, cache, args, intake_only=True)  # a restart: intake alone
            results[count] = (cold, warm)
            print(
                f"{count:3d} cases: cold {cold['building_s'] / max(cold['built'], 1):.2f} s/case "
                f"(intake {cold['intake_s']:.1f} s), warm {warm['intake_s'] / count:.3f} s/case, "
                f"peak RSS cold {cold['peak_rss_mb']:.0f} MB, warm {warm['peak_rss_mb']:.0f} MB "
                f"(after intake {cold['rss_after_intake_mb']:.0f} MB), "
                f"{args.steps} steps {cold['train_s']:.1f} s, "
                f"{args.eval_cases} full-size evaluation {cold['eval_s']:.1f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(caches, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    peaks = {n: max(c["peak_rss_mb"], w["peak_rss_mb"]) for n, (c, w) in results.items()}
    for count, peak in peaks.items():
        verdict = "PASS" if peak <= RSS_LIMIT_MB else "MISS"
        print(f"{verdict} peak RSS at {count} cases: {peak:.0f} MB (target <= {RSS_LIMIT_MB:.0f})")
    low, high = peaks[counts[0]], peaks[counts[-1]]
    flat = high <= low * 1.1 + 50
    print(
        f"{'PASS' if flat else 'MISS'} flat in cases: {low:.0f} MB at {counts[0]}, "
        f"{high:.0f} MB at {counts[-1]} (target: within 10% + 50 MB)"
    )
    for count, (cold, warm) in results.items():
        per_case = cold["building_s"] / max(cold["built"], 1)
        verdict = "PASS" if per_case <= COLD_LIMIT_S else "MISS"
        print(f"{verdict} first start at {count} cases: {per_case:.2f} s/case (target <= 1.5)")
        warm_case = warm["intake_s"] / count
        verdict = "PASS" if warm_case <= WARM_LIMIT_S and warm["built"] == 0 else "MISS"
        print(f"{verdict} warm restart at {count} cases: {warm_case:.3f} s/case (target <= 0.1)")
    print(f"whole bench: {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
