"""Training speed: our training step against a plain hand-written MONAI loop.

Both train the same registered model on the same preprocessed phantoms with the same
crop size, batch, precision, loss and optimiser, in the same process on the same device.
The plain loop is what MONAI's tutorials do: RandCropByPosNegLabeld, RandFlipd on
each axis, RandScaleIntensityd and RandShiftIntensityd on the CPU through a
DataLoader, then autocast forward/backward. Ours crops and augments on the device.

    python bench/train_speed.py --device cpu --size 32 --batch 2 --steps 10
    python bench/train_speed.py --device cuda --size 128 --batch 2 --dtype bf16 --model segresnet
    python bench/train_speed.py --device cuda --size 128 --batch 2 --dtype bf16 --model segresnet \
        --compile     # adds the compiled plain loop and our compiled step (target >= 0.95x)

With ``--compile`` the plain loop's model goes through ``torch.compile`` (the reference
to beat) and ours runs with ``compile: true``; on CPU ours stays eager by design.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.data.dataloader import DataLoader
from monai.data.dataset import Dataset
from monai.transforms.compose import Compose
from monai.transforms.croppad.dictionary import RandCropByPosNegLabeld
from monai.transforms.intensity.dictionary import RandScaleIntensityd, RandShiftIntensityd
from monai.transforms.spatial.dictionary import RandFlipd

from client.data import discover
from client.phantoms import generate
from client.training import (
    build_model,
    configure_device,
    dice_loss,
    load_site_data,
    training_steps,
)
from client.training.crops import POSITIVE_FRACTION

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    as_tensor = getattr(tensor, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else tensor


def plain_loop(model, volumes, args, device, *, compiled: bool = False) -> float:
    """The tutorial-style loop; returns crops per second over the timed steps."""
    keys = ["image", "label"]
    transform = Compose(
        [
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=(args.size,) * 3,
                pos=POSITIVE_FRACTION,
                neg=1 - POSITIVE_FRACTION,
                num_samples=1,
                image_key="image",
            ),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
        ]
    )
    # the positive mask is any region, i.e. WT, as in our sampler
    items = [
        {
            "image": torch.from_numpy(np.array(v.image(), dtype=np.float32)),
            "label": torch.from_numpy(np.array(v.label(), dtype=np.float32)),
        }
        for v in volumes
    ]
    total = (args.warmup + args.steps) * args.batch
    data = Dataset(data=[items[i % len(items)] for i in range(total)], transform=transform)
    workers = args.workers if device.type == "cuda" else 0
    loader = DataLoader(
        data,
        batch_size=args.batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    dtype = DTYPES[args.dtype]
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    runner = torch.compile(model) if compiled else model
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = dice_loss()
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype)
        if dtype != torch.float32
        else contextlib.nullcontext()
    )
    started = 0.0
    for step, batch in enumerate(loader):
        if step == args.warmup:
            sync(device)
            started = time.perf_counter()
        # plain tensors (MONAI yields MetaTensors, which torch.compile refuses)
        images = _plain(batch["image"]).to(device, non_blocking=True)
        targets = _plain(batch["label"]).to(device, non_blocking=True)
        with autocast:
            logits = runner(images)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - started)


def ours(model, site, volumes, args, device, *, compiled: bool = False) -> float:
    """Our `training_steps`; returns crops per second over the timed steps."""
    pool = site.pool(volumes, args.size, device)
    steps = training_steps(
        model,
        pool,
        steps=args.warmup + args.steps,
        batch_size=args.batch,
        learning_rate=1e-4,
        weight_decay=1e-5,
        seed=0,
        precision=args.dtype,
        compile=compiled,
    )
    started = 0.0
    last = None
    for step, loss in enumerate(steps):
        if step == args.warmup - 1:
            sync(device)
            started = time.perf_counter()
        last = loss
    assert last is not None and torch.isfinite(last)
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32, help="crop size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model", default="segresnet-small")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=2, help="alternate runs of each")
    parser.add_argument("--compile", action="store_true", help="add the compiled variants")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(configure_device(device, int(os.environ.get("OMP_NUM_THREADS", "0")) or None))
    volume_size = max(48, int(args.size * 1.5))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        generate(Path(tmp) / "data", cases=args.cases, size=volume_size, seed=0)
        site = load_site_data(discover(Path(tmp) / "data").cases, Path(tmp) / "cache")
        seconds = time.perf_counter() - started
        print(f"{args.cases} phantoms of {volume_size}^3 ready in {seconds:.1f} s")
        results = measure(site, args, device)
    plain, mine = max(results["plain"]), max(results["ours"])
    print(
        f"device={device} model={args.model} crop={args.size}^3 batch={args.batch} "
        f"dtype={args.dtype} steps={args.steps}"
    )
    for name, runs in results.items():
        listed = ", ".join(f"{r:.2f}" for r in runs)
        print(f"{name + ':':18s}{max(runs):8.2f} crops/s   (runs: {listed})")
    print(f"ratio ours/plain: {mine / plain:.3f}")
    if args.compile:
        ratio = max(results["ours-compiled"]) / max(results["plain-compiled"])
        verdict = "PASS" if ratio >= 0.95 else "MISS"
        print(f"{verdict} compiled ours/compiled plain MONAI: {ratio:.3f} (target >= 0.95)")
        never_slower = max(results["ours-compiled"]) >= mine
        print(f"{'PASS' if never_slower else 'MISS'} compiled ours >= eager ours")


def measure(site, args, device) -> dict[str, list[float]]:
    """Alternate runs of each variant; crops per second per run."""
    volumes = list(site.cases.values())
    variants = [("plain", False), ("ours", False)]
    if args.compile:
        variants += [("plain-compiled", True), ("ours-compiled", True)]
    results: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.repeats):
        for name, compiled in variants:
            torch.manual_seed(0)
            np.random.seed(0)
            model = build_model(args.model, {}, None)
            if name.startswith("plain"):
                rate = plain_loop(model, volumes, args, device, compiled=compiled)
            else:
                rate = ours(model, site, volumes, args, device, compiled=compiled)
            results[name].append(rate)
    return results


if __name__ == "__main__":
    main()
