"""The run's ``privacy:`` block, the signed decline and the ε ledger entry (shared/)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from shared.errors import IntegrityError
from shared.privacy import (
    DECLINE_REASONS,
    Decline,
    EpsilonEntry,
    SignedDecline,
    sign_decline,
    verify_decline,
)
from shared.schemas import (
    DpFedAvgPrivacy,
    DpSgdPrivacy,
    PlainPrivacy,
    RunConfig,
    SvtPrivacy,
    Task,
)


def run(privacy: dict[str, Any]) -> RunConfig:
    return RunConfig.model_validate({"sites": ["site-a"], "privacy": privacy})


def refused_field(privacy: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        run(privacy)
    error = info.value.errors()[0]
    return ".".join(str(part) for part in error["loc"]) + ": " + error["msg"]


@pytest.mark.parametrize(
    ("privacy", "field"),
    [
        ({"mechanism": "dp_sgd", "noise_multiplier": -1.0}, "privacy.dp_sgd.noise_multiplier"),
        ({"mechanism": "dp_sgd", "noise_multiplier": 0.0}, "privacy.dp_sgd.noise_multiplier"),
        ({"mechanism": "dp_sgd", "target_epsilon": 0.0}, "privacy.dp_sgd.target_epsilon"),
        ({"mechanism": "dp_sgd", "target_epsilon": -3}, "privacy.dp_sgd.target_epsilon"),
        (
            {"mechanism": "dp_sgd", "noise_multiplier": 1, "max_grad_norm": 0},
            "privacy.dp_sgd.max_grad_norm",
        ),
        (
            {"mechanism": "dp_fedavg", "clip_norm": 1, "noise_multiplier": -0.5},
            "privacy.dp_fedavg.noise_multiplier",
        ),
        (
            {"mechanism": "dp_fedavg", "clip_norm": 0, "noise_multiplier": 1},
            "privacy.dp_fedavg.clip_norm",
        ),
        ({"mechanism": "dp_fedavg", "noise_multiplier": 1}, "privacy.dp_fedavg.clip_norm"),
        ({"mechanism": "svt", "epsilon": 1, "fraction": 0}, "privacy.svt.fraction"),
        ({"mechanism": "svt", "epsilon": 1, "fraction": 1.01}, "privacy.svt.fraction"),
        ({"mechanism": "svt", "epsilon": 1, "fraction": -0.1}, "privacy.svt.fraction"),
        ({"mechanism": "svt", "epsilon": 0}, "privacy.svt.epsilon"),
        ({"mechanism": "svt", "epsilon": 1, "clip": -1}, "privacy.svt.clip"),
        ({"mechanism": "svt", "epsilon": 1, "threshold": -1}, "privacy.svt.threshold"),
        ({"clip_norm": 0}, "privacy.none.clip_norm"),
        ({"clip_norm": -2}, "privacy.none.clip_norm"),
        ({"max_epsilon": 0}, "privacy.none.max_epsilon"),
        ({"max_epsilon": -1}, "privacy.none.max_epsilon"),
        ({"delta": 1}, "privacy.none.delta"),
        ({"delta": 1.5}, "privacy.none.delta"),
        ({"delta": 0}, "privacy.none.delta"),
        ({"mechanism": "svt", "epsilon": 1, "delta": 1}, "privacy.svt.delta"),
        ({"mechanism": "magic"}, "privacy: mechanism must be one of"),
        ({"mechanism": "dp_sgd", "noise_multiplier": 1, "sigma": 1}, "privacy.dp_sgd.sigma"),
    ],
)
def test_every_bad_privacy_config_is_refused_naming_the_field(
    privacy: dict[str, Any], field: str
) -> None:
    assert refused_field(privacy).startswith(field)


def test_dp_sgd_takes_exactly_one_noise_source() -> None:
    assert "noise_multiplier and target_epsilon" in refused_field({"mechanism": "dp_sgd"})
    both = {"mechanism": "dp_sgd", "noise_multiplier": 1, "target_epsilon": 3}
    assert "noise_multiplier and target_epsilon" in refused_field(both)


def test_each_mechanism_parses_to_its_model_and_keeps_clip_norm() -> None:
    assert run({}).privacy == PlainPrivacy()
    assert run({"clip_norm": 5}).privacy.clip_norm == 5
    sgd = run({"mechanism": "dp_sgd", "target_epsilon": 3, "delta": 1e-5}).privacy
    assert isinstance(sgd, DpSgdPrivacy) and sgd.delta == 1e-5 and sgd.max_grad_norm == 1.0
    fedavg = run({"mechanism": "dp_fedavg", "clip_norm": 0.5, "noise_multiplier": 1}).privacy
    assert isinstance(fedavg, DpFedAvgPrivacy) and fedavg.clip_norm == 0.5
    svt = run({"mechanism": "svt", "epsilon": 2, "fraction": 1, "max_epsilon": 20}).privacy
    assert isinstance(svt, SvtPrivacy) and svt.fraction == 1 and svt.max_epsilon == 20


def test_the_privacy_block_survives_the_signed_task_round_trip() -> None:
    config = run({"mechanism": "svt", "epsilon": 2})
    dumped = config.model_dump(mode="json")
    assert dumped["privacy"]["mechanism"] == "svt"
    assert RunConfig.model_validate(dumped) == config
    assert "privacy" in Task.model_fields


def decline(**changes: Any) -> Decline:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "round": 3,
        "site": "site-a",
        "reason": "budget_exhausted",
        "message": "round 3 would take ε from 7.1 to 8.4 over max_epsilon 8",
        "cumulative_epsilon": 7.1,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    fields.update(changes)
    return Decline.model_validate(fields)


def test_a_signed_decline_round_trips_and_a_changed_one_fails() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_decline(decline(), key)
    received = SignedDecline.model_validate_json(signed.model_dump_json())
    assert verify_decline(received, key.public_key()) == decline()
    for change in ({"reason": "too_few_cases"}, {"round": 4}, {"site": "site-b"}):
        tampered = signed.model_copy(update={"decline": decline(**change)})
        with pytest.raises(IntegrityError):
            verify_decline(tampered, key.public_key())
    with pytest.raises(IntegrityError):
        verify_decline(signed, Ed25519PrivateKey.generate().public_key())


def test_decline_reasons_are_a_closed_set() -> None:
    assert {"policy_mechanism", "budget_exhausted", "too_few_cases", "batch_too_small"} <= set(
        DECLINE_REASONS
    )
    with pytest.raises(ValidationError):
        decline(reason="felt_like_it")


def test_epsilon_entry_refuses_impossible_values() -> None:
    good = {
        "run_id": "r",
        "round": 1,
        "mechanism": "dp_sgd",
        "accountant": "rdp",
        "epsilon": 0.5,
        "cumulative_epsilon": 0.5,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "clip": 1.0,
        "sample_rate": 0.25,
        "steps": 20,
    }
    assert EpsilonEntry.model_validate(good).steps == 20
    for field, value in [("epsilon", -1), ("delta", 1), ("sample_rate", 0), ("steps", -1)]:
        with pytest.raises(ValidationError):
            EpsilonEntry.model_validate({**good, field: value})
