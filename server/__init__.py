"""Coordination server: sites, runs and rounds in a database; aggregation; signing."""
