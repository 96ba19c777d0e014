"""``fedseg server``: initialise a data directory, serve the API, mint admin tokens."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shared.errors import ConfigError, InvalidInput

app = typer.Typer(
    help="The coordination server: tracks sites, runs and rounds; aggregates; signs bundles.",
    no_args_is_help=True,
)
_err = Console(stderr=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="FEDSEG_DATA_DIR", help="keys, database and blobs")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object")]


@app.command()
def init(data_dir: DataDir, json_output: JsonFlag = False) -> None:
    """Create DIR, the server signing key, the database schema and the first admin token."""
    from server.bootstrap import init_data_dir
    from server.settings import Settings

    previous_umask = os.umask(0o077)  # the key, the database and the blobs: owner only
    try:
        result = init_data_dir(Settings(data_dir=data_dir))
    except ConfigError as exc:
        _err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    finally:
        os.umask(previous_umask)
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(result)))
        return
    typer.echo(f"initialised {result.data_dir}")
    typer.echo(f"database:           {result.database_url}")
    typer.echo(f"server fingerprint: {result.server_fingerprint}")
    typer.echo(f"admin token (shown once, keep it safe): {result.admin_token}")


@app.command()
def serve(
    data_dir: DataDir,
    host: Annotated[
        str, typer.Option(envvar="FEDSEG_HOST", help="Address to listen on (0.0.0.0: all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="FEDSEG_PORT", help="TCP port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDSEG_TLS_CERT",
            help="PEM certificate (chain): serve HTTPS (default: plain HTTP)",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDSEG_TLS_KEY", help="PEM private key of --tls-cert (mode 0600); default: none"
        ),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDSEG_TLS_CLIENT_CA",
            help="PEM CA: clients must present a certificate it issued (mutual TLS); "
            "default: no client certificates",
        ),
    ] = None,
    tls_client_cert_optional: Annotated[
        bool,
        typer.Option(
            "--tls-client-cert-optional",
            envvar="FEDSEG_TLS_CLIENT_CERT_OPTIONAL",
            help="with --tls-client-ca: verify a client certificate only when one is sent",
        ),
    ] = False,
) -> None:
    """Run the API with uvicorn until interrupted (HTTPS with --tls-cert and --tls-key).

    Limits come from FEDSEG_* settings: FEDSEG_HEADER_TIMEOUT_S, FEDSEG_KEEP_ALIVE_S,
    FEDSEG_MAX_HEADER_BYTES, FEDSEG_MAX_CONCURRENCY, FEDSEG_MAX_BODY_BYTES,
    FEDSEG_AUTH_FAILURE_LIMIT, FEDSEG_TRUSTED_PROXIES (see server/settings.py).
    """
    import uvicorn

    from server.app import PRIVATE_UMASK, create_app
    from server.serving import uvicorn_config
    from server.settings import Settings

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(
            data_dir=data_dir,
            host=host,
            port=port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            tls_client_cert_required=not tls_client_cert_optional,
        )
        application = create_app(settings)
    except ConfigError as exc:
        _err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    os.umask(PRIVATE_UMASK)  # for the process: whatever it writes is the owner's only
    uvicorn.Server(uvicorn_config(application, settings, log_level=log_level)).run()


@app.command("create-token")
def create_token(
    data_dir: DataDir,
    role: Annotated[str, typer.Option(help="admin or viewer")] = "viewer",
    label: Annotated[str, typer.Option(help="a name for the audit log")] = "cli",
    expires_in_days: Annotated[
        int, typer.Option("--expires-in-days", min=1, max=3650, help="days until it expires")
    ] = 90,
    json_output: JsonFlag = False,
) -> None:
    """Mint another admin or viewer token (printed once); it expires, 90 days by default."""
    from server.bootstrap import create_token as mint
    from server.settings import Settings

    if role not in ("admin", "viewer"):
        _err.print("[red]error:[/red] --role must be admin or viewer")
        raise typer.Exit(2)
    try:
        token = mint(
            Settings(data_dir=data_dir), role=role, label=label, expires_in_days=expires_in_days
        )
    except (ConfigError, InvalidInput) as exc:
        _err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"token": token, "role": role}) if json_output else token)


@app.command("rotate-key")
def rotate_key(data_dir: DataDir, json_output: JsonFlag = False) -> None:
    """Replace the signing key; the old key signs the new one, so pinned sites follow.

    Restart the server afterwards: it signs with the key it loaded at start.
    """
    from server.bootstrap import rotate_key as rotate
    from server.settings import Settings

    try:
        result = rotate(Settings(data_dir=data_dir))
    except ConfigError as exc:
        _err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(result)))
        return
    typer.echo(f"retired key:        {result.old_key_id}")
    typer.echo(f"new key:            {result.new_key_id}")
    typer.echo(f"server fingerprint: {result.new_fingerprint}")
    typer.echo("restart the server; sites switch to the new key through the signed statement")
