"""Kubernetes mode: the CaptureTask model and CRD, the node agent."""
