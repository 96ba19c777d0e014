"""``fedseg predict``: run a verified consensus model on new cases at the hospital.

Exit codes: 0 every case segmented, 1 some case failed (each is listed, the others
are written), 2 bad usage or a model that does not verify.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedseg.console import stderr, stdout
from shared.errors import FedsegError

EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


def predict(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Cases to segment: a dataset folder in any supported layout, a datalist "
            "JSON, or one case's folder (<case>_t1/_t1ce/_t2/_flair.nii.gz); several allowed.",
            show_default=False,
            metavar="INPUT",
        ),
    ],
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            "-m",
            help="The signed model: final-model.tar (simulate), the tar of `admin models "
            "download`, or a MONAI bundle folder from `admin models export`.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder for <case>.nii.gz (BraTS labels 1, 2, 4 in the input's geometry), "
            "<case>.json (volumes in mL, Dice/HD95 when a label map is there) and summary.json.",
            show_default=False,
            file_okay=False,
        ),
    ],
    server_key: Annotated[
        str | None,
        typer.Option(
            "--server-key",
            envvar="FEDSEG_SERVER_KEY",
            help="The server's public key the model must be signed with: PEM, base64, a "
            "file, the site's state dir (its server.json), or a fingerprint (needs --server).",
            show_default="the pinned key in $FEDSEG_STATE_DIR",
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="FEDSEG_SERVER_URL",
            help="Server URL, only to look up the key when --server-key is a fingerprint.",
            show_default="none; predict works offline",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (a GPU when present), cpu or cuda.")
    ] = "auto",
    roi: Annotated[
        int,
        typer.Option("--roi", min=16, max=512, help="Sliding-window size in voxels (cube)."),
    ] = 96,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Segment new cases with a verified consensus model; one bad case never stops the rest.

    Reads FEDSEG_SERVER_KEY, FEDSEG_STATE_DIR (its pinned key when --server-key is
    not given) and FEDSEG_SERVER_URL.
    """
    try:
        network, manifest, target = _load(model, server_key, server, device)
    except FedsegError as exc:
        stderr.print(f"[bold red]error:[/] {escape(f'{exc.message} [{exc.code}]')}")
        raise typer.Exit(EXIT_USAGE) from None
    results = _run(inputs, network, out, target, roi, quiet=as_json)
    summary = {
        "model": {"run_id": manifest.run_id, "version": manifest.version, "name": manifest.model},
        "weights_sha256": manifest.weights_sha256,
        "out": str(out),
        "cases": [result.as_dict() for result in results],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_table(results, manifest.run_id, manifest.version)
    if not results or not all(result.ok for result in results):
        raise typer.Exit(EXIT_SOME_FAILED)


def _key(server_key: str | None, server: str | None) -> Any:
    import os

    from fedseg.admin_client import AdminClient
    from fedseg.server_key import load_server_key
    from shared.errors import InvalidInput

    spec = server_key or os.environ.get("FEDSEG_STATE_DIR")
    if not spec:
        raise InvalidInput(
            "--server-key is required (or set FEDSEG_SERVER_KEY or FEDSEG_STATE_DIR): the "
            "model is only used once its signature verifies"
        )
    if server is None:
        return load_server_key(spec)
    with AdminClient(server, None) as client:
        return load_server_key(spec, fetch=client.server_key)


def _load(model: Path, server_key: str | None, server: str | None, device: str) -> Any:
    from client.predict import build_network
    from client.training import resolve_device
    from fedseg.model_file import open_model

    opened, _ = open_model(model, _key(server_key, server))
    network = build_network(opened.manifest.model, opened.manifest.model_params, opened.tensors)
    return network, opened.manifest, resolve_device(device)


def _run(
    inputs: list[Path], network: Any, out: Path, device: Any, roi: int, *, quiet: bool
) -> list[Any]:
    from client.predict import find_cases, predict_all

    cases, failed = find_cases(inputs)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task(f"Segmenting on {device}", total=len(cases))
        results = predict_all(
            cases,
            network,
            out,
            device=device,
            roi_size=roi,
            progress=lambda _: progress.advance(task),
        )
    return failed + results


def _print_table(results: list[Any], run_id: str, version: int) -> None:
    table = Table(title=f"{run_id} version {version}: tumour volumes (mL)")
    for column in ("case", "status", "TC", "WT", "ET", "Dice TC/WT/ET", "output or problem"):
        table.add_column(column)
    for result in results:
        if not result.ok:
            table.add_row(
                escape(result.case_id), "[red]failed[/]", "", "", "", "", escape(result.error or "")
            )
            continue
        dice = (
            "/".join(f"{result.metrics[k]:.2f}" for k in ("dice_tc", "dice_wt", "dice_et"))
            if result.metrics
            else "-"
        )
        table.add_row(
            escape(result.case_id),
            "[green]ok[/]",
            *(f"{result.volumes_ml[r]:.2f}" for r in ("TC", "WT", "ET")),
            dice,
            escape(str(result.segmentation)),
        )
    stdout.print(table)
    ok = sum(result.ok for result in results)
    stdout.print(f"{ok} of {len(results)} cases segmented.")


def register(app: typer.Typer) -> None:
    """Mount ``predict`` as a top-level command."""
    app.command("predict")(predict)
