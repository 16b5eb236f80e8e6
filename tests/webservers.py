"""Small local HTTP services: health endpoints and a webhook receiver (filled in by the http work)."""
