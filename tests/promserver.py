"""A real Prometheus for the prometheus step's tests (filled in by the http/prometheus work)."""
