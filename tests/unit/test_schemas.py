from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ValidationError

from shared import schemas
from shared.schemas import RunConfig, UpdateHeader, WireModel, canonical_json

WIRE_MODELS = sorted(
    (
        obj
        for obj in vars(schemas).values()
        if isinstance(obj, type) and issubclass(obj, WireModel) and obj is not WireModel
    ),
    key=lambda cls: cls.__name__,
)


def test_there_are_wire_models() -> None:
    assert len(WIRE_MODELS) >= 20


@pytest.mark.parametrize("cls", WIRE_MODELS, ids=lambda cls: cls.__name__)
def test_every_wire_model_forbids_extra_fields(cls: type[BaseModel]) -> None:
    with pytest.raises(ValidationError) as info:
        cls.model_validate({"not_a_field": 1})
    assert any(
        error["type"] == "extra_forbidden" and error["loc"] == ("not_a_field",)
        for error in info.value.errors()
    )


def header(**changes: object) -> UpdateHeader:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "round": 1,
        "site": "site-a",
        "base_weights_sha256": "ab" * 32,
        "num_samples": 10,
        "metrics": {"dice_wt": 0.5},
        "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    fields.update(changes)
    return UpdateHeader.model_validate(fields)


def test_extra_field_refused_on_a_valid_message() -> None:
    valid = header().model_dump(mode="json")
    with pytest.raises(ValidationError, match="extra"):
        UpdateHeader.model_validate({**valid, "kind_of": "full"})
    with pytest.raises(ValidationError):
        UpdateHeader.model_validate({**valid, "kind": "full"})


def test_wire_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        header().round = 2  # type: ignore[misc]


def test_canonical_json_is_sorted_compact_and_stable() -> None:
    data = canonical_json(header())
    assert data == canonical_json(header())
    assert b" " not in data
    keys = list(UpdateHeader.model_validate_json(data).model_dump())
    assert data.startswith(b'{"base_weights_sha256":')
    assert sorted(keys) == sorted(header().model_dump())
    assert UpdateHeader.model_validate_json(data) == header()
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_site_names_are_restricted() -> None:
    for bad in ("", "Site", "../x", "a b", "x" * 65):
        with pytest.raises(ValidationError):
            header(site=bad)


def test_run_config_checks_sites_and_quorum() -> None:
    assert RunConfig(sites=["a", "b", "c"]).quorum == 3
    assert RunConfig(sites=["a", "b", "c"], min_sites=2).quorum == 2
    with pytest.raises(ValidationError, match="unique"):
        RunConfig(sites=["a", "a"])
    # schema-valid, so accepted (issue 10): a quorum above the sites means all of them
    assert RunConfig(sites=["a"], min_sites=2).min_sites == 1
    assert RunConfig(sites=["a", "b"], min_sites=5).quorum == 2
    with pytest.raises(ValidationError):
        RunConfig(sites=[])
