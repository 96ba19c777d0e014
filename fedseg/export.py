"""Export a verified consensus model as a MONAI bundle that runs with no network access.

Layout (what ``monai.bundle`` expects)::

    configs/metadata.json     required MONAI fields, network_data_format, fedseg provenance
    configs/inference.json    the same preprocessing as ``fedseg predict``, sliding window,
                              sigmoid > 0.5, inverted to the input's geometry, BraTS labels
    models/model.pt           a plain state dict (torch.save of tensors only)
    models/model.ts           TorchScript, when the network scripts
    models/fedseg-bundle.tar  the signed fedseg bundle it came from (``fedseg predict`` and
                              anyone with the server key can verify it)
    docs/README.md, LICENSE   how to run it, and the terms

The model is only exported after its signature verified; ``model.pt`` holds tensors
only, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from shared import models
from shared.bundle import Bundle
from shared.errors import InvalidInput

SCHEMA: Final = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20240725.json"
)
ROI: Final = 96
MODALITIES: Final = ("t1", "t1ce", "t2", "flair")


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where the model came from; what the signed bundle alone cannot say is optional."""

    run_id: str
    version: int
    run_name: str | None = None
    rounds: int | None = None
    sites: list[str] | None = None
    privacy: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    server_fingerprint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _network_def(opened: Bundle) -> dict[str, Any]:
    params = models.resolve_params(opened.manifest.model, opened.manifest.model_params)
    return {
        "_target_": "SegResNet",
        "spatial_dims": 3,
        "init_filters": params.init_filters,
        "in_channels": params.in_channels,
        "out_channels": params.out_channels,
        "blocks_down": list(params.blocks_down),
        "blocks_up": list(params.blocks_up),
        "dropout_prob": params.dropout_prob,
    }


def inference_config(opened: Bundle) -> dict[str, Any]:
    """``configs/inference.json``: data, preprocessing, network, inferer, postprocessing, run."""
    to_brats = "$lambda x: (x[1:2] * 2).masked_fill(x[0:1] > 0, 1).masked_fill(x[2:3] > 0, 4)"
    case_images = "[sorted(glob.glob(os.path.join(c, '*_' + m + '.nii*')))[0] for m in @modalities]"
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "/workspace/data",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "modalities": list(MODALITIES),
        "datalist": "$[{'image': "
        + case_images
        + "} for c in sorted(glob.glob(os.path.join(@dataset_dir, '*'))) if os.path.isdir(c)]",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": _network_def(opened),
        "network": "$@network_def.to(@device).eval()",
        "checkpoint": "$torch.load(os.path.join(@bundle_root, 'models', 'model.pt'), "
        "map_location=@device, weights_only=True)",
        "load_weights": "$@network.load_state_dict(@checkpoint)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": None},
                {
                    "_target_": "CropForegroundd",
                    "keys": "image",
                    "source_key": "image",
                    "margin": 2,
                    "allow_smaller": True,
                },
                {
                    "_target_": "NormalizeIntensityd",
                    "keys": "image",
                    "nonzero": True,
                    "channel_wise": True,
                },
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [ROI, ROI, ROI],
            "sw_batch_size": 1,
            "overlap": 0.25,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": True,
                    "to_tensor": True,
                },
                {"_target_": "Lambdad", "keys": "pred", "func": to_brats},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                },
            ],
        },
        "predict": "$lambda d: @postprocessing({**d, 'pred': "
        "@inferer(d['image'][None].to(@device), @network)[0]})",
        "initialize": ["$torch.set_grad_enabled(False)", "$@load_weights"],
        "run": ["$[@predict(d) for d in @dataset]"],
        "finalize": [],
    }


def _versions() -> dict[str, str]:
    import monai
    import nibabel
    import numpy
    import torch

    return {
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "nibabel": str(nibabel.__version__),
    }


def metadata(
    opened: Bundle, provenance: Provenance, bundle_sha256: str, torchscript: bool
) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's required fields plus fedseg provenance."""
    manifest = opened.manifest
    params = models.resolve_params(manifest.model, manifest.model_params)
    factor = 2 ** (len(params.blocks_down) - 1)
    shape = [f"{factor}*n"] * 3
    versions = _versions()
    version = f"1.0.{manifest.version}"
    return {
        "schema": SCHEMA,
        "version": version,
        "changelog": {version: f"fedseg run {manifest.run_id}, model version {manifest.version}"},
        "monai_version": versions["monai_version"],
        "pytorch_version": versions["pytorch_version"],
        "numpy_version": versions["numpy_version"],
        "required_packages_version": {"nibabel": versions["nibabel"]},
        "name": f"fedseg {manifest.model} ({provenance.run_name or manifest.run_id})",
        "task": "Brain tumour segmentation of multimodal MRI into BraTS regions TC, WT, ET",
        "description": (
            f"A {manifest.model} ({models.REGISTRY[manifest.model].description}) trained "
            "by federated averaging across hospitals with fedseg; exported from the signed "
            "consensus bundle in models/fedseg-bundle.tar."
        ),
        "authors": "the sites of the fedseg run " + (provenance.run_name or manifest.run_id),
        "copyright": "the consortium that ran the federated training; see LICENSE",
        "intended_use": "Research only. Not a medical device; not for clinical decisions.",
        "data_source": "each site's own harmonised BraTS-style MRI; no data left any site",
        "data_type": "nibabel",
        "image_classes": "4 channels: T1, T1ce, T2, FLAIR (co-registered, skull-stripped)",
        "label_classes": "3 channels: tumour core (TC), whole tumour (WT), enhancing (ET)",
        "pred_classes": "3 channels: TC, WT, ET; saved as BraTS labels 1, 2, 4",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": params.in_channels,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": params.out_channels,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "TC", "1": "WT", "2": "ET"},
                }
            },
        },
        "fedseg": {
            "run_id": manifest.run_id,
            "run_name": provenance.run_name,
            "version": manifest.version,
            "rounds": provenance.rounds,
            "sites": provenance.sites,
            "privacy": provenance.privacy,
            "training": provenance.training,
            "model": manifest.model,
            "model_params": manifest.model_params,
            "weights_sha256": manifest.weights_sha256,
            "bundle_sha256": bundle_sha256,
            "key_id": manifest.key_id,
            "server_fingerprint": provenance.server_fingerprint,
            "signed_at": manifest.created_at.isoformat(),
            "exported_at": datetime.now(UTC).isoformat(),
            "torchscript": torchscript,
            **provenance.extra,
        },
    }


def _readme(meta: dict[str, Any]) -> str:
    info = meta["fedseg"]
    return f"""# {meta["name"]}

{meta["description"]}

Run {info["run_id"]} ({info["run_name"] or "name not recorded"}), model version {info["version"]}
of {info["rounds"] or "?"} rounds, sites: {", ".join(info["sites"] or ["not recorded"])}.
Weights sha256 `{info["weights_sha256"]}`, signed by the server key `{info["key_id"]}`.

## Run it (offline)

    python -c "from monai.bundle import run; run(bundle_root='.', \\
        config_file='configs/inference.json', meta_file='configs/metadata.json', \\
        dataset_dir='/path/to/cases')"

or, with MONAI's optional `fire` package: `python -m monai.bundle run --bundle_root .
--config_file configs/inference.json --meta_file configs/metadata.json --dataset_dir …`.

`dataset_dir` holds one folder per case with `<case>_t1/_t1ce/_t2/_flair.nii.gz`; the
label maps (BraTS codes 1, 2, 4) land in `eval/` in each input's geometry. Or, with
fedseg: `fedseg predict --model . --server-key SERVER_KEY.pem --out OUT CASES`, which
verifies `models/fedseg-bundle.tar` first and reports volumes in mL.

`models/model.pt` is a plain state dict (`torch.load(path, weights_only=True)`);
`models/model.ts` is TorchScript when present.

{meta["intended_use"]}
"""


LICENCE = """The code that defines, trains and runs this network (fedseg, MONAI) is under the
Apache License 2.0. The weights were trained by federated learning on the participating
hospitals' data, which never left them; their terms of use are set by the consortium
that ran the training: ask its research admin before sharing them beyond it.

Research use only. This model is not a medical device and must not be used for
clinical decisions.
"""


def _torchscript(network: Any, path: Path) -> bool:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(network)
            scripted.save(str(path))
    except Exception:  # a network that does not script is exported without TorchScript
        return False
    return True


def export_monai_bundle(
    opened: Bundle, signed_tar: bytes, provenance: Provenance, out: Path
) -> dict[str, Any]:
    """Write the MONAI bundle to ``out`` (which must not exist yet); return its metadata."""
    import torch

    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} exists and is not empty; pick a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for folder in ("configs", "models", "docs"):
            (staging / folder).mkdir()
        network = models.build(opened.manifest.model, opened.manifest.model_params)
        network.load_state_dict(dict(opened.tensors), strict=True)
        network.eval()
        state = {name: tensor.detach().clone() for name, tensor in network.state_dict().items()}
        torch.save(state, staging / "models" / "model.pt")
        scripted = _torchscript(network, staging / "models" / "model.ts")
        (staging / "models" / "fedseg-bundle.tar").write_bytes(signed_tar)
        meta = metadata(opened, provenance, hashlib.sha256(signed_tar).hexdigest(), scripted)
        _write_json(staging / "configs" / "metadata.json", meta)
        _write_json(staging / "configs" / "inference.json", inference_config(opened))
        (staging / "docs" / "README.md").write_text(_readme(meta), encoding="utf-8")
        (staging / "LICENSE").write_text(LICENCE, encoding="utf-8")
        if out.exists():
            out.rmdir()
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
