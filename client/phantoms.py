"""Synthetic BraTS-like cases: real NIfTI files for simulation, demos and tests.

Each case is a skull-stripped brain (as BraTS data is) with CSF, grey and white
matter, ventricles and a falx; a tumour of random size, shape and place with a
necrotic core (label 1), edema (2) and an enhancing rim (4); tissue contrasts that
differ between T1, T1ce, T2 and FLAIR roughly as they do in real scans; partial-volume
blur, texture, a bias field and Rician noise. A `SiteStyle` shifts intensity scale,
contrast, noise, bias and tumour sizes so that sites differ as hospitals do (non-IID)
while the anatomy stays learnable across them.

Vectorised numpy (plus torch for upsampling smooth fields): a 96^3 case takes well
under a second including writing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
import torch.nn.functional as F

from client.data import MODALITIES
from shared.errors import InvalidInput

# Tissue classes in the order of the contrast table below.
_CSF, _GM, _WM, _EDEMA, _NECROSIS, _ENHANCING = range(6)
# Relative signal per tissue (rows) and modality (columns t1, t1ce, t2, flair).
_CONTRAST: Final = np.array(
    [
        [0.25, 0.25, 1.00, 0.12],  # CSF: dark on T1, bright on T2, suppressed on FLAIR
        [0.58, 0.60, 0.62, 0.62],  # grey matter
        [0.82, 0.84, 0.38, 0.45],  # white matter
        [0.48, 0.50, 0.86, 0.98],  # edema: bright on T2 and FLAIR
        [0.30, 0.32, 0.92, 0.50],  # necrotic core: fluid-like
        [0.55, 1.25, 0.70, 0.78],  # enhancing rim: bright on T1ce only
    ],
    dtype=np.float32,
)
SPACING_MM: Final = 180.0  # field of view the grid spans, whatever its size


@dataclass(frozen=True, slots=True)
class SiteStyle:
    """How one hospital's scans differ: scanner gains, contrast, noise, bias, case mix."""

    name: str
    intensity_scale: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    contrast: float = 1.0  # stretch of tissue contrast around the mean signal
    noise: float = 0.03  # Rician noise sigma as a fraction of the mean brain signal
    bias: float = 0.15  # strength of the smooth multiplicative bias field
    tumour_scale: float = 1.0  # multiplies tumour radii
    enhancement: float = 1.0  # how strongly the rim enhances on T1ce
    small_tumours: float = 0.0  # share of cases with a small (0.55x) tumour: the size mix
    enhancing_rate: float = 0.92  # share of tumours with an enhancing rim (label 4)


STYLES: Final[dict[str, SiteStyle]] = {
    "reference": SiteStyle("reference"),
    "lowfield": SiteStyle(
        "lowfield",
        intensity_scale=(0.6, 0.55, 0.7, 0.5),
        contrast=0.85,
        noise=0.07,
        bias=0.3,
        tumour_scale=1.1,
        enhancement=0.8,
    ),
    "highfield": SiteStyle(
        "highfield",
        intensity_scale=(1.8, 2.1, 1.5, 1.7),
        contrast=1.1,
        noise=0.02,
        bias=0.35,
        tumour_scale=0.8,
        enhancement=1.15,
    ),
    "community": SiteStyle(
        "community",
        intensity_scale=(0.9, 1.2, 0.8, 1.1),
        contrast=0.95,
        noise=0.05,
        bias=0.2,
        tumour_scale=1.3,
        enhancement=0.95,
    ),
}
_STYLE_ORDER: Final = tuple(STYLES)


def site_style(value: str | int) -> SiteStyle:
    """A named style, or style ``n``: presets for 0-3, seeded variations beyond."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        try:
            return STYLES[value]
        except KeyError:
            raise InvalidInput(
                f"unknown site style {value!r}; use an integer or one of {', '.join(STYLES)}"
            ) from None
    number = int(value)
    if number < 0:
        raise InvalidInput("a site style number must be >= 0")
    base = STYLES[_STYLE_ORDER[number % len(_STYLE_ORDER)]]
    if number < len(_STYLE_ORDER):
        return base
    rng = np.random.default_rng([7919, number])
    jitter = rng.uniform(0.85, 1.15, size=8)
    return dataclasses.replace(
        base,
        name=f"style-{number}",
        intensity_scale=(
            float(base.intensity_scale[0] * jitter[0]),
            float(base.intensity_scale[1] * jitter[1]),
            float(base.intensity_scale[2] * jitter[2]),
            float(base.intensity_scale[3] * jitter[3]),
        ),
        contrast=float(np.clip(base.contrast * jitter[4], 0.75, 1.25)),
        noise=float(base.noise * jitter[5]),
        bias=float(base.bias * jitter[6]),
        tumour_scale=float(np.clip(base.tumour_scale * jitter[7], 0.7, 1.4)),
    )


@dataclass(frozen=True, slots=True)
class Phantom:
    """One synthetic case: four modalities (t1, t1ce, t2, flair), BraTS labels, affine."""

    images: dict[str, np.ndarray]
    label: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


def _smooth_field(rng: np.random.Generator, size: int, coarse: int) -> np.ndarray:
    """A smooth random field of roughly unit amplitude, upsampled from a coarse grid."""
    noise = torch.from_numpy(rng.standard_normal((1, 1, coarse, coarse, coarse), np.float32))
    field = F.interpolate(noise, size=(size, size, size), mode="trilinear", align_corners=True)
    return field[0, 0].numpy()


def _blur(volume: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur: partial-volume effect at tissue edges."""
    out = volume
    for axis in range(3):
        padded = np.pad(out, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        lo = np.take(padded, np.arange(0, out.shape[axis]), axis=axis)
        mid = np.take(padded, np.arange(1, out.shape[axis] + 1), axis=axis)
        hi = np.take(padded, np.arange(2, out.shape[axis] + 2), axis=axis)
        out = (lo + 2 * mid + hi) * 0.25
    return out


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def make_phantom(size: int, rng: np.random.Generator, style: SiteStyle) -> Phantom:
    """Draw one case on a ``size``^3 grid."""
    if size < 16:
        raise InvalidInput("phantoms need a size of at least 16 voxels")
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")  # x: left-right, y: back-front

    # Brain: an ellipsoid, longer front to back, with a wavy surface and flatter base.
    radii = np.array([0.70, 0.86, 0.72], np.float32) * rng.uniform(0.93, 1.05, 3).astype(np.float32)
    base = np.where(z < 0, 1.0 + 0.35 * (-z) ** 2, 1.0).astype(np.float32)
    radius = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z * base / radii[2]) ** 2)
    radius = radius * (1.0 + 0.04 * _smooth_field(rng, size, 5))
    brain = radius < 1.0

    gyri = _smooth_field(rng, size, max(6, size // 6))
    tissue = np.full(x.shape, _WM, dtype=np.int8)
    tissue[radius > 0.76 + 0.08 * gyri] = _GM
    tissue[(radius > 0.9) & (gyri > 0.0)] = _CSF  # sulcal CSF
    tissue[(np.abs(x) < 1.5 / size * 2) & (radius > 0.55) & (z > -0.3)] = _CSF  # falx
    shift = rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    for side in (-1.0, 1.0):  # lateral ventricles
        cx = side * 0.12 + shift[0]
        vent = (
            ((x - cx) / 0.07) ** 2
            + ((y - 0.02 - shift[1]) / 0.30) ** 2
            + ((z - 0.12 - shift[2]) / 0.11) ** 2
        )
        tissue[vent < 1.0] = _CSF

    # Tumour: an oriented, irregular ellipsoid in one hemisphere.
    label = np.zeros(x.shape, dtype=np.uint8)
    centre = np.array(
        [
            rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.42) * radii[0],
            rng.uniform(-0.5, 0.5) * radii[1],
            rng.uniform(-0.25, 0.45) * radii[2],
        ],
        np.float32,
    )
    wt_radius = rng.uniform(0.2, 0.36) * style.tumour_scale
    if style.small_tumours > 0 and rng.random() < style.small_tumours:  # no draw by default
        wt_radius *= 0.55
    axes = rng.uniform(0.75, 1.3, 3).astype(np.float32) * wt_radius
    rot = _rotation(rng)
    offset = np.stack([x - centre[0], y - centre[1], z - centre[2]], axis=-1) @ rot
    distance = np.sqrt(((offset / axes) ** 2).sum(axis=-1))
    edema_distance = distance * (1.0 + 0.2 * _smooth_field(rng, size, 5))
    core_distance = distance * (1.0 + 0.12 * _smooth_field(rng, size, 6))
    core_fraction = rng.uniform(0.35, 0.6)
    necrosis_fraction = rng.uniform(0.35, 0.7) if rng.random() < 0.85 else 0.0
    enhancing = rng.random() < style.enhancing_rate
    in_brain = brain & (tissue != _CSF) | (brain & (distance < core_fraction))
    wt = (edema_distance < 1.0) & in_brain
    tc = (core_distance < core_fraction) & brain
    necrotic = (core_distance < core_fraction * necrosis_fraction) & brain
    label[wt] = 2
    label[tc] = 4 if enhancing else 1
    label[necrotic] = 1
    if not tc.any():  # tiny grids: keep at least the centre voxel as core
        index = tuple(np.clip(((centre + 1) / 2 * (size - 1)).round().astype(int), 0, size - 1))
        label[index] = 4 if enhancing else 1
    tissue[label == 2] = _EDEMA
    tissue[label == 1] = _NECROSIS
    tissue[label == 4] = _ENHANCING

    # Signal: contrast table with the site's contrast and enhancement, texture, blur.
    table = _CONTRAST.copy()
    table[_ENHANCING, 1] = 0.84 + (table[_ENHANCING, 1] - 0.84) * style.enhancement
    table = table.mean(axis=0) + (table - table.mean(axis=0)) * style.contrast
    table *= rng.uniform(0.95, 1.05, table.shape).astype(np.float32)  # per-case variation
    texture = 1.0 + 0.04 * _smooth_field(rng, size, max(8, size // 4))
    images: dict[str, np.ndarray] = {}
    for m, modality in enumerate(MODALITIES):
        signal = table[:, m][tissue] * texture
        signal = _blur(np.where(brain, signal, 0.0).astype(np.float32))
        bias = np.exp(style.bias * _smooth_field(rng, size, 3))
        signal = signal * bias * 1000.0 * style.intensity_scale[m]
        sigma = style.noise * float(signal[brain].mean())
        noisy = np.hypot(
            signal + sigma * rng.standard_normal(signal.shape, np.float32),
            sigma * rng.standard_normal(signal.shape, np.float32),
        )
        images[modality] = np.where(brain, noisy, 0.0).clip(0, 32000).astype(np.int16)
    label[~brain] = 0
    spacing = SPACING_MM / size
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [SPACING_MM / 2, SPACING_MM / 2, -SPACING_MM / 2]
    return Phantom(images=images, label=label, brain=brain, affine=affine)


def write_case(phantom: Phantom, folder: Path, case_id: str) -> Path:
    """Write one case in the BraTS 2021 layout: ``<folder>/<case>/<case>_<mod>.nii.gz``."""
    import nibabel as nib

    nifti: Any = nib.Nifti1Image
    case_dir = folder / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for name, data in [*phantom.images.items(), ("seg", phantom.label)]:
        image = nifti(data, phantom.affine)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, str(case_dir / f"{case_id}_{name}.nii.gz"))
    return case_dir


def generate(
    out: Path, *, cases: int, size: int = 96, seed: int = 0, style: str | int | SiteStyle = 0
) -> list[Path]:
    """Write ``cases`` phantoms under ``out``; case ``i`` depends only on seed, style and i."""
    if cases < 1:
        raise InvalidInput("generate at least one case")
    chosen = style if isinstance(style, SiteStyle) else site_style(style)
    out.mkdir(parents=True, exist_ok=True)
    style_key = sum(chosen.name.encode())
    written = []
    for index in range(cases):
        rng = np.random.default_rng([seed, style_key, index])
        phantom = make_phantom(size, rng, chosen)
        written.append(write_case(phantom, out, f"Phantom{seed:03d}_{index:05d}"))
    return written


# --- heterogeneous sites -----------------------------------------------------------------

Heterogeneity = Literal["none", "strong"]
HETEROGENEITY: Final[tuple[str, ...]] = ("none", "strong")
CASE_COUNTS: Final = (4, 12, 30)  # cases per site under strong heterogeneity, cycled
SMALL_TUMOURS: Final = (0.0, 0.5, 0.25)  # share of small tumours per site, cycled
LOW_GRADE_ENHANCING: Final = 0.15  # the label-shifted site: few tumours enhance


@dataclass(frozen=True, slots=True)
class SitePlan:
    """What one simulated hospital holds: how many cases, in which style."""

    name: str
    index: int
    cases: int
    style: SiteStyle
    label_shift: bool = False


def site_plans(
    sites: int, *, heterogeneity: Heterogeneity = "none", cases_per_site: int = 8
) -> list[SitePlan]:
    """Each site's data: ``none`` is today's demo, ``strong`` differs as hospitals do.

    ``none``: ``cases_per_site`` cases each, site ``i`` in style ``i``. ``strong``:
    case counts cycle through 4 / 12 / 30, each site has its scanner style and its
    own mix of small and large tumours, and the last site (of two or more) has a
    label shift: a low-grade-like case mix where few tumours enhance, so its share
    of ET (label 4) is far below the others'.
    """
    if sites < 1:
        raise InvalidInput("plan at least one site")
    if heterogeneity not in HETEROGENEITY:
        raise InvalidInput(
            f"unknown heterogeneity {heterogeneity!r}; use {' or '.join(HETEROGENEITY)}"
        )
    if cases_per_site < 1:
        raise InvalidInput("each site needs at least one case")
    plans = []
    for index in range(sites):
        name = f"site-{index + 1}"
        if heterogeneity == "none":
            plans.append(SitePlan(name, index, cases_per_site, site_style(index)))
            continue
        base = site_style(index)
        shifted = sites >= 2 and index == sites - 1
        style = dataclasses.replace(
            base,
            name=f"{base.name}-{'lowgrade' if shifted else 'mix'}{index}",
            small_tumours=SMALL_TUMOURS[index % len(SMALL_TUMOURS)],
            enhancing_rate=LOW_GRADE_ENHANCING if shifted else base.enhancing_rate,
        )
        cases = CASE_COUNTS[index % len(CASE_COUNTS)]
        plans.append(SitePlan(name, index, cases, style, label_shift=shifted))
    return plans


def site_seed(seed: int, index: int) -> int:
    """The phantom seed of site ``index`` in a multi-site set (as ``fedseg simulate`` uses)."""
    return seed * 1000 + index + 1


def generate_sites(
    out: Path, plans: list[SitePlan], *, size: int = 96, seed: int = 0
) -> dict[str, Path]:
    """Write each planned site under ``out/<site name>``; returns the folders by name."""
    folders = {}
    for plan in plans:
        folder = out / plan.name
        generate(
            folder, cases=plan.cases, size=size, seed=site_seed(seed, plan.index), style=plan.style
        )
        folders[plan.name] = folder
    return folders
