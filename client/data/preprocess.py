"""Preprocessing: one case's files to canonical arrays with MONAI, the same way everywhere.

Load, channel first, canonical channel order (t1, t1ce, t2, flair), RAS orientation,
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
from monai.transforms.compose import Compose
from monai.transforms.croppad.dictionary import CropForegroundd
from monai.transforms.intensity.dictionary import NormalizeIntensityd
from monai.transforms.io.dictionary import LoadImaged
from monai.transforms.spatial.dictionary import Orientationd
from monai.transforms.transform import MapTransform
from monai.transforms.utility.dictionary import EnsureChannelFirstd

from client.data.layouts import REGION_CODES, Case
from shared.errors import DataError

# Bump whenever the output of `preprocess_case` would change: it keys the disk cache.
PREPROCESSING_VERSION: Final = 1


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
    """The deterministic MONAI pipeline (a dict with ``image``/``label`` paths in)."""
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
        ]
    )


@dataclass(frozen=True, slots=True)
class Preprocessed:
    """One case ready to train on: image (4, X, Y, Z) float32, regions (3, X, Y, Z) uint8."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]


def preprocess_case(case: Case) -> Preprocessed:
    """Run the pipeline over one case's files; `DataError` on anything unusable."""
    try:
        item = preprocessing()(case.transform_dict())
    except DataError:
        raise
    except Exception as exc:  # MONAI wraps reader errors in RuntimeError
        raise DataError(f"case {case.case_id} cannot be preprocessed: {exc}") from None
    image, label = item["image"], item["label"]
    pixdim = getattr(image, "pixdim", None)
    spacing = tuple(float(s) for s in np.asarray(pixdim if pixdim is not None else (1, 1, 1)))
    image_array = torch.as_tensor(image).detach().cpu().numpy().astype(np.float32, copy=False)
    label_array = torch.as_tensor(label).detach().cpu().numpy().astype(np.uint8, copy=False)
    if not np.isfinite(image_array).all():
        raise DataError(f"case {case.case_id} holds non-finite voxels after loading")
    return Preprocessed(
        case_id=case.case_id,
        image=np.ascontiguousarray(image_array),
        label=np.ascontiguousarray(label_array),
        spacing=(spacing[0], spacing[1], spacing[2]),
    )
