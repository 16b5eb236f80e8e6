"""runbook: executable runbooks for on-call engineers."""

__version__ = "0.1.0"
