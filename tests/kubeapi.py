"""A Kubernetes API server subset for the k8s step's tests (filled in by the k8s work)."""
