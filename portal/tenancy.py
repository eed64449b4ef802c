"""Who acts for which tenant, with which roles, and the one scoped lookup that
every view and API uses. Deny by default: no tenant → nothing; another
tenant's object → 404."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404

from portal.models import Membership, Role, Tenant
from portal.rows import row_get

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


def session_tenant(request) -> Tenant | None:
    """The tenant chosen in the session, if the user still belongs to it; else their first."""
    user = getattr(request, "user", None)
    if not getattr(user, "is_authenticated", False):
        return None
    session = getattr(request, "session", None)
    chosen = session.get(SESSION_TENANT_KEY) if session is not None else None
    memberships = Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__slug")
    if chosen is not None:
        for membership in memberships:
            if membership.tenant_id == chosen:
                return membership.tenant
    first = memberships.first()
    return first.tenant if first else None


def choose_tenant(request, tenant: Tenant) -> None:
    if tenant not in tenants_of(request.user):
        raise Http404
    request.session[SESSION_TENANT_KEY] = tenant.pk
    request.tenant = tenant
    request.__dict__.pop("_tenant_roles", None)


def acting_roles(request) -> frozenset[str]:
    cached = getattr(request, "_tenant_roles", None)
    if cached is None or cached[0] != getattr(request.tenant, "pk", None):
        cached = (getattr(request.tenant, "pk", None), roles_in(request.user, request.tenant))
        request._tenant_roles = cached
    return cached[1]


def has_capability(request, capability: str) -> bool:
    return bool(acting_roles(request) & CAPABILITIES[capability])


def record_denial(request, *, action: str, resource_type: str, resource_id: str = "", **detail) -> None:
    """Every refusal is an audit event too (outcome denied), in the acting tenant's chain."""
    from audit.ledger.context import request_context
    from audit.ledger.models import Outcome
    from audit.ledger.services import AuditUnavailable, record_event

    try:
        record_event(action=action, outcome=Outcome.DENIED, tenant=getattr(request, "tenant", None),
                     user=getattr(request, "user", None), context=request_context(request),
                     resource_type=resource_type, resource_id=str(resource_id)[:128],
                     detail={"method": request.method, "path": request.path[:200], **detail})
    except AuditUnavailable:
        pass  # the request is refused anyway; record_event has logged the failure


def require_capability(request, capability: str, *, hide: bool = False) -> None:
    """403 when the acting roles lack the capability; 404 with hide=True, where
    even the existence of the feature should not show. Either way, audited."""
    if not has_capability(request, capability):
        record_denial(request, action="access.denied", resource_type="capability", resource_id=capability)
        # The capability travels with the refusal: the 403 page names the roles that grant it.
        raise Http404 if hide else PermissionDenied(capability)


def scoped(model_or_queryset, request) -> models.QuerySet:
    """Rows of the acting tenant only; nothing without one."""
    queryset = (
        model_or_queryset._default_manager.all()
        if isinstance(model_or_queryset, type) else model_or_queryset
    )
    tenant = getattr(request, "tenant", None)
    if tenant is None:
        return queryset.none()
    return queryset.filter(tenant=tenant)


def scoped_row(model, request, **lookup):
    """The acting tenant's one row of ``model`` matching ``lookup`` exactly, or
    None (no tenant, no such row, or another tenant's). Plain SQL
    (portal.rows): for the lookups on every API request."""
    tenant = getattr(request, "tenant", None)
    if tenant is None:
        return None
    row = row_get(model, tenant_id=tenant.pk, **lookup)
    if row is not None:
        row.tenant = tenant
    return row


def get_scoped_or_404(model_or_queryset, request, **lookup):
    try:
        return scoped(model_or_queryset, request).get(**lookup)
    except (models.ObjectDoesNotExist, ValueError, TypeError):
        model = model_or_queryset if isinstance(model_or_queryset, type) else model_or_queryset.model
        # Unknown ids and other tenants' ids look the same here, and both are worth a record.
        record_denial(request, action="access.not_found", resource_type=model._meta.label_lower,
                      resource_id=",".join(f"{k}={v}" for k, v in lookup.items()))
        raise Http404 from None
