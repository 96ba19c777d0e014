"""When a round is decided with uploads and declines (`settle_verdict`), case by case."""

from __future__ import annotations

import pytest

from server.services.settling import Outcome, settle_verdict

MEMBERS = {1: "site-a", 2: "site-b", 3: "site-c"}


@pytest.mark.parametrize(
    ("uploaded", "declined", "quorum", "deadline", "outcome"),
    [
        ({1, 2, 3}, {}, 3, False, "close"),
        ({1, 2}, {}, 3, False, "wait"),
        ({1, 2}, {}, 3, True, "fail"),
        ({1, 2}, {}, 2, False, "wait"),  # site-c may still send before the deadline
        ({1, 2}, {}, 2, True, "close"),
        ({1, 2}, {3: "too_few_cases"}, 2, False, "close"),  # on without the decliner
        ({1}, {3: "budget_exhausted"}, 2, False, "wait"),  # site-b may still upload
        ({1}, {2: "budget_exhausted", 3: "too_few_cases"}, 2, False, "fail"),
        ({1}, {2: "budget_exhausted", 3: "run_budget_exhausted"}, 2, False, "budget_exhausted"),
        (set(), {1: "budget_exhausted"}, 3, False, "wait"),  # the rest may decline for budget
        (set(), {1: "budget_exhausted", 2: "policy_mechanism"}, 3, False, "fail"),
        (set(), {1: "budget_exhausted"}, 3, True, "fail"),  # silent sites are not a budget
        (set(), dict.fromkeys(MEMBERS, "budget_exhausted"), 1, False, "budget_exhausted"),
        (set(), dict.fromkeys(MEMBERS, "too_few_cases"), 1, False, "fail"),
        ({1, 2}, {3: "budget_exhausted"}, 3, False, "budget_exhausted"),
    ],
)
def test_verdict(
    uploaded: set[int], declined: dict[int, str], quorum: int, deadline: bool, outcome: Outcome
) -> None:
    verdict = settle_verdict(
        members=MEMBERS,
        uploaded=uploaded,
        declined=declined,
        quorum=quorum,
        deadline_passed=deadline,
    )
    assert verdict.outcome == outcome


def test_the_reason_names_the_count_and_every_decline() -> None:
    verdict = settle_verdict(
        members=MEMBERS,
        uploaded={1},
        declined={2: "budget_exhausted", 3: "too_few_cases"},
        quorum=3,
        deadline_passed=False,
    )
    assert verdict.reason == (
        "1 of 3 updates; declined: site-b (budget_exhausted), site-c (too_few_cases)"
    )
    late = settle_verdict(
        members=MEMBERS, uploaded={1}, declined={}, quorum=2, deadline_passed=True
    )
    assert (late.outcome, late.reason) == ("fail", "1 of 2 updates by the deadline")
