"""``fedseg admin``: the research admin's commands over the server's REST API.

Server URL from ``--server`` or ``FEDSEG_SERVER_URL``; the admin token from
``FEDSEG_ADMIN_TOKEN`` or ``--token-file`` (the file wins when both are given).
Every command takes ``--json`` for scripts. Errors are one line on stderr with the
server's stable error code, and exit code 1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from rich.console import RenderableType
from rich.live import Live

from fedseg import admin_views as views
from fedseg.admin_client import AdminClient, read_token_file
from fedseg.console import errors_as_messages, jsonable, print_json, print_json_line, stdout
from shared import crypto
from shared.bundle import open_bundle, read_bundle_files
from shared.errors import BundleError, FedsegError, IntegrityError, InvalidInput
from shared.schemas import RunConfig

DEFAULT_SERVER = "http://127.0.0.1:8000"
TOKEN_ENV = "FEDSEG_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
_T = TypeVar("_T")

app = typer.Typer(
    help="Research admin: sites, runs, models and the audit log, over the REST API.",
    no_args_is_help=True,
)
sites_app = typer.Typer(help="Register, list and revoke sites (hospitals).", no_args_is_help=True)
runs_app = typer.Typer(help="Create, start, stop and follow runs.", no_args_is_help=True)
models_app = typer.Typer(help="List and download signed model versions.", no_args_is_help=True)
app.add_typer(sites_app, name="sites")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")

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


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        return read_token_file(token_file)
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise InvalidInput(f"no admin token: set {TOKEN_ENV} or pass --token-file")
    return token


def _client(server: str, token_file: Path | None) -> AdminClient:
    return AdminClient(server, _token(token_file))


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
    """Register a site and print its one-time enrollment token."""
    with errors_as_messages(), _client(server, token_file) as client:
        created = client.create_site(name, token_ttl_s=ttl)
    if as_json:
        print_json(created)
        return
    stdout.print(f"Site [bold]{created.site.name}[/] registered ({created.site.status}).")
    stdout.print("Enrollment token (shown once; hand it to the site's IT over a safe channel):")
    stdout.print(created.enrollment_token, markup=False)
    stdout.print(f"Valid until {created.expires_at.isoformat()}. At the site:")
    stdout.print(
        f"  fedseg client enroll --server {server} --token <token> --state-dir <dir>",
        markup=False,
    )


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
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Run name (default: run-<time>).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model from the registry.")] = None,
    model_param: Annotated[
        list[str] | None,
        typer.Option("--model-param", help="Model parameter KEY=VALUE (JSON value), repeatable."),
    ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", min=1)] = None,
    site: Annotated[
        list[str] | None, typer.Option("--site", help="A member site, repeatable.")
    ] = None,
    min_sites: Annotated[
        int | None, typer.Option("--min-sites", min=1, help="Quorum once the deadline passes.")
    ] = None,
    local_steps: Annotated[int | None, typer.Option("--local-steps", min=1)] = None,
    crop_size: Annotated[int | None, typer.Option("--crop-size", min=8)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate")] = None,
    round_timeout: Annotated[
        float | None, typer.Option("--round-timeout", help="Round deadline in seconds.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option("--val-fraction", help="Share of each site's cases held out (0-1)."),
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option("--eval-every", min=1, help="Evaluate every N rounds.")
    ] = None,
    eval_max_cases: Annotated[
        int | None,
        typer.Option("--eval-max-cases", min=1, help="Validation cases scored per round."),
    ] = None,
    compile_step: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile the training step (CUDA)."),
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
            if start:
                run = client.start_run(run.id)
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


def load_server_key(spec: str) -> Ed25519PublicKey:
    """The server's Ed25519 public key from a file or a value.

    Accepts a PEM public key, the server's PEM private key (its public half is
    used), or the raw 32-byte key in base64 (as enrollment returns it), given as a
    file or inline.
    """
    path = Path(spec)
    raw = path.read_bytes() if path.is_file() else spec.encode()
    text = raw.strip()
    if text.startswith(b"-----BEGIN"):
        key: object
        try:
            if b"PRIVATE KEY" in text:
                key = serialization.load_pem_private_key(text, password=None)
            else:
                key = serialization.load_pem_public_key(text)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"cannot read the server key: {exc}") from None
        if isinstance(key, Ed25519PrivateKey):
            return key.public_key()
        if isinstance(key, Ed25519PublicKey):
            return key
        raise InvalidInput("the server key is not an Ed25519 key")
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        what = "file" if path.is_file() else "value (nor an existing file)"
        raise InvalidInput(f"the server key {what} is neither PEM nor base64") from None
    try:
        return crypto.ed25519_public_from_bytes(decoded)
    except FedsegError:
        raise InvalidInput("the server key is not a 32-byte Ed25519 key") from None


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
    versions = {item.round: item for item in client.list_models(run_id)}
    if not versions:
        raise InvalidInput(f"run {run_id} has no model yet")
    chosen = max(versions) if version is None else version
    if chosen not in versions:
        known = ", ".join(str(v) for v in sorted(versions))
        raise InvalidInput(f"run {run_id} has no model version {chosen} (has {known})")
    data = client.download_bundle(run_id, chosen)
    files = read_bundle_files(data)
    weights_sha = hashlib.sha256(files.weights).hexdigest()
    if versions[chosen].sha256 != weights_sha:
        raise IntegrityError(
            f"downloaded bundle's weights sha256 {weights_sha[:16]}… does not match the "
            f"server's listing {versions[chosen].sha256[:16]}…",
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
        if opened.manifest.run_id != run_id or opened.manifest.round != chosen:
            raise BundleError(
                f"bundle says run {opened.manifest.run_id} version {opened.manifest.round}, "
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
            help="Pinned server key (PEM or base64, file or value): "
            "verify the bundle's signature before writing it.",
        ),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a signed model bundle (and verify it with the pinned server key)."""
    with errors_as_messages():
        key = load_server_key(server_key) if server_key else None
        with _client(server, token_file) as client:
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


@app.command("audit")
def audit(
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
    with errors_as_messages(), _client(server, token_file) as client:
        events = (
            client.audit_latest(limit) if after is None else client.audit(limit=limit, after=after)
        )
    _show(events, as_json, views.audit_table)
