"""Phantom properties: valid BraTS labels, nested regions, tumour in the brain, styles differ."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from client.data import discover
from client.phantoms import STYLES, generate, make_phantom, site_style


@pytest.mark.parametrize("seed", range(6))
def test_labels_nested_and_inside_the_brain(seed: int) -> None:
    phantom = make_phantom(48, np.random.default_rng(seed), site_style(seed % 4))
    label = phantom.label
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 4}
    wt, tc, et = label > 0, np.isin(label, [1, 4]), label == 4
    assert wt.any() and tc.any()
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    assert not (wt & ~phantom.brain).any()
    # skull-stripped like BraTS: nothing outside the brain, signal inside it
    for image in phantom.images.values():
        assert not image[~phantom.brain].any()
        assert (image[phantom.brain] > 0).mean() > 0.99


def test_modalities_differ_in_tissue_contrast() -> None:
    phantom = make_phantom(64, np.random.default_rng(1), site_style("reference"))
    label = phantom.label
    edema = label == 2
    healthy = phantom.brain & (label == 0)
    ratios = {}
    for name, image in phantom.images.items():
        ratios[name] = image[edema].mean() / image[healthy].mean()
    # edema is bright on T2 and FLAIR, not on T1
    assert ratios["flair"] > 1.2 and ratios["t2"] > 1.2 and ratios["t1"] < 1.0
    enhancing = label == 4
    if enhancing.any():
        assert image_mean(phantom, "t1ce", enhancing) > 1.3 * image_mean(phantom, "t1", enhancing)
    stack = np.stack([phantom.images[m][phantom.brain].astype(float) for m in phantom.images])
    correlation = np.corrcoef(stack)
    assert (correlation[np.triu_indices(4, 1)] < 0.98).all()


def image_mean(phantom, modality, mask) -> float:
    image = phantom.images[modality].astype(float)
    return float(image[mask].mean() / image[phantom.brain].mean())


def test_site_styles_differ() -> None:
    a = make_phantom(48, np.random.default_rng(5), site_style("reference"))
    b = make_phantom(48, np.random.default_rng(5), site_style("highfield"))
    assert abs(b.images["t1ce"][b.brain].mean() / a.images["t1ce"][a.brain].mean() - 1) > 0.5
    sizes = {
        name: np.mean(
            [(make_phantom(32, np.random.default_rng(i), s).label > 0).sum() for i in range(6)]
        )
        for name, s in (("highfield", STYLES["highfield"]), ("community", STYLES["community"]))
    }
    assert sizes["community"] > 1.3 * sizes["highfield"]
    assert site_style(7) != site_style(3) and site_style(7).name == "style-7"


def test_written_cases_are_brats2021_nifti(tmp_path) -> None:
    generate(tmp_path, cases=1, size=96, seed=0)
    dataset = discover(tmp_path)
    assert dataset.layout == "brats2021" and len(dataset.cases) == 1
    case = dataset.cases[0]
    image = nib.load(str(case.images[0]))
    assert image.shape == (96, 96, 96)
    assert nib.load(str(case.label)).get_data_dtype() == np.uint8
