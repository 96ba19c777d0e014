"""A real server (``fedseg server serve`` on loopback) for the admin command tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedseg.cli import app
from fedseg.simulate import Federation, SimulationConfig, prepare_workdir


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    data_dir: Path
    key_file: Path
    federation: Federation


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = SimulationConfig(workdir=tmp_path_factory.mktemp("cli-server"), sites=2)
    prepare_workdir(config.workdir)
    fed = Federation(config)
    try:
        info = fed.init_server()
        fed.start_server()
        yield Server(
            url=fed.base_url,
            token=str(info["admin_token"]),
            data_dir=fed.server_dir,
            key_file=fed.server_dir / "keys" / "server_ed25519.pem",
            federation=fed,
        )
    finally:
        fed.close()


class Admin:
    """Runs ``fedseg admin …`` in-process against the test server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.runner = CliRunner()

    def __call__(self, *args: str, token: str | None = "env", env: dict[str, str] | None = None):
        environment = {"FEDSEG_SERVER_URL": self.server.url, "COLUMNS": "200"}
        if token == "env":
            environment["FEDSEG_ADMIN_TOKEN"] = self.server.token
        elif token is not None:
            environment["FEDSEG_ADMIN_TOKEN"] = token
        environment.update(env or {})
        return self.runner.invoke(app, ["admin", *args], env=environment, catch_exceptions=False)


@pytest.fixture
def admin(server: Server) -> Admin:
    return Admin(server)
