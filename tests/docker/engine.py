"""The Docker side of the docker tier: an engine, a local base image, the images, compose.

Everything here is plain functions over the Docker SDK for Python (``docker`` package) so the
fixtures in conftest.py stay short. Nothing needs an image registry: the base image is built
from Debian's packages with mmdebstrap, the Python packages come from ./wheelhouse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from docker.errors import APIError, DockerException, ImageNotFound

import docker

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "debian:bookworm-slim"
SERVER_IMAGE = "fedseg-server:dev"
CLIENT_IMAGE = "fedseg-client:cpu"
CACHE_DIR = Path(os.environ.get("FEDSEG_DOCKER_CACHE", Path.home() / ".cache" / "fedseg"))


# Set by conftest.py: shows a line on the terminal past pytest's output capture.
reporter: Callable[[str], None] | None = None


def say(message: str) -> None:
    """Progress on the terminal even under pytest's capture (these steps take minutes)."""
    line = f"[docker-tier {time.strftime('%H:%M:%S')}] {message}"
    if reporter is not None:
        reporter(line)
    else:
        print(line, file=sys.stderr, flush=True)


# --- engine ------------------------------------------------------------------------------


@dataclass
class Engine:
    client: docker.DockerClient
    started: subprocess.Popen[bytes] | None  # the dockerd we started, if any


def _socket_answers() -> bool:
    """Whether the engine's unix socket accepts connections (probed without the SDK, whose
    failed connects leave sockets for the garbage collector, a ResourceWarning here)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # let the SDK find out
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(host.removeprefix("unix://"))
        except OSError:
            return False
    return True


def _connect() -> docker.DockerClient | None:
    if not _socket_answers():
        return None
    try:
        client = docker.from_env(timeout=300)
    except DockerException:
        return None
    try:
        client.ping()
    except DockerException:
        client.close()  # or its socket lingers into a ResourceWarning
        return None
    return client


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """Use the running Docker engine, or start Debian's dockerd (vfs storage) and stop it after."""
    client = _connect()
    if client is not None:
        say("using the running Docker engine")
        yield Engine(client, None)
        client.close()
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        raise RuntimeError(
            "no Docker engine answers and none can be started here: the docker tier needs "
            "root and Debian's docker.io (apt-get install docker.io mmdebstrap docker-compose)"
        )
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log = (CACHE_DIR / "dockerd.log").open("ab")
    say("starting dockerd --storage-driver=vfs")
    process = subprocess.Popen(
        [dockerd, "--storage-driver=vfs"], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (client := _connect()) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not come up; see {CACHE_DIR / 'dockerd.log'}")
            time.sleep(0.5)
        yield Engine(client, process)
        client.close()
    finally:
        say("stopping the dockerd this test started")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# --- images ------------------------------------------------------------------------------


def ensure_base_image(client: docker.DockerClient) -> None:
    """Import a Debian bookworm minbase built by mmdebstrap as debian:bookworm-slim if absent."""
    try:
        client.images.get(BASE_IMAGE)
        return
    except ImageNotFound:
        pass
    tarball = CACHE_DIR / "bookworm-minbase.tar"
    if not tarball.exists():
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise RuntimeError("no debian:bookworm-slim image and no mmdebstrap to build one")
        say(f"building the base image with mmdebstrap into {tarball}")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        subprocess.run(
            [mmdebstrap, "--variant=minbase", "--quiet", "bookworm", str(partial)], check=True
        )
        partial.rename(tarball)
    say(f"importing {tarball} as {BASE_IMAGE}")
    repository, tag = BASE_IMAGE.split(":")
    client.api.import_image(src=str(tarball), repository=repository, tag=tag)
    client.images.get(BASE_IMAGE)


def build_wheelhouse() -> None:
    """Collect the wheels on the host (the builds cannot reach the package index)."""
    if os.environ.get("FEDSEG_WHEELHOUSE_READY") == "1":  # `make test-docker` just made it
        return
    say("collecting the wheelhouse (docker/wheelhouse.sh)")
    pip = str(Path(sys.executable).with_name("pip"))
    env = {**os.environ, "PIP": pip, "PYTHON": sys.executable}
    subprocess.run([str(REPO / "docker" / "wheelhouse.sh")], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def _image_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return client.images.get(tag).id
    except ImageNotFound:
        return None


def build_image(
    client: docker.DockerClient, *, dockerfile: str, tag: str, buildargs: dict[str, str],
) -> None:
    """Build ``tag`` (and its builder stage, tagged too so its cache is never pruned).

    The legacy builder (the one the SDK drives) caches layers; an image this replaces is
    removed afterwards so repeated runs do not pile up gigabytes on vfs.
    """
    log_path = CACHE_DIR / f"build-{tag.replace(':', '-').replace('/', '-')}.log"
    stages = [("builder", f"{tag}-builder"), (None, tag)]
    with log_path.open("w") as log:
        for target, stage_tag in stages:
            previous = _image_id(client, stage_tag)
            started = time.monotonic()
            say(f"building {stage_tag} from {dockerfile} (log: {log_path})")
            kwargs = {"target": target} if target else {}
            error = None
            for chunk in client.api.build(
                path=str(REPO), dockerfile=dockerfile, tag=stage_tag, buildargs=buildargs,
                network_mode="host", rm=True, forcerm=True, decode=True, **kwargs,
            ):
                if "stream" in chunk:
                    log.write(chunk["stream"])
                if "error" in chunk:
                    error = chunk["error"]
                    log.write(f"ERROR: {error}\n")
            log.flush()
            if error is not None:
                tail = log_path.read_text().splitlines()[-40:]
                raise RuntimeError(f"building {stage_tag} failed: {error}\n" + "\n".join(tail))
            current = _image_id(client, stage_tag)
            say(f"built {stage_tag} in {time.monotonic() - started:.0f} s")
            if previous is not None and previous != current:
                with contextlib.suppress(APIError):
                    client.images.remove(previous)


# --- compose -----------------------------------------------------------------------------


def compose_command() -> list[str]:
    """Debian's docker-compose (1.29) or the compose v2 plugin, whichever is there."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if done.returncode == 0:
            return ["docker", "compose"]
    raise RuntimeError("neither docker-compose nor the docker compose plugin is installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# With the vfs storage driver, creating a container copies its image's layers, and compose 1.29
# gives the engine 60 s for that by default: too little for the client image on a slow disk.
COMPOSE_TIMEOUTS = {"COMPOSE_HTTP_TIMEOUT": "900", "DOCKER_CLIENT_TIMEOUT": "900"}


@dataclass
class Compose:
    project: str
    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True, capture: bool = False) -> str:
        command = [*compose_command(), "-p", self.project, "-f", str(REPO / "compose.yaml"), *args]
        output = subprocess.PIPE if capture else None
        done = subprocess.run(
            command, cwd=REPO, env={**os.environ, **COMPOSE_TIMEOUTS, **self.env}, check=False,
            text=True,
            stdout=output, stderr=subprocess.STDOUT if capture else None,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed (exit {done.returncode})\n{done.stdout or ''}"
            )
        return done.stdout or ""


def read_file(container: docker.models.containers.Container, path: str) -> str:
    """One small file out of a container (running or not), through the archive API."""
    import io
    import tarfile

    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        handle = tar.extractfile(member)
        assert handle is not None
        return handle.read().decode()


def as_json(text: str) -> object:
    return json.loads(text)
