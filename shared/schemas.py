"""Wire models: one pydantic model per message that crosses the network.

Every model forbids extra fields, so a typo or a field from another version is an
error, not silently ignored. Keys and signatures travel as standard base64 text.
Database rows and tensors are different types: convert explicitly at the edges.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.aggregation import (
    AggregationConfig,
    FedAvg,
    accept_legacy_aggregator,
    refuse_with_secure_aggregation,
)

FORMAT_VERSION: Literal[1] = 1

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Base64 = Annotated[str, Field(min_length=4, max_length=4096, pattern=r"^[A-Za-z0-9+/]+={0,2}$")]
RoundNumber = Annotated[int, Field(ge=0, le=100_000)]


class WireModel(BaseModel):
    """Base of every wire model: unknown fields are refused, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def canonical_json(value: BaseModel | dict[str, Any]) -> bytes:
    """Deterministic JSON (sorted keys, no spaces, UTF-8): the bytes that get signed."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- errors ------------------------------------------------------------------------------


class Problem(WireModel):
    """RFC 9457 problem details with fedseg's stable ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


# --- tensors and bundles -----------------------------------------------------------------


class TensorSpec(WireModel):
    """One tensor of a model: its name, shape and dtype name (``float32``)."""

    name: str = Field(min_length=1, max_length=256)
    shape: list[Annotated[int, Field(ge=0)]]
    dtype: str


class BundleManifest(WireModel):
    """What a signed model bundle holds. Data only: no class paths, no code."""

    format_version: Literal[1] = 1
    run_id: str = Field(min_length=1, max_length=64)
    round: RoundNumber
    model: str = Field(min_length=1, max_length=64)
    model_params: dict[str, Any] = Field(default_factory=dict)
    tensors: list[TensorSpec]
    weights_sha256: Sha256Hex
    created_at: datetime
    key_id: Sha256Hex


# --- runs --------------------------------------------------------------------------------


class TrainingConfig(WireModel):
    """Local training a site does each round."""

    local_steps: int = Field(default=20, ge=1, le=1_000_000)
    batch_size: int = Field(default=2, ge=1, le=256)
    crop_size: int = Field(default=32, ge=8, le=256)
    learning_rate: float = Field(default=1e-4, gt=0, le=1.0)
    weight_decay: float = Field(default=1e-5, ge=0, le=1.0)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    max_val_cases: int = Field(default=8, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0)


class PrivacyConfig(WireModel):
    """Update-level protections a site applies before sealing."""

    clip_norm: float | None = Field(default=None, gt=0, description="L2 bound on each update")


class RunConfig(WireModel):
    """Everything a run decides up front; validated once at creation."""

    model: str = Field(default="segresnet-small", min_length=1, max_length=64)
    model_params: dict[str, Any] = Field(default_factory=dict)
    rounds: int = Field(default=3, ge=1, le=10_000)
    sites: list[Name] = Field(min_length=1, max_length=1000)
    min_sites: int | None = Field(default=None, ge=1)
    round_timeout_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    aggregation: AggregationConfig = Field(default_factory=FedAvg)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    seed: int = Field(default=0, ge=0)

    _legacy_aggregator = model_validator(mode="before")(accept_legacy_aggregator)

    @model_validator(mode="after")
    def _check_aggregation(self) -> RunConfig:
        refuse_with_secure_aggregation(self)
        return self

    @model_validator(mode="after")
    def _check_sites(self) -> RunConfig:
        if len(set(self.sites)) != len(self.sites):
            raise ValueError("sites must be unique")
        if self.min_sites is not None and self.min_sites > len(self.sites):
            raise ValueError("min_sites cannot exceed the number of sites")
        return self

    @property
    def quorum(self) -> int:
        """Sites needed once the deadline has passed (all of them by default)."""
        return self.min_sites or len(self.sites)


RunStatus = Literal["created", "running", "completed", "failed", "cancelled"]
RoundState = Literal["created", "open", "aggregating", "closed", "failed", "cancelled"]
SiteState = Literal[
    "waiting", "downloading", "evaluating", "training", "sealing", "uploading", "uploaded", "error"
]


class RunCreate(WireModel):
    """Admin request to create a run."""

    name: Name
    config: RunConfig


class RunInfo(WireModel):
    """A run as the admin sees it."""

    id: str
    name: str
    status: RunStatus
    config: RunConfig
    current_round: int | None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class SiteProgress(WireModel):
    """One site's progress in one round."""

    site: str
    state: SiteState
    message: str | None = None
    num_samples: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    updated_at: datetime | None = None


class RoundInfo(WireModel):
    """One round of a run with per-site progress."""

    run_id: str
    round: RoundNumber
    status: RoundState
    opened_at: datetime | None
    deadline: datetime | None
    closed_at: datetime | None
    model_sha256: str | None
    sites: list[SiteProgress] = Field(default_factory=list)


class ModelVersion(WireModel):
    """A consensus model the server signed: the bundle of ``round``."""

    run_id: str
    round: RoundNumber
    sha256: Sha256Hex
    created_at: datetime


# --- sites and enrollment ----------------------------------------------------------------


class SiteCreate(WireModel):
    """Admin request to register a site (a hospital)."""

    name: Name
    token_ttl_s: float = Field(default=7 * 24 * 3600, gt=0, le=90 * 24 * 3600)


class SiteInfo(WireModel):
    """A site as the admin sees it; never holds secrets."""

    name: str
    status: Literal["pending", "active", "revoked"]
    fingerprint: str | None = None
    created_at: datetime
    enrolled_at: datetime | None = None
    last_seen_at: datetime | None = None


class SiteCreated(WireModel):
    """Answer to `SiteCreate`: the one-time enrollment token is shown only here."""

    site: SiteInfo
    enrollment_token: str
    expires_at: datetime


class EnrollRequest(WireModel):
    """A site proves it holds an enrollment token and registers its signing key."""

    token: str = Field(min_length=16, max_length=256)
    signing_public_key: Base64


class EnrollResponse(WireModel):
    """The site's credential and the server key it must pin."""

    site: str
    credential: str
    server_signing_key: Base64
    server_key_id: Sha256Hex
    server_fingerprint: str


# --- tasks -------------------------------------------------------------------------------


class Task(WireModel):
    """A round's work order for one site; signed by the server as `SignedTask`."""

    run_id: str
    round: RoundNumber
    site: str
    model: str
    model_params: dict[str, Any] = Field(default_factory=dict)
    model_sha256: Sha256Hex
    bundle_path: str
    upload_path: str
    round_public_key: Base64
    deadline: datetime
    training: TrainingConfig
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    issued_at: datetime


class SignedTask(WireModel):
    """A task and the server's Ed25519 signature over its canonical JSON."""

    task: Task
    key_id: Sha256Hex
    signature: Base64


class TaskPoll(WireModel):
    """Answer to the long-poll: a task, or none and whether any run still needs the site."""

    task: SignedTask | None = None
    active_runs: int = Field(ge=0)
    retry_after_s: float = Field(default=5.0, ge=0)


class StatusReport(WireModel):
    """A site tells the server where it is in a round (for dashboards, not protocol)."""

    run_id: str
    round: RoundNumber
    state: SiteState
    message: str | None = Field(default=None, max_length=2000)
    metrics: dict[str, float] = Field(default_factory=dict)


# --- updates -----------------------------------------------------------------------------


class UpdateHeader(WireModel):
    """The clear-text header of a sealed update, bound to its ciphertext as AEAD data."""

    format_version: Literal[1] = 1
    run_id: str = Field(min_length=1, max_length=64)
    round: RoundNumber
    site: Name
    base_model_sha256: Sha256Hex
    kind: Literal["delta"] = "delta"
    num_samples: int
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime


class UpdateReceipt(WireModel):
    """The server's acknowledgement: the update is stored and counted (once)."""

    run_id: str
    round: RoundNumber
    site: str
    update_sha256: Sha256Hex
    received_at: datetime


# --- audit -------------------------------------------------------------------------------


class AuditEvent(WireModel):
    """One append-only audit record: who did what, when, to what."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] = Field(default_factory=dict)
