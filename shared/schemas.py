"""Wire models: one pydantic model per message that crosses the network.

Every model forbids extra fields, so a typo or a field from another version is an
error, not silently ignored. Keys and signatures travel as standard base64 text.
Database rows and tensors are different types: convert explicitly at the edges.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from shared.aggregation import (
    AggregationConfig,
    FedAvg,
    accept_legacy_aggregator,
    refuse_with_secure_aggregation,
)
from shared.secagg.config import SecureAggregationConfig, check_available, check_run

FORMAT_VERSION: Literal[2] = 2
"""The version of the formats that cross the wire: bundle manifests, update headers, tasks."""

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Base64 = Annotated[str, Field(min_length=4, max_length=4096, pattern=r"^[A-Za-z0-9+/]+={0,2}$")]
RoundNumber = Annotated[int, Field(ge=0, le=100_000)]
RunId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
MAX_NUM_SAMPLES = 2**31 - 1
"""The most cases any update may claim (a signed 32-bit integer); a run's cap is lower."""
Seed = Annotated[int, Field(ge=0, le=2**63 - 1, description="fits a signed 64-bit integer")]

# Metrics are numbers for dashboards: finite (JSON has no NaN, PostgreSQL's JSON refuses it),
# few, and under short printable names, so a site cannot fill the database through them.
MAX_METRICS = 64
MetricName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
]
MetricValue = Annotated[float, Field(allow_inf_nan=False)]
Metrics = Annotated[dict[MetricName, MetricValue], Field(max_length=MAX_METRICS)]
# Free text a site sends: no NUL (PostgreSQL text cannot hold one) and bounded.
StatusMessage = Annotated[str, Field(max_length=2000, pattern=r"^[^\x00]*$")]
# Base64 of exactly 32 bytes: 43 symbols (the last one carrying 2 bits) and one "=".
Key32 = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
        description="base64 of a 32-byte raw public key",
    ),
]


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

    format_version: Literal[2] = 2
    run_id: str = Field(min_length=1, max_length=64)
    version: RoundNumber
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
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="share held out")
    min_train: int = Field(default=1, ge=1, le=10_000, description="cases kept for training")
    eval_every: int = Field(default=1, ge=1, le=10_000, description="evaluate every n rounds")
    eval_max_cases: int = Field(
        default=8, ge=1, le=10_000, description="validation cases scored per round"
    )
    seed: Seed = 0
    compile: bool = Field(default=False, description="torch.compile the step (CUDA only)")


# --- privacy -----------------------------------------------------------------------------
# The run's ``privacy:`` block, one model per mechanism, told apart by ``mechanism`` (a
# block without one is ``none``). Every model keeps ``clip_norm``, the L2 bound on the
# delta a site uploads, so the agent and the server's norm check read one field whatever
# the mechanism. ``max_epsilon`` and ``delta`` are the run's own budget; the site's policy
# may be stricter and always wins (client/privacy/policy.py).

Mechanism = Literal["none", "dp_sgd", "dp_fedavg", "svt"]
MECHANISMS: tuple[Mechanism, ...] = ("none", "dp_sgd", "dp_fedavg", "svt")
Epsilon = Annotated[float, Field(gt=0, le=1e9)]
Delta = Annotated[float, Field(gt=0, lt=1)]
NoiseMultiplier = Annotated[float, Field(gt=0, le=1e6)]
Norm = Annotated[float, Field(gt=0, le=1e9)]


class _Privacy(WireModel):
    """What every mechanism's block holds: the run's budget and the update's L2 bound."""

    clip_norm: Norm | None = Field(default=None, description="L2 bound on each uploaded delta")
    max_epsilon: Epsilon | None = Field(default=None, description="the run's ε budget per site")
    delta: Delta | None = Field(default=None, description="δ; the site's policy δ when unset")


class PlainPrivacy(_Privacy):
    """No formal privacy: the delta leaves the site as trained (clipped if ``clip_norm``)."""

    mechanism: Literal["none"] = "none"


class DpSgdPrivacy(_Privacy):
    """Record-level DP-SGD at each site (Opacus): clip each case's gradient, add noise.

    Give ``noise_multiplier``, or ``target_epsilon`` for the site to turn into one
    (Opacus' ``get_noise_multiplier`` over the run's rounds), not both.
    """

    mechanism: Literal["dp_sgd"] = "dp_sgd"
    max_grad_norm: Norm = 1.0
    noise_multiplier: NoiseMultiplier | None = None
    target_epsilon: Epsilon | None = None
    secure_mode: bool = False

    @model_validator(mode="after")
    def _one_noise_source(self) -> DpSgdPrivacy:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        return self


class DpFedAvgPrivacy(_Privacy):
    """Client-level DP-FedAvg: clip the delta to ``clip_norm`` C, add Gaussian noise σ·C.

    Each site adds N(0, σ²C²/m), m the run's ``min_sites``, so any m sites together
    carry the noise σ·C the accountant assumes.
    """

    mechanism: Literal["dp_fedavg"] = "dp_fedavg"
    clip_norm: Norm = Field(description="C: L2 bound on each site's delta")
    noise_multiplier: NoiseMultiplier = Field(description="σ: noise std in units of C")


class SvtPrivacy(_Privacy):
    """The seed paper's selective sharing with the sparse vector technique (pure ε).

    Share at most ``fraction`` of the delta's coordinates, those whose clipped size
    beats the noisy ``threshold``, each clipped to ±``clip`` with Laplace noise; the
    rest are sent as zero. ``epsilon`` is the whole round's ε (docs/privacy.md).
    """

    mechanism: Literal["svt"] = "svt"
    fraction: float = Field(default=0.1, gt=0, le=1)
    epsilon: Epsilon = Field(description="pure ε spent per round (threshold, queries, values)")
    threshold: float = Field(default=1e-4, ge=0, le=1e6, description="τ")
    clip: Norm = Field(default=1e-3, description="γ: each coordinate is clipped to ±γ")


def _mechanism_of(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("mechanism", "none"))
    return getattr(value, "mechanism", None)


PrivacyConfig = Annotated[
    Annotated[PlainPrivacy, Tag("none")]
    | Annotated[DpSgdPrivacy, Tag("dp_sgd")]
    | Annotated[DpFedAvgPrivacy, Tag("dp_fedavg")]
    | Annotated[SvtPrivacy, Tag("svt")],
    Discriminator(
        _mechanism_of,
        custom_error_type="unknown_mechanism",
        custom_error_message="mechanism must be one of none, dp_sgd, dp_fedavg, svt",
    ),
]


Accountant = Literal["rdp", "prv", "pure"]


class EpsilonEntry(WireModel):
    """One round of a site's ε ledger: what the round cost and what the run has cost.

    ``epsilon`` is this round's increase of ``cumulative_epsilon`` (the site's ε over
    the run so far, at ``delta``). Gaussian mechanisms (dp_sgd, dp_fedavg) are composed
    by Opacus' accountant over the run's whole history, which is tighter than adding
    rounds up; svt's pure ε adds. ``noise_multiplier``, ``clip``, ``sample_rate`` and
    ``steps`` are the accountant's inputs, so anyone can recompute the figure.
    """

    run_id: str = Field(min_length=1, max_length=64)
    round: RoundNumber
    mechanism: Mechanism
    accountant: Accountant
    epsilon: float = Field(ge=0, le=1e12)
    cumulative_epsilon: float = Field(ge=0, le=1e12)
    delta: float = Field(ge=0, lt=1)
    noise_multiplier: float | None = Field(default=None, gt=0, le=1e9)
    clip: float | None = Field(default=None, gt=0, le=1e12)
    sample_rate: float | None = Field(default=None, gt=0, le=1)
    steps: int = Field(ge=0, le=10**9)


class RunConfig(WireModel):
    """Everything a run decides up front; validated once at creation."""

    model: str = Field(default="segresnet-small", min_length=1, max_length=64)
    model_params: dict[str, Any] = Field(default_factory=dict)
    rounds: int = Field(default=3, ge=1, le=10_000)
    sites: list[Name] = Field(
        min_length=1, max_length=1000, json_schema_extra={"uniqueItems": True}
    )
    min_sites: int | None = Field(
        default=None, ge=1, description="quorum after the deadline; capped at the number of sites"
    )
    sites_per_round: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="sites sampled into each round (seeded, recorded); None: every member",
    )
    round_timeout_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    aggregation: AggregationConfig = Field(default_factory=FedAvg)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = Field(default_factory=PlainPrivacy)
    secure_aggregation: SecureAggregationConfig | None = None
    max_num_samples: int = Field(
        default=100_000,
        ge=1,
        le=MAX_NUM_SAMPLES,
        description="the most cases one update may claim (its FedAvg weight)",
    )
    seed: Seed = 0

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
            # Schema-valid, so accepted: a quorum above the number of sites means all of them.
            object.__setattr__(self, "min_sites", len(self.sites))
        self._check_sites_per_round()
        if self.secure_aggregation is not None:
            check_run(
                self.secure_aggregation,
                sites=len(self.sites),
                quorum=self.quorum,
                aggregator=self.aggregation.strategy,
            )
            check_available()
        return self

    def _check_sites_per_round(self) -> None:
        """A round samples at least the quorum and at most every member: else it cannot close."""
        k = self.sites_per_round
        if k is None:
            return
        if k > len(self.sites):
            raise ValueError(f"sites_per_round ({k}) must be at most the {len(self.sites)} sites")
        if self.min_sites is not None and k < self.min_sites:
            raise ValueError(f"sites_per_round ({k}) must be at least min_sites ({self.min_sites})")
        if self.secure_aggregation is not None:
            # Pairwise masks are agreed among all the run's sites, not a round's sample.
            raise ValueError("sites_per_round cannot be combined with secure_aggregation yet")

    @property
    def quorum(self) -> int:
        """Sites needed once the deadline has passed (all of a round's sample by default)."""
        return self.min_sites or self.sites_per_round or len(self.sites)


class RunStatus(StrEnum):
    """Where a run is; the server's transition table says which moves are allowed."""

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BUDGET_EXHAUSTED = "budget_exhausted"
    """A site's privacy budget is spent: the run stops with the model it has."""


class RoundStatus(StrEnum):
    """Where a round is; ``aggregating`` while the server signs the consensus."""

    CREATED = "created"
    OPEN = "open"
    AGGREGATING = "aggregating"
    CLOSED = "closed"
    FAILED = "failed"
    CANCELLED = "cancelled"


SiteState = Literal[
    "waiting",
    "downloading",
    "evaluating",
    "training",
    "sealing",
    "uploading",
    "uploaded",
    "error",
    "stopped",  # the agent was stopped (Ctrl-C, docker stop); the round resumes on restart
    "declined",  # the site signed a decline for this round (reason in ``decline_reason``)
    "sampled_out",  # not sampled into this round (``sites_per_round``): nothing is owed
    "offline",  # silent for longer than the server's site_offline_after_s
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
    message: StatusMessage | None = None
    num_samples: int | None = None
    metrics: Metrics = Field(default_factory=dict)
    updated_at: datetime | None = None
    last_seen_at: datetime | None = None
    decline_reason: str | None = Field(
        default=None, description="the stable reason code of the site's signed decline"
    )
    privacy: EpsilonEntry | None = Field(
        default=None, description="the site's ε ledger entry for this round, from its update"
    )


class RoundInfo(WireModel):
    """One round of a run with per-site progress."""

    run_id: str
    round: RoundNumber
    status: RoundStatus
    opened_at: datetime | None
    deadline: datetime | None
    closed_at: datetime | None
    weights_sha256: str | None
    participants: list[str] | None = Field(
        default=None, description="the sites sampled into this round; None: every member"
    )
    sites: list[SiteProgress] = Field(default_factory=list)


class ModelVersion(WireModel):
    """A model the server signed: version 0 is the initial model, version n closes round n."""

    run_id: str
    version: RoundNumber
    weights_sha256: Sha256Hex
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
    offline: bool = False


class SiteCreated(WireModel):
    """Answer to `SiteCreate`: the one-time enrollment token is shown only here."""

    site: SiteInfo
    enrollment_token: str
    expires_at: datetime


class SiteReissue(WireModel):
    """Admin request for a fresh enrollment token; the old token and site key stop working."""

    token_ttl_s: float = Field(default=7 * 24 * 3600, gt=0, le=90 * 24 * 3600)


class ServerKey(WireModel):
    """The server's public signing key: what sites pin and admins verify bundles with."""

    public_key_pem: str
    public_key: Base64
    key_id: Sha256Hex
    fingerprint: str


class EnrollRequest(WireModel):
    """A site proves it holds an enrollment token and registers its signing key."""

    token: str = Field(min_length=16, max_length=256)
    signing_public_key: Key32


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

    format_version: Literal[2] = 2
    run_id: str
    round: RoundNumber
    site: str
    model: str
    model_params: dict[str, Any] = Field(default_factory=dict)
    weights_sha256: Sha256Hex
    bundle_path: str
    upload_path: str
    round_public_key: Base64
    deadline: datetime
    training: TrainingConfig
    privacy: PrivacyConfig = Field(default_factory=PlainPrivacy)
    rounds: int = Field(default=1, ge=1, le=10_000, description="the run's rounds (accountant)")
    quorum: int = Field(
        default=1, ge=1, le=1000, description="sites a round needs (dp_fedavg noise share m)"
    )
    proximal_mu: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="FedProx: add mu/2 ||w - w_global||^2 to the local loss (0: none)",
    )
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

    run_id: RunId
    round: RoundNumber
    state: SiteState
    message: StatusMessage | None = None
    metrics: Metrics = Field(default_factory=dict)


# --- updates -----------------------------------------------------------------------------


class UpdateHeader(WireModel):
    """The clear-text header of a sealed update, bound to its ciphertext as AEAD data."""

    format_version: Literal[2] = 2
    run_id: RunId
    round: RoundNumber
    site: Name
    base_weights_sha256: Sha256Hex
    kind: Literal["delta"] = "delta"
    num_samples: int = Field(ge=1, le=MAX_NUM_SAMPLES, description="cases the delta weighs")
    metrics: Metrics = Field(default_factory=dict)
    privacy: EpsilonEntry | None = Field(
        default=None, description="the site's ε ledger entry for this round (DP runs only)"
    )
    created_at: datetime


class UpdateReceipt(WireModel):
    """The server's acknowledgement: the update is stored and counted (once)."""

    run_id: str
    round: RoundNumber
    site: str
    update_sha256: Sha256Hex
    received_at: datetime


# --- dashboard ---------------------------------------------------------------------------


class SignInLink(WireModel):
    """A one-time dashboard sign-in path (relative to the server's address)."""

    path: str


# --- audit -------------------------------------------------------------------------------


class AuditEvent(WireModel):
    """One append-only audit record: who did what, when, to what."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditVerification(WireModel):
    """The result of checking the audit hash chain from its first event to its head."""

    ok: bool
    checked: int = Field(ge=0, description="sealed events whose hashes were recomputed")
    unsealed: int = Field(ge=0, description="events not yet chained (committed just now)")
    head_seq: int = Field(ge=0)
    head_hash: Sha256Hex = Field(description="record it elsewhere to detect a rewritten chain")
    broken_seq: int | None = Field(default=None, description="the first broken link")
    broken_id: int | None = None
    reason: str | None = None


# --- admin and viewer tokens -------------------------------------------------------------

TokenRole = Literal["admin", "viewer"]
TokenStatus = Literal["active", "expired", "revoked"]
DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 3650


class TokenCreate(WireModel):
    """Admin request to mint an admin or viewer token; it expires (90 days by default)."""

    role: TokenRole = "viewer"
    label: Name
    expires_in_days: int = Field(default=DEFAULT_TOKEN_DAYS, ge=1, le=MAX_TOKEN_DAYS)


class TokenInfo(WireModel):
    """An admin or viewer token as the admin sees it; never holds the secret."""

    id: int
    role: TokenRole
    label: str
    status: TokenStatus
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None = None


class TokenCreated(WireModel):
    """Answer to `TokenCreate`: the secret is shown only here."""

    token: TokenInfo
    secret: str


# --- server key rotation -----------------------------------------------------------------


class KeyRotation(WireModel):
    """The statement "the server's signing key ``old_key_id`` is replaced by this key"."""

    format_version: Literal[1] = 1
    old_key_id: Sha256Hex
    old_signing_key: Base64 = Field(description="raw 32-byte Ed25519 public key, base64")
    new_key_id: Sha256Hex
    new_signing_key: Base64 = Field(description="raw 32-byte Ed25519 public key, base64")
    rotated_at: datetime


class SignedKeyRotation(WireModel):
    """A `KeyRotation` signed by the old key: the only way a site accepts a new key."""

    rotation: KeyRotation
    signature: Base64
