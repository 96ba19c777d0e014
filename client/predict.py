"""Run a verified consensus model on new cases: a BraTS label map in the input's geometry.

The preprocessing is the training pipeline's, done with nibabel and numpy so that
every step can be undone exactly: canonical channel order, RAS orientation, crop to
the non-zero box (2 voxel margin), channel-wise z-score over non-zero voxels. The
model's three sigmoid regions (TC, WT, ET) become BraTS codes (WT only = 2 edema,
TC without ET = 1 necrotic core, ET = 4), pasted back into the box and turned back to
the input's orientation, so the output has the input images' shape and affine and
opens over them in any NIfTI viewer.

One bad case (a missing modality, mismatched shapes, an unreadable file) is reported
in its `CaseResult` and never stops the batch. Nothing here talks to a network.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from client import predict_cases
from client.data import MODALITIES, REGION_CODES, Case
from shared import models
from shared.errors import DataError, FedsegError

REGIONS: Final = ("TC", "WT", "ET")
LABELS: Final = {1: "necrotic_core", 2: "edema", 4: "enhancing_tumour"}
CROP_MARGIN: Final = 2


@dataclass(frozen=True, slots=True)
class Geometry:
    """How a case's voxels were turned into the model's view, so it can be undone."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    zooms: tuple[float, float, float]
    to_ras: np.ndarray
    box: tuple[slice, slice, slice]
    ras_shape: tuple[int, int, int]


@dataclass(slots=True)
class CaseResult:
    """What predicting one case produced, or why it could not."""

    case_id: str
    ok: bool = False
    error: str | None = None
    segmentation: Path | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)
    voxels: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "case": self.case_id,
            "ok": self.ok,
            "error": self.error,
            "segmentation": str(self.segmentation) if self.segmentation else None,
            "voxels": self.voxels,
            "volumes_ml": self.volumes_ml,
            "metrics": self.metrics,
        }


# --- geometry ----------------------------------------------------------------------------


def load_case(case: Case) -> tuple[np.ndarray, Geometry, Any]:
    """The four channels (4, X, Y, Z) float32 in RAS and cropped, its geometry, a header."""
    nib = _nibabel()

    images = [_load(path, name) for path, name in zip(case.images, _names(case), strict=True)]
    if case.is_4d:
        image = images[0]
        data = np.asarray(image.dataobj, dtype=np.float32)
        if data.ndim != 4 or data.shape[-1] < 4:
            raise DataError(f"expected a 4-D image with 4 channels, got {list(data.shape)}")
        channels = [data[..., index] for index in case.channel_index]
    else:
        channels = [np.asarray(image.dataobj, dtype=np.float32) for image in images]
    reference = images[0]
    affines = [image.affine for image in images] * (4 if case.is_4d else 1)
    for name, affine, channel in zip(MODALITIES, affines, channels, strict=True):
        if channel.ndim != 3:
            raise DataError(f"{name}: expected a 3-D image, got shape {list(channel.shape)}")
        if channel.shape != channels[0].shape:
            raise DataError(
                f"{name}: shape {list(channel.shape)} differs from t1 {list(channels[0].shape)}"
            )
        if not np.allclose(affine, reference.affine, atol=1e-3):
            raise DataError(f"{name}: affine differs from t1")
    stack = np.stack(channels)
    if not np.isfinite(stack).all():
        raise DataError("the images hold NaN or infinite voxels")
    affine = np.asarray(reference.affine, dtype=np.float64)
    original = nib.orientations.io_orientation(affine)
    to_ras = nib.orientations.ornt_transform(original, nib.orientations.axcodes2ornt("RAS"))
    ras = np.stack([nib.orientations.apply_orientation(c, to_ras) for c in stack])
    box = foreground_box(ras)
    zooms = tuple(float(z) for z in reference.header.get_zooms()[:3])
    geometry = Geometry(
        shape=tuple(int(s) for s in stack.shape[1:]),  # type: ignore[arg-type]
        affine=affine,
        zooms=zooms,  # type: ignore[arg-type]
        to_ras=to_ras,
        box=box,
        ras_shape=tuple(int(s) for s in ras.shape[1:]),  # type: ignore[arg-type]
    )
    return normalise(ras[(slice(None), *box)]), geometry, reference.header


def _nibabel() -> Any:
    """nibabel, imported on first use (it costs ~0.2 s) and typed loosely (it is untyped)."""
    import nibabel

    return nibabel


def _names(case: Case) -> tuple[str, ...]:
    return ("image",) if case.is_4d else MODALITIES


def _load(path: Path | None, name: str) -> Any:
    nib = _nibabel()

    if path is None:
        raise DataError(f"{name}: missing modality")
    try:
        return nib.load(str(path))
    except FileNotFoundError:
        raise DataError(f"{name}: missing file {path.name}") from None
    except Exception as exc:  # nibabel raises many types for a damaged file
        raise DataError(f"{name}: unreadable file ({type(exc).__name__})") from None


def foreground_box(image: np.ndarray) -> tuple[slice, slice, slice]:
    """The box of voxels above zero in any channel, with a margin (MONAI CropForeground)."""
    mask = (image > 0).any(axis=0)
    if not mask.any():
        return (slice(0, mask.shape[0]), slice(0, mask.shape[1]), slice(0, mask.shape[2]))
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        start = max(int(hits[0]) - CROP_MARGIN, 0)
        stop = min(int(hits[-1]) + 1 + CROP_MARGIN, mask.shape[axis])
        box.append(slice(start, stop))
    return box[0], box[1], box[2]


def normalise(image: np.ndarray) -> np.ndarray:
    """Channel-wise z-score over non-zero voxels (MONAI NormalizeIntensity, nonzero=True)."""
    out = image.astype(np.float32, copy=True)
    for channel in out:
        mask = channel != 0
        if mask.any():
            values = channel[mask]
            std = float(values.std()) or 1.0
            channel[mask] = (values - float(values.mean())) / std
    return out


def to_input_space(cropped: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Undo the crop and the reorientation of a (X, Y, Z) array in model space."""
    nib = _nibabel()

    full = np.zeros(geometry.ras_shape, dtype=cropped.dtype)
    full[geometry.box] = cropped
    back = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.io_orientation(geometry.affine)
    )
    restored = np.ascontiguousarray(nib.orientations.apply_orientation(full, back))
    assert restored.shape == geometry.shape
    return restored


# --- the model ---------------------------------------------------------------------------


def build_network(
    model: str, model_params: Mapping[str, Any], weights: Mapping[str, torch.Tensor]
) -> torch.nn.Module:
    """The registry's network with the bundle's weights, in eval mode."""
    network = models.build(model, model_params)
    network.load_state_dict(dict(weights), strict=True)
    return network.eval()


def segment(
    network: torch.nn.Module, image: np.ndarray, device: torch.device, roi_size: int
) -> np.ndarray:
    """Sliding-window inference; returns BraTS codes (X, Y, Z) uint8 in model space."""
    from monai.inferers.utils import sliding_window_inference

    batch = torch.from_numpy(image)[None].to(device)
    with torch.inference_mode():
        logits = sliding_window_inference(
            batch,
            roi_size=(roi_size,) * 3,
            sw_batch_size=4 if device.type == "cuda" else 1,
            predictor=network,
            overlap=0.25,
        )
    assert isinstance(logits, torch.Tensor)
    regions = (torch.sigmoid(logits.float()) > 0.5)[0].cpu().numpy()
    return regions_to_labels(regions)


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
    """(TC, WT, ET) masks to one BraTS label map: 2 edema, 1 necrotic core, 4 enhancing."""
    tc, wt, et = (regions[i].astype(bool) for i in range(3))
    labels = np.zeros(tc.shape, dtype=np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 4
    return labels


# --- reporting ---------------------------------------------------------------------------


def volumes(labels: np.ndarray, zooms: Sequence[float]) -> tuple[dict[str, int], dict[str, float]]:
    """Voxel counts and millilitres of each label and of the three regions."""
    voxel_ml = float(np.prod(zooms)) / 1000.0
    counts = {name: int((labels == code).sum()) for code, name in LABELS.items()}
    for region, codes in zip(REGIONS, REGION_CODES, strict=True):
        counts[region] = int(np.isin(labels, sorted(codes)).sum())
    return counts, {name: count * voxel_ml for name, count in counts.items()}


def label_metrics(
    labels: np.ndarray, truth: np.ndarray, zooms: Sequence[float]
) -> dict[str, float | None]:
    """Dice and HD95 (mm) of TC, WT, ET against a BraTS-coded label map.

    Both empty: Dice 1 and HD95 0; one empty: Dice 0 and HD95 None (undefined).
    """
    from monai.metrics.hausdorff_distance import compute_hausdorff_distance

    scores: dict[str, float | None] = {}
    for region, codes in zip(REGIONS, REGION_CODES, strict=True):
        pred = np.isin(labels, sorted(codes))
        true = np.isin(truth, sorted(codes))
        total = int(pred.sum() + true.sum())
        scores[f"dice_{region.lower()}"] = (
            1.0 if total == 0 else 2.0 * float((pred & true).sum()) / total
        )
        if not pred.any() or not true.any():
            scores[f"hd95_{region.lower()}"] = 0.0 if total == 0 else None
            continue
        with warnings.catch_warnings():  # MONAI 1.5+ warns about its own default argument
            warnings.simplefilter("ignore", FutureWarning)
            distance = compute_hausdorff_distance(
                torch.from_numpy(pred)[None, None],
                torch.from_numpy(true)[None, None],
                include_background=True,
                percentile=95,
                spacing=list(zooms),
            )
        scores[f"hd95_{region.lower()}"] = round(float(distance.flatten()[0]), 3)
    return scores


def _truth(case: Case, geometry: Geometry) -> np.ndarray | None:
    if case.label is None or not case.label.is_file():
        return None
    label = np.asarray(_load(case.label, "label").dataobj)
    if label.shape != geometry.shape:
        raise DataError(f"label: shape {list(label.shape)} differs from the images")
    codes = np.zeros(label.shape, dtype=np.uint8)
    for raw, brats in case.label_map.items():
        codes[np.rint(label) == raw] = brats
    return codes


def predict_case(
    case: Case,
    network: torch.nn.Module,
    out_dir: Path,
    *,
    device: torch.device,
    roi_size: int,
) -> CaseResult:
    """Segment one case and write ``<case>.nii.gz`` and ``<case>.json``; never raises."""
    nib = _nibabel()

    result = CaseResult(case.case_id)
    try:
        image, geometry, header = load_case(case)
        labels = to_input_space(segment(network, image, device, roi_size), geometry)
        truth = _truth(case, geometry)
        result.voxels, result.volumes_ml = volumes(labels, geometry.zooms)
        if truth is not None:
            result.metrics = label_metrics(labels, truth, geometry.zooms)
        out_header = header.copy()
        out_header.set_data_dtype(np.uint8)
        target = out_dir / f"{case.case_id}.nii.gz"
        part = out_dir / f".{case.case_id}.part.nii.gz"
        nib.save(nib.Nifti1Image(labels, geometry.affine, out_header), str(part))
        part.replace(target)
        result.segmentation = target
        result.ok = True
    except FedsegError as exc:
        result.error = exc.message
    except (OSError, ValueError, MemoryError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    if result.ok:
        _write_json(out_dir / f"{case.case_id}.json", result.as_dict())
    return result


def predict_all(
    cases: Sequence[Case],
    network: torch.nn.Module,
    out_dir: Path,
    *,
    device: torch.device,
    roi_size: int,
    progress: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Every case in turn; each result says ok or why not."""
    out_dir.mkdir(parents=True, exist_ok=True)
    network = network.to(device)
    results = []
    for case in cases:
        result = predict_case(case, network, out_dir, device=device, roi_size=roi_size)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def find_cases(inputs: Sequence[Path]) -> tuple[list[Case], list[CaseResult]]:
    """Cases from each input (a dataset in any layout, or one case's folder)."""
    return predict_cases.find_cases(inputs)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    part.replace(path)
