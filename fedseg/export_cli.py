"""``fedseg admin models export``: a verified model as a MONAI bundle, from a run or a tar.

Mounted under ``fedseg admin models`` by `fedseg.cli`; the writing is `fedseg.export`.
"""

from __future__ import annotations

import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedseg.admin_cli import (
    DEFAULT_SERVER,
    JsonOpt,
    ServerOpt,
    TokenFileOpt,
    client_for,
    download_model,
    models_app,
)
from fedseg.console import errors_as_messages, print_json, stdout
from fedseg.server_key import load_server_key
from shared import crypto
from shared.errors import InvalidInput


class ExportFormat(StrEnum):
    """Formats ``models export`` writes."""

    monai_bundle = "monai-bundle"


def models_export(
    source: Annotated[
        str,
        typer.Argument(
            help="A run (id or name) to download the model from, or a bundle tar already "
            "downloaded (final-model.tar, models download): then no server is needed.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="New folder for the exported model.", file_okay=False),
    ],
    server_key: Annotated[
        str,
        typer.Option(
            "--server-key",
            help="The server's public key the model must be signed with: PEM, base64, a "
            "file, or a fingerprint (checked against the server's published key).",
        ),
    ],
    version: Annotated[
        int | None,
        typer.Option(
            "--version", min=0, help="Model version of the run.", show_default="the latest"
        ),
    ] = None,
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="What to write.")
    ] = ExportFormat.monai_bundle,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a verified model as a MONAI bundle (configs, state dict, TorchScript, provenance).

    From a run it downloads and verifies the version and records the run's sites,
    rounds and privacy settings; from a downloaded tar it works offline and records
    what the signed bundle says.
    """
    from fedseg.export import Provenance, export_monai_bundle
    from fedseg.model_file import open_model

    with errors_as_messages():
        if Path(source).exists():
            key = load_server_key(server_key)
            opened, data = open_model(Path(source), key)
            if data is None:
                raise InvalidInput(f"{source}: export needs the bundle as a tar file")
            provenance = Provenance(
                run_id=opened.manifest.run_id,
                version=opened.manifest.version,
                server_fingerprint=crypto.fingerprint(key),
            )
        else:
            with client_for(server, token_file) as client:
                key = load_server_key(server_key, fetch=client.server_key)
                info = client.find_run(source)
                with tempfile.TemporaryDirectory() as folder:
                    tar = Path(folder) / "bundle.tar"
                    download_model(client, info.id, tar, version=version, server_key=key)
                    opened, data = open_model(tar, key)
            assert data is not None
            provenance = Provenance(
                run_id=info.id,
                version=opened.manifest.version,
                run_name=info.name,
                rounds=info.config.rounds,
                sites=list(info.config.sites),
                privacy=info.config.privacy.model_dump(mode="json"),
                training=info.config.training.model_dump(mode="json"),
                server_fingerprint=crypto.fingerprint(key),
                extra={"run_status": info.status, "min_sites": info.config.min_sites},
            )
        meta = export_monai_bundle(opened, data, provenance, out)
    result = {"format": export_format.value, "out": str(out), **meta["fedseg"]}
    if as_json:
        print_json(result)
        return
    stdout.print(
        f"Exported version {result['version']} of run {result['run_name'] or result['run_id']} "
        f"as a MONAI bundle in {out} (TorchScript: {'yes' if result['torchscript'] else 'no'}).",
        markup=False,
    )
    stdout.print(f"How to run it: {out}/docs/README.md", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``fedseg admin models`` (``app``, the root, is not needed)."""
    models_app.command("export")(models_export)
