"""The SIEM mirror: with AUDIT_JSONL_PATH set, every committed event is also
appended to that file as one JSON line (the events.jsonl form of an export,
MAC included), opened O_APPEND, fsync'd, mode 0600.

The database stays the source of truth: a mirror write that fails is logged
and remembered for /readyz (staff see the details), and never fails the
event. Lines are written after the transaction commits, so a rolled-back
event never reaches the SIEM.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass

from django.conf import settings

from audit.canonical import canonical_bytes, format_time

logger = logging.getLogger(__name__)


@dataclass
class MirrorStatus:
    lines_written: int = 0
    failures: int = 0
    last_error: str = ""
    last_error_at: str = ""
    last_failed_event: str = ""


status = MirrorStatus()
_lock = threading.Lock()


def mirror_line(values: dict) -> bytes:
    return canonical_bytes(values) + b"\n"


def append_line(path: str, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def mirror_event(values: dict) -> None:
    """Append one event (its MAC'd fields and MAC) to the mirror; log any failure."""
    path = settings.AUDIT_JSONL_PATH
    if not path:
        return
    try:
        line = mirror_line(values)
        with _lock:
            append_line(path, line)
            status.lines_written += 1
    except Exception as exc:  # the database holds the event; the mirror only lags
        with _lock:
            status.failures += 1
            status.last_error = f"{exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc}"
            status.last_error_at = format_time(dt.datetime.now(dt.timezone.utc))
            status.last_failed_event = f"chain {values.get('chain')} seq {values.get('seq')}"
        logger.error("audit SIEM mirror: could not append chain %s seq %s to AUDIT_JSONL_PATH: %s",
                     values.get("chain"), values.get("seq"), status.last_error)


def mirror_check() -> tuple[bool, str]:
    """Readiness detail. The mirror never makes the portal unready (the
    database is the record); a failure shows as DEGRADED in the detail."""
    if not settings.AUDIT_JSONL_PATH:
        return True, "off (AUDIT_JSONL_PATH not set)"
    if status.failures:
        return True, (f"DEGRADED: {status.failures} event(s) not mirrored in this worker, last "
                      f"{status.last_failed_event} at {status.last_error_at} ({status.last_error}); "
                      "the database still holds them")
    return True, f"ok: {status.lines_written} line(s) appended by this worker"
