"""``fedseg client``: what hospital IT runs — enroll, run the agent, check data, train alone.

Heavy imports (torch, MONAI) happen inside the commands so that ``--help`` stays fast.
Every expected failure ends with one clear line on stderr and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedseg.policy_cli import policy_app
from shared.errors import FedsegError

app = typer.Typer(
    help="Hospital client: enroll the site, run the agent, check the local data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(policy_app, name="policy")  # fedseg/policy_cli.py: the privacy policy
stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("fedseg.client")


def _fail(message: str, exit_code: int = 1) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(exit_code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _settings() -> Any:
    from client.settings import ClientSettings

    return ClientSettings()


def _require(value: Any, flag: str, env: str) -> Any:
    if value is None or value == "":
        _fail(f"{flag} is required (or set {env})", exit_code=2)
    return value


def _cpu_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


# --- enroll ------------------------------------------------------------------------------


@app.command()
def enroll(
    server: Annotated[str | None, typer.Option("--server", help="Server URL.")] = None,
    token: Annotated[str | None, typer.Option("--token", help="One-time enrollment token.")] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="The site's state directory.")
    ] = None,
    expect_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--server-fingerprint",
            envvar="FEDSEG_SERVER_FINGERPRINT",
            help="The server key fingerprint the admin gave you: refuse to pin any other key.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Make the site's key, enroll with the server, pin its key, store the credential.

    With ``--server-fingerprint`` the key is checked against the one given out of band,
    so a man in the middle at enrollment is refused instead of pinned.
    """
    from client.state import Credentials, ServerPin, StateDir
    from client.transport import HttpTransport, RetryPolicy
    from shared import crypto
    from shared.schemas import EnrollRequest

    settings = _settings()
    server_url = _require(server or settings.server_url, "--server", "FEDSEG_SERVER_URL")
    secret = token or (settings.enroll_token.get_secret_value() if settings.enroll_token else None)
    secret = _require(secret, "--token", "FEDSEG_ENROLL_TOKEN")
    root = _require(state_dir or settings.state_dir, "--state-dir", "FEDSEG_STATE_DIR")
    state = StateDir(Path(root))
    if state.enrolled:
        _fail(f"{state.root} is already enrolled; use a fresh --state-dir to enroll again")
    try:
        if state.site_key_path.is_file():
            site_key = state.load_site_key()
        else:
            site_key = crypto.generate_signing_key()
            crypto.save_signing_key(site_key, state.site_key_path)
        public = base64.b64encode(crypto.public_bytes(site_key.public_key())).decode()
        with HttpTransport(server_url, retry=RetryPolicy(attempts=4)) as transport:
            answer = transport.enroll(EnrollRequest(token=secret, signing_public_key=public))
        server_key = crypto.ed25519_public_from_bytes(base64.b64decode(answer.server_signing_key))
        if crypto.key_id(server_key) != answer.server_key_id or (
            crypto.fingerprint(server_key) != answer.server_fingerprint
        ):
            _fail("the server's key does not match its id or fingerprint; not pinning it")
        if expect_fingerprint is not None and not crypto.same_fingerprint(
            expect_fingerprint, crypto.fingerprint(server_key)
        ):
            _fail(
                "the server's key fingerprint is "
                f"{crypto.fingerprint(server_key)}, not the expected {expect_fingerprint}; "
                "not pinning it (ask the admin for a new token and the right fingerprint)"
            )
        pin = ServerPin(
            server_url=server_url,
            site=answer.site,
            server_signing_key=answer.server_signing_key,
            server_key_id=answer.server_key_id,
            server_fingerprint=crypto.fingerprint(server_key),
        )
        state.save_enrollment(pin, Credentials(site=answer.site, credential=answer.credential))
    except FedsegError as exc:
        _fail(f"enrollment failed: {exc.message} [{exc.code}]")
    result = {
        "site": answer.site,
        "server_fingerprint": pin.server_fingerprint,
        "server_key_id": pin.server_key_id,
        "site_fingerprint": crypto.fingerprint(site_key.public_key()),
        "state_dir": str(state.root),
    }
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    stdout.print(f"Enrolled as site [bold]{escape(answer.site)}[/].")
    stdout.print(f"Server key fingerprint (compare with the admin's): {pin.server_fingerprint}")
    stdout.print(f"Site key fingerprint: {result['site_fingerprint']}")


# --- run ---------------------------------------------------------------------------------


@app.command()
def run(
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="The site's state directory.")
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="The site's dataset.")] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="Server URL (default: the enrolled one).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    exit_when_done: Annotated[
        bool, typer.Option("--exit-when-done", help="Exit 0 once no run needs this site.")
    ] = False,
    idle_exit_s: Annotated[
        float, typer.Option("--idle-exit-s", min=0, help="With --exit-when-done: idle limit.")
    ] = 60.0,
    poll_wait: Annotated[
        float, typer.Option("--poll-wait", min=0, max=300, help="Long-poll seconds.")
    ] = 20.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the agent: poll for tasks, train on the local data, upload sealed updates."""
    _setup_logging(verbose)
    settings = _settings()
    root = _require(state_dir or settings.state_dir, "--state-dir", "FEDSEG_STATE_DIR")
    data_path = _require(data or settings.data_dir, "--data", "FEDSEG_DATA_DIR")
    try:
        code = _run_agent(
            Path(root),
            Path(data_path),
            server or settings.server_url,
            device=device,
            exit_when_done=exit_when_done,
            idle_exit_s=idle_exit_s,
            poll_wait=poll_wait,
        )
    except FedsegError as exc:
        _fail(f"{exc.message} [{exc.code}]")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _run_agent(
    root: Path,
    data_path: Path,
    server_url: str | None,
    *,
    device: str,
    exit_when_done: bool,
    idle_exit_s: float,
    poll_wait: float,
) -> int:
    from client.agent import Agent, AgentKeys, LocalTrainer
    from client.data import valid_cases
    from client.state import StateDir
    from client.training import configure_device, load_site_data, resolve_device
    from client.transport import HttpTransport, RetryPolicy
    from shared.errors import Unavailable

    state = StateDir(root)
    pin = state.load_pin()
    credentials = state.load_credentials()
    keys = AgentKeys(
        site=credentials.site, site_key=state.load_site_key(), server_key=pin.public_key()
    )
    url = server_url or pin.server_url
    torch_device = resolve_device(device)
    log.info(
        "site %s, server %s: %s", keys.site, url, configure_device(torch_device, _cpu_threads())
    )
    cases, report = valid_cases(data_path, min_cases=2)
    skipped = len(report.cases) - len(cases)
    log.info(
        "data %s: %d valid cases (%s layout)%s",
        data_path,
        len(cases),
        report.layout,
        f", {skipped} skipped (see fedseg client check-data)" if skipped else "",
    )
    with HttpTransport(url, credentials.credential) as transport:
        probe = HttpTransport(url, retry=RetryPolicy(attempts=4, base_s=0.5, cap_s=4.0))
        try:
            probe.health()
        except Unavailable as exc:
            raise Unavailable(f"cannot reach the server at {url}: {exc.message}") from None
        finally:
            probe.close()
        started = time.perf_counter()
        site_data = load_site_data(cases)
        log.info("preprocessed %d cases in %.1f s", len(cases), time.perf_counter() - started)
        agent = Agent(
            state=state,
            transport=transport,
            trainer=LocalTrainer(site_data, torch_device),
            keys=keys,
        )
        return agent.run(
            poll_wait=poll_wait, exit_when_done=exit_when_done, idle_exit_s=idle_exit_s
        )


# --- check-data --------------------------------------------------------------------------


@app.command("check-data")
def check_data(
    path: Annotated[Path, typer.Argument(help="Dataset folder or datalist JSON.")],
    min_cases: Annotated[
        int, typer.Option("--min-cases", min=1, help="Valid cases needed to pass.")
    ] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check every case of a dataset and list each one's problems; exit 0 if enough pass."""
    from client.data import check_dataset

    report = check_dataset(path, min_cases)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
        raise typer.Exit(0 if report.ok else 1)
    table = Table(title=f"{path} ({report.layout or 'unknown layout'})")
    table.add_column("case")
    table.add_column("shape")
    table.add_column("status")
    table.add_column("problems")
    for case in report.cases:
        status = "[green]ok[/]" if case.valid else "[red]invalid[/]"
        notes = [escape(p) for p in case.problems] + [
            f"[yellow]{escape(w)}[/]" for w in case.warnings
        ]
        shape = "x".join(str(s) for s in case.shape) if case.shape else "-"
        table.add_row(escape(case.case_id), shape, status, "\n".join(notes))
    if report.cases:
        stdout.print(table)
    for problem in report.problems:
        stderr.print(f"[bold red]error:[/] {escape(problem)}")
    verdict = "[green]ready to train[/]" if report.ok else "[red]not enough valid cases[/]"
    stdout.print(
        f"{report.valid_cases} of {len(report.cases)} cases valid (need {min_cases}): {verdict}"
    )
    raise typer.Exit(0 if report.ok else 1)


# --- train-local -------------------------------------------------------------------------


@app.command("train-local")
def train_local(
    data: Annotated[Path | None, typer.Option("--data", help="The dataset.")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 200,
    model: Annotated[
        str, typer.Option("--model", help="Registered model name.")
    ] = "segresnet-small",
    crop_size: Annotated[int, typer.Option("--crop-size", min=8, max=256)] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=256)] = 2,
    learning_rate: Annotated[float, typer.Option("--lr", min=0.0)] = 1e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0)] = 1e-5,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.01, max=0.99)] = 0.2,
    max_val_cases: Annotated[int, typer.Option("--max-val-cases", min=1)] = 8,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    save: Annotated[
        Path | None, typer.Option("--save", help="Write the trained weights (safetensors).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train the same model on this dataset alone: the reference without federation."""
    from pydantic import ValidationError

    from client.data import valid_cases
    from client.training import (
        configure_device,
        evaluate,
        evaluation_roi,
        load_site_data,
        resolve_device,
        train,
    )
    from shared import models
    from shared.schemas import TrainingConfig
    from shared.tensors import state_tensors, to_safetensors

    _setup_logging(False)
    data_path = _require(data or _settings().data_dir, "--data", "FEDSEG_DATA_DIR")
    try:
        config = TrainingConfig(
            local_steps=steps,
            batch_size=batch_size,
            crop_size=crop_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            val_fraction=val_fraction,
            max_val_cases=max_val_cases,
            seed=seed,
        )
    except ValidationError as exc:
        _fail(f"invalid training settings: {exc.errors()[0]['msg']}", exit_code=2)
    try:
        torch_device = resolve_device(device)
        description = configure_device(torch_device, _cpu_threads())
        if not as_json:
            stderr.print(description)
        cases, _ = valid_cases(Path(data_path), min_cases=2)
        site_data = load_site_data(cases)
        train_set, val_set = site_data.split(val_fraction, seed, max_val_cases)
        initial = state_tensors(models.build(model, {}, seed=seed).state_dict())
        roi = evaluation_roi(crop_size)
        before = evaluate(model, {}, initial, val_set, torch_device, roi_size=roi)
        result = train(model, {}, initial, config, site_data, torch_device)
        after = evaluate(model, {}, result.weights, val_set, torch_device, roi_size=roi)
    except FedsegError as exc:
        _fail(f"{exc.message} [{exc.code}]")
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_bytes(to_safetensors(result.weights, {"model": model}))
    summary = {
        "model": model,
        "device": str(torch_device),
        "train_cases": len(train_set),
        "val_cases": len(val_set),
        "steps": result.steps,
        "train_loss": result.loss,
        "seconds": round(result.seconds, 2),
        "before": before,
        "after": after,
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    table = Table(title=f"{model}: {len(train_set)} training, {len(val_set)} validation cases")
    table.add_column("")
    for name in ("dice_tc", "dice_wt", "dice_et", "dice_mean"):
        table.add_column(name)
    table.add_row("untrained", *(f"{before[k]:.3f}" for k in before))
    table.add_row(f"after {result.steps} steps", *(f"{after[k]:.3f}" for k in after))
    stdout.print(table)
    stdout.print(f"mean training loss {result.loss:.4f}, {result.seconds:.1f} s")
