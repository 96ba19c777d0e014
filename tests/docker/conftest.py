"""The docker tier: a Docker engine (started here when none runs), and its images."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docker import engine as eng


@pytest.fixture(scope="session", autouse=True)
def _progress_on_terminal(pytestconfig: pytest.Config) -> Iterator[None]:
    """Builds and the federation take minutes: say what is happening as it happens."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def report(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    eng.reporter = report
    yield
    eng.reporter = None


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[eng.Engine]:
    with eng.engine() as running:
        yield running


@pytest.fixture(scope="session")
def images(docker_engine: eng.Engine) -> dict[str, str]:
    """Both images built from the current tree: the server, and the client with CPU torch."""
    client = docker_engine.client
    eng.ensure_base_image(client)
    eng.build_wheelhouse()
    eng.build_image(client, dockerfile="docker/server.Dockerfile", tag=eng.SERVER_IMAGE,
                    buildargs={})
    eng.build_image(client, dockerfile="docker/client.Dockerfile", tag=eng.CLIENT_IMAGE,
                    buildargs={"TORCH_VARIANT": "cpu"})
    return {"server": eng.SERVER_IMAGE, "client": eng.CLIENT_IMAGE}
