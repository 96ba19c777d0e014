"""Child processes for ``fedseg simulate`` and the integration tests.

Each child runs in its own session (its own process group), writes stdout and stderr
to a log file, and is stopped group-wide: SIGTERM, a grace period, then SIGKILL. So
Ctrl-C in the terminal reaches only the parent, which then stops every child it
started and waits for them: no orphans, no zombies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import httpx

from shared import routes
from shared.errors import Unavailable

#: Variables that cap the math libraries' threads in a child (one core each by default).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def fedseg_command() -> list[str]:
    """How to run the ``fedseg`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("fedseg")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from fedseg.cli import main; main()"]


def child_environment(
    extra: Mapping[str, str] | None = None, *, threads: int | None = None
) -> dict[str, str]:
    """This process's environment without any ``FEDSEG_*`` variable, plus ``extra``.

    Children get exactly the settings we give them, never a stray token or URL.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("FEDSEG_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads is not None:
        for name in THREAD_VARIABLES:
            env[name] = str(threads)
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Child:
    """A started child process and where its output goes."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.popen.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's log."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """The processes one simulation started; stops them all on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: dict[str, Child] = {}

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def __iter__(self) -> Iterator[Child]:
        return iter(list(self._children.values()))

    def __getitem__(self, name: str) -> Child:
        return self._children[name]

    def __contains__(self, name: object) -> bool:
        return name in self._children

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``argv`` in its own session with output to ``log_dir/<name>.log``."""
        if name in self._children and self._children[name].returncode is None:
            raise RuntimeError(f"child {name!r} is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(  # noqa: S603 - argv is built by us, no shell
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name=name, argv=list(argv), popen=popen, log=log)
        self._children[name] = child
        return child

    def signal(self, name: str, signum: int) -> None:
        """Send ``signum`` to a child's whole process group (if it still runs)."""
        child = self._children[name]
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signum)

    def stop(self, names: Sequence[str] | None = None, *, grace_s: float = 10.0) -> None:
        """SIGTERM the children's groups, wait up to ``grace_s``, then SIGKILL them."""
        chosen = [self._children[n] for n in (names or list(self._children))]
        for child in chosen:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in chosen:
            left = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=left)
        for child in chosen:
            # The leader may be gone while others in its group live on: kill the group anyway.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=5.0)

    def stop_all(self, *, grace_s: float = 10.0) -> None:
        """Stop every child (idempotent)."""
        if self._children:
            self.stop(grace_s=grace_s)

    def wait(self, names: Sequence[str], timeout_s: float) -> bool:
        """Wait until the named children have exited; True if they all did in time."""
        deadline = time.monotonic() + timeout_s
        for name in names:
            left = deadline - time.monotonic()
            try:
                self._children[name].popen.wait(timeout=max(0.0, left))
            except subprocess.TimeoutExpired:
                return False
        return True


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 300.0,
    what: str = "command",
) -> str:
    """Run a short command to completion in its own session; return its stdout.

    Raise `Unavailable` with the command's stderr when it fails. An interrupt kills it.
    """
    proc = subprocess.Popen(  # noqa: S603 - argv is built by us, no shell
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        tail = " | ".join(message.splitlines()[-3:])
        raise Unavailable(f"{what} failed (exit {proc.returncode}): {tail}")
    return out.decode(errors="replace")


def wait_ready(base_url: str, child: Child, timeout_s: float = 60.0) -> None:
    """Poll ``/readyz`` until it answers 200; fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout_s
    url = base_url.rstrip("/") + routes.READYZ
    while True:
        if child.returncode is not None:
            raise Unavailable(
                f"{child.name} exited with {child.returncode} before it was ready:\n"
                + child.log_tail()
            )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise Unavailable(
                f"{child.name} was not ready after {timeout_s:.0f}s:\n" + child.log_tail()
            )
        time.sleep(0.2)


class TerminationRequested(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C, so children are stopped the same way."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises `TerminationRequested` (in the main thread)."""

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise TerminationRequested

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
