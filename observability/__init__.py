"""Observability: Prometheus metrics, health and readiness probes, the usage dashboard."""
