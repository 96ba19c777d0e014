"""Entrypoint of the fedseg server image: initialise the state volume once, then serve.

Without arguments: when FEDSEG_DATA_DIR holds no server key yet, run ``fedseg server init``
and write the first admin token to FEDSEG_ADMIN_TOKEN_FILE (default DATA_DIR/admin_token,
mode 0600; the token is never printed), then ``fedseg server serve`` on FEDSEG_HOST:FEDSEG_PORT.
With arguments: run ``fedseg <arguments>`` instead (e.g. ``admin runs list``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FEDSEG = "/opt/fedseg/bin/fedseg"


def log(message: str) -> None:
    """Print one line of the entrypoint's own on stderr."""
    print(f"[fedseg-server] {message}", file=sys.stderr, flush=True)


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` with mode 0600, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def initialise(data_dir: Path, token_file: Path) -> None:
    """Run ``fedseg server init`` and keep its admin token in ``token_file``."""
    log(f"first start: initialising {data_dir}")
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [FEDSEG, "server", "init", "--data-dir", str(data_dir), "--json"],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        log(f"'fedseg server init' failed (exit {done.returncode}); see the message above")
        sys.exit(done.returncode)
    lines = [line for line in done.stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        log("'fedseg server init --json' printed no JSON object")
        sys.exit(1)
    info = json.loads(lines[-1])
    write_secret(token_file, info["admin_token"])
    log(f"admin token written to {token_file} (mode 0600)")
    log(f"server key fingerprint: {info.get('server_fingerprint')}")


def main() -> None:
    """Initialise on first start, then become ``fedseg server serve``."""
    if len(sys.argv) > 1:
        os.execv(FEDSEG, [FEDSEG, *sys.argv[1:]])  # noqa: S606
    data_dir = Path(os.environ.get("FEDSEG_DATA_DIR", "/var/lib/fedseg"))
    token_file = Path(os.environ.get("FEDSEG_ADMIN_TOKEN_FILE") or data_dir / "admin_token")
    if not os.access(data_dir, os.W_OK):
        log(f"{data_dir} is not writable by uid {os.getuid()}: mount a volume there "
            "(or chown the host directory to 10001:10001)")
        sys.exit(2)
    if not (data_dir / "keys" / "server_ed25519.pem").exists():
        initialise(data_dir, token_file)
    elif not token_file.exists():
        log(f"no admin token at {token_file}; mint one with: docker exec <container> "
            "fedseg server create-token --role admin")
    host = os.environ.get("FEDSEG_HOST", "0.0.0.0")  # noqa: S104 - a container listens on all
    port = os.environ.get("FEDSEG_PORT", "8000")
    log(f"serving on {host}:{port}, state in {data_dir}")
    command = [FEDSEG, "server", "serve", "--data-dir", str(data_dir), "--host", host,
               "--port", port]
    os.execv(FEDSEG, command)  # noqa: S606 - become the server


if __name__ == "__main__":
    main()
