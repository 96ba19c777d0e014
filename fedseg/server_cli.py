"""``fedseg server``: initialise a data directory, serve the API, mint admin tokens."""

from __future__ import annotations

import dataclasses
import json
import logging
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

    try:
        result = init_data_dir(Settings(data_dir=data_dir))
    except ConfigError as exc:
        _err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
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
) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    from server.app import create_app
    from server.settings import Settings

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        application = create_app(Settings(data_dir=data_dir, host=host, port=port))
    except ConfigError as exc:
        _err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    uvicorn.run(application, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


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
