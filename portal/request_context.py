"""The client IP that the audit log records for a request, honouring only
TRUSTED_PROXIES. (The keyed session digest is the ledger's own:
audit/ledger/context.py.)"""
from __future__ import annotations

import functools
import ipaddress

from django.conf import settings


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
