"""Storage faults: a database that cannot be written (held locked, disk full,
read-only, I/O error) is a 503 the client may retry, never a 500 or a hang.

- ``short_busy_timeout``: a write that may be skipped waits for the write
  lock only briefly (SQLite's busy timeout, restored afterwards).
- ``StorageFaultMiddleware``: a database error from a write, or an audit
  record that could not be stored, answers 503 quickly (problem+json on the
  API, a page otherwise). Nothing of the request is echoed; the log names the
  error class and the database's own message, which holds no secret.
- ``audit_store_check``: readiness fails while the audit store cannot be
  written (a write probe inside a transaction that is rolled back).
"""
from __future__ import annotations

import contextlib
import logging

from django.conf import settings
from django.db import (DatabaseError, DataError, IntegrityError, NotSupportedError, ProgrammingError, connection,
                       transaction)

logger = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5
PROBE_BUSY_TIMEOUT_MS = 500
_PROBE_TABLE = "portal_write_probe"


@contextlib.contextmanager
def short_busy_timeout(milliseconds: int):
    """Wait at most ``milliseconds`` for a lock inside the block: SQLite's
    write lock (busy_timeout), or PostgreSQL's row and table locks
    (lock_timeout; a statement that waits longer fails)."""
    if connection.vendor == "postgresql":
        set_sql, reset_sql = f"SET lock_timeout = {int(milliseconds)}", "RESET lock_timeout"
    elif connection.vendor == "sqlite":
        set_sql = f"PRAGMA busy_timeout = {int(milliseconds)}"
        reset_sql = f"PRAGMA busy_timeout = {int(settings.DB_BUSY_TIMEOUT_MS)}"
    else:
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute(set_sql)
    try:
        yield
    finally:
        # A connection closed by an error inside the block reopens with the defaults.
        if connection.connection is not None:
            with connection.cursor() as cursor:
                cursor.execute(reset_sql)


def is_storage_fault(exc: BaseException) -> bool:
    from audit.ledger.services import AuditUnavailable

    if isinstance(exc, AuditUnavailable):
        return True
    # A conflict in the data, bad SQL or a bad value is a bug (500), not storage.
    return isinstance(exc, DatabaseError) and not isinstance(
        exc, (IntegrityError, ProgrammingError, DataError, NotSupportedError))


def storage_fault_response(request, exc: BaseException):
    from django.http import HttpResponse
    from django.shortcuts import render
    from django.utils.translation import gettext as _

    from audit.ledger.services import AuditUnavailable
    from portal.api_errors import is_api_path, problem_response

    cause = exc.__cause__ or exc  # AuditUnavailable carries the database's error
    logger.error("storage fault on %s %s: %s (%s: %s)", request.method, request.path, exc.__class__.__name__,
                 cause.__class__.__name__, str(cause)[:200])
    if isinstance(exc, AuditUnavailable):
        message = _("The audit log cannot be written, so the request was refused. Try again later.")
    else:
        message = _("The database cannot be written right now, so the request was refused. Try again later.")
    if is_api_path(request.path):
        response = problem_response(503, message, request_id=getattr(request, "request_id", ""))
    else:
        try:
            response = render(request, "503.html", {"message": message}, status=503)
        except Exception:  # the page itself may need the database; plain text then
            response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    return response


class StorageFaultMiddleware:
    """Answers 503 for a view that failed because storage cannot be written."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not is_storage_fault(exception):
            return None
        return storage_fault_response(request, exception)


def audit_store_check() -> tuple[bool, str]:
    """(writable, reason): can the audit store take a write right now?

    Takes the write lock (waiting at most PROBE_BUSY_TIMEOUT_MS), creates a
    table holding one page-sized row, and rolls all of it back: a database
    held locked, full, read-only or failing answers not ready."""
    try:
        with short_busy_timeout(PROBE_BUSY_TIMEOUT_MS):
            with transaction.atomic():
                blob_type, page_of_zeros = (
                    ("BLOB", "zeroblob(8192)") if connection.vendor == "sqlite"
                    else ("BYTEA", "decode(repeat('00', 8192), 'hex')"))
                with connection.cursor() as cursor:
                    cursor.execute(f"CREATE TABLE {_PROBE_TABLE} (filler {blob_type})")
                    cursor.execute(f"INSERT INTO {_PROBE_TABLE} VALUES ({page_of_zeros})")
                transaction.set_rollback(True)
    except DatabaseError as exc:
        return False, f"the audit store cannot be written: {str(exc)[:120] or exc.__class__.__name__}"
    return True, "writable"
