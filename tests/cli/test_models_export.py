"""``fedseg admin models export --format monai-bundle``: MONAI's own tools load and run it.

Offline: the bundle is exported from a signed tar with no server, then loaded with
`monai.bundle.ConfigParser`, checked with `verify_net_in_out`, and run end to end
with `monai.bundle.run`; its outputs must equal ``fedseg predict``'s on the same input.
"""

from __future__ import annotations

import json
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from client.data import discover
from client.phantoms import generate
from client.predict import build_network, load_case
from fedseg.cli import app
from shared import crypto, models
from shared.bundle import bundle_tar, make_bundle, open_bundle
from shared.tensors import state_tensors, to_safetensors

PARAMS = {"blocks_down": [1, 1], "blocks_up": [1]}
ROI = {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("export")
    generate(root / "cases", cases=2, size=24, seed=4)
    key = crypto.generate_signing_key()
    weights = state_tensors(models.build("segresnet-small", PARAMS, seed=9).state_dict())
    _, files = make_bundle(
        run_id="run-x",
        version=4,
        model="segresnet-small",
        model_params=PARAMS,
        weights=to_safetensors(weights),
        signing_key=key,
    )
    (root / "final-model.tar").write_bytes(bundle_tar(files))
    (root / "server.pem").write_bytes(crypto.public_key_pem(key.public_key()))
    result = CliRunner().invoke(
        app,
        [
            "admin",
            "models",
            "export",
            str(root / "final-model.tar"),
            "--format",
            "monai-bundle",
            "--out",
            str(root / "bundle"),
            "--server-key",
            str(root / "server.pem"),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return {"root": root, "key": key, "weights": weights, "result": json.loads(result.stdout)}


def test_the_bundle_has_monai_metadata_and_fedseg_provenance(exported):
    bundle = exported["root"] / "bundle"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    for field in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version"):
        assert meta[field], field
    for field in ("task", "description", "authors", "copyright", "network_data_format"):
        assert meta[field], field
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 4 and image["channel_def"]["3"] == "FLAIR"
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    provenance = meta["fedseg"]
    assert provenance["run_id"] == "run-x" and provenance["version"] == 4
    signed = (bundle / "models" / "fedseg-bundle.tar").read_bytes()
    assert signed == (exported["root"] / "final-model.tar").read_bytes()
    assert provenance["bundle_sha256"] == __import__("hashlib").sha256(signed).hexdigest()
    assert {"sites", "rounds", "privacy"} <= set(provenance)
    assert (bundle / "LICENSE").is_file() and (bundle / "docs" / "README.md").is_file()
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert set(state) == set(exported["weights"])
    assert all(torch.equal(state[name], exported["weights"][name]) for name in state)


def test_monai_config_parser_builds_the_same_network(exported):
    from monai.bundle import ConfigParser, verify_net_in_out

    bundle = exported["root"] / "bundle"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")

    case = discover(exported["root"] / "cases").cases[0]
    ours, _, _ = load_case(case)
    theirs = preprocessing({"image": [str(p) for p in case.images]})["image"]
    np.testing.assert_allclose(np.asarray(theirs), ours, rtol=1e-5, atol=1e-5)

    opened = open_bundle(
        (bundle / "models" / "fedseg-bundle.tar").read_bytes(),
        {crypto.key_id(exported["key"].public_key()): exported["key"].public_key()},
    )
    fedseg_net = build_network("segresnet-small", PARAMS, opened.tensors)
    batch = torch.from_numpy(ours[:, :16, :16, :16].copy())[None]
    with torch.inference_mode():
        assert torch.equal(network(batch), fedseg_net(batch))
        if exported["result"]["torchscript"]:
            scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
            torch.testing.assert_close(scripted(batch), fedseg_net(batch))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        n=2,
        any=8,
    )


def test_monai_bundle_run_matches_fedseg_predict(exported, tmp_path):
    from monai.bundle import run

    root, bundle = exported["root"], exported["root"] / "bundle"
    run(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle),
        dataset_dir=str(root / "cases"),
        output_dir=str(tmp_path / "monai"),
        inferer=ROI,
    )
    # fedseg predict runs the exported folder too: it verifies the signed tar inside
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(bundle),
            "--server-key",
            str(root / "server.pem"),
            "--out",
            str(tmp_path / "fedseg"),
            "--roi",
            "32",
            str(root / "cases"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    for case in discover(root / "cases").cases:
        ours: Any = nib.load(str(tmp_path / "fedseg" / f"{case.case_id}.nii.gz"))
        theirs: Any = nib.load(str(tmp_path / "monai" / f"{case.case_id}_t1_seg.nii.gz"))
        np.testing.assert_array_equal(np.asarray(theirs.dataobj), np.asarray(ours.dataobj))
        np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-5)


def test_export_refuses_a_model_signed_by_another_key(exported, tmp_path):
    other = tmp_path / "other.pem"
    other.write_bytes(crypto.public_key_pem(crypto.generate_signing_key().public_key()))
    result = CliRunner().invoke(
        app,
        [
            "admin",
            "models",
            "export",
            str(exported["root"] / "final-model.tar"),
            "--out",
            str(tmp_path / "b"),
            "--server-key",
            str(other),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 1 and "unknown_key" in result.stderr
    assert not (tmp_path / "b").exists()
