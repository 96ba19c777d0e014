"""``fedseg phantoms``: write synthetic BraTS-like cases for simulation, demos and tests.

One folder of one site's cases by default (today's behaviour). With ``--sites N``
or ``--heterogeneity strong`` it writes ``OUT/site-1`` … ``OUT/site-N``, each a
site as ``fedseg simulate`` would make it: with ``strong``, 4 / 12 / 30 cases,
its own scanner style and tumour-size mix, and a label shift at the last site.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from shared.errors import FedsegError, InvalidInput

DEFAULT_CASES = 8


def phantoms(
    out: Annotated[Path, typer.Argument(help="Output folder (BraTS 2021 layout).")],
    cases: Annotated[
        int | None,
        typer.Option("--cases", min=1, help=f"Cases (per site); default {DEFAULT_CASES}."),
    ] = None,
    size: Annotated[int, typer.Option("--size", min=16, max=512, help="Grid size (voxels).")] = 96,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed.")] = 0,
    site_style: Annotated[
        str | None,
        typer.Option(
            "--site-style",
            help="A style name (reference, lowfield, highfield, community) or a number "
            "(one folder only; default: reference, or one style per site with --sites).",
        ),
    ] = None,
    sites: Annotated[
        int | None,
        typer.Option(
            "--sites",
            min=1,
            max=26,
            help="Write OUT/site-1 … site-N, a style per site (default: one folder).",
        ),
    ] = None,
    heterogeneity: Annotated[
        str,
        typer.Option(
            "--heterogeneity",
            help="none (same count per site) or strong (4/12/30 cases, tumour-size mix, "
            "label shift at the last site; 3 sites unless --sites).",
        ),
    ] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write synthetic cases with a site's scanner style and case mix."""
    started = time.perf_counter()
    try:
        summary = _write(out, cases, size, seed, site_style, sites, heterogeneity)
    except FedsegError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    seconds = time.perf_counter() - started
    if as_json:
        summary.update({"out": str(out), "size": size, "seed": seed, "seconds": round(seconds, 3)})
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    if "sites" not in summary:
        Console().print(
            f"wrote {summary['cases']} cases of {size}^3 (style {summary['site_style']}) "
            f"to {out} in {seconds:.1f} s"
        )
        return
    for site in summary["sites"]:
        shift = ", label shift" if site["label_shift"] else ""
        Console().print(
            f"{site['name']}: {site['cases']} cases (style {site['site_style']}{shift})",
            markup=False,
        )
    Console().print(f"wrote {summary['cases']} cases of {size}^3 to {out} in {seconds:.1f} s")


def _write(
    out: Path,
    cases: int | None,
    size: int,
    seed: int,
    style: str | None,
    sites: int | None,
    heterogeneity: str,
) -> dict[str, Any]:
    """Generate, and describe what was written; flag clashes name the flags."""
    from client.phantoms import HETEROGENEITY, generate, generate_sites, site_plans
    from client.phantoms import site_style as resolve_style

    if heterogeneity not in HETEROGENEITY:
        raise InvalidInput(
            f"--heterogeneity {heterogeneity!r} is unknown; use {' or '.join(HETEROGENEITY)}"
        )
    if sites is None and heterogeneity == "none":
        chosen = resolve_style(style if style is not None else "0")
        written = generate(out, cases=cases or DEFAULT_CASES, size=size, seed=seed, style=chosen)
        return {"cases": len(written), "site_style": chosen.name}
    if style is not None:
        raise InvalidInput(
            "--site-style names one folder's style; with --sites each site has its own"
        )
    if heterogeneity == "strong" and cases is not None:
        raise InvalidInput(
            "--cases conflicts with --heterogeneity strong, which gives the sites 4/12/30 cases"
        )
    plans = site_plans(
        sites or 3,
        heterogeneity="strong" if heterogeneity == "strong" else "none",
        cases_per_site=cases or DEFAULT_CASES,
    )
    generate_sites(out, plans, size=size, seed=seed)
    described = [
        {
            "name": plan.name,
            "cases": plan.cases,
            "site_style": plan.style.name,
            "label_shift": plan.label_shift,
        }
        for plan in plans
    ]
    return {"cases": sum(plan.cases for plan in plans), "sites": described}


def register(app: typer.Typer) -> None:
    """Add the top-level ``phantoms`` command to ``app``."""
    app.command("phantoms")(phantoms)
