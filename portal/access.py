"""Declared capabilities: every page and API entry point says which capability
it needs, and a walk of the URLconf finds any that does not.

Pages declare theirs with ``@capability_required(...)``; API views derive
from ``portal.api_base.TenantApiView`` and list theirs per method in
``capabilities``. The few routes that are public on purpose are named in
PUBLIC_ROUTES, each with the reason; the admin site declares its own
(``PortalAdminSite.capability``).
"""
from __future__ import annotations

import functools

from django.urls import URLPattern, URLResolver

from portal.scope import SIGNED_IN, request_scope, require_capability

# URL name → why anyone may open it. Everything else declares a capability.
PUBLIC_ROUTES: dict[str, str] = {
    "login": "the sign-in page",
    "logout": "signing out",
    "set_language": "Django's language switch (i18n)",
    "healthz": "liveness probe, no details",
    "readyz": "readiness probe, details only for staff",
    "metrics": "its own guard: operator network or a staff token (portal.monitoring)",
    "api-schema": "the OpenAPI document is public today",
    "api-docs": "the API docs page is public today",
}


def capability_required(capability: str, *, hide: bool = False, refused=None, **per_method):
    """Declare and enforce the capability a page view needs: ``capability``
    for every method, or per method (``POST="kb.manage"``, or a tuple of
    capabilities checked in order). Without it: 403 (404 with ``hide``),
    audited; or ``refused(request)``'s answer, unaudited, where a page has a
    better place to send the user. Put it under ``login_required`` and the
    method decorators, as the innermost decorator: their answers come first.
    """
    declared = {"*": capability, **per_method}

    def decorate(view):
        @functools.wraps(view)
        def checked(request, *args, **kwargs):
            scope = request_scope(request)
            needed = declared.get(request.method, capability)
            for one in (needed if isinstance(needed, tuple) else (needed,)):
                if refused is not None and one != SIGNED_IN and not scope.can(one):
                    return refused(request)
                require_capability(scope, one, hide=hide)
            return view(request, *args, **kwargs)

        checked.capabilities = declared
        return checked

    return decorate


def declared_capabilities(callback) -> dict | None:
    """What a URL pattern's view declares: a page function's
    ``capabilities`` (set by capability_required, carried outward by
    functools.wraps), or an API class's; None when nothing."""
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    declared = getattr(view_class, "capabilities", None) if view_class is not None else None
    if declared is None:
        declared = getattr(callback, "capabilities", None)
    return declared or None


def undeclared_routes(patterns, prefix: str = "") -> list[str]:
    """Routes under ``patterns`` whose view declares no capability and that
    are not in PUBLIC_ROUTES. An included admin site counts as declared when
    the site names its capability."""
    missing = []
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            site = _admin_site(entry)
            if site is not None and getattr(site, "capability", None):
                continue
            missing.extend(undeclared_routes(entry.url_patterns, route))
        elif isinstance(entry, URLPattern):
            if entry.name in PUBLIC_ROUTES:
                continue
            if declared_capabilities(entry.callback) is None:
                missing.append(f"{route} ({entry.lookup_str})")
    return missing


def _admin_site(resolver: URLResolver):
    if resolver.app_name != "admin":
        return None
    from django.contrib import admin

    return admin.site
