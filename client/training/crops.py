"""Label-centred random crops with flips and intensity jitter, from cached cases.

Two of three crops are centred on tumour (WT) voxels, the rest anywhere in the
brain; one flip set per batch on every axis; channel-wise scale/shift jitter.

Where the voxels live decides the memory a site needs: on a GPU with room for
them, every case is moved there once (float16) and a step never waits for the
CPU; otherwise each crop is read from the case's memory-mapped cache file and the
map is closed again, so the process holds one batch of crops, not the dataset,
and its memory stays flat in the number of cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import torch

from client.data.cache import CachedCase
from shared.errors import DataError

POSITIVE_FRACTION: Final = 2 / 3  # share of crops centred on tumour (WT) voxels
INTENSITY_JITTER: Final = 0.1  # scale factors and shift offsets, +-
GPU_SHARE: Final = 0.4  # of free GPU memory the cached cases may take


def _window(
    shape: Sequence[int], centre: np.ndarray, crop: int
) -> tuple[tuple[slice, ...], list[int]]:
    """The slices of a crop around ``centre`` and the padding (torch order) to reach ``crop``."""
    slices: list[slice] = []
    pads: list[int] = []
    for size, middle in zip(shape, centre, strict=True):
        start = int(np.clip(int(middle) - crop // 2, 0, max(size - crop, 0)))
        stop = min(start + crop, size)
        slices.append(slice(start, stop))
        missing = crop - (stop - start)
        pads = [missing // 2, missing - missing // 2, *pads]
    return (slice(None), *slices), pads


class CropPool:
    """Batches of augmented crops of the training cases, on ``device``."""

    def __init__(self, cases: Sequence[CachedCase], crop: int, device: torch.device) -> None:
        if not cases:
            raise DataError("no training cases")
        self.cases = list(cases)
        self.crop = crop
        self.device = device
        self.resident: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if device.type == "cuda":
            need = sum(int(np.prod(c.shape)) * (4 * 2 + 3) for c in self.cases)
            if need < GPU_SHARE * torch.cuda.mem_get_info(device)[0]:
                self.resident = [
                    (
                        torch.from_numpy(np.array(c.image())).to(device),
                        torch.from_numpy(np.array(c.label())).to(device),
                    )
                    for c in self.cases
                ]

    @property
    def on_device(self) -> bool:
        """Whether every case is held on the device (else crops are read from disk)."""
        return self.resident is not None

    def _crop(self, index: int, centre: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.cases[index]
        window, pads = _window(case.shape, centre, self.crop)
        if self.resident is not None:
            image, label = self.resident[index]
            x, y = image[window], label[window]
        else:
            # open, copy the window, drop the map: the pages leave this process again
            x = torch.from_numpy(np.array(case.image()[window]))
            y = torch.from_numpy(np.array(case.label()[window]))
        if any(pads):
            x, y = torch.nn.functional.pad(x, pads), torch.nn.functional.pad(y, pads)
        return x, y

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch on the device: images float32 (B, 4, c, c, c), regions float32."""
        images, labels = [], []
        for _ in range(batch):
            index = int(rng.integers(len(self.cases)))
            case = self.cases[index]
            centres = case.positive
            if not len(centres) or rng.random() >= POSITIVE_FRACTION:
                centres = case.anywhere
            shape = np.array(case.shape)
            centre = centres[int(rng.integers(len(centres)))] if len(centres) else shape // 2
            x, y = self._crop(index, centre)
            images.append(x)
            labels.append(y)
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
