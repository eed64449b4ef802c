"""The request facts an audit event records, taken from a Django or DRF request
(the middleware has set its client_ip and request_id)."""
from __future__ import annotations

import functools
import hashlib
import hmac

from keystore.keys import derive_subkey, get_keyring


@functools.lru_cache(maxsize=4)
def _session_digest_key(audit_key: bytes) -> bytes:
    return derive_subkey(audit_key, "session-digest")


def session_digest(session_key: str | None) -> str:
    """A keyed digest that links events of one session without storing its key.
    Keyed by a subkey of the audit key, like the stored query's digest: what
    the ledger writes, and how, is the ledger's; keystore only holds the key."""
    audit_key = get_keyring().audit_key
    if not session_key or not audit_key:
        return ""
    return hmac.new(_session_digest_key(audit_key), session_key.encode(), hashlib.sha256).hexdigest()[:32]


def request_context(request) -> dict:
    token = getattr(request, "api_token", None)
    session = getattr(request, "session", None)
    return {
        "client_ip": getattr(request, "client_ip", None),
        "user_agent": request.META.get("HTTP_USER_AGENT", "")[:512],
        "request_id": getattr(request, "request_id", ""),
        "auth_method": "token" if token is not None else ("session" if session is not None and session.session_key else "anonymous"),
        "token_id": token.pk if token is not None else None,
        "session_digest": session_digest(session.session_key) if token is None and session is not None else "",
    }


def command_context(command_name: str) -> dict:
    return {"auth_method": "cli", "user_agent": f"manage.py {command_name}"[:512]}
