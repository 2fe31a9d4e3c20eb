"""pg-runbook: the restricted application-role runbook for managed PostgreSQL, as code."""

__version__ = "0.1.0"
