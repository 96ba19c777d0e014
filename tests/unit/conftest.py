"""Fixtures for the unit tier: keys and a tiny state dict, made fresh per test."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared import crypto


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return crypto.generate_signing_key()


@pytest.fixture
def other_signing_key() -> Ed25519PrivateKey:
    return crypto.generate_signing_key()


@pytest.fixture
def sealing_key() -> X25519PrivateKey:
    return crypto.generate_sealing_key()
