"""The REST paths of the coordination server, shared so both sides name them once.

Scopes: *admin* may do everything, *viewer* may read, *site* acts only as itself.
Rounds of a run are numbered 1..rounds; model version ``v`` is the consensus after
round ``v`` (version 0 is the initial model), so round ``n`` trains from version n-1.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "/api/v1"

# operations
HEALTHZ: Final = "/healthz"  # GET, no auth: the process answers
READYZ: Final = "/readyz"  # GET, no auth: database and blob store reachable
METRICS: Final = "/metrics"  # GET, no auth: Prometheus text format
SERVER_KEY: Final = f"{PREFIX}/server/key"  # GET, no auth -> ServerKey (public, to pin or verify)

# public: signed statements, checked against the key a site pinned
KEY_ROTATIONS: Final = f"{PREFIX}/server/key-rotations"  # GET -> list[SignedKeyRotation]

# site scope
ENROLL: Final = f"{PREFIX}/enroll"  # POST EnrollRequest -> EnrollResponse (enrollment token)
TASKS_NEXT: Final = f"{PREFIX}/tasks/next"  # GET ?wait=<s> -> TaskPoll
STATUS: Final = f"{PREFIX}/status"  # POST StatusReport -> 204
UPDATES: Final = (
    f"{PREFIX}/runs/{{run_id}}/rounds/{{round}}/updates"  # PUT envelope -> UpdateReceipt
)
DECLINE: Final = (
    f"{PREFIX}/runs/{{run_id}}/rounds/{{round}}/decline"  # POST SignedDecline -> DeclineReceipt
)

# site (member of the run), viewer and admin scope
MODEL_BUNDLE: Final = (
    f"{PREFIX}/runs/{{run_id}}/models/{{version}}/bundle"  # GET -> tar; ETag, Range
)

# admin scope (GET also viewer)
SITES: Final = f"{PREFIX}/sites"  # GET -> list[SiteInfo]; POST SiteCreate -> SiteCreated
SITE_REVOKE: Final = f"{PREFIX}/sites/{{name}}/revoke"  # POST -> SiteInfo
SITE_REISSUE: Final = f"{PREFIX}/sites/{{name}}/reissue-token"  # POST SiteReissue -> SiteCreated
RUNS: Final = f"{PREFIX}/runs"  # GET -> list[RunInfo]; POST RunCreate -> RunInfo
RUN: Final = f"{PREFIX}/runs/{{run_id}}"  # GET -> RunInfo
RUN_START: Final = f"{PREFIX}/runs/{{run_id}}/start"  # POST -> RunInfo
RUN_STOP: Final = f"{PREFIX}/runs/{{run_id}}/stop"  # POST -> RunInfo
ROUNDS: Final = f"{PREFIX}/runs/{{run_id}}/rounds"  # GET -> list[RoundInfo]
ROUND: Final = f"{PREFIX}/runs/{{run_id}}/rounds/{{round}}"  # GET -> RoundInfo
MODELS: Final = f"{PREFIX}/runs/{{run_id}}/models"  # GET -> list[ModelVersion]
AUDIT: Final = f"{PREFIX}/audit"  # GET ?limit=&after=&newest= -> list[AuditEvent]
UI_SIGN_IN_LINKS: Final = f"{PREFIX}/ui/sign-in-links"  # POST -> SignInLink (one-time)

# the dashboard (HTML pages, cookie session; not part of the REST API)
UI: Final = "/ui/"
AUDIT_VERIFY: Final = f"{PREFIX}/audit/verify"  # GET -> AuditVerification
TOKENS: Final = f"{PREFIX}/tokens"  # admin: GET -> list[TokenInfo]; POST TokenCreate
TOKEN_REVOKE: Final = f"{PREFIX}/tokens/{{token_id}}/revoke"  # admin: POST -> TokenInfo

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
BUNDLE_CONTENT_TYPE: Final = "application/x-tar"
UPDATE_CONTENT_TYPE: Final = "application/octet-stream"
