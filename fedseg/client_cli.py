"""``fedseg client``: what hospital IT runs — enroll, run the agent, check data, train alone.

Heavy imports (torch, MONAI) happen inside the commands so that ``--help`` stays fast.
Every expected failure ends with one clear line on stderr and a non-zero exit code,
never a traceback. Exit codes: 0 done, 1 failed (the line says why), 2 bad usage,
5 state dir not writable, 6 data not usable, 130 stopped (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedseg.console import MODEL_CHOICES
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

EXIT_STATE_DIR = 5  # 2, 3 and 4 are the container entrypoint's (docker/client-entrypoint.py)
EXIT_DATA = 6
EXIT_STOPPED = 130


def _fail(message: str, exit_code: int = 1) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(exit_code)


NOISY_LOGGERS = ("httpx", "httpcore", "urllib3", "PIL", "matplotlib", "filelock", "torch")


def _setup_logging(verbose: bool) -> None:
    """INFO lines per phase; library chatter (httpx, httpcore …) only with --verbose.

    On a terminal the lines go through rich (aligned, coloured levels); otherwise
    they are plain timestamped lines a log collector can parse.
    """
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from client.progress import show_bars

        handler = RichHandler(console=stderr, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        show_bars(stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _settings() -> Any:
    from client.settings import ClientSettings

    return ClientSettings()


def _require(value: Any, flag: str, env: str) -> Any:
    if value is None or value == "":
        _fail(f"{flag} is required (or set {env})", exit_code=2)
    return value


CaFile = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        help="PEM: the server's CA, or its own certificate to pin (FEDSEG_CA_FILE). "
        "default: the system's CAs.",
    ),
]
ClientCert = Annotated[
    Path | None,
    typer.Option(
        "--tls-client-cert",
        help="PEM: this site's TLS certificate, if the server asks for one "
        "(FEDSEG_TLS_CLIENT_CERT); default: none sent.",
    ),
]
ClientKey = Annotated[
    Path | None,
    typer.Option(
        "--tls-client-key",
        help="PEM: the key of --tls-client-cert (FEDSEG_TLS_CLIENT_KEY); default: none.",
    ),
]


def _verify(settings: Any, ca_file: Path | None, cert: Path | None, key: Path | None) -> Any:
    """The httpx ``verify`` for the flags, else FEDSEG_CA_FILE / FEDSEG_TLS_CLIENT_*."""
    from client.transport import tls_context

    return tls_context(
        ca_file=ca_file or settings.ca_file,
        cert_file=cert or settings.tls_client_cert,
        key_file=key or settings.tls_client_key,
    )


def _cpu_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


# --- enroll ------------------------------------------------------------------------------


@app.command()
def enroll(
    server: Annotated[
        str | None,
        typer.Option("--server", help="Server URL.", show_default="$FEDSEG_SERVER_URL"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="One-time enrollment token from the admin.",
            show_default="$FEDSEG_ENROLL_TOKEN",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="The site's state directory (keys, credential, ledger).",
            show_default="$FEDSEG_STATE_DIR",
        ),
    ] = None,
    expect_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--server-fingerprint",
            envvar="FEDSEG_SERVER_FINGERPRINT",
            help="The server key fingerprint the admin gave you: refuse to pin any other key.",
            show_default="none: the key is pinned as it comes (compare it by eye)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ca_file: CaFile = None,
    tls_client_cert: ClientCert = None,
    tls_client_key: ClientKey = None,
) -> None:
    """Make the site's key, enroll with the server, pin its key, store the credential.

    The server's key is fetched and checked against ``--server-fingerprint`` *before*
    the one-time token is sent, so a typo or a man in the middle leaves the token
    unspent. A malformed fingerprint is refused before anything goes on the network.
    Exit codes: 0 enrolled, 1 refused or failed, 2 bad usage, 5 state dir not writable.
    """
    from client.preflight import check_state_dir
    from client.state import Credentials, ServerPin, StateDir
    from client.transport import HttpTransport, RetryPolicy
    from shared import crypto
    from shared.schemas import EnrollRequest

    settings = _settings()
    server_url = _require(server or settings.server_url, "--server", "FEDSEG_SERVER_URL")
    secret = token or (settings.enroll_token.get_secret_value() if settings.enroll_token else None)
    secret = _require(secret, "--token", "FEDSEG_ENROLL_TOKEN")
    root = _require(state_dir or settings.state_dir, "--state-dir", "FEDSEG_STATE_DIR")
    if expect_fingerprint is not None and crypto.normal_fingerprint(expect_fingerprint) is None:
        _fail(
            f"--server-fingerprint {expect_fingerprint!r} is not a fingerprint: it must be "
            "64 hex digits (16 groups of 4, spaces or colons allowed); nothing was sent",
            exit_code=2,
        )
    state = StateDir(Path(root))
    if state.enrolled:
        _fail(f"{state.root} is already enrolled; use a fresh --state-dir to enroll again")
    try:
        check_state_dir(state.root)
    except FedsegError as exc:
        _fail(exc.message, exit_code=EXIT_STATE_DIR)
    try:
        verify = _verify(settings, ca_file, tls_client_cert, tls_client_key)
        if state.site_key_path.is_file():
            site_key = state.load_site_key()
        else:
            site_key = crypto.generate_signing_key()
            crypto.save_signing_key(site_key, state.site_key_path)
        public = base64.b64encode(crypto.public_bytes(site_key.public_key())).decode()
        with HttpTransport(server_url, retry=RetryPolicy(attempts=4), verify=verify) as transport:
            published = transport.server_key()
            server_key = crypto.ed25519_public_from_bytes(base64.b64decode(published.public_key))
            if crypto.key_id(server_key) != published.key_id:
                _fail("the server's key does not match its key id; token not sent")
            if expect_fingerprint is not None and not crypto.same_fingerprint(
                expect_fingerprint, crypto.fingerprint(server_key)
            ):
                _fail(
                    "the server's key fingerprint is "
                    f"{crypto.fingerprint(server_key)}, not the expected {expect_fingerprint}; "
                    "not pinning it, and the token was not sent (it is still valid: check "
                    "the fingerprint with the admin and run the command again)"
                )
            answer = transport.enroll(EnrollRequest(token=secret, signing_public_key=public))
        if answer.server_signing_key != published.public_key or (
            crypto.fingerprint(server_key) != answer.server_fingerprint
        ):
            _fail("the server enrolled with another key than it published; not pinning it")
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
        Path | None,
        typer.Option(
            "--state-dir",
            help="The site's state directory (from enrollment).",
            show_default="$FEDSEG_STATE_DIR",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        # readable=False: the preflight check says "permission denied" with the uid and a fix
        typer.Option(
            "--data",
            help="The site's dataset (read only).",
            readable=False,
            show_default="$FEDSEG_DATA_DIR",
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", help="Server URL.", show_default="the enrolled one; $FEDSEG_SERVER_URL"
        ),
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
    holdout: Annotated[
        Path | None,
        typer.Option(
            "--holdout",
            help="Text file of case ids (one a line) to validate on; wins over the run's split "
            "(default: the run's split).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    ca_file: CaFile = None,
    tls_client_cert: ClientCert = None,
    tls_client_key: ClientKey = None,
) -> None:
    """Run the agent: poll for tasks, train on the local data, upload sealed updates.

    Reads FEDSEG_STATE_DIR, FEDSEG_DATA_DIR, FEDSEG_SERVER_URL when the flags are not
    given, and OMP_NUM_THREADS (CPU threads). Exit codes: 0 done, 1 failed, 2 bad usage,
    5 state dir not writable, 6 data not usable, 130 stopped (the round resumes on restart).
    """
    from client.preflight import check_data_dir, check_state_dir

    _setup_logging(verbose)
    settings = _settings()
    root = _require(state_dir or settings.state_dir, "--state-dir", "FEDSEG_STATE_DIR")
    data_path = _require(data or settings.data_dir, "--data", "FEDSEG_DATA_DIR")
    try:
        check_state_dir(Path(root))
    except FedsegError as exc:
        _fail(exc.message, exit_code=EXIT_STATE_DIR)
    try:
        check_data_dir(Path(data_path))
    except FedsegError as exc:
        _fail(exc.message, exit_code=EXIT_DATA)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        code = _run_agent(
            Path(root),
            Path(data_path),
            server or settings.server_url,
            device=device,
            exit_when_done=exit_when_done,
            idle_exit_s=idle_exit_s,
            poll_wait=poll_wait,
            verify=_verify(settings, ca_file, tls_client_cert, tls_client_key),
            holdout=holdout,
        )
    except FedsegError as exc:
        _fail(f"{exc.message} [{exc.code}]")
    except KeyboardInterrupt:
        stderr.print(
            f"stopped; nothing is lost: run the same command again and the round resumes "
            f"(state in {root})",
            markup=False,
        )
        raise typer.Exit(EXIT_STOPPED) from None
    raise typer.Exit(code)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """``docker stop`` sends SIGTERM: stop as on Ctrl-C, so the server hears of it."""
    raise KeyboardInterrupt


def _run_agent(
    root: Path,
    data_path: Path,
    server_url: str | None,
    *,
    device: str,
    exit_when_done: bool,
    idle_exit_s: float,
    poll_wait: float,
    verify: Any = True,
    holdout: Path | None = None,
) -> int:
    from client.agent import Agent, AgentKeys
    from client.privacy.policy import describe_policy, load_policy
    from client.state import StateDir
    from client.trainer import LocalTrainer
    from client.training import configure_device, resolve_device
    from client.transport import HttpTransport, RetryPolicy
    from shared.errors import Unavailable

    state = StateDir(root)
    pin = state.load_pin()
    credentials = state.load_credentials()
    keys = AgentKeys(
        site=credentials.site,
        site_key=state.load_site_key(),
        server_key=pin.public_key(),
        retired=pin.retired(),
    )
    url = server_url or pin.server_url
    policy, source = load_policy(state.root)  # a bad policy stops the start, not a round
    log.info("site %s: privacy policy from %s: %s", keys.site, source, describe_policy(policy))
    torch_device = resolve_device(device)
    log.info(
        "site %s, server %s: %s", keys.site, url, configure_device(torch_device, _cpu_threads())
    )
    with HttpTransport(url, credentials.credential, verify=verify) as transport:
        probe = HttpTransport(
            url, retry=RetryPolicy(attempts=4, base_s=0.5, cap_s=4.0), verify=verify
        )
        try:
            probe.health()
        except Unavailable as exc:
            raise Unavailable(f"cannot reach the server at {url}: {exc.message}") from None
        finally:
            probe.close()
        site_data = _load_data(data_path, state.root / "cache", holdout)
        agent = Agent(
            state=state,
            transport=transport,
            trainer=LocalTrainer(site_data, torch_device),
            keys=keys,
        )
        return agent.run(
            poll_wait=poll_wait, exit_when_done=exit_when_done, idle_exit_s=idle_exit_s
        )


def _load_data(data_path: Path, cache_dir: Path, holdout: Path | None) -> Any:
    """Check the data once, then bring every usable case through the on-disk cache."""
    from client.data import read_held_out
    from client.training import open_site_data

    held_out = read_held_out(holdout) if holdout is not None else None
    started = time.perf_counter()
    last = [started]

    def on_case(index: int, total: int, entry: Any, built: bool) -> None:
        if built and (time.perf_counter() - last[0] > 10 or index == total):
            last[0] = time.perf_counter()
            log.info("cache: case %d of %d ready (%s)", index, total, entry.case_id)

    site_data, report = open_site_data(
        data_path, cache_dir, held_out=held_out, min_cases=2, on_case=on_case
    )
    stats = site_data.stats
    skipped = len(report.cases) - len(site_data.cases)
    log.info(
        "data %s (%s layout): %d usable cases%s; cache %s: %d reused, %d preprocessed "
        "(%.1f s), ready in %.1f s",
        data_path,
        report.layout,
        len(site_data.cases),
        f", {skipped} skipped (see fedseg client check-data)" if skipped else "",
        cache_dir,
        stats.reused,
        stats.built,
        stats.seconds_building,
        time.perf_counter() - started,
    )
    return site_data


# --- check-data --------------------------------------------------------------------------


@app.command("check-data")
def check_data(
    path: Annotated[Path, typer.Argument(help="Dataset folder or datalist JSON.")],
    min_cases: Annotated[
        int, typer.Option("--min-cases", min=1, help="Valid cases needed to pass.")
    ] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check every case of a dataset and list each one's problems; exit 0 if enough pass.

    A folder that cannot be the dataset (unreadable, DICOM, one case, one level too high)
    is reported in one line that names the fix, before any case is read.
    """
    from client.data import DataReport, check_dataset
    from client.preflight import check_data_dir

    try:
        check_data_dir(path)
    except FedsegError as exc:
        report = DataReport(root=path, layout=None, min_cases=min_cases, problems=[exc.message])
    else:
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
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The dataset.", show_default="$FEDSEG_DATA_DIR"),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 200,
    model: Annotated[
        str, typer.Option("--model", help="Registered model name.", metavar=MODEL_CHOICES)
    ] = "segresnet-small",
    crop_size: Annotated[
        int, typer.Option("--crop-size", min=8, max=256, help="Side of the training crops.")
    ] = 32,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=256, help="Crops per step.")
    ] = 2,
    learning_rate: Annotated[
        float, typer.Option("--lr", min=0.0, help="Adam learning rate.")
    ] = 1e-4,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", min=0.0, help="Adam weight decay.")
    ] = 1e-5,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", min=0.01, max=0.99, help="Share of cases held out for validation."
        ),
    ] = 0.2,
    min_train: Annotated[
        int, typer.Option("--min-train", min=1, help="Cases always kept for training.")
    ] = 1,
    holdout: Annotated[
        Path | None,
        typer.Option(
            "--holdout",
            help="Case ids (one a line) to validate on (default: the split from --val-fraction).",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the split, the model and the crops.")
    ] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Preprocessed-case cache (default: STATE_DIR/cache, else ~/.cache/fedseg).",
        ),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            help="Write the trained weights (safetensors).",
            show_default="not saved",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train the same model on this dataset alone: the reference without federation.

    Both the untrained and the trained model are scored on every validation case.

    Reads FEDSEG_DATA_DIR when --data is not given, and OMP_NUM_THREADS (CPU threads).
    """
    from pydantic import ValidationError

    from client.training import (
        configure_device,
        evaluate,
        evaluation_roi,
        resolve_device,
        train,
    )
    from shared import models
    from shared.schemas import TrainingConfig
    from shared.tensors import state_tensors, to_safetensors

    _setup_logging(False)
    settings = _settings()
    data_path = _require(data or settings.data_dir, "--data", "FEDSEG_DATA_DIR")
    if cache_dir is None:
        base = settings.state_dir or Path.home() / ".cache" / "fedseg"
        cache_dir = Path(base) / "cache"
    try:
        config = TrainingConfig(
            local_steps=steps,
            batch_size=batch_size,
            crop_size=crop_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            val_fraction=val_fraction,
            min_train=min_train,
            seed=seed,
        )
    except ValidationError as exc:
        _fail(f"invalid training settings: {exc.errors()[0]['msg']}", exit_code=2)
    try:
        torch_device = resolve_device(device)
        description = configure_device(torch_device, _cpu_threads())
        if not as_json:
            stderr.print(description)
        site_data = _load_data(Path(data_path), cache_dir, holdout)
        train_set, val_set = site_data.split(config)
        log.info("%s", site_data.plan(config).describe())
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
    columns = ("dice_tc", "dice_wt", "dice_et", "dice_mean", "hd95_tc", "hd95_wt", "hd95_et")
    for name in columns:
        table.add_column(name.replace("hd95_", "HD95 ") + (" mm" if "hd95" in name else ""))
    table.add_row("untrained", *(_metric(before[k], k) for k in columns))
    table.add_row(f"after {result.steps} steps", *(_metric(after[k], k) for k in columns))
    stdout.print(table)
    stdout.print(f"mean training loss {result.loss:.4f}, {result.seconds:.1f} s")


def _metric(value: float, key: str) -> str:
    return f"{value:.1f}" if key.startswith("hd95") else f"{value:.3f}"
