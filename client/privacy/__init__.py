"""Differential privacy at the site: policy, decision, ε ledger, and the mechanisms.

Each module has one job: `policy` (what the hospital allows), `decision` (train or
decline, before training), `accountant` (Opacus' accountants), `ledger` (what the site
has spent, persisted), `noise` (a ChaCha20 noise source), and one module per
mechanism: `dp_sgd`, `dp_fedavg`, `svt`. docs/privacy.md says what each protects.
"""
