"""A site follows a server key rotation only through a signature from the key it pinned."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from client.agent import Agent
from client.state import Credentials, ServerPin, StateDir
from shared import crypto
from shared.bundle import bundle_tar, make_bundle
from shared.errors import BundleError, IntegrityError
from shared.rotation import follow_rotations, sign_rotation
from shared.schemas import SignedKeyRotation
from shared.tasks import sign_task
from shared.tensors import to_safetensors
from tests.client.test_agent import FakeServer, make_agent


class RotatingServer(FakeServer):
    """The fake server, plus rotation statements and a key it can rotate to."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.original = self.signing_key
        self.rotations: list[SignedKeyRotation] = []

    def rotate(self) -> datetime:
        old, new = self.signing_key, crypto.generate_signing_key()
        moment = datetime.now(UTC)
        self.rotations.append(sign_rotation(old, new.public_key(), at=moment))
        self.signing_key = new
        return moment

    def sign_bundle_with(self, key, *, created_at: datetime) -> None:
        _, files = make_bundle(
            run_id="run1",
            version=0,
            model="segresnet-small",
            model_params={},
            weights=to_safetensors(self.base),
            signing_key=key,
            created_at=created_at,
        )
        self.tars[0] = bundle_tar(files)

    def key_rotations(self) -> list[SignedKeyRotation]:
        return list(self.rotations)


@pytest.fixture
def server(tmp_path: Path) -> RotatingServer:
    return RotatingServer(tmp_path)


@pytest.fixture
def state(tmp_path: Path, server: RotatingServer) -> StateDir:
    state = StateDir(tmp_path / "state")
    key = server.signing_key.public_key()
    pin = ServerPin(
        server_url="http://fedseg.test",
        site="site-a",
        server_signing_key=base64.b64encode(crypto.public_bytes(key)).decode(),
        server_key_id=crypto.key_id(key),
        server_fingerprint=crypto.fingerprint(key),
    )
    state.save_enrollment(pin, Credentials(site="site-a", credential="fss_x"))
    return state


def test_a_rotated_key_is_followed_pinned_and_logged(
    server: RotatingServer, state: StateDir, caplog: pytest.LogCaptureFixture
) -> None:
    agent: Agent = make_agent(server, state)
    old_id = crypto.key_id(server.original.public_key())
    server.rotate()
    server.rotate()  # two steps: each verified with the key before it
    with caplog.at_level(logging.WARNING, logger="client.agent"):
        assert agent.run_task(server.task()) == "uploaded"  # bundle 0 predates the rotations
    new_id = crypto.key_id(server.signing_key.public_key())
    pin = state.load_pin()
    assert pin.server_key_id == new_id and crypto.key_id(pin.public_key()) == new_id
    assert pin.retired_keys[0].key_id == old_id
    assert len(pin.retired_keys) == 2
    assert sum("server signing key rotated" in r.message for r in caplog.records) == 2
    assert crypto.key_id(agent.keys.server_key) == new_id


def test_a_rotation_the_pinned_key_did_not_sign_is_refused(
    server: RotatingServer, state: StateDir
) -> None:
    agent = make_agent(server, state)
    pinned = state.load_pin().server_key_id
    attacker = crypto.generate_signing_key()
    forged = sign_rotation(attacker, attacker.public_key(), at=datetime.now(UTC))
    claim = forged.rotation.model_copy(
        update={
            "old_key_id": pinned,
            "old_signing_key": state.load_pin().server_signing_key,
        }
    )
    server.rotations.append(forged.model_copy(update={"rotation": claim}))
    server.signing_key = attacker
    with pytest.raises(IntegrityError):
        agent.run_task(server.task())
    assert state.load_pin().server_key_id == pinned and state.load_pin().retired_keys == []


def test_a_key_no_rotation_leads_to_is_refused(server: RotatingServer, state: StateDir) -> None:
    agent = make_agent(server, state)
    server.signing_key = crypto.generate_signing_key()  # no statement for it
    with pytest.raises(IntegrityError):
        agent.run_task(server.task())
    assert state.load_pin().retired_keys == []


def test_work_signed_by_the_retired_key_after_rotation_is_refused(
    server: RotatingServer, state: StateDir
) -> None:
    agent = make_agent(server, state)
    rotated_at = server.rotate()
    assert agent.follow_key_rotation(crypto.key_id(server.signing_key.public_key()))
    # a task from the retired key: refused
    old_task = sign_task(server.task().task, server.original)
    with pytest.raises(IntegrityError):
        agent.run_task(old_task)
    # a bundle the retired key signed after its retirement: refused
    server.sign_bundle_with(server.original, created_at=rotated_at + timedelta(seconds=1))
    with pytest.raises(BundleError) as info:
        agent.fetch_model(server.task().task)
    assert info.value.code == "unknown_key"
    # one it signed before: still the model it was
    server.sign_bundle_with(server.original, created_at=rotated_at - timedelta(hours=1))
    assert set(agent.fetch_model(server.task().task)) == {"w", "b"}


def test_follow_rotations_verifies_every_step() -> None:
    first, second, third = (crypto.generate_signing_key() for _ in range(3))
    now = datetime.now(UTC)
    chain = [
        sign_rotation(first, second.public_key(), at=now),
        sign_rotation(second, third.public_key(), at=now),
    ]
    steps = follow_rotations(first.public_key(), chain)
    assert [crypto.key_id(key) for key, _ in steps] == [
        crypto.key_id(second.public_key()),
        crypto.key_id(third.public_key()),
    ]
    assert follow_rotations(third.public_key(), chain) == []
    tampered = chain[1].model_copy(
        update={
            "rotation": chain[1].rotation.model_copy(update={"rotated_at": now + timedelta(days=1)})
        }
    )
    with pytest.raises(IntegrityError):
        follow_rotations(first.public_key(), [chain[0], tampered])
