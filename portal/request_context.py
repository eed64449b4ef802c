"""Facts about a request that the audit log records: client IP (honouring
only TRUSTED_PROXIES), user agent, request id, and a keyed session digest."""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress

from django.conf import settings

from keystore.keys import derive_subkey, get_keyring


@functools.lru_cache(maxsize=8)
def _trusted_networks(cidrs: tuple[str, ...]):
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _parse_ip(text: str):
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_ip(meta) -> str | None:
    """REMOTE_ADDR, or — when it is a trusted proxy — the right-most address in
    X-Forwarded-For that is not itself a trusted proxy."""
    remote = _parse_ip(meta.get("REMOTE_ADDR", ""))
    if remote is None:
        return None
    trusted = _trusted_networks(tuple(settings.TRUSTED_PROXIES))
    if not trusted or not any(remote in net for net in trusted):
        return str(remote)
    hops = [h for h in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            break
        if not any(address in net for net in trusted):
            return str(address)
    return str(remote)


@functools.lru_cache(maxsize=4)
def _session_digest_key(audit_key: bytes) -> bytes:
    return derive_subkey(audit_key, "session-digest")


def session_digest(session_key: str | None) -> str:
    """A keyed digest that links events of one session without storing its key."""
    audit_key = get_keyring().audit_key
    if not session_key or not audit_key:
        return ""
    return hmac.new(_session_digest_key(audit_key), session_key.encode(), hashlib.sha256).hexdigest()[:32]
