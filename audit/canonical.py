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
    if isinstance(value, dt.datetime):
        return format_time(value)
    return value


def canonical_bytes(fields: dict) -> bytes:
    return json.dumps(
        {name: _plain(value) for name, value in fields.items()},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    ).encode("utf-8")


def compute_mac(key: bytes, fields: dict) -> str:
    return hmac.new(key, MAC_DOMAIN + canonical_bytes(fields), hashlib.sha256).hexdigest()
