"""Structured logs, hot-path counters and Prometheus metrics."""
