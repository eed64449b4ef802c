"""Who acts for which tenant, with which roles: the capabilities each role
grants, and the acting tenant of a session. The scope built from them, and
the one scoped lookup every selector uses, are in portal.scope. Deny by
default: no tenant → nothing; another tenant's object → 404."""
from __future__ import annotations

from django.http import Http404

from portal.models import Membership, Role, Tenant

SESSION_TENANT_KEY = "portal_tenant_id"

# What each role may do. Everything not listed here is denied.
CAPABILITIES: dict[str, frozenset[str]] = {
    "search": frozenset({Role.SEARCHER, Role.CURATOR, Role.ADMIN}),
    "kb.read": frozenset({Role.SEARCHER, Role.CURATOR, Role.ADMIN}),
    "kb.manage": frozenset({Role.CURATOR, Role.ADMIN}),
    "audit.review": frozenset({Role.COMPLIANCE}),
    "tokens.own": frozenset({Role.SEARCHER, Role.CURATOR, Role.COMPLIANCE, Role.ADMIN}),
    "tokens.manage": frozenset({Role.ADMIN}),
}


def tenants_of(user) -> list[Tenant]:
    if not getattr(user, "is_authenticated", False):
        return []
    return list(Tenant.objects.filter(memberships__user=user).distinct().order_by("slug"))


def roles_in(user, tenant: Tenant | None) -> frozenset[str]:
    if tenant is None or not getattr(user, "is_authenticated", False):
        return frozenset()
    return frozenset(Membership.objects.filter(user=user, tenant=tenant).values_list("role", flat=True))


def session_membership(request) -> tuple[Tenant | None, frozenset[str]]:
    """The tenant chosen in the session, if the user still belongs to it, else
    their first; and the user's roles there. One query."""
    user = getattr(request, "user", None)
    if not getattr(user, "is_authenticated", False):
        return None, frozenset()
    session = getattr(request, "session", None)
    chosen = session.get(SESSION_TENANT_KEY) if session is not None else None
    memberships = list(Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__slug"))
    if not memberships:
        return None, frozenset()
    tenant_id = chosen if any(m.tenant_id == chosen for m in memberships) else memberships[0].tenant_id
    tenant = next(m.tenant for m in memberships if m.tenant_id == tenant_id)
    return tenant, frozenset(m.role for m in memberships if m.tenant_id == tenant_id)


def session_tenant(request) -> Tenant | None:
    """The tenant chosen in the session, if the user still belongs to it; else their first."""
    return session_membership(request)[0]


def choose_tenant(request, tenant: Tenant) -> None:
    if tenant not in tenants_of(request.user):
        raise Http404
    request.session[SESSION_TENANT_KEY] = tenant.pk
    request.tenant = tenant
    refresh_scope(request)


def refresh_scope(request) -> None:
    """A new scope for a request whose tenant or user changed (a tenant switch,
    a login): a scope is never changed in place."""
    from portal.scope import scope_from_request

    request.scope = scope_from_request(request, tenant=getattr(request, "tenant", None))
