"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """The counters and histogram the server exports on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rounds_closed = Counter(
            "fedseg_rounds_closed", "Rounds closed with a new consensus", registry=self.registry
        )
        self.rounds_failed = Counter(
            "fedseg_rounds_failed", "Rounds that missed their quorum", registry=self.registry
        )
        self.updates_accepted = Counter(
            "fedseg_updates_accepted", "Updates stored and counted", registry=self.registry
        )
        self.updates_rejected = Counter(
            "fedseg_updates_rejected",
            "Updates refused, by error code",
            ["code"],
            registry=self.registry,
        )
        self.bytes_in = Counter(
            "fedseg_bytes_received", "Update bytes received", registry=self.registry
        )
        self.bytes_out = Counter("fedseg_bytes_sent", "Bundle bytes served", registry=self.registry)
        self.aggregation_seconds = Histogram(
            "fedseg_aggregation_seconds",
            "Time to turn a round's sum into a signed, stored bundle",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

        self.site_epsilon = Gauge(
            "fedseg_site_cumulative_epsilon",
            "A site's cumulative ε in a run, from its last ledger entry",
            ["run", "site"],
            registry=self.registry,
        )
        self.declines = Counter(
            "fedseg_declines",
            "Rounds a site declined, by reason code",
            ["reason"],
            registry=self.registry,
        )

    def record_epsilon(
        self, run_id: str, site: str | None, entry: Mapping[str, Any] | None
    ) -> None:
        """Export a site's cumulative ε from an update's stored ledger entry (if any)."""
        if site is None or entry is None:
            return
        value = entry.get("cumulative_epsilon")
        if isinstance(value, int | float):
            self.site_epsilon.labels(run=run_id, site=site).set(float(value))

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
