"""``fedseg simulate --privacy FILE|mechanism`` and the simulated sites' privacy policy.

A mechanism name takes defaults fit for phantom sites (`PHANTOM_DEFAULTS`); a file is
a JSON or TOML privacy block (or a document with a ``privacy`` table), validated by the
run config's own `PrivacyConfig` schema, so a bad value is named with its field just
as the server's 422 would name it.

Simulated sites get a policy written into their state directory: ``min_cases`` 1
(synthetic phantoms protect no patient, and the default 8 would decline every round
of a phantom site with its handful of cases) and, with ``--site-max-epsilon``, that
budget (and no plain rounds, which a budget cannot count).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import TypeAdapter, ValidationError

from client.privacy.policy import SitePolicy
from fedseg.run_blocks import block_from_file
from shared.errors import InvalidInput
from shared.schemas import (
    MECHANISMS,
    DpFedAvgPrivacy,
    DpSgdPrivacy,
    PlainPrivacy,
    PrivacyConfig,
    SvtPrivacy,
)

SIMULATED_MIN_CASES: Final = 1
PHANTOM_DEFAULTS: Final[dict[str, PrivacyConfig]] = {
    "none": PlainPrivacy(),
    "dp_sgd": DpSgdPrivacy(target_epsilon=8.0, max_grad_norm=1.0),
    "dp_fedavg": DpFedAvgPrivacy(clip_norm=1.0, noise_multiplier=1.0),
    "svt": SvtPrivacy(fraction=0.1, epsilon=1.0, clip=1e-4, threshold=1e-6),
}
"""What a bare mechanism name runs: the benchmark's paper-like settings (docs/privacy.md)."""

_ADAPTER: Final = TypeAdapter(PrivacyConfig)


def parse_privacy(value: str) -> PrivacyConfig:
    """A mechanism name or a JSON/TOML file as a validated privacy block."""
    if value in PHANTOM_DEFAULTS:
        return PHANTOM_DEFAULTS[value]
    path = Path(value)
    if not path.is_file():
        raise InvalidInput(
            f"--privacy {value!r} is neither a mechanism ({', '.join(MECHANISMS)}) nor a "
            "file; name one of those, or a JSON or TOML file holding a privacy block"
        )
    return block_from_file(
        path,
        _ADAPTER,
        option="--privacy",
        key="privacy",
        tags=MECHANISMS,
        example='{"mechanism": "dp_sgd", "target_epsilon": 8}',
        docs="docs/privacy.md lists each mechanism's fields",
    )


def simulated_policy(max_epsilon: float | None) -> SitePolicy:
    """The policy each simulated site gets (module docstring)."""
    try:
        return SitePolicy(
            min_cases=SIMULATED_MIN_CASES,
            max_epsilon=max_epsilon,
            allow_plain=max_epsilon is None,
        )
    except ValidationError as exc:
        raise InvalidInput(
            f"--site-max-epsilon {max_epsilon}: {exc.errors()[0]['msg']}; give a positive ε"
        ) from None
