"""The site's privacy policy: what this hospital allows, whatever a run asks.

Where it comes from, first found wins:

1. ``FEDSEG_PRIVACY_POLICY_FILE``: a path (a mounted container secret), JSON;
2. ``FEDSEG_PRIVACY_POLICY``: the JSON itself, in the environment;
3. ``privacy/policy.json`` in the state directory (``fedseg client policy set``);
4. the default: no ε budget, plain rounds allowed, at least 8 training cases.

A policy with an ε budget cannot allow plain rounds: a plain update has no ε bound,
so it could never be counted against the budget honestly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from client.privacy.accountant import GaussianAccountant
from shared.errors import ConfigError
from shared.files import write_atomic

POLICY_FILE: Final = Path("privacy/policy.json")
POLICY_ENV: Final = "FEDSEG_PRIVACY_POLICY"
POLICY_FILE_ENV: Final = "FEDSEG_PRIVACY_POLICY_FILE"
FormalMechanism = Literal["dp_sgd", "dp_fedavg", "svt"]


class SitePolicy(BaseModel):
    """Limits the site sets on every round it trains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float | None = Field(
        default=None, gt=0, le=1e9, description="ε budget over all runs (at delta)"
    )
    delta: float = Field(default=1e-5, gt=0, lt=1, description="δ the site accounts at")
    min_cases: int = Field(default=8, ge=1, description="fewest training cases to train on")
    min_batch: int = Field(default=1, ge=1, description="smallest batch a run may ask for")
    min_local_steps: int = Field(default=1, ge=1, description="fewest local steps per round")
    mechanisms: tuple[FormalMechanism, ...] = Field(
        default=("dp_sgd", "dp_fedavg", "svt"), description="formal mechanisms allowed"
    )
    allow_plain: bool = Field(default=True, description="train rounds with mechanism none")
    accountant: GaussianAccountant = "rdp"

    @model_validator(mode="after")
    def _budget_needs_dp(self) -> SitePolicy:
        if self.max_epsilon is not None and self.allow_plain:
            raise ValueError(
                "a policy with max_epsilon cannot allow plain rounds (set allow_plain false)"
            )
        if len(set(self.mechanisms)) != len(self.mechanisms):
            raise ValueError("mechanisms must be unique")
        return self


def parse_policy(text: str | bytes, *, source: str) -> SitePolicy:
    """Parse a policy document, naming ``source`` and the bad field on error."""
    try:
        return SitePolicy.model_validate_json(text)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        field = f"{where}: " if where else ""
        raise ConfigError(
            f"privacy policy from {source} is invalid: {field}{error['msg']}", code="config_invalid"
        ) from None


def describe_policy(policy: SitePolicy) -> str:
    """One log line: the limits that decide whether a round is trained."""
    budget = "no ε budget" if policy.max_epsilon is None else f"max ε {policy.max_epsilon:g}"
    plain = "plain rounds allowed" if policy.allow_plain else "no plain rounds"
    mechanisms = ", ".join(policy.mechanisms) or "none"
    return (
        f"{budget} (δ {policy.delta:g}), min {policy.min_cases} training cases, "
        f"min batch {policy.min_batch}, min {policy.min_local_steps} local steps, "
        f"mechanisms {mechanisms}, {plain}"
    )


def policy_path(state_dir: Path) -> Path:
    """Where `save_policy` keeps the site's policy."""
    return state_dir / POLICY_FILE


def load_policy(state_dir: Path | None) -> tuple[SitePolicy, str]:
    """The policy in force and where it came from (see the module docstring)."""
    secret = os.environ.get(POLICY_FILE_ENV)
    if secret:
        try:
            text = Path(secret).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{POLICY_FILE_ENV}={secret} cannot be read ({exc.strerror}); mount the policy "
                "file there or unset the variable"
            ) from None
        return parse_policy(text, source=POLICY_FILE_ENV), POLICY_FILE_ENV
    inline = os.environ.get(POLICY_ENV)
    if inline:
        return parse_policy(inline, source=POLICY_ENV), POLICY_ENV
    if state_dir is not None:
        path = policy_path(state_dir)
        if path.exists():
            return parse_policy(path.read_bytes(), source=str(path)), str(path)
    return SitePolicy(), "default"


def save_policy(state_dir: Path, policy: SitePolicy) -> Path:
    """Write ``policy`` atomically to the state directory; returns its path."""
    path = policy_path(state_dir)
    write_atomic(path, (policy.model_dump_json(indent=2) + "\n").encode())
    return path
