"""Entrypoint of the fedseg client image: check the data and the server, enroll once, run.

Without arguments:
1. /data (FEDSEG_DATA_DIR) must be a mounted, non-empty directory, else stop with a message
   that says how to mount it (read-only).
2. The server (FEDSEG_SERVER_URL) must answer /healthz within FEDSEG_SERVER_WAIT_S seconds,
   else stop with a message about the address and the firewall.
3. When the state volume holds no enrollment yet and a token is given (FEDSEG_ENROLL_TOKEN,
   or a file named by FEDSEG_ENROLL_TOKEN_FILE, waited for up to FEDSEG_ENROLL_WAIT_S
   seconds), run ``fedseg client enroll``.
4. ``exec fedseg client run`` (``--exit-when-done`` when FEDSEG_EXIT_WHEN_DONE=1).
With arguments: run ``fedseg <arguments>`` instead (e.g. ``client check-data /data``).
Exit codes: 2 data missing, 3 server unreachable, 4 not enrolled and no token,
5 state dir not writable, 6 data not readable; then those of ``fedseg client run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

FEDSEG = "/opt/fedseg/bin/fedseg"
# What `fedseg client enroll` leaves in the state directory (client/state.py).
ENROLLED_MARKERS = ("credentials.json", "server.json")


def log(message: str) -> None:
    """Print one line of the entrypoint's own on stderr."""
    print(f"[fedseg-client] {message}", file=sys.stderr, flush=True)


def env_float(name: str, default: float) -> float:
    """A number of seconds from the environment; stop on a malformed value."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        log(f"{name} must be a number of seconds, not {os.environ[name]!r}")
        sys.exit(64)


def check_data(data_dir: Path) -> None:
    """Stop with a message unless the data directory is mounted and not empty."""
    if data_dir.is_dir() and not os.access(data_dir, os.R_OK | os.X_OK):
        log(
            f"cannot read {data_dir}: permission denied (running as uid {os.getuid()}); "
            f"give that uid read access on the host (e.g. chmod -R a+rX on the data)"
        )
        sys.exit(6)
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        log(
            f"no data at {data_dir}: mount the site's harmonised MRI read-only, e.g. "
            f"'-v /srv/brats:{data_dir}:ro' (BraTS 2018/2021, MSD Task01 or a datalist JSON); "
            "check it first with 'fedseg client check-data /data'"
        )
        sys.exit(2)
    if os.access(data_dir, os.W_OK):
        log(f"warning: {data_dir} is writable; mount it read-only (':ro')")


def wait_for_server(url: str, wait_s: float) -> None:
    """Wait for the server's /healthz; stop with a message after ``wait_s``."""
    health = url.rstrip("/") + "/healthz"
    deadline = time.monotonic() + wait_s
    last_report = 0.0
    while True:
        try:
            with urllib.request.urlopen(health, timeout=5) as response:  # noqa: S310
                response.read()
            log(f"server {url} is reachable")
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if time.monotonic() >= deadline:
                log(
                    f"cannot reach the fedseg server at {url} ({reason}) after {wait_s:.0f} s: "
                    "check FEDSEG_SERVER_URL, DNS, and that the firewall lets this host "
                    "connect out to the server (no inbound port is needed)"
                )
                sys.exit(3)
            if time.monotonic() - last_report >= 10:
                log(f"waiting for the server at {url} ({reason})")
                last_report = time.monotonic()
            time.sleep(2)


def enrolled(state_dir: Path) -> bool:
    """Whether the state directory already holds an enrollment."""
    return all((state_dir / name).exists() for name in ENROLLED_MARKERS)


def enrollment_token() -> str | None:
    """The enrollment token from the environment or its file, if any."""
    token = os.environ.get("FEDSEG_ENROLL_TOKEN", "").strip()
    if token:
        return token
    token_file = os.environ.get("FEDSEG_ENROLL_TOKEN_FILE", "").strip()
    if not token_file:
        return None
    path = Path(token_file)
    deadline = time.monotonic() + env_float("FEDSEG_ENROLL_WAIT_S", 0)
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(1)
    if not path.exists():
        log(f"enrollment token file {path} does not exist")
        return None
    return path.read_text().strip() or None


def enroll(server: str, state_dir: Path) -> None:
    """Enroll this site once; stop with a message when there is no token."""
    token = enrollment_token()
    if token is None:
        log(
            f"this site is not enrolled yet ({state_dir} holds no enrollment): start the "
            "container once with -e FEDSEG_ENROLL_TOKEN=<token from the research admin>"
        )
        sys.exit(4)
    log(f"enrolling with {server}")
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [FEDSEG, "client", "enroll", "--server", server, "--token", token,
         "--state-dir", str(state_dir)],
        check=False,
    )
    if done.returncode != 0:
        log(f"enrollment failed (exit {done.returncode}); the message above says why")
        sys.exit(done.returncode)


def main() -> None:
    """Check, enroll when needed, then become ``fedseg client run``."""
    if len(sys.argv) > 1:
        os.execv(FEDSEG, [FEDSEG, *sys.argv[1:]])  # noqa: S606
    state_dir = Path(os.environ.get("FEDSEG_STATE_DIR", "/var/lib/fedseg"))
    data_dir = Path(os.environ.get("FEDSEG_DATA_DIR", "/data"))
    server = os.environ.get("FEDSEG_SERVER_URL", "").strip()
    if not server:
        log("FEDSEG_SERVER_URL is not set: pass -e FEDSEG_SERVER_URL=https://<server>")
        sys.exit(64)
    if not os.access(state_dir, os.W_OK):
        log(
            f"{state_dir} is not writable: permission denied (running as uid {os.getuid()}); "
            "mount a volume there (-v fedseg-state:/var/lib/fedseg)"
        )
        sys.exit(5)
    check_data(data_dir)
    wait_for_server(server, env_float("FEDSEG_SERVER_WAIT_S", 120))
    if not enrolled(state_dir):
        enroll(server, state_dir)
    command = [FEDSEG, "client", "run", "--state-dir", str(state_dir), "--data", str(data_dir),
               "--device", os.environ.get("FEDSEG_DEVICE", "auto")]
    if os.environ.get("FEDSEG_EXIT_WHEN_DONE", "") in {"1", "true", "yes"}:
        command.append("--exit-when-done")
    if os.environ.get("FEDSEG_IDLE_EXIT_S"):
        command += ["--idle-exit-s", os.environ["FEDSEG_IDLE_EXIT_S"]]
    log("starting: " + " ".join(command[1:]))
    os.execv(FEDSEG, command)  # noqa: S606 - become the agent


if __name__ == "__main__":
    main()
