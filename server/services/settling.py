"""When a round is decided, with uploads and declines: a pure function of who did what.

A round closes with a new consensus once every member site has uploaded or declined
and the uploads reach the quorum (``min_sites``, all sites by default), or at the
deadline with the quorum of uploads. Declined sites are simply left out of the sum.
Once declines make the quorum unreachable the round cannot close:

- if every site that has not uploaded declined for a budget reason
  (`shared.privacy.BUDGET_REASONS`), the run ends ``budget_exhausted``: the sites'
  privacy budgets are spent, and the run keeps the model it has;
- otherwise it fails like a round below quorum, naming the declines.

While some site may still decline for budget, the round waits for it (or the
deadline), so a run whose every site runs out of budget ends ``budget_exhausted``
whatever order the declines arrive in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from shared.privacy import BUDGET_REASONS

Outcome = Literal["wait", "close", "fail", "budget_exhausted"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a round now, and why (for the audit log and the run's end)."""

    outcome: Outcome
    reason: str = ""


def settle_verdict(
    *,
    members: Mapping[int, str],
    uploaded: Collection[int],
    declined: Mapping[int, str],
    quorum: int,
    deadline_passed: bool,
) -> Verdict:
    """Decide a round from its members, the sites that uploaded, and their declines.

    ``declined`` maps a site id to its decline's reason code.
    """
    counted = len(uploaded)
    pending = [site for site in members if site not in uploaded and site not in declined]
    needed = max(quorum, 1)
    if counted >= needed and (not pending or deadline_passed):
        return Verdict("close")
    reachable = counted + len(pending) >= needed
    if reachable and not deadline_passed:
        return Verdict("wait")
    budget_only = all(reason in BUDGET_REASONS for reason in declined.values())
    if pending and not deadline_passed and budget_only:
        return Verdict("wait")  # the rest may still decline for budget
    reason = f"{counted} of {needed} updates" + (" by the deadline" if deadline_passed else "")
    if declined:
        named = ", ".join(f"{members.get(site, site)} ({why})" for site, why in declined.items())
        reason += f"; declined: {named}"
    if declined and not pending and budget_only:
        return Verdict("budget_exhausted", reason)
    return Verdict("fail", reason)
