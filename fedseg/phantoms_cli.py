"""``fedseg phantoms``: write synthetic BraTS-like cases for simulation, demos and tests."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shared.errors import FedsegError


def phantoms(
    out: Annotated[Path, typer.Argument(help="Output folder (BraTS 2021 layout).")],
    cases: Annotated[int, typer.Option("--cases", min=1, help="Number of cases.")] = 8,
    size: Annotated[int, typer.Option("--size", min=16, max=512, help="Grid size (voxels).")] = 96,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed.")] = 0,
    site_style: Annotated[
        str,
        typer.Option(
            "--site-style",
            help="A style name (reference, lowfield, highfield, community) or a number.",
        ),
    ] = "0",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write CASES synthetic cases with a site's scanner style and case mix."""
    from client.phantoms import generate
    from client.phantoms import site_style as resolve_style

    started = time.perf_counter()
    try:
        style = resolve_style(site_style)
        written = generate(out, cases=cases, size=size, seed=seed, style=site_style)
    except FedsegError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    seconds = time.perf_counter() - started
    if as_json:
        summary = {
            "out": str(out),
            "cases": len(written),
            "size": size,
            "seed": seed,
            "site_style": style.name,
            "seconds": round(seconds, 3),
        }
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    Console().print(
        f"wrote {len(written)} cases of {size}^3 (style {style.name}) to {out} in {seconds:.1f} s"
    )


def register(app: typer.Typer) -> None:
    """Add the top-level ``phantoms`` command to ``app``."""
    app.command("phantoms")(phantoms)
