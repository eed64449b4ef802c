"""Searches counted per outcome for /metrics (portal/metrics.py): counts only."""
from __future__ import annotations

import functools

from portal.metrics import SEARCHES


def outcome_of(exc: BaseException) -> str:
    from audit.ledger.services import AuditUnavailable
    from search.engine import EngineUnavailable
    from search.services import ModelMismatch, SearchInputError

    if isinstance(exc, SearchInputError):
        return "rejected"
    if isinstance(exc, AuditUnavailable):
        return "refused_audit"
    if isinstance(exc, EngineUnavailable):
        return "unavailable"
    if isinstance(exc, ModelMismatch):
        return "model_mismatch"
    return "failed"


def counted_search(kind: str):
    def wrap(function):
        @functools.wraps(function)
        def counted(*args, **kwargs):
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                SEARCHES.labels(kind, outcome_of(exc)).inc()
                raise
            SEARCHES.labels(kind, "completed").inc()
            return result
        return counted
    return wrap
