"""Fixtures for every tier: no FEDSEG_* variable leaks in from the environment."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _clean_fedseg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FEDSEG_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True, scope="session")
def _cap_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _restore_grad_mode() -> Iterator[None]:
    """A MONAI bundle's ``initialize`` turns autograd off process-wide: turn it back on."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)
