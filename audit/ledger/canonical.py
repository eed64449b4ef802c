"""Canonical bytes of an event and its MAC. Any implementation that builds the
same JSON (sorted keys, no spaces, UTF-8, timestamps as ISO-8601 with
milliseconds and Z) computes the same MAC."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

MAC_DOMAIN = b"portal-audit-event-v1\n"


def format_time(value: dt.datetime) -> str:
    value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _plain(value):
    # Called by the JSON encoder only for values it cannot write itself.
    if isinstance(value, dt.datetime):
        return format_time(value)
    raise TypeError(f"{value.__class__.__name__} has no canonical form")


def canonical_bytes(fields: dict) -> bytes:
    return json.dumps(
        fields, default=_plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    ).encode("utf-8")


def compute_mac(key: bytes, fields: dict) -> str:
    return hmac.new(key, MAC_DOMAIN + canonical_bytes(fields), hashlib.sha256).hexdigest()
