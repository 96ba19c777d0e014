"""The compose simulation's admin job: register the sites, hand out tokens, start the run.

Runs in the client image (it carries the admin CLI) and drives the server only through
``fedseg admin ...``. Idempotent: a second ``docker compose up`` finds the sites and the
run and only watches. Environment:

- FEDSEG_SERVER_URL, FEDSEG_ADMIN_TOKEN_FILE: the server and the admin token the server
  wrote on first start (in the shared ``admin-token`` volume).
- FEDSEG_ENROLLMENT_DIR: where each site's enrollment token goes (``<site>.token``, 0600);
  the sites read the same volume, mounted read-only.
- FEDSEG_SIM_SITES (comma-separated), FEDSEG_SIM_RUN_NAME, FEDSEG_SIM_ROUNDS,
  FEDSEG_SIM_MODEL, FEDSEG_SIM_LOCAL_STEPS, FEDSEG_SIM_CROP, FEDSEG_SIM_BATCH,
  FEDSEG_SIM_WATCH (1: wait for the run to finish, exit 0 only if it completed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FEDSEG = "/opt/fedseg/bin/fedseg"


def log(message: str) -> None:
    """Print one line of the job's own on stderr."""
    print(f"[launch] {message}", file=sys.stderr, flush=True)


def admin(*args: str) -> Any:
    """Run ``fedseg admin ARGS --json`` and return its JSON output."""
    command = [FEDSEG, "admin", *args, "--json"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(f"[launch] {' '.join(command[1:])} failed (exit {done.returncode})")
    return json.loads(done.stdout)


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` with mode 0600, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    tmp.replace(path)


def wait_for_file(path: Path, timeout_s: float) -> None:
    """Wait until ``path`` exists; stop after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"[launch] {path} did not appear within {timeout_s:.0f} s")
        time.sleep(1)


def main() -> None:
    """Register, hand out tokens, wait for enrollment, start the run and watch it."""
    env = os.environ
    token_file = Path(env["FEDSEG_ADMIN_TOKEN_FILE"])
    wait_for_file(token_file, 120)
    os.environ["FEDSEG_ADMIN_TOKEN"] = token_file.read_text().strip()
    enrollment_dir = Path(env.get("FEDSEG_ENROLLMENT_DIR", "/var/lib/fedseg"))
    sites = [name.strip() for name in env.get("FEDSEG_SIM_SITES", "").split(",") if name.strip()]
    if not sites:
        raise SystemExit("[launch] FEDSEG_SIM_SITES names no site")
    run_name = env.get("FEDSEG_SIM_RUN_NAME", "compose-demo")

    known = {site["name"]: site for site in admin("sites", "list")}
    for name in sites:
        if name in known:
            continue
        created = admin("sites", "create", name)
        write_secret(enrollment_dir / f"{name}.token", created["enrollment_token"])
        log(f"registered {name}; its enrollment token is in the enrollment volume")

    deadline = time.monotonic() + float(env.get("FEDSEG_SIM_ENROLL_TIMEOUT_S", "900"))
    while True:
        status = {site["name"]: site["status"] for site in admin("sites", "list")}
        waiting = [name for name in sites if status.get(name) != "active"]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"[launch] sites not enrolled in time: {', '.join(waiting)}")
        time.sleep(3)
    log(f"all sites enrolled: {', '.join(sites)}")

    runs = [run for run in admin("runs", "list") if run["name"] == run_name]
    if runs:
        run = runs[0]
        log(f"run {run_name} exists ({run['status']})")
        if run["status"] == "created":
            run = admin("runs", "start", run["id"])
    else:
        args = ["runs", "create", "--name", run_name, "--start",
                "--model", env.get("FEDSEG_SIM_MODEL", "segresnet-small"),
                "--rounds", env.get("FEDSEG_SIM_ROUNDS", "2"),
                "--local-steps", env.get("FEDSEG_SIM_LOCAL_STEPS", "5"),
                "--crop-size", env.get("FEDSEG_SIM_CROP", "16"),
                "--batch-size", env.get("FEDSEG_SIM_BATCH", "1")]
        for name in sites:
            args += ["--site", name]
        run = admin(*args)
        log(f"created and started run {run_name} ({run['id']})")

    if env.get("FEDSEG_SIM_WATCH", "1") not in {"1", "true", "yes"}:
        return
    while run["status"] in {"created", "running"}:
        time.sleep(5)
        run = admin("runs", "status", run["id"])
        run = run.get("run", run)  # `runs status --json` may wrap the run with its rounds
    log(f"run {run_name} finished: {run['status']}")
    sys.exit(0 if run["status"] == "completed" else 1)


if __name__ == "__main__":
    main()
