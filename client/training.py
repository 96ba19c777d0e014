"""Local training and evaluation with MONAI; knows nothing of the network.

Preprocessing is a MONAI pipeline run once per process and cached (`CacheDataset`):
load, channel first, canonical channel order, RAS orientation, BraTS labels to the
three regions (TC, WT, ET), crop to the brain, channel-wise non-zero normalisation.
Augmentation then runs on the device, batched: label-centred random crops (two of
three crops centred on tumour), flips on every axis, and intensity scale/shift jitter.
Keeping the cached volumes on the GPU when they fit means a step never waits for the
CPU, which is what lets our step keep pace with (or beat) a plain MONAI loop.

``num_samples`` of a result is the number of training cases (not crops or steps): the
weight FedAvg gives a site should grow with how much data it has, not with how long
it was asked to train.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from monai.data.dataset import CacheDataset
from monai.inferers.utils import sliding_window_inference
from monai.losses.dice import DiceLoss
from monai.metrics.meandice import DiceMetric
from monai.transforms.compose import Compose
from monai.transforms.croppad.dictionary import CropForegroundd
from monai.transforms.intensity.dictionary import NormalizeIntensityd
from monai.transforms.io.dictionary import LoadImaged
from monai.transforms.spatial.dictionary import Orientationd
from monai.transforms.transform import MapTransform
from monai.transforms.utility.dictionary import EnsureChannelFirstd, EnsureTyped

from client.data import REGION_CODES, Case, split_cases
from client.fedprox import proximal_term
from shared import models
from shared.errors import ConfigError, DataError, TensorError
from shared.schemas import TrainingConfig
from shared.tensors import Tensors, state_tensors

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
POSITIVE_FRACTION = 2 / 3  # share of crops centred on tumour (WT) voxels
MAX_CENTRES = 20_000  # candidate crop centres kept per case and kind
INTENSITY_JITTER = 0.1  # RandScaleIntensity factors and RandShiftIntensity offsets


# --- devices -----------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is visible")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def configure_device(device: torch.device, cpu_threads: int | None = None) -> str:
    """Set process-wide knobs for ``device`` and describe it in one line for the log."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"training on GPU cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    threads = cpu_threads or max(1, min(8, (os.cpu_count() or 2) - 1))
    torch.set_num_threads(threads)
    return f"training on CPU ({threads} threads); no GPU in use"


def resolve_precision(device: torch.device, precision: Precision = "auto") -> torch.dtype:
    """The autocast dtype: bf16 on GPUs that have it, else fp16; fp32 on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- preprocessing -----------------------------------------------------------------------


class CanonicalChannelsd(MapTransform):
    """Reorder image channels to t1, t1ce, t2, flair using the case's ``channel_index``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply to each key."""
        out = dict(data)
        order = list(out["channel_index"])
        for key in self.key_iterator(out):
            if out[key].shape[0] != len(order) or order != sorted(order):
                out[key] = out[key][order]
        return out


class BratsRegionsd(MapTransform):
    """Turn a label map (file codes) into three binary channels TC, WT, ET."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply to each key."""
        out = dict(data)
        mapping = {int(k): int(v) for k, v in out["label_map"]}
        for key in self.key_iterator(out):
            label = torch.as_tensor(out[key]).round().long()
            codes = torch.zeros_like(label)
            for raw, brats in mapping.items():
                codes[label == raw] = brats
            regions = [
                torch.isin(codes, torch.tensor(sorted(region))).any(0) for region in REGION_CODES
            ]
            out[key] = torch.stack(regions).to(torch.uint8)
        return out


def preprocessing() -> Compose:
    """The deterministic part of the pipeline: what `CacheDataset` caches."""
    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
            EnsureChannelFirstd(keys=keys),
            CanonicalChannelsd(keys="image"),
            Orientationd(keys=keys, axcodes="RAS", labels=None),
            BratsRegionsd(keys="label"),
            CropForegroundd(keys=keys, source_key="image", margin=2, allow_smaller=True),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
            EnsureTyped(keys="label", dtype=torch.uint8, track_meta=False),
        ]
    )


@dataclass(frozen=True, slots=True)
class Volume:
    """One preprocessed case: image (4, X, Y, Z) float32, regions (3, X, Y, Z) uint8."""

    case_id: str
    image: torch.Tensor
    label: torch.Tensor


@dataclass(slots=True)
class SiteData:
    """A site's preprocessed cases, built once per process and reused every round."""

    volumes: dict[str, Volume]
    _pools: dict[tuple[Any, ...], _CropPool] = field(default_factory=dict)

    def split(
        self, val_fraction: float, seed: int, max_val_cases: int | None = None
    ) -> tuple[list[Volume], list[Volume]]:
        """Deterministic train/validation split by case id (see `split_cases`)."""
        ids = sorted(self.volumes)
        stubs = [Case(case_id=i, images=(None,), label=None) for i in ids]
        train, val = split_cases(stubs, val_fraction, seed)
        val = val[:max_val_cases] if max_val_cases else val
        return [self.volumes[c.case_id] for c in train], [self.volumes[c.case_id] for c in val]

    def pool(self, train: Sequence[Volume], crop: int, device: torch.device) -> _CropPool:
        """A crop sampler for these training volumes, cached per crop size and device."""
        key = (tuple(v.case_id for v in train), crop, str(device))
        if key not in self._pools:
            self._pools.clear()  # one pool at a time: they may hold the data on the GPU
            self._pools[key] = _CropPool(train, crop, device)
        return self._pools[key]


def load_site_data(cases: Sequence[Case], *, workers: int = 0) -> SiteData:
    """Run the cached MONAI preprocessing over ``cases``."""
    if not cases:
        raise DataError("no cases to train on")
    dataset = CacheDataset(
        data=[case.transform_dict() for case in cases],
        transform=preprocessing(),
        # One worker unless asked: MONAI's threaded cache fill races in LoadImaged (a case
        # sometimes gets a 1-channel image), which crashes one client in three on 2 cores.
        num_workers=max(1, workers),
        progress=False,
        copy_cache=False,
    )
    volumes: dict[str, Volume] = {}
    for index in range(len(dataset)):
        item = dataset[index]
        image, label = torch.as_tensor(item["image"]), torch.as_tensor(item["label"])
        if not bool(torch.isfinite(image).all()):
            raise DataError(f"case {item['case_id']} holds non-finite voxels after loading")
        volumes[str(item["case_id"])] = Volume(str(item["case_id"]), image, label)
    return SiteData(volumes)


# --- augmentation ------------------------------------------------------------------------


class _CropPool:
    """Label-centred random crops with flips and intensity jitter, batched on a device."""

    def __init__(self, volumes: Sequence[Volume], crop: int, device: torch.device) -> None:
        if not volumes:
            raise DataError("no training cases")
        self.crop = crop
        self.device = device
        total = sum(v.image.numel() * 4 + v.label.numel() for v in volumes)
        on_device = device.type == "cpu" or (
            device.type == "cuda" and total < 0.4 * torch.cuda.mem_get_info(device)[0]
        )
        self.storage = device if on_device else torch.device("cpu")
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.positive: list[np.ndarray] = []
        self.anywhere: list[np.ndarray] = []
        rng = np.random.default_rng(0)
        for volume in volumes:
            image, label = self._pad(volume.image), self._pad(volume.label)
            self.images.append(image.to(self.storage))
            self.labels.append(label.to(self.storage))
            self.positive.append(self._centres(label[1] > 0, rng))
            self.anywhere.append(self._centres(image.abs().sum(0) > 0, rng))

    def _pad(self, tensor: torch.Tensor) -> torch.Tensor:
        short = [max(0, self.crop - size) for size in tensor.shape[1:]]
        if not any(short):
            return tensor.contiguous()
        pad: list[int] = []
        for missing in reversed(short):
            pad += [missing // 2, missing - missing // 2]
        return torch.nn.functional.pad(tensor, pad).contiguous()

    def _centres(self, mask: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
        points = torch.nonzero(mask).numpy()
        if len(points) > MAX_CENTRES:
            points = points[rng.choice(len(points), MAX_CENTRES, replace=False)]
        return points.astype(np.int32)

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of augmented crops on the device: images float32, regions float32."""
        crop = self.crop
        images, labels = [], []
        for _ in range(batch):
            index = int(rng.integers(len(self.images)))
            image, label = self.images[index], self.labels[index]
            centres = self.positive[index]
            if not len(centres) or rng.random() >= POSITIVE_FRACTION:
                centres = self.anywhere[index]
            shape = np.array(image.shape[1:])
            centre = centres[int(rng.integers(len(centres)))] if len(centres) else shape // 2
            start = np.clip(centre - crop // 2, 0, shape - crop)
            window = (slice(None), *(slice(int(s), int(s) + crop) for s in start))
            images.append(image[window])
            labels.append(label[window])
        x = torch.stack(images).to(self.device, non_blocking=True).float()
        y = torch.stack(labels).to(self.device, non_blocking=True).float()
        flips = [d + 2 for d in range(3) if rng.random() < 0.5]  # one flip set per batch
        if flips:
            x, y = torch.flip(x, flips), torch.flip(y, flips)
        scale = rng.uniform(-INTENSITY_JITTER, INTENSITY_JITTER, (batch, x.shape[1], 1, 1, 1))
        shift = rng.uniform(-INTENSITY_JITTER, INTENSITY_JITTER, (batch, x.shape[1], 1, 1, 1))
        x = x * torch.as_tensor(1.0 + scale, dtype=x.dtype, device=x.device)
        x = x + torch.as_tensor(shift, dtype=x.dtype, device=x.device)
        return x, y


# --- models ------------------------------------------------------------------------------


def build_model(
    model_name: str, model_params: Mapping[str, Any], weights: Mapping[str, torch.Tensor] | None
) -> torch.nn.Module:
    """Build a registered model and load ``weights`` after checking names and shapes."""
    model = models.build(model_name, model_params)
    if weights is not None:
        expected = state_tensors(model.state_dict())
        if set(expected) != set(weights):
            missing = sorted(set(expected) - set(weights))
            extra = sorted(set(weights) - set(expected))
            raise TensorError(
                f"weights do not fit {model_name}: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for name, tensor in expected.items():
            if tuple(weights[name].shape) != tuple(tensor.shape):
                raise TensorError(f"tensor {name!r} has the wrong shape for {model_name}")
        model.load_state_dict(dict(weights), strict=False)
    return model


def dice_loss() -> DiceLoss:
    """The loss of MONAI's BraTS tutorial: soft Dice on sigmoid outputs."""
    return DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)


# --- training ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What one local training produced."""

    weights: Tensors
    num_samples: int
    loss: float
    steps: int
    seconds: float


def training_steps(
    model: torch.nn.Module,
    pool: _CropPool,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    precision: Precision = "auto",
    proximal_mu: float = 0.0,
) -> Iterator[torch.Tensor]:
    """Run ``steps`` optimiser steps; yields each step's loss as a device tensor (no sync).

    ``proximal_mu`` > 0 adds FedProx's term (`client.fedprox`) to what is minimised;
    the yielded loss stays the Dice loss.
    """
    device = pool.device
    dtype = resolve_precision(device, precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = dice_loss()
    rng = np.random.default_rng(seed)
    proximal = proximal_term(model, proximal_mu)
    for _ in range(steps):
        images, labels = pool.sample(batch_size, rng)
        with _autocast(device, dtype):
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        objective = loss if proximal is None else loss + proximal(model)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
        yield loss.detach()


def train(
    model_name: str,
    model_params: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor] | None,
    config: TrainingConfig,
    data: SiteData,
    device: torch.device,
    *,
    seed: int | None = None,
    precision: Precision = "auto",
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Train from ``weights`` for ``config.local_steps`` steps on the site's training split."""
    started = time.perf_counter()
    train_set, _ = data.split(config.val_fraction, config.seed, config.max_val_cases)
    if not train_set:
        raise DataError("no training cases after the train/validation split")
    model = build_model(model_name, model_params, weights)
    pool = data.pool(train_set, config.crop_size, device)
    losses = list(
        training_steps(
            model,
            pool,
            steps=config.local_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            seed=config.seed if seed is None else seed,
            precision=precision,
            proximal_mu=proximal_mu,
        )
    )
    loss = float(torch.stack(losses).mean().item())
    if not np.isfinite(loss):
        raise TensorError("local training diverged: the loss is not finite", code="non_finite")
    return TrainResult(
        weights=state_tensors(model.state_dict()),
        num_samples=len(train_set),
        loss=loss,
        steps=config.local_steps,
        seconds=time.perf_counter() - started,
    )


# --- evaluation --------------------------------------------------------------------------


def evaluate(
    model_name: str,
    model_params: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor] | None,
    volumes: Sequence[Volume],
    device: torch.device,
    *,
    roi_size: int = 64,
    precision: Precision = "auto",
) -> dict[str, float]:
    """Dice of TC, WT, ET and their mean over whole volumes (sliding-window inference).

    An empty region in both truth and prediction counts 1, a false positive on an
    empty truth 0 (the BraTS convention), so the metrics are always finite.
    """
    if not volumes:
        raise DataError("no validation cases to evaluate on")
    model = build_model(model_name, model_params, weights).to(device).eval()
    dtype = resolve_precision(device, precision)
    metric = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=False)
    with torch.inference_mode(), _autocast(device, dtype):
        for volume in volumes:
            image = volume.image[None].to(device)
            logits = sliding_window_inference(
                image,
                roi_size=(roi_size,) * 3,
                sw_batch_size=4 if device.type == "cuda" else 1,
                predictor=model,
                overlap=0.25,
            )
            assert isinstance(logits, torch.Tensor)
            prediction = torch.sigmoid(logits.float()) > 0.5
            metric(y_pred=prediction, y=volume.label[None].to(device).bool())
    scores = torch.as_tensor(metric.aggregate()).float().cpu()
    tc, wt, et = (float(s) for s in scores)
    return {"dice_tc": tc, "dice_wt": wt, "dice_et": et, "dice_mean": (tc + wt + et) / 3}


def evaluation_roi(crop_size: int) -> int:
    """Window of sliding-window inference: at least the crop, a multiple of 16."""
    return max(crop_size, 16) + (-max(crop_size, 16) % 16)
