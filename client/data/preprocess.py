"""Preprocessing: one case's files to canonical arrays with MONAI, the same way everywhere.

The files are read once, by the checks (`read_case`, nibabel), which hand over the
voxels in canonical channel order (t1, t1ce, t2, flair); then RAS orientation,
BraTS labels to the three regions (TC, WT, ET), crop to the brain, channel-wise
non-zero normalisation. Deterministic, so its output can be cached on disk
(`client.data.cache`); `fedseg predict` runs the same function on a new case.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms.compose import Compose
from monai.transforms.croppad.dictionary import CropForegroundd
from monai.transforms.intensity.dictionary import NormalizeIntensityd
from monai.transforms.spatial.dictionary import Orientationd
from monai.transforms.transform import MapTransform

from client.data.checks import LoadedCase, read_case
from client.data.layouts import REGION_CODES, Case
from shared.errors import DataError

# Bump whenever the output of `preprocess_case` would change: it keys the disk cache.
PREPROCESSING_VERSION: Final = 1


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
    """The deterministic MONAI pipeline after loading (channel-first MetaTensors in)."""
    keys = ["image", "label"]
    return Compose(
        [
            Orientationd(keys=keys, axcodes="RAS", labels=None),
            BratsRegionsd(keys="label"),
            CropForegroundd(keys=keys, source_key="image", margin=2, allow_smaller=True),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        ]
    )


@dataclass(frozen=True, slots=True)
class Preprocessed:
    """One case ready to train on: image (4, X, Y, Z) float32, regions (3, X, Y, Z) uint8."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]


def preprocess_loaded(loaded: LoadedCase) -> Preprocessed:
    """Run the pipeline over voxels already read (and checked) by `read_case`."""
    case = loaded.case
    affine = torch.as_tensor(loaded.affine, dtype=torch.float64)
    image = np.stack([np.asarray(a, dtype=np.float32) for a in loaded.images])
    label = np.asarray(loaded.label, dtype=np.float32)[None]
    item = {
        "image": MetaTensor(torch.from_numpy(image), affine=affine),
        "label": MetaTensor(torch.from_numpy(label), affine=affine),
        "label_map": case.transform_dict()["label_map"],
    }
    try:
        out = preprocessing()(item)
    except Exception as exc:  # MONAI wraps its errors in RuntimeError
        raise DataError(f"case {case.case_id} cannot be preprocessed: {exc}") from None
    result, regions = out["image"], out["label"]
    spacing = tuple(float(s) for s in np.asarray(result.pixdim)[:3])
    image_array = result.as_tensor().numpy().astype(np.float32, copy=False)
    label_array = torch.as_tensor(regions).numpy().astype(np.uint8, copy=False)
    if not np.isfinite(image_array).all():
        raise DataError(f"case {case.case_id} holds non-finite voxels after preprocessing")
    return Preprocessed(
        case_id=case.case_id,
        image=np.ascontiguousarray(image_array),
        label=np.ascontiguousarray(label_array),
        spacing=(spacing[0], spacing[1], spacing[2]),
    )


def preprocess_case(case: Case) -> Preprocessed:
    """Read, check and preprocess one case; `DataError` naming its problems if it is unusable."""
    report, loaded = read_case(case)
    if loaded is None:
        raise DataError(f"case {case.case_id} is unusable: {'; '.join(report.problems)}")
    return preprocess_loaded(loaded)
