"""The audit ledger's Prometheus metrics (served by /metrics, portal/monitoring.py).
Counts and times only: never an event's content."""
from prometheus_client import Counter, Histogram

AUDIT_APPEND_SECONDS = Histogram(
    "portal_audit_append_seconds", "Time to append one audit event (lock, MAC, insert, commit)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
AUDIT_APPEND_FAILURES = Counter(
    "portal_audit_append_failures", "Audit events that could not be stored (the action was refused)")
