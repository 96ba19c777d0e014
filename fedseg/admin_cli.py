"""``fedseg admin``: the research admin's commands over the server's REST API.

Server URL from ``--server`` or ``FEDSEG_SERVER_URL``; the admin token from
``FEDSEG_ADMIN_TOKEN`` or ``--token-file`` (the file wins when both are given).
Every command takes ``--json`` for scripts. Errors are one line on stderr with the
server's stable error code, and exit code 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel
from rich.console import RenderableType
from rich.live import Live
from rich.markup import escape

from fedseg import admin_views as views
from fedseg.admin_client import AdminClient, read_token_file
from fedseg.console import (
    MODEL_CHOICES,
    errors_as_messages,
    jsonable,
    print_json,
    print_json_line,
    stderr,
    stdout,
)
from fedseg.server_key import load_server_key
from shared import crypto
from shared.bundle import open_bundle, read_bundle_files
from shared.errors import BundleError, IntegrityError, InvalidInput
from shared.schemas import (
    DEFAULT_TOKEN_DAYS,
    MAX_TOKEN_DAYS,
    RunConfig,
    SiteCreated,
    TokenCreate,
    TrainingConfig,
)

DEFAULT_SERVER = "http://127.0.0.1:8000"
TOKEN_ENV = "FEDSEG_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
_T = TypeVar("_T")

app = typer.Typer(
    help="Research admin: sites, runs, models and the audit log, over the REST API.",
    no_args_is_help=True,
)
sites_app = typer.Typer(help="Register, list and revoke sites (hospitals).", no_args_is_help=True)
runs_app = typer.Typer(help="Create, start, stop and follow runs.", no_args_is_help=True)
models_app = typer.Typer(
    help="List, download and export signed model versions.", no_args_is_help=True
)
tokens_app = typer.Typer(
    help="Mint, list and revoke admin and viewer tokens (they expire).", no_args_is_help=True
)
audit_app = typer.Typer(
    help="Read the audit log (with no command) or check its hash chain (verify)."
)
app.add_typer(sites_app, name="sites")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")

ServerOpt = Annotated[
    str,
    typer.Option(
        "--server", envvar="FEDSEG_SERVER_URL", help="Server base URL.", show_default=True
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help=f"File holding the admin token (default: ${TOKEN_ENV}).",
        dir_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RunArg = Annotated[str, typer.Argument(help="Run id (or its name).")]


def _default(model: type[BaseModel], name: str) -> str:
    """A schema field's default as help shows it, so help and server never disagree."""
    return str(model.model_fields[name].default)


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        return read_token_file(token_file)
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise InvalidInput(f"no admin token: set {TOKEN_ENV} or pass --token-file")
    return token


def client_for(server: str, token_file: Path | None) -> AdminClient:
    """An admin client for ``--server`` with the token from the file or the environment."""
    return AdminClient(server, _token(token_file))


_client = client_for  # the name the commands here use


def _show(value: _T, as_json: bool, view: Callable[[_T], RenderableType]) -> None:
    """Print ``value`` as JSON for scripts, or else as ``view`` renders it."""
    if as_json:
        print_json(value)
    else:
        stdout.print(view(value))


# --- sites -------------------------------------------------------------------------------


@sites_app.command("create")
def sites_create(
    name: Annotated[str, typer.Argument(help="Site name: lower case, digits, . _ -")],
    ttl: Annotated[
        float | None,
        typer.Option("--ttl", help="Seconds the enrollment token stays valid (server default)."),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a site; print its one-time token and the exact enroll command for the site."""
    with errors_as_messages(), _client(server, token_file) as client:
        fingerprint = client.server_key().fingerprint
        created = client.create_site(name, token_ttl_s=ttl)
    _print_enrollment(created, server, fingerprint, as_json)


def enroll_command(server: str, token: str, fingerprint: str) -> str:
    """The command the site's IT runs, with the server fingerprint to check."""
    return (
        f"fedseg client enroll --server {server} --token {token} "
        f"--server-fingerprint '{fingerprint}' --state-dir /var/lib/fedseg"
    )


def _print_enrollment(created: SiteCreated, server: str, fingerprint: str, as_json: bool) -> None:
    command = enroll_command(server, created.enrollment_token, fingerprint)
    if as_json:
        print_json(created)  # exactly a SiteCreated; the fingerprint: admin server-key --json
        return
    stdout.print(f"Site [bold]{created.site.name}[/] is {created.site.status}.")
    stdout.print("Enrollment token (shown once; hand it to the site's IT over a safe channel):")
    stdout.print(created.enrollment_token, markup=False)
    stdout.print(f"Server key fingerprint: {fingerprint}", markup=False)
    stdout.print(
        f"Valid until {created.expires_at.isoformat()}. At the site (any --state-dir):",
        markup=False,
    )
    stdout.print(f"  {command}", markup=False, soft_wrap=True)


@sites_app.command("reissue-token")
def sites_reissue_token(
    name: Annotated[str, typer.Argument(help="Site name.")],
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl",
            help="Seconds the new token stays valid.",
            show_default="the server's default, 7 days",
        ),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give a site a new one-time token: its old token and enrolled key stop working.

    Also the way back for a revoked site, or one whose enrollment went wrong.
    """
    with errors_as_messages(), _client(server, token_file) as client:
        fingerprint = client.server_key().fingerprint
        created = client.reissue_token(name, token_ttl_s=ttl)
    _print_enrollment(created, server, fingerprint, as_json)


@app.command("server-key")
def server_key_command(
    server: ServerOpt = DEFAULT_SERVER,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Also write the public PEM to this file.",
            dir_okay=False,
            show_default="print only",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the server's public key (PEM), its fingerprint and key id; no token needed.

    The PEM is what every --server-key accepts; check the fingerprint with the one
    ``fedseg server init`` printed before trusting it.
    """
    with errors_as_messages(), AdminClient(server, None) as client:
        key = client.server_key()
        if out is not None:
            try:
                out.write_text(key.public_key_pem, encoding="utf-8")
            except OSError as exc:
                raise InvalidInput(f"cannot write --out {out}: {exc.strerror}") from None
    if as_json:
        print_json(key)
        return
    stdout.print(key.public_key_pem.rstrip(), markup=False)
    stdout.print(f"fingerprint: {key.fingerprint}", markup=False)
    stdout.print(f"key id: {key.key_id}", markup=False)


@sites_app.command("list")
def sites_list(
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered sites."""
    with errors_as_messages(), _client(server, token_file) as client:
        sites = client.list_sites()
    _show(sites, as_json, views.sites_table)


@sites_app.command("revoke")
def sites_revoke(
    name: Annotated[str, typer.Argument(help="Site name.")],
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a site: its credential stops working at once."""
    with errors_as_messages(), _client(server, token_file) as client:
        site = client.revoke_site(name)
    _show(site, as_json, lambda revoked: f"Site [bold]{revoked.name}[/] is {revoked.status}.")


# --- runs --------------------------------------------------------------------------------


def _load_config_file(path: Path) -> tuple[str | None, dict[str, Any]]:
    """A run config from YAML or JSON: a bare `RunConfig`, or ``{name, config}``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise InvalidInput(f"{path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} must hold a mapping (a run config)")
    if "config" in data:
        extra = sorted(set(data) - {"name", "config"})
        if extra:
            raise InvalidInput(f"{path}: unexpected keys next to 'config': {', '.join(extra)}")
        config = data["config"]
        if not isinstance(config, dict):
            raise InvalidInput(f"{path}: 'config' must be a mapping")
        name = data.get("name")
        return (str(name) if name is not None else None), dict(config)
    return None, dict(data)


def parse_param(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (else kept as text)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise InvalidInput(f"--model-param wants KEY=VALUE, got {item!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def build_run_config(
    *,
    config_file: Path | None,
    model: str | None,
    model_params: list[str],
    rounds: int | None,
    sites: list[str],
    min_sites: int | None,
    local_steps: int | None,
    crop_size: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    round_timeout: float | None,
    seed: int | None,
    val_fraction: float | None = None,
    eval_every: int | None = None,
    eval_max_cases: int | None = None,
    compile_step: bool | None = None,
) -> tuple[str | None, RunConfig]:
    """A `RunConfig` from a file and/or flags; flags override the file."""
    name: str | None = None
    data: dict[str, Any] = {}
    if config_file is not None:
        name, data = _load_config_file(config_file)
    overrides: dict[str, Any] = {
        "model": model,
        "rounds": rounds,
        "min_sites": min_sites,
        "round_timeout_s": round_timeout,
        "seed": seed,
    }
    data.update({key: value for key, value in overrides.items() if value is not None})
    if sites:
        data["sites"] = list(sites)
    if model_params:
        params = dict(data.get("model_params") or {})
        params.update(dict(parse_param(item) for item in model_params))
        data["model_params"] = params
    training = {
        "local_steps": local_steps,
        "crop_size": crop_size,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "val_fraction": val_fraction,
        "eval_every": eval_every,
        "eval_max_cases": eval_max_cases,
        "compile": compile_step,
    }
    if any(value is not None for value in training.values()):
        merged = dict(data.get("training") or {})
        merged.update({key: value for key, value in training.items() if value is not None})
        data["training"] = merged
    if not data.get("sites"):
        raise InvalidInput("a run needs sites: pass --site NAME (repeatable) or a config file")
    return name, RunConfig.model_validate(data)


@runs_app.command("create")
def runs_create(
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Run config as YAML or JSON (flags override it).",
            show_default="flags only",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Run name (default: run-<time>).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model from the registry.",
            metavar=MODEL_CHOICES,
            show_default=_default(RunConfig, "model"),
        ),
    ] = None,
    model_param: Annotated[
        list[str] | None,
        typer.Option(
            "--model-param",
            help="Model parameter KEY=VALUE (JSON value), repeatable.",
            show_default="the model's own",
        ),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", min=1, help="Rounds to run.", show_default=_default(RunConfig, "rounds")
        ),
    ] = None,
    site: Annotated[
        list[str] | None,
        typer.Option("--site", help="A member site, repeatable.", show_default="the config file's"),
    ] = None,
    min_sites: Annotated[
        int | None,
        typer.Option(
            "--min-sites",
            min=1,
            help="Quorum once the deadline passes.",
            show_default="all sites",
        ),
    ] = None,
    local_steps: Annotated[
        int | None,
        typer.Option(
            "--local-steps",
            min=1,
            help="Training steps per site per round.",
            show_default=_default(TrainingConfig, "local_steps"),
        ),
    ] = None,
    crop_size: Annotated[
        int | None,
        typer.Option(
            "--crop-size",
            min=8,
            help="Side of the training crops.",
            show_default=_default(TrainingConfig, "crop_size"),
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Crops per step.",
            show_default=_default(TrainingConfig, "batch_size"),
        ),
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            "--learning-rate",
            help="Adam learning rate.",
            show_default=_default(TrainingConfig, "learning_rate"),
        ),
    ] = None,
    round_timeout: Annotated[
        float | None,
        typer.Option(
            "--round-timeout",
            help="Round deadline in seconds.",
            show_default=_default(RunConfig, "round_timeout_s"),
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            min=0,
            help="Seed of the initial model.",
            show_default=_default(RunConfig, "seed"),
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            "--val-fraction",
            help="Share of each site's cases held out, 0-1.",
            show_default=_default(TrainingConfig, "val_fraction"),
        ),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(
            "--eval-every",
            min=1,
            help="Evaluate every N rounds.",
            show_default=_default(TrainingConfig, "eval_every"),
        ),
    ] = None,
    eval_max_cases: Annotated[
        int | None,
        typer.Option(
            "--eval-max-cases",
            min=1,
            help="Validation cases scored per round.",
            show_default=_default(TrainingConfig, "eval_max_cases"),
        ),
    ] = None,
    compile_step: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the training step on CUDA.",
            show_default=_default(TrainingConfig, "compile"),
        ),
    ] = None,
    start: Annotated[bool, typer.Option("--start", help="Start the run right away.")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a run from a YAML/JSON config file or from flags."""
    with errors_as_messages():
        file_name, config = build_run_config(
            config_file=config_file,
            model=model,
            model_params=model_param or [],
            rounds=rounds,
            sites=site or [],
            min_sites=min_sites,
            local_steps=local_steps,
            crop_size=crop_size,
            batch_size=batch_size,
            learning_rate=learning_rate,
            round_timeout=round_timeout,
            seed=seed,
            val_fraction=val_fraction,
            eval_every=eval_every,
            eval_max_cases=eval_max_cases,
            compile_step=compile_step,
        )
        run_name = name or file_name or time.strftime("run-%Y%m%d-%H%M%S")
        with _client(server, token_file) as client:
            run = client.create_run(run_name, config)
            status = {site.name: site.status for site in client.list_sites()}
            if start:
                run = client.start_run(run.id)
    for member in config.sites:
        if status.get(member) != "active":
            why = "has not enrolled yet" if status.get(member) == "pending" else "is revoked"
            stderr.print(
                f"warning: site {member} {why}; the run waits for it until it enrolls "
                "(see fedseg admin sites list; a new token: "
                f"fedseg admin sites reissue-token {member})",
                markup=False,
            )
    if as_json:
        print_json(run)
    else:
        stdout.print(views.run_summary(run))
        if not start:
            stdout.print(f"Start it with: fedseg admin runs start {run.id}", markup=False)


def _run_action(
    run_ref: str, server: str, token_file: Path | None, action: str, as_json: bool
) -> None:
    with errors_as_messages(), _client(server, token_file) as client:
        run = client.find_run(run_ref)
        info = client.start_run(run.id) if action == "start" else client.stop_run(run.id)
    _show(info, as_json, views.run_summary)


@runs_app.command("start")
def runs_start(
    run: RunArg,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a created run: the server opens round 1."""
    _run_action(run, server, token_file, "start", as_json)


@runs_app.command("stop")
def runs_stop(
    run: RunArg,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a run: the open round is cancelled and no further round opens."""
    _run_action(run, server, token_file, "stop", as_json)


@runs_app.command("list")
def runs_list(
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List runs."""
    with errors_as_messages(), _client(server, token_file) as client:
        runs = client.list_runs()
    _show(runs, as_json, views.runs_table)


@runs_app.command("status")
def runs_status(
    run: RunArg,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A run's rounds with each site's progress and Dice."""
    with errors_as_messages(), _client(server, token_file) as client:
        info = client.find_run(run)
        rounds = client.list_rounds(info.id)
    if as_json:
        print_json({"run": info, "rounds": rounds})
    else:
        stdout.print(views.run_summary(info))
        stdout.print(views.rounds_table(info, rounds))


@runs_app.command("watch")
def runs_watch(
    run: RunArg,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between polls.")
    ] = 2.0,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a run live until it ends (exit 0 when it completed, 1 otherwise).

    With ``--json``: one JSON line ``{"run": ..., "rounds": [...]}`` per change.
    """
    with errors_as_messages(), _client(server, token_file) as client:
        info = client.find_run(run)
        last: str | None = None
        live = None if as_json else Live(console=stdout, refresh_per_second=4, transient=False)
        try:
            if live is not None:
                live.start()
            while True:
                info = client.get_run(info.id)
                rounds = client.list_rounds(info.id)
                if live is not None:
                    live.update(views.run_view(info, rounds))
                else:
                    snapshot = {"run": info, "rounds": rounds}
                    line = json.dumps(jsonable(snapshot), sort_keys=True)
                    if line != last:
                        print_json_line(snapshot)
                        last = line
                if info.status in views.FINISHED_RUN:
                    break
                time.sleep(interval)
        finally:
            if live is not None:
                live.stop()
    if info.status != "completed":
        raise typer.Exit(1)


# --- models ------------------------------------------------------------------------------


@models_app.command("list")
def models_list(
    run: RunArg,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a run's signed model versions (version v = consensus after round v)."""
    with errors_as_messages(), _client(server, token_file) as client:
        info = client.find_run(run)
        models = client.list_models(info.id)
    _show(models, as_json, views.models_table)


def download_model(
    client: AdminClient,
    run_id: str,
    out: Path,
    *,
    version: int | None = None,
    server_key: Ed25519PublicKey | None = None,
) -> dict[str, Any]:
    """Download a version's bundle to ``out``, check it, and say what was checked.

    The version list names each version by its weights' sha256 (the hash of
    ``weights.safetensors`` inside the bundle, as in the bundle's manifest), and
    exactly that hash must match: no other hash (the tar's, say) is accepted. With a
    server key the whole bundle is verified (signature, hash, tensor specs) before
    ``out`` is written.
    """
    versions = {item.version: item for item in client.list_models(run_id)}
    if not versions:
        raise InvalidInput(f"run {run_id} has no model yet")
    chosen = max(versions) if version is None else version
    if chosen not in versions:
        known = ", ".join(str(v) for v in sorted(versions))
        raise InvalidInput(f"run {run_id} has no model version {chosen} (has {known})")
    data = client.download_bundle(run_id, chosen)
    files = read_bundle_files(data)
    weights_sha = hashlib.sha256(files.weights).hexdigest()
    if versions[chosen].weights_sha256 != weights_sha:
        raise IntegrityError(
            f"downloaded bundle's weights sha256 {weights_sha[:16]}… does not match the "
            f"server's listing {versions[chosen].weights_sha256[:16]}…",
            code="hash_mismatch",
        )
    result: dict[str, Any] = {
        "run_id": run_id,
        "version": chosen,
        "path": str(out),
        "bytes": len(data),
        "weights_sha256": weights_sha,
        "verified": False,
    }
    if server_key is not None:
        opened = open_bundle(data, {crypto.key_id(server_key): server_key})
        if opened.manifest.run_id != run_id or opened.manifest.version != chosen:
            raise BundleError(
                f"bundle says run {opened.manifest.run_id} version {opened.manifest.version}, "
                f"expected run {run_id} version {chosen}"
            )
        result.update(
            verified=True,
            key_id=opened.manifest.key_id,
            server_fingerprint=crypto.fingerprint(server_key),
            model=opened.manifest.model,
            tensors=len(opened.manifest.tensors),
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return result


@models_app.command("download")
def models_download(
    run: RunArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the bundle (tar).", dir_okay=False)
    ],
    version: Annotated[
        int | None, typer.Option("--version", min=0, help="Model version (default: latest).")
    ] = None,
    server_key: Annotated[
        str | None,
        typer.Option(
            "--server-key",
            help="The server's public key: PEM, base64, a file holding one, or its "
            "fingerprint (checked against the server's published key). The bundle's "
            "signature is verified before it is written.",
            show_default="not verified; only the listed sha256 is checked",
        ),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a signed model bundle (and verify it with the pinned server key)."""
    with errors_as_messages(), _client(server, token_file) as client:
        key = load_server_key(server_key, fetch=client.server_key) if server_key else None
        info = client.find_run(run)
        result = download_model(client, info.id, out, version=version, server_key=key)
    if as_json:
        print_json(result)
        return
    stdout.print(
        f"Saved version {result['version']} of run {info.name} to {out} "
        f"({result['bytes']:,} bytes, weights sha256 {result['weights_sha256'][:16]}…).",
        markup=False,
    )
    if result["verified"]:
        stdout.print(
            f"[green]Signature verified[/] with server key {result['server_fingerprint']}."
        )
    else:
        stdout.print("[yellow]Signature not checked:[/] pass --server-key to verify it.")


# --- audit -------------------------------------------------------------------------------


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="Most events to show.")
    ] = 50,
    after: Annotated[
        int | None,
        typer.Option("--after", min=0, help="The events after this id (default: the newest)."),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read the audit log: who did what, when, to what."""
    if ctx.invoked_subcommand is not None:
        return
    with errors_as_messages(), _client(server, token_file) as client:
        events = (
            client.audit_latest(limit) if after is None else client.audit(limit=limit, after=after)
        )
    _show(events, as_json, views.audit_table)


@audit_app.command("verify")
def audit_verify(
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the audit log's hash chain; exit 1 and name the first broken link if it is."""
    with errors_as_messages(), _client(server, token_file) as client:
        result = client.verify_audit()
    if as_json:
        print_json(result)
    elif result.ok:
        stdout.print(
            f"[green]Audit chain intact:[/] {result.checked} events, head {result.head_seq} "
            f"{result.head_hash}"
            + (f" ({result.unsealed} not yet sealed)" if result.unsealed else "")
        )
    else:
        where = f"event seq {result.broken_seq}" + (
            f" (id {result.broken_id})" if result.broken_id is not None else ""
        )
        stdout.print(
            f"[red]Audit chain broken[/] at {where}: {result.reason}. "
            f"{result.checked} events before it verify.",
            markup=True,
        )
    if not result.ok:
        raise typer.Exit(1)


# --- tokens ------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    label: Annotated[str, typer.Argument(help="A name for the token: lower case, digits, . _ -")],
    role: Annotated[str, typer.Option("--role", help="admin or viewer")] = "viewer",
    expires_in_days: Annotated[
        int,
        typer.Option("--expires-in-days", min=1, max=MAX_TOKEN_DAYS, help="Days until it expires."),
    ] = DEFAULT_TOKEN_DAYS,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mint an admin or viewer token and print it (shown once)."""
    with errors_as_messages():
        if role not in ("admin", "viewer"):
            raise InvalidInput("--role must be admin or viewer")
        request = TokenCreate.model_validate(
            {"role": role, "label": label, "expires_in_days": expires_in_days}
        )
        with _client(server, token_file) as client:
            created = client.create_token(request)
    if as_json:
        print_json(created)
        return
    info = created.token
    stdout.print(f"Token {info.id} ({info.role}, {escape(info.label)}) created.")
    stdout.print("Secret (shown once; store it safely):")
    stdout.print(created.secret, markup=False)
    stdout.print(f"Expires {info.expires_at.isoformat() if info.expires_at else 'never'}.")


@tokens_app.command("list")
def tokens_list(
    server: ServerOpt = DEFAULT_SERVER, token_file: TokenFileOpt = None, as_json: JsonOpt = False
) -> None:
    """List admin and viewer tokens with their status (never their secrets)."""
    with errors_as_messages(), _client(server, token_file) as client:
        tokens = client.list_tokens()
    _show(tokens, as_json, views.tokens_table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(min=1, help="The token's id (see tokens list).")],
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: it is refused from the next request on."""
    with errors_as_messages(), _client(server, token_file) as client:
        info = client.revoke_token(token_id)
    if as_json:
        print_json(info)
        return
    stdout.print(f"Token {info.id} ({info.role}, {escape(info.label)}) is {info.status}.")
