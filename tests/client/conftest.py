"""Fixtures for the client tests: small phantom datasets written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.phantoms import generate


@pytest.fixture(scope="session")
def phantoms32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms32")
    generate(out, cases=4, size=32, seed=3, style=0)
    return out


@pytest.fixture(scope="session")
def phantoms48(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms48")
    generate(out, cases=10, size=48, seed=11, style=0)
    return out
