"""What a person is told when a search-app operation fails for a reason that
is not a bug: one mapping for the pages and the API."""
from __future__ import annotations

from django.utils.translation import gettext as _

from audit.ledger.services import AuditUnavailable
from search import services
from search.engine import EngineError
from search.parsing import ImportFileError


def failure_status(exc: Exception) -> tuple[int, str] | None:
    """(HTTP status, message) for a known failure, or None for anything else."""
    if isinstance(exc, services.LimitExceeded):
        return exc.status, str(exc)  # services.LIMITS: a size is 413, a parameter out of range 400
    if isinstance(exc, (services.SearchInputError, ImportFileError)):
        return 400, str(exc)
    if isinstance(exc, services.ModelMismatch):
        return 409, str(exc)
    if isinstance(exc, AuditUnavailable):
        return 503, _("The audit log cannot be written, so the request was refused. Try again later.")
    if isinstance(exc, EngineError):
        return 503, _("The search model is not available right now. Try again in a minute.")
    return None
