"""``fedseg predict``: a verified model's label maps in the input's geometry, volumes in mL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from client.data import discover
from client.phantoms import generate
from client.predict import load_case, regions_to_labels, to_input_space, volumes
from fedseg.cli import app
from shared import crypto, models
from shared.bundle import bundle_tar, make_bundle
from shared.tensors import state_tensors, to_safetensors

TINY = {"blocks_down": [1], "blocks_up": []}


def _reorient(case_dir: Path, zooms: tuple[float, float, float]) -> None:
    """Rewrite a case with permuted axes, other spacings and an oblique-free LPS-ish affine."""
    for path in case_dir.iterdir():
        image: Any = nib.load(str(path))
        data = np.transpose(np.asarray(image.dataobj), (2, 0, 1))[:, ::-1, :].copy()
        affine = np.array(
            [
                [0.0, -zooms[1], 0.0, 40.0],
                [0.0, 0.0, zooms[2], -30.0],
                [-zooms[0], 0.0, 0.0, 20.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        nib.save(nib.Nifti1Image(data, affine), str(path))


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A signed consensus bundle of a tiny model, and the server's public key PEM."""
    folder = tmp_path_factory.mktemp("signed")
    key = crypto.generate_signing_key()
    weights = state_tensors(models.build("segresnet-small", TINY, seed=5).state_dict())
    _, files = make_bundle(
        run_id="run-test",
        version=3,
        model="segresnet-small",
        model_params=TINY,
        weights=to_safetensors(weights),
        signing_key=key,
    )
    (folder / "final-model.tar").write_bytes(bundle_tar(files))
    (folder / "server.pem").write_bytes(crypto.public_key_pem(key.public_key()))
    return folder / "final-model.tar", folder / "server.pem"


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict-cases") / "data"
    generate(root, cases=4, size=24, seed=2)
    names = sorted(p.name for p in root.iterdir())
    _reorient(root / names[1], (1.2, 0.9, 2.0))
    next((root / names[2]).glob("*_t2.nii.gz")).unlink()  # a missing modality
    flair = next((root / names[3]).glob("*_flair.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((20, 24, 24), np.float32), np.eye(4)), str(flair))
    return root


def _predict(*args: str):
    return CliRunner().invoke(app, ["predict", *args], catch_exceptions=False)


def test_predict_writes_label_maps_in_the_inputs_geometry(signed, cases, tmp_path):
    bundle, pem = signed
    out = tmp_path / "out"
    result = _predict(
        "--model",
        str(bundle),
        "--server-key",
        str(pem),
        "--out",
        str(out),
        "--roi",
        "32",
        "--json",
        str(cases),
    )
    # two bad cases are reported, the batch goes on, and the exit code says so
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == {"run_id": "run-test", "version": 3, "name": "segresnet-small"}
    by_case = {c["case"]: c for c in summary["cases"]}
    names = sorted(p.name for p in cases.iterdir())
    assert [by_case[n]["ok"] for n in names] == [True, True, False, False]
    assert "t2: missing modality" in by_case[names[2]]["error"]
    assert "flair: shape" in by_case[names[3]]["error"]
    assert json.loads((out / "summary.json").read_text())["cases"] == summary["cases"]

    for name in names[:2]:
        source: Any = nib.load(str(next((cases / name).glob("*_t1.nii.gz"))))
        written: Any = nib.load(str(out / f"{name}.nii.gz"))
        labels = np.asarray(written.dataobj)
        assert labels.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
        report = json.loads((out / f"{name}.json").read_text())
        voxel_ml = float(np.prod(source.header.get_zooms()[:3])) / 1000
        for code, label in ((1, "necrotic_core"), (2, "edema"), (4, "enhancing_tumour")):
            assert report["voxels"][label] == int((labels == code).sum())
            assert report["volumes_ml"][label] == pytest.approx((labels == code).sum() * voxel_ml)
        assert report["volumes_ml"]["WT"] == pytest.approx(
            np.isin(labels, [1, 2, 4]).sum() * voxel_ml
        )
        # the phantoms carry a label map: Dice and HD95 are reported for each region
        assert set(report["metrics"]) >= {"dice_tc", "dice_wt", "dice_et", "hd95_wt"}


def test_the_inverse_geometry_puts_every_voxel_back(cases):
    case = next(
        c for c in discover(cases).cases if c.case_id == sorted(p.name for p in cases.iterdir())[1]
    )
    image, geometry, _ = load_case(case)
    source: Any = nib.load(str(case.images[0]))
    t1 = np.asarray(source.dataobj)
    # a label map that is non-zero only inside the head, as a prediction is
    truth = np.where(t1 > 0, (np.arange(t1.size).reshape(t1.shape) % 3) + 1, 0).astype(np.uint8)
    forward = nib.orientations.apply_orientation(truth, geometry.to_ras)[geometry.box]
    assert forward.shape == image.shape[1:]
    np.testing.assert_array_equal(to_input_space(np.ascontiguousarray(forward), geometry), truth)
    # and the model sees RAS: the cropped t1 is the reoriented t1, normalised
    assert image.shape[0] == 4 and np.isfinite(image).all()


def test_regions_become_brats_labels_and_volumes_use_the_spacing():
    regions = np.zeros((3, 4, 4, 4), dtype=bool)
    regions[1, :2] = True  # WT
    regions[0, :1] = True  # TC
    regions[2, :1, :2] = True  # ET
    labels = regions_to_labels(regions)
    assert (labels == 4).sum() == 8 and (labels == 1).sum() == 8 and (labels == 2).sum() == 16
    counts, ml = volumes(labels, (2.0, 1.0, 0.5))
    assert counts["WT"] == 32 and ml["WT"] == pytest.approx(32 * 1.0 / 1000)
    assert counts["TC"] == 16 and ml["enhancing_tumour"] == pytest.approx(8 / 1000)


def test_predict_refuses_a_model_that_does_not_verify(signed, cases, tmp_path):
    bundle, _ = signed
    other = tmp_path / "other.pem"
    other.write_bytes(crypto.public_key_pem(crypto.generate_signing_key().public_key()))
    result = _predict(
        "--model",
        str(bundle),
        "--server-key",
        str(other),
        "--out",
        str(tmp_path / "out"),
        str(cases),
    )
    assert result.exit_code == 2 and "unknown_key" in result.stderr
    assert not (tmp_path / "out").exists()
