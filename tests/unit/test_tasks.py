from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared import crypto
from shared.bundle import BUNDLE_DOMAIN
from shared.errors import IntegrityError
from shared.schemas import SignedTask, Task, TrainingConfig, canonical_json
from shared.tasks import TASK_DOMAIN, sign_task, verify_task


def task(**changes: object) -> Task:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "round": 1,
        "site": "site-a",
        "model": "segresnet-small",
        "model_params": {"init_filters": 8},
        "weights_sha256": "ef" * 32,
        "bundle_path": "/api/v1/runs/run-1/models/0/bundle",
        "upload_path": "/api/v1/runs/run-1/rounds/1/updates",
        "round_public_key": base64.b64encode(bytes(32)).decode(),
        "deadline": datetime(2025, 1, 2, tzinfo=UTC),
        "training": TrainingConfig(),
        "issued_at": datetime(2025, 1, 1, tzinfo=UTC),
    }
    fields.update(changes)
    return Task.model_validate(fields)


def test_round_trip_over_the_wire(signing_key) -> None:
    signed = sign_task(task(), signing_key)
    assert signed.key_id == crypto.key_id(signing_key.public_key())
    received = SignedTask.model_validate_json(signed.model_dump_json())
    assert verify_task(received, signing_key.public_key()) == task()


@pytest.mark.parametrize(
    "change",
    [
        {"round_public_key": base64.b64encode(b"\x01" * 32).decode()},
        {"round": 2},
        {"site": "site-b"},
        {"weights_sha256": "ee" * 32},
        {"training": TrainingConfig(local_steps=21)},
        {"model_params": {"init_filters": 9}},
    ],
)
def test_a_changed_task_fails(signing_key, change: dict[str, object]) -> None:
    signed = sign_task(task(), signing_key)
    tampered = signed.model_copy(update={"task": task(**change)})
    with pytest.raises(IntegrityError) as info:
        verify_task(tampered, signing_key.public_key())
    assert info.value.code == "bad_signature"


def test_another_key_fails(signing_key, other_signing_key) -> None:
    signed = sign_task(task(), other_signing_key)
    with pytest.raises(IntegrityError):
        verify_task(signed, signing_key.public_key())
    # claiming the pinned key id does not help
    claimed = signed.model_copy(update={"key_id": crypto.key_id(signing_key.public_key())})
    with pytest.raises(IntegrityError):
        verify_task(claimed, signing_key.public_key())


def test_a_tampered_signature_fails(signing_key) -> None:
    signed = sign_task(task(), signing_key)
    raw = bytearray(base64.b64decode(signed.signature))
    raw[0] ^= 1
    bad = signed.model_copy(update={"signature": base64.b64encode(bytes(raw)).decode()})
    with pytest.raises(IntegrityError):
        verify_task(bad, signing_key.public_key())
    not_base64 = signed.model_copy(update={"signature": "abcde"})
    with pytest.raises(IntegrityError):
        verify_task(not_base64, signing_key.public_key())
    with pytest.raises(ValidationError):
        SignedTask.model_validate({**signed.model_dump(), "signature": "not base64!"})


def test_a_signature_over_the_same_bytes_in_another_domain_fails(signing_key) -> None:
    data = canonical_json(task())
    for domain in (BUNDLE_DOMAIN, b""):
        assert domain != TASK_DOMAIN
        signature = crypto.sign(signing_key, crypto.domain_digest(domain, data))
        forged = SignedTask(
            task=task(),
            key_id=crypto.key_id(signing_key.public_key()),
            signature=base64.b64encode(signature).decode(),
        )
        with pytest.raises(IntegrityError):
            verify_task(forged, signing_key.public_key())
