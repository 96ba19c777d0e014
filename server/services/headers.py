"""The cheap checks of an update's clear-text header, made before its body is read.

The header sits in front of the sealed body (`shared.updates.read_envelope_header`),
so these run on a few hundred bytes: a wrong site, run, round, base model, sample
count or ε ledger entry is refused before any model-sized work or storage.
"""

from __future__ import annotations

from shared.errors import Conflict, Forbidden, InvalidInput, TensorError
from shared.schemas import RunConfig, UpdateHeader


def check_header(
    header: UpdateHeader,
    *,
    site: str,
    run_id: str,
    number: int,
    base_weights_sha256: str,
    config: RunConfig,
) -> None:
    """The cheap checks of an update's clear-text header, before its body is stored.

    The one place for them: the site, run and round it names, the model it was
    trained from, its sample count (the schema's 1..2³¹-1, then the run's
    ``max_num_samples``) and its ε ledger entry (`check_privacy_entry`).
    """
    if header.site != site:
        raise Forbidden(f"the update names site {header.site}, not {site}", code="wrong_site")
    if header.run_id != run_id or header.round != number:
        if header.run_id == run_id and header.round < number:
            raise Conflict(
                f"the update is for round {header.round}, not {number}", code="stale_round"
            )
        raise InvalidInput(
            f"the update is for {header.run_id} round {header.round}, "
            f"but was sent to {run_id} round {number}"
        )
    if header.num_samples <= 0:
        raise TensorError("num_samples must be positive", code="bad_num_samples")
    if header.num_samples > config.max_num_samples:
        raise TensorError(
            f"num_samples {header.num_samples} is above the run's max_num_samples "
            f"{config.max_num_samples}",
            code="bad_num_samples",
        )
    check_privacy_entry(header, config)
    if header.base_weights_sha256 != base_weights_sha256:
        raise TensorError(
            "the update was trained from another model than this round's",
            code="base_model_mismatch",
        )


def check_privacy_entry(header: UpdateHeader, config: RunConfig) -> None:
    """A DP run's update carries its ε ledger entry for this run, round and mechanism.

    A plain run's update carries none. Anything else is ``bad_privacy_entry`` (422).
    """
    mechanism = config.privacy.mechanism
    entry = header.privacy
    if mechanism == "none":
        if entry is not None:
            raise InvalidInput(
                "the run has no privacy mechanism, but the update carries an ε ledger entry",
                code="bad_privacy_entry",
            )
        return
    if entry is None:
        raise InvalidInput(
            f"the run uses {mechanism}: the update header must carry its ε ledger entry (privacy)",
            code="bad_privacy_entry",
        )
    if entry.run_id != header.run_id or entry.round != header.round:
        raise InvalidInput(
            f"the ε ledger entry is for {entry.run_id} round {entry.round}, "
            f"not {header.run_id} round {header.round}",
            code="bad_privacy_entry",
        )
    if entry.mechanism != mechanism:
        raise InvalidInput(
            f"the ε ledger entry is for {entry.mechanism}, but the run uses {mechanism}",
            code="bad_privacy_entry",
        )
    if entry.cumulative_epsilon < entry.epsilon:
        raise InvalidInput(
            "the ε ledger entry's cumulative_epsilon is below this round's epsilon",
            code="bad_privacy_entry",
        )
