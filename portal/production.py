"""Production settings: the portal behind the customer's TLS proxy.

`production_settings()` is called by portal/settings.py and returns the
settings that differ between production (the default, strict) and
development (`PORTAL_MODE=development`: `make run` and the test suite, plain
HTTP on loopback). A missing or invalid production variable is appended to
SETTINGS_ERRORS, naming the variable; the system check portal.E006 and
portal/wsgi.py then stop startup, as they do for keys.

X-Forwarded-Proto is believed only from TRUSTED_PROXIES:
`ForwardedProtoMiddleware` (first in MIDDLEWARE) drops the header from every
other peer before Django's SECURE_PROXY_SSL_HEADER reads it.
"""
from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

# Plain-HTTP routes that must answer a local probe (compose health checks,
# the Prometheus scraper on the host) instead of redirecting it to HTTPS.
REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# Django's check that suggests HSTS preload: preloading is a public list of
# internet domains; an air-gapped portal's host name is never on it.
SILENCED_WHEN_NO_PRELOAD = "security.W021"


def production_settings(env, production: bool, errors: list[str]) -> dict:
    out: dict = {}

    def require(name: str, why: str):
        if production and not env.str(name, default="").strip():
            errors.append(f"{name} must be set in production: {why}")

    require("DJANGO_ALLOWED_HOSTS", "the host names the TLS proxy forwards (comma list)")
    require("DJANGO_CSRF_TRUSTED_ORIGINS", "the portal's https:// origin(s) (comma list)")
    require("DJANGO_HSTS_SECONDS", "how long browsers must use HTTPS only (e.g. 31536000)")
    require("TRUSTED_PROXIES", "the TLS proxy's address(es) as CIDRs; the portal serves plain HTTP behind it")

    if production:
        for origin in env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[]):
            parts = urlsplit(origin)
            if parts.scheme != "https" or not parts.netloc or parts.path not in ("", "/"):
                errors.append("DJANGO_CSRF_TRUSTED_ORIGINS entries must be https://host[:port] origins in production")
                break
        if _is_bool(env, "DJANGO_SECURE_COOKIES") and not env.bool("DJANGO_SECURE_COOKIES", default=True):
            errors.append("DJANGO_SECURE_COOKIES must be true in production (cookies only over HTTPS)")

    try:
        hsts = env.int("DJANGO_HSTS_SECONDS", default=0)
        if hsts < 0 or (production and hsts == 0 and env.str("DJANGO_HSTS_SECONDS", default="")):
            raise ValueError
    except ValueError:
        errors.append("DJANGO_HSTS_SECONDS must be a whole number of seconds"
                      + (" above 0 in production" if production else ""))
        hsts = 0
    out["SECURE_HSTS_SECONDS"] = hsts
    try:
        out["SECURE_HSTS_INCLUDE_SUBDOMAINS"] = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=True)
    except ValueError:
        errors.append("DJANGO_HSTS_INCLUDE_SUBDOMAINS must be true or false")
        out["SECURE_HSTS_INCLUDE_SUBDOMAINS"] = True
    out["SECURE_HSTS_PRELOAD"] = False
    silenced = [SILENCED_WHEN_NO_PRELOAD]
    if not out["SECURE_HSTS_INCLUDE_SUBDOMAINS"]:
        silenced.append("security.W005")  # the operator chose so, in DJANGO_HSTS_INCLUDE_SUBDOMAINS
    out["SILENCED_SYSTEM_CHECKS"] = silenced

    # Behind the proxy: HTTPS is what the proxy says it was, and only the proxy.
    out["SECURE_PROXY_SSL_HEADER"] = ("HTTP_X_FORWARDED_PROTO", "https")
    out["SECURE_SSL_REDIRECT"] = production
    out["SECURE_REDIRECT_EXEMPT"] = REDIRECT_EXEMPT
    return out


def _is_bool(env, name: str) -> bool:
    try:
        env.bool(name, default=True)
        return True
    except ValueError:
        return False  # reported by settings.py, naming the variable


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]):
    nets = []
    for cidr in cidrs:
        try:
            nets.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue  # reported by the system check portal.E003
    return tuple(nets)


def peer_is_trusted_proxy(remote_addr: str, trusted: list[str]) -> bool:
    try:
        address = ipaddress.ip_address((remote_addr or "").strip())
    except ValueError:
        return False
    return any(address in net for net in _networks(tuple(trusted)))


class ForwardedProtoMiddleware:
    """Drop X-Forwarded-Proto unless the direct peer is one of TRUSTED_PROXIES,
    so SECURE_PROXY_SSL_HEADER (and with it request.is_secure(), the HTTPS
    redirect and secure cookies) is decided only by the customer's proxy."""

    def __init__(self, get_response):
        from django.conf import settings

        self.settings = settings
        self.get_response = get_response

    def __call__(self, request):
        meta = request.META
        if "HTTP_X_FORWARDED_PROTO" in meta and not peer_is_trusted_proxy(
                meta.get("REMOTE_ADDR", ""), self.settings.TRUSTED_PROXIES):
            del meta["HTTP_X_FORWARDED_PROTO"]
        return self.get_response(request)
