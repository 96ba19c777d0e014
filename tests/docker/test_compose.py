"""compose.yaml end to end on a real Docker engine: 2 sites, 2 rounds, a tiny model, CPU.

One module-scoped federation; each test checks one promise of the images and the compose
file against it. Run with ``make test-docker`` (root, Debian's docker.io, mmdebstrap).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from docker.models.containers import Container

from tests.docker import engine as eng

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2700)]

SITES = ("site-1", "site-2")
ROUNDS = 2
RUN_NAME = "docker-tier"
RUN_TIMEOUT_S = float(os.environ.get("FEDSEG_DOCKER_RUN_TIMEOUT_S", "900"))


@dataclass
class Federation:
    compose: eng.Compose
    port: int
    admin_token: str
    run: dict[str, Any]
    containers: dict[str, Container] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    def api(self, path: str) -> Any:
        response = httpx.get(
            f"http://127.0.0.1:{self.port}{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30,
        )
        response.raise_for_status()
        return response.json()


def _containers(docker_engine: eng.Engine, project: str) -> dict[str, Container]:
    found = docker_engine.client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    return {c.labels["com.docker.compose.service"]: c for c in found}


def _fail_with_logs(compose: eng.Compose, message: str) -> None:
    logs = compose("logs", "--no-color", "--tail", "60", check=False, capture=True)
    pytest.fail(f"{message}\n--- compose logs (last lines per service) ---\n{logs}")


def _wait_for_run(fed: Federation, docker_engine: eng.Engine) -> dict[str, Any]:
    """Poll the admin API until the run finishes; fail early when a job or site fails."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        for service, container in _containers(docker_engine, fed.compose.project).items():
            container.reload()
            state = container.attrs["State"]
            if state["Status"] == "exited" and state["ExitCode"] != 0:
                _fail_with_logs(fed.compose, f"{service} exited with {state['ExitCode']}")
        try:
            runs = [r for r in fed.api("/api/v1/runs") if r["name"] == RUN_NAME]
        except httpx.HTTPError:
            runs = []
        if runs:
            last = runs[0]
            if last["status"] in {"completed", "failed", "cancelled"}:
                return last
        time.sleep(5)
    _fail_with_logs(fed.compose, f"run not finished after {RUN_TIMEOUT_S:.0f} s: {last}")
    raise AssertionError  # unreachable


@pytest.fixture(scope="module")
def federation(docker_engine: eng.Engine, images: dict[str, str]) -> Iterator[Federation]:
    project = f"fedseg-test-{uuid.uuid4().hex[:8]}"
    port = eng.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSEG_")}
    env.update({
        "FEDSEG_SERVER_IMAGE": images["server"],
        "FEDSEG_CLIENT_IMAGE": images["client"],
        "FEDSEG_SERVER_PORT": str(port),
        "FEDSEG_SIM_SITES": ",".join(SITES),
        "FEDSEG_SIM_RUN_NAME": RUN_NAME,
        "FEDSEG_SIM_ROUNDS": str(ROUNDS),
        "FEDSEG_SIM_CASES": "4",
        "FEDSEG_SIM_SIZE": "32",
        "FEDSEG_SIM_LOCAL_STEPS": "2",
        "FEDSEG_SIM_CROP": "16",
        "FEDSEG_SIM_BATCH": "1",
        "FEDSEG_SIM_MODEL": "segresnet-small",
    })
    compose = eng.Compose(project, env)
    services = ["server", *(f"data-{s.split('-')[1]}" for s in SITES), "launch", *SITES]
    eng.say(f"compose project {project}: up {' '.join(services)} (server on 127.0.0.1:{port})")
    try:
        started = time.monotonic()
        compose("up", "-d", "--no-build", *services)
        server = _containers(docker_engine, project)["server"]
        token = eng.read_file(server, "/run/fedseg/admin_token").strip()
        fed = Federation(compose, port, token, run={})
        fed.run = _wait_for_run(fed, docker_engine)
        eng.say(f"run {fed.run['status']} after {time.monotonic() - started:.0f} s")
        # The sites exit on their own once no run is active for them; give them a moment.
        deadline = time.monotonic() + 120
        for service in (*SITES, "launch"):
            container = _containers(docker_engine, project)[service]
            while container.status != "exited" and time.monotonic() < deadline:
                time.sleep(2)
                container.reload()
        fed.containers = _containers(docker_engine, project)
        fed.logs = {name: c.logs().decode(errors="replace") for name, c in fed.containers.items()}
        yield fed
    finally:
        eng.say(f"compose project {project}: down -v")
        compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)


def test_run_completes_through_the_admin_api(federation: Federation) -> None:
    run = federation.run
    assert run["status"] == "completed", run
    models = federation.api(f"/api/v1/runs/{run['id']}/models")
    assert max(m["version"] for m in models) == ROUNDS
    rounds = federation.api(f"/api/v1/runs/{run['id']}/rounds")
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r["status"] == "closed" for r in rounds), rounds


def test_one_shot_jobs_and_sites_exit_cleanly(federation: Federation) -> None:
    for service in ("launch", *SITES, *(f"data-{s.split('-')[1]}" for s in SITES)):
        state = federation.containers[service].attrs["State"]
        assert state["Status"] == "exited", (service, state["Status"])
        assert state["ExitCode"] == 0, (service, federation.logs[service][-2000:])


def test_containers_run_as_non_root(federation: Federation) -> None:
    for service, container in federation.containers.items():
        user = container.attrs["Config"]["User"]
        assert user and user.split(":")[0] not in {"0", "root"}, (service, user)
    server = federation.containers["server"]
    exit_code, output = server.exec_run(["id", "-u"])
    assert exit_code == 0 and output.decode().strip() == "10001"


def test_site_data_is_mounted_read_only(federation: Federation) -> None:
    for site in SITES:
        mounts = {m["Destination"]: m for m in federation.containers[site].attrs["Mounts"]}
        assert "/data" in mounts, (site, list(mounts))
        assert mounts["/data"]["RW"] is False, mounts["/data"]
        assert mounts["/var/lib/fedseg"]["RW"] is True


def test_only_the_server_publishes_a_port_on_loopback(federation: Federation) -> None:
    for site in SITES:
        host = federation.containers[site].attrs["HostConfig"]
        assert not host.get("PortBindings"), (site, host.get("PortBindings"))
        assert not host.get("PublishAllPorts")
    bindings = federation.containers["server"].attrs["HostConfig"]["PortBindings"]
    assert bindings == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(federation.port)}]}


def test_sites_reach_only_an_internal_network(
    federation: Federation, docker_engine: eng.Engine
) -> None:
    for site in SITES:
        networks = federation.containers[site].attrs["NetworkSettings"]["Networks"]
        assert len(networks) == 1, (site, list(networks))
        network = docker_engine.client.networks.get(next(iter(networks.values()))["NetworkID"])
        assert network.attrs["Internal"] is True, network.name


def test_server_image_has_no_compiler_and_is_healthy(federation: Federation) -> None:
    server = federation.containers["server"]
    server.reload()
    assert server.attrs["State"]["Health"]["Status"] == "healthy"
    exit_code, output = server.exec_run(
        ["sh", "-c", "for c in cc gcc c++ g++ clang make; do command -v $c; done; true"]
    )
    assert exit_code == 0 and output.decode().strip() == "", output


def test_client_says_which_device_it_trains_on(federation: Federation) -> None:
    for site in SITES:
        # one line at start: "training on GPU cuda:0 (...)" or "training on CPU (...)"
        lines = re.findall(r"training on (?:GPU|CPU).*", federation.logs[site])
        assert len(lines) == 1 and "training on CPU" in lines[0], federation.logs[site][-3000:]


def _run_client_once(docker_engine: eng.Engine, image: str, **kwargs: Any) -> tuple[int, str]:
    container = docker_engine.client.containers.run(image, detach=True, network_mode="none",
                                                    **kwargs)
    try:
        result = container.wait(timeout=300)
        return int(result["StatusCode"]), container.logs().decode(errors="replace")
    finally:
        container.remove(force=True, v=True)  # and its anonymous state volume


def test_client_without_data_says_how_to_mount_it(
    docker_engine: eng.Engine, images: dict[str, str]
) -> None:
    code, logs = _run_client_once(
        docker_engine, images["client"], environment={"FEDSEG_SERVER_URL": "http://server:8000"}
    )
    assert code == 2, logs
    assert "no data at /data" in logs and ":/data:ro" in logs, logs


def test_client_without_server_says_what_to_check(
    docker_engine: eng.Engine, images: dict[str, str]
) -> None:
    code, logs = _run_client_once(
        docker_engine, images["client"],
        environment={"FEDSEG_SERVER_URL": "http://fedseg.invalid:8000",
                     "FEDSEG_SERVER_WAIT_S": "3"},
        volumes={str(eng.REPO / "tests" / "docker"): {"bind": "/data", "mode": "ro"}},
    )
    assert code == 3, logs
    assert "cannot reach the fedseg server at http://fedseg.invalid:8000" in logs, logs
    assert "firewall" in logs
