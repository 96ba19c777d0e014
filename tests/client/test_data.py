"""Discovery of every layout, the deterministic split, and check-data on broken cases."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from client.data import MODALITIES, check_dataset, discover, valid_cases
from client.data.preprocess import preprocess_case
from fedseg.client_cli import app

SHAPE = (12, 12, 10)


def write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = np.zeros(SHAPE, np.float32)
    data[2:10, 2:10, 2:8] = rng.uniform(100, 200, (8, 8, 6))
    return data


def label(codes: tuple[int, int, int] = (1, 2, 4)) -> np.ndarray:
    data = np.zeros(SHAPE, np.uint8)
    data[3:9, 3:9, 3:7] = codes[1]
    data[4:8, 4:8, 4:6] = codes[2]
    data[5:7, 5:7, 4:5] = codes[0]
    return data


def brats_case(
    folder: Path, case_id: str, names=MODALITIES, codes=(1, 2, 4), sep: str = "_"
) -> Path:
    for index, name in enumerate(names):
        write(folder / case_id / f"{case_id}{sep}{name}.nii.gz", volume(index) * (index + 1))
    write(folder / case_id / f"{case_id}{sep}seg.nii.gz", label(codes))
    return folder / case_id


def test_brats2018_layout(tmp_path: Path) -> None:
    brats_case(tmp_path / "HGG", "Brats18_A_1")
    brats_case(tmp_path / "LGG", "Brats18_B_1")
    dataset = discover(tmp_path)
    assert dataset.layout == "brats2018"
    assert [c.case_id for c in dataset.cases] == ["Brats18_A_1", "Brats18_B_1"]
    assert dataset.cases[0].images[1].name == "Brats18_A_1_t1ce.nii.gz"


def test_brats2021_and_2023_names(tmp_path: Path) -> None:
    brats_case(tmp_path, "BraTS2021_00001")
    brats_case(
        tmp_path,
        "BraTS-GLI-00002-000",
        names=("t1n", "t1c", "t2w", "t2f"),
        codes=(1, 2, 3),
        sep="-",
    )
    dataset = discover(tmp_path)
    assert dataset.layout == "brats2021"
    by_id = {case.case_id: case for case in dataset.cases}
    old, new = by_id["BraTS2021_00001"], by_id["BraTS-GLI-00002-000"]
    assert [p.name.rsplit("-", 1)[1] for p in new.images] == [
        "t1n.nii.gz",
        "t1c.nii.gz",
        "t2w.nii.gz",
        "t2f.nii.gz",
    ]
    assert new.label_map[3] == 4 and old.label_map[4] == 4
    report = check_dataset(tmp_path)
    assert report.ok, report.as_dict()
    # both conventions give the same regions after loading
    a, b = (preprocess_case(c).label for c in (old, new))
    assert np.array_equal(a, b) and a.shape[0] == 3


def msd_dataset(root: Path, n: int = 3) -> None:
    (root / "imagesTr").mkdir(parents=True)
    entries = []
    for i in range(n):
        # MSD channel order: FLAIR, T1w, T1gd, T2w; labels 1 edema, 2 non-enhancing, 3 enhancing
        channels = [volume(3) * 4, volume(0) * 1, volume(1) * 2, volume(2) * 3]
        write(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", np.stack(channels, axis=-1))
        msd = label((2, 1, 3))
        write(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", msd)
        entries.append(
            {
                "image": f"./imagesTr/BRATS_{i:03d}.nii.gz",
                "label": f"./labelsTr/BRATS_{i:03d}.nii.gz",
            }
        )
    document = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {
            "0": "background",
            "1": "edema",
            "2": "non-enhancing tumor",
            "3": "enhancing tumour",
        },
        "training": entries,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(document))


def test_msd_layout_maps_channels_and_labels(tmp_path: Path) -> None:
    msd_dataset(tmp_path / "msd")
    brats_case(tmp_path / "brats", "ref")
    dataset = discover(tmp_path / "msd")
    assert dataset.layout == "msd" and len(dataset.cases) == 3
    case = dataset.cases[0]
    assert case.is_4d and case.channel_index == (1, 2, 3, 0)
    assert case.label_map == {0: 0, 1: 2, 2: 1, 3: 4}
    assert check_dataset(tmp_path / "msd").ok
    msd = preprocess_case(case)
    ref = preprocess_case(discover(tmp_path / "brats").cases[0])
    assert np.array_equal(msd.label, ref.label)  # same TC/WT/ET after label mapping
    assert np.allclose(msd.image, ref.image, atol=1e-5)  # same canonical channel order


def test_datalist_json(tmp_path: Path) -> None:
    brats_case(tmp_path / "data", "c1")
    brats_case(tmp_path / "data", "c2")
    order = ("flair", "t1ce", "t1", "t2")  # as in MONAI's brats21 datalist
    datalist = {
        "training": [
            {
                "image": [f"data/{c}/{c}_{m}.nii.gz" for m in order],
                "label": f"data/{c}/{c}_seg.nii.gz",
                "fold": 0,
            }
            for c in ("c1", "c2")
        ]
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    dataset = discover(path)
    assert dataset.layout == "datalist"
    assert [c.case_id for c in dataset.cases] == ["c1", "c2"]
    assert [p.name for p in dataset.cases[0].images] == [f"c1_{m}.nii.gz" for m in MODALITIES]
    assert check_dataset(path).ok


BROKEN = {
    "missing_modality": "t2: missing modality",
    "missing_label": "label: missing segmentation",
    "shape_mismatch": "t1ce: shape",
    "affine_mismatch": "flair: affine differs",
    "non_finite": "t1: holds NaN",
    "label_values": "label: values [3]",
    "empty_volume": "t2: empty volume",
    "truncated": "flair: unreadable or truncated",
    "garbage": "t1: unreadable",
    "four_d_modality": "t1ce: expected 3-D",
}


def break_case(folder: Path, kind: str) -> None:
    name = folder.name
    path = lambda m: folder / f"{name}_{m}.nii.gz"  # noqa: E731
    if kind == "missing_modality":
        path("t2").unlink()
    elif kind == "missing_label":
        path("seg").unlink()
    elif kind == "shape_mismatch":
        write(path("t1ce"), np.ones((12, 12, 9), np.float32))
    elif kind == "affine_mismatch":
        write(path("flair"), volume(3), np.diag([2.0, 1.0, 1.0, 1.0]))
    elif kind == "non_finite":
        data = volume(0)
        data[5, 5, 5] = np.nan
        write(path("t1"), data)
    elif kind == "label_values":
        data = label()
        data[0, 0, 0] = 3
        write(path("seg"), data)
    elif kind == "empty_volume":
        write(path("t2"), np.zeros(SHAPE, np.float32))
    elif kind == "truncated":
        raw = path("flair").read_bytes()
        path("flair").write_bytes(raw[: len(raw) // 2])
    elif kind == "garbage":
        path("t1").write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    elif kind == "four_d_modality":
        write(path("t1ce"), np.ones((*SHAPE, 2), np.float32))


def test_check_data_lists_every_broken_case(tmp_path: Path) -> None:
    brats_case(tmp_path, "good_1")
    brats_case(tmp_path, "good_2")
    for kind in BROKEN:
        break_case(brats_case(tmp_path, kind), kind)
    report = check_dataset(tmp_path, min_cases=2)
    by_id = {case.case_id: case for case in report.cases}
    assert by_id["good_1"].valid and by_id["good_2"].valid
    for kind, expected in BROKEN.items():
        problems = by_id[kind].problems
        assert any(expected in p for p in problems), (kind, problems)
    assert report.valid_cases == 2 and report.ok
    assert not check_dataset(tmp_path, min_cases=3).ok
    cases, _ = valid_cases(tmp_path, min_cases=2)
    assert sorted(c.case_id for c in cases) == ["good_1", "good_2"]


def test_check_data_cli_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    brats_case(tmp_path, "good_1")
    bad = brats_case(tmp_path, "bad_1")
    break_case(bad, "truncated")
    result = runner.invoke(app, ["check-data", str(tmp_path), "--json"])
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["valid_cases"] == 1 and not document["ok"]
    result = runner.invoke(app, ["check-data", str(tmp_path), "--min-cases", "1"])
    assert result.exit_code == 0 and "bad_1" in result.stdout and "truncated" in result.stdout
    result = runner.invoke(app, ["check-data", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "does not exist" in result.output
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    result = runner.invoke(app, ["check-data", str(tmp_path)])
    assert result.exit_code == 1 and "no cases found" in result.output


def test_a_duplicate_case_id_is_never_trained_on(tmp_path: Path) -> None:
    """Defect: both copies of a duplicated id passed ``valid_cases`` (it filtered by id)."""
    brats_case(tmp_path / "HGG", "Brats18_X_1")
    brats_case(tmp_path / "LGG", "Brats18_X_1")  # the same id in the other grade folder
    brats_case(tmp_path / "HGG", "Brats18_Y_1")
    brats_case(tmp_path / "HGG", "Brats18_Z_1")
    report = check_dataset(tmp_path)
    flagged = [r for r in report.cases if r.case_id == "Brats18_X_1"]
    assert len(flagged) == 2 and all(not r.valid for r in flagged)
    assert all(any("duplicate case id" in p for p in r.problems) for r in flagged)
    cases, _ = valid_cases(tmp_path, min_cases=2)
    assert sorted(c.case_id for c in cases) == ["Brats18_Y_1", "Brats18_Z_1"]


def test_valid_cases_discovers_once(tmp_path: Path, monkeypatch) -> None:
    """What is trained on is what was checked: one discovery, not one per step."""
    import client.data.checks as checks

    brats_case(tmp_path, "c1")
    brats_case(tmp_path, "c2")
    calls = []
    real = checks.discover
    monkeypatch.setattr(checks, "discover", lambda path: calls.append(path) or real(path))
    cases, report = valid_cases(tmp_path, min_cases=2)
    assert len(calls) == 1
    assert [id(c) for c in cases] == [id(r.case) for r in report.cases]


def test_preprocessing_matches_monai_loading_and_orientation(tmp_path: Path) -> None:
    """Reading once with nibabel and reorienting by hand gives MONAI's LoadImaged+Orientationd."""
    from monai.transforms.compose import Compose
    from monai.transforms.io.dictionary import LoadImaged
    from monai.transforms.spatial.dictionary import Orientationd
    from monai.transforms.utility.dictionary import EnsureChannelFirstd

    from client.data.preprocess import preprocessing
    from client.phantoms import generate

    generate(tmp_path, cases=1, size=20, seed=2)
    case = discover(tmp_path).cases[0]
    keys = ["image", "label"]
    loaded = Compose(
        [
            LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
            EnsureChannelFirstd(keys=keys),
            Orientationd(keys=keys, axcodes="RAS", labels=None),
        ]
    )(case.transform_dict())
    reference = preprocessing()(
        {
            "image": loaded["image"].numpy(),
            "label": loaded["label"].numpy(),
            "label_map": case.transform_dict()["label_map"],
        }
    )
    ours = preprocess_case(case)
    assert np.allclose(ours.image, np.asarray(reference["image"]), atol=1e-5)
    assert np.array_equal(ours.label, np.asarray(reference["label"]))
    assert np.allclose(ours.spacing, loaded["image"].pixdim[:3])


def test_a_case_without_label_preprocesses_for_inference(tmp_path: Path) -> None:
    from shared.errors import DataError

    folder = brats_case(tmp_path, "new_case")
    (folder / "new_case_seg.nii.gz").unlink()
    case = discover(tmp_path).cases[0]
    with pytest.raises(DataError, match="missing segmentation"):
        preprocess_case(case)
    done = preprocess_case(case, labelled=False)
    assert done.image.shape[0] == 4 and not done.label.any()


def _monai_crop_and_normalise(image: np.ndarray) -> np.ndarray:
    from monai.data.meta_obj import set_track_meta
    from monai.transforms.croppad.dictionary import CropForegroundd
    from monai.transforms.intensity.dictionary import NormalizeIntensityd

    set_track_meta(False)
    try:
        item = CropForegroundd(keys="image", source_key="image", margin=2, allow_smaller=True)(
            {"image": image.copy()}
        )
        item = NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)(item)
    finally:
        set_track_meta(True)
    return np.asarray(item["image"])


def test_crop_and_normalisation_equal_monai_on_awkward_images() -> None:
    """A brain touching the border, a constant channel and an empty channel, as MONAI does them."""
    from client.data.preprocess import foreground_box, normalise_nonzero

    rng = np.random.default_rng(3)
    image = np.zeros((4, 30, 26, 20), dtype=np.float32)
    image[0, 0:12, 5:26, 3:9] = rng.normal(300, 40, (12, 21, 6))
    image[1, 10:20, 4:6, 7:19] = 5.0  # constant: std 0 divides by 1
    image[2, 2:28, 1:25, 0:20] = rng.normal(-2, 1, (26, 24, 20))  # negatives are not foreground
    reference = _monai_crop_and_normalise(image)
    box = foreground_box(image)
    ours = normalise_nonzero(np.array(image[(slice(None), *box)]))
    assert ours.shape == reference.shape
    assert np.allclose(ours, reference, atol=1e-5)
    assert not ours[3].any()


def test_region_channels_from_integer_and_float_labels() -> None:
    from client.data.preprocess import regions_of

    codes = np.array([[[0, 1, 2, 4, 3, 9]]], dtype=np.int16)
    expected = np.array(
        [
            [[[0, 1, 0, 1, 0, 0]]],  # TC: necrosis and enhancing
            [[[0, 1, 1, 1, 0, 0]]],  # WT: every tumour label
            [[[0, 0, 0, 1, 0, 0]]],  # ET: enhancing
        ],
        dtype=np.uint8,
    )
    identity = {0: 0, 1: 1, 2: 2, 4: 4}
    assert np.array_equal(regions_of(codes, identity), expected)
    assert np.array_equal(regions_of(codes.astype(np.float32) + 0.2, identity), expected)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "float32"])
def test_distinct_values_equal_numpy_unique(dtype: str) -> None:
    from client.data.checks import distinct_values

    rng = np.random.default_rng(1)
    low = 0 if dtype.startswith("u") else -5
    data = np.asfortranarray(rng.integers(low, 60, size=(7, 8, 9)).astype(dtype))
    found = distinct_values(data)
    assert found.dtype == np.unique(data).dtype
    np.testing.assert_array_equal(found, np.unique(data))


def test_sampled_centres_are_argwhere_rows_sampled_the_same_way() -> None:
    from client.data.cache import MAX_CENTRES, _centres

    mask = np.random.default_rng(2).random((40, 40, 40)) < 0.5  # ~32 000 > MAX_CENTRES voxels
    points = np.argwhere(mask)
    assert len(points) > MAX_CENTRES
    expected = points[np.random.default_rng(0).choice(len(points), MAX_CENTRES, replace=False)]
    np.testing.assert_array_equal(_centres(mask, np.random.default_rng(0)), expected)
    small = np.zeros((3, 4, 5), dtype=bool)
    small[1, 2, 3] = small[2, 0, 1] = True
    np.testing.assert_array_equal(_centres(small, np.random.default_rng(0)), np.argwhere(small))
    assert _centres(np.zeros((2, 2, 2), dtype=bool), np.random.default_rng(0)).shape == (0, 3)
