"""``fedseg client policy``: show or set the site's privacy policy, and what it has spent.

The policy file lives in the state directory (``privacy/policy.json``); in a container
``FEDSEG_PRIVACY_POLICY_FILE`` (a mounted secret) or ``FEDSEG_PRIVACY_POLICY`` (JSON)
take its place, and ``show`` says which one is in force.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.errors import FedsegError

policy_app = typer.Typer(
    help="The site's privacy policy: what it allows whatever a run asks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

StateDirOption = Annotated[
    Path | None,
    typer.Option("--state-dir", help="The site's state directory (default: $FEDSEG_STATE_DIR)."),
]


def _fail(message: str, exit_code: int = 1) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(exit_code)


def _state_dir(state_dir: Path | None) -> Path:
    from client.settings import ClientSettings

    root = state_dir or ClientSettings().state_dir
    if root is None:
        _fail("--state-dir is required (or set FEDSEG_STATE_DIR)", exit_code=2)
    return Path(root)


@policy_app.command("show")
def show(
    state_dir: StateDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the policy in force, where it comes from, and the ε spent per run."""
    from client.privacy.ledger import EpsilonLedger
    from client.privacy.policy import load_policy

    root = _state_dir(state_dir)
    try:
        policy, source = load_policy(root)
        ledger = EpsilonLedger(root, accountant=policy.accountant)
        entries = ledger.entries()
        spent = ledger.spent(delta=policy.delta)
    except FedsegError as exc:
        _fail(f"{exc.message} [{exc.code}]")
    runs: dict[str, dict[str, Any]] = {}
    for entry in entries:
        runs[entry.run_id] = {
            "rounds": runs.get(entry.run_id, {}).get("rounds", 0) + 1,
            "mechanism": entry.mechanism,
            "cumulative_epsilon": entry.cumulative_epsilon,
            "delta": entry.delta,
        }
    if as_json:
        document = {
            "policy": policy.model_dump(mode="json"),
            "source": source,
            "spent_epsilon": spent,
            "runs": runs,
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    table = Table(title=f"privacy policy ({source})", show_header=False)
    for name, value in policy.model_dump(mode="json").items():
        shown = ", ".join(value) if isinstance(value, list) else value
        table.add_row(name, "none" if shown is None else str(shown))
    stdout.print(table)
    budget = f" of {policy.max_epsilon:g}" if policy.max_epsilon is not None else ""
    stdout.print(f"ε spent over all runs: {spent:.4g}{budget} (δ={policy.delta:g})")
    for run_id, info in runs.items():
        stdout.print(
            f"  {escape(run_id)}: {info['rounds']} rounds of {info['mechanism']}, "
            f"ε {info['cumulative_epsilon']:.4g}"
        )


@policy_app.command("set")
def set_policy(
    state_dir: StateDirOption = None,
    max_epsilon: Annotated[
        float | None,
        typer.Option("--max-epsilon", help="ε budget over all runs (default: unchanged)."),
    ] = None,
    no_budget: Annotated[bool, typer.Option("--no-budget", help="Remove the ε budget.")] = False,
    delta: Annotated[
        float | None, typer.Option("--delta", help="δ to account at (default: unchanged).")
    ] = None,
    min_cases: Annotated[
        int | None, typer.Option("--min-cases", help="Fewest training cases (default: unchanged).")
    ] = None,
    min_batch: Annotated[
        int | None, typer.Option("--min-batch", help="Smallest batch (default: unchanged).")
    ] = None,
    min_local_steps: Annotated[
        int | None,
        typer.Option(
            "--min-local-steps", help="Fewest local steps per round (default: unchanged)."
        ),
    ] = None,
    mechanisms: Annotated[
        str | None,
        typer.Option(
            "--mechanisms", help="Comma-separated: dp_sgd, dp_fedavg, svt (default: unchanged)."
        ),
    ] = None,
    allow_plain: Annotated[
        bool | None,
        typer.Option(
            "--allow-plain/--no-plain",
            help="Train rounds with mechanism none (default: unchanged).",
        ),
    ] = None,
    accountant: Annotated[
        str | None, typer.Option("--accountant", help="rdp or prv (default: unchanged).")
    ] = None,
) -> None:
    """Change the policy file in the state directory (other fields keep their values)."""
    from pydantic import ValidationError

    from client.privacy.policy import (
        POLICY_ENV,
        POLICY_FILE_ENV,
        SitePolicy,
        parse_policy,
        policy_path,
        save_policy,
    )

    root = _state_dir(state_dir)
    path = policy_path(root)
    try:
        current = parse_policy(path.read_bytes(), source=str(path)) if path.exists() else None
    except FedsegError as exc:
        _fail(f"{exc.message} [{exc.code}]")
    fields: dict[str, Any] = (current or SitePolicy()).model_dump()
    changes: dict[str, Any] = {
        "max_epsilon": max_epsilon,
        "delta": delta,
        "min_cases": min_cases,
        "min_batch": min_batch,
        "min_local_steps": min_local_steps,
        "allow_plain": allow_plain,
        "accountant": accountant,
        "mechanisms": None
        if mechanisms is None
        else tuple(m.strip() for m in mechanisms.split(",") if m.strip()),
    }
    fields.update({k: v for k, v in changes.items() if v is not None})
    if no_budget:
        fields["max_epsilon"] = None
    if max_epsilon is not None and allow_plain is None:
        fields["allow_plain"] = False  # a budget only means something without plain rounds
    try:
        policy = SitePolicy.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = [str(part).replace("_", "-") for part in error["loc"][:1]]
        flag = f"--{where[0]}: " if where else ""
        _fail(f"{flag}{error['msg'].removeprefix('Value error, ')}", exit_code=2)
    written = save_policy(root, policy)
    stdout.print(f"privacy policy written to {escape(str(written))}")
    for variable in (POLICY_FILE_ENV, POLICY_ENV):
        if os.environ.get(variable):
            stderr.print(f"[yellow]note:[/] {variable} is set and overrides this file")
