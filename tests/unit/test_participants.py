"""Partial participation: the seeded sample of a round, and the run config that asks for it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.services.participants import participants, round_sample
from shared.schemas import RunConfig

MEMBERS = [f"site-{index}" for index in range(7)]


def _sample(k: int | None, round_number: int, *, seed: int = 0, run_id: str = "run-1") -> list[str]:
    return participants(MEMBERS, k, seed=seed, run_id=run_id, round_number=round_number)


def test_the_sample_is_k_distinct_members_sorted_and_deterministic() -> None:
    for number in range(1, 20):
        chosen = _sample(3, number)
        assert len(set(chosen)) == 3 and set(chosen) <= set(MEMBERS)
        assert chosen == sorted(chosen)
        assert chosen == _sample(3, number)  # the same inputs, the same sample
        assert chosen == participants(
            reversed(MEMBERS), 3, seed=0, run_id="run-1", round_number=number
        )  # the members' order does not matter


def test_rounds_seeds_and_runs_sample_differently() -> None:
    by_round = {tuple(_sample(3, number)) for number in range(1, 30)}
    assert len(by_round) > 5
    every_site = {name for sample in by_round for name in sample}
    assert every_site == set(MEMBERS)  # over enough rounds every member takes part
    assert any(_sample(3, n) != _sample(3, n, seed=1) for n in range(1, 10))
    assert any(_sample(3, n) != _sample(3, n, run_id="run-2") for n in range(1, 10))


def test_none_or_k_at_least_the_members_is_everyone() -> None:
    assert _sample(None, 1) == MEMBERS
    assert _sample(7, 1) == MEMBERS
    with pytest.raises(ValueError, match="at least one"):
        _sample(0, 1)


def test_round_sample_records_nothing_without_sites_per_round() -> None:
    every = RunConfig(sites=MEMBERS[:3])
    assert round_sample(every, MEMBERS[:3], run_id="r", round_number=1) is None
    some = RunConfig(sites=MEMBERS[:3], sites_per_round=2, seed=5)
    assert round_sample(some, MEMBERS[:3], run_id="r", round_number=1) == participants(
        MEMBERS[:3], 2, seed=5, run_id="r", round_number=1
    )


def test_the_quorum_defaults_to_the_sample() -> None:
    assert RunConfig(sites=MEMBERS[:3], sites_per_round=2).quorum == 2
    assert RunConfig(sites=MEMBERS[:3], sites_per_round=2, min_sites=1).quorum == 1
    assert RunConfig(sites=MEMBERS[:3]).quorum == 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sites_per_round": 0}, "sites_per_round"),
        ({"sites_per_round": 4}, "sites_per_round \\(4\\) must be at most the 3 sites"),
        ({"sites_per_round": 1, "min_sites": 2}, "must be at least min_sites"),
        ({"sites_per_round": "two"}, "sites_per_round"),
    ],
)
def test_a_bad_sites_per_round_is_refused_naming_the_field(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RunConfig.model_validate({"sites": MEMBERS[:3], **fields})


def test_sites_per_round_is_refused_with_secure_aggregation() -> None:
    """The masks are agreed among all the run's sites, not a round's sample."""
    data = {"sites": MEMBERS[:5], "min_sites": 4, "sites_per_round": 4, "secure_aggregation": {}}
    with pytest.raises(ValidationError, match="sites_per_round cannot be combined"):
        RunConfig.model_validate(data)
