"""The scope of one request or one command: who acts (user), for which
tenant, with which roles, and the request facts the audit log records.

Built once — for pages by TenantMiddleware after Django's authentication, for
the API by portal.api_base.TenantApiView after DRF's token authentication,
for commands from their --tenant/--user options — and never changed after
(a tenant switch or a login builds a new one). Selectors and services take a
Scope, never a request.

``scoped(scope, Model, capability)`` is the one way to read tenant rows, in
the spirit of NetBox's ``restrict()``: it checks the capability and narrows
to the acting tenant in one call, and a missing capability or tenant gives
no rows. The capability is a required argument, so forgetting it is an error,
not a leak.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404

from portal.models import Role
from audit.ledger.context import session_digest
from portal.rows import row_get
from portal.tenancy import CAPABILITIES, roles_in

# A declaration, not a capability: the entry point needs a signed-in user and
# nothing more (its rows are still read through scoped(), which checks theirs).
SIGNED_IN = "signed-in"


@dataclass(frozen=True)
class Scope:
    tenant: object | None  # portal.models.Tenant
    user: object | None  # a user, AnonymousUser, or None (a command run by no one)
    roles: frozenset[str] = frozenset()
    # The request context (what an audit record says about where an action came from).
    client_ip: str | None = None
    user_agent: str = ""
    request_id: str = ""
    session_digest: str = ""
    auth_method: str = ""  # "session", "token", "anonymous", "cli"; "" for code that is neither
    token_id: int | None = None
    method: str = ""
    path: str = ""
    token: object | None = field(default=None, repr=False, compare=False)  # the ApiToken row, for token requests

    def can(self, capability: str) -> bool:
        """Whether the acting roles grant ``capability`` (an unknown one is a KeyError: a typo must not pass)."""
        return bool(self.roles & CAPABILITIES[capability])

    @property
    def is_authenticated(self) -> bool:
        return bool(getattr(self.user, "is_authenticated", False))

    @property
    def context(self) -> dict:
        """The request facts of an audit record (audit.services.record_event's ``context``)."""
        if self.auth_method == "cli":
            return {"auth_method": "cli", "user_agent": self.user_agent}
        if not self.auth_method:
            return {}
        return {
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "auth_method": self.auth_method,
            "token_id": self.token_id,
            "session_digest": self.session_digest,
        }


def scope_from_request(request, *, tenant=None, roles: frozenset[str] | None = None, token=None,
                       user=None) -> Scope:
    """The scope of a Django request: tenant and roles as given (roles looked
    up when not), the request facts from the request (RequestContextMiddleware
    has set its id and client IP)."""
    if user is None:
        user = getattr(request, "user", None)
    session = getattr(request, "session", None)
    session_key = session.session_key if session is not None else None
    if token is not None:
        auth_method, digest = "token", ""
    else:
        auth_method = "session" if session_key else "anonymous"
        digest = session_digest(session_key) if session is not None else ""
    if roles is None:
        roles = roles_in(user, tenant)
    return Scope(
        tenant=tenant, user=user, roles=frozenset(roles),
        client_ip=getattr(request, "client_ip", None),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
        request_id=getattr(request, "request_id", ""),
        session_digest=digest, auth_method=auth_method,
        token_id=token.pk if token is not None else None, token=token,
        method=request.method or "", path=request.path or "",
    )


def command_scope(command_name: str, *, tenant=None, user=None) -> Scope:
    """The scope of a management command: its --tenant and --user (if it takes
    them). With --user, that user's roles there; without, every role: the
    operator holds the machine and its keys, and acts for the tenant named."""
    roles = roles_in(user, tenant) if user is not None else frozenset(Role.values)
    return Scope(tenant=tenant, user=user, roles=roles, auth_method="cli",
                 user_agent=f"manage.py {command_name}"[:512])


def job_scope(*, tenant, user, context: dict | None) -> Scope:
    """The scope of a background job (search/tasks.py, audit/review/tasks.py):
    the submitter, with their roles as they are now, and the submitting
    request's facts (``Scope.context``, saved with the job), so the records
    the worker writes say who asked and from where."""
    context = context or {}
    return Scope(tenant=tenant, user=user, roles=roles_in(user, tenant) if user else frozenset(),
                 client_ip=context.get("client_ip"), user_agent=context.get("user_agent", ""),
                 request_id=context.get("request_id", ""), session_digest=context.get("session_digest", ""),
                 auth_method=context.get("auth_method", ""), token_id=context.get("token_id"))


def request_scope(request) -> Scope:
    """The scope the middleware (or the API base) built for ``request``; built
    here for a request that went round them (a test client's login or logout)."""
    scope = getattr(request, "scope", None)
    if scope is None:
        scope = scope_from_request(request, tenant=getattr(request, "tenant", None))
    return scope


# --- reading rows through a scope -------------------------------------------------


def _queryset(model_or_queryset) -> models.QuerySet:
    if isinstance(model_or_queryset, type):
        return model_or_queryset._default_manager.all()
    return model_or_queryset


def scoped(scope: Scope, model_or_queryset, capability: str) -> models.QuerySet:
    """The acting tenant's rows, when the scope holds ``capability``; none otherwise."""
    queryset = _queryset(model_or_queryset)
    if scope.tenant is None or not scope.can(capability):
        return queryset.none()
    return queryset.filter(tenant=scope.tenant)


def scoped_row(scope: Scope, model, capability: str, **lookup):
    """The acting tenant's one row of ``model`` matching ``lookup`` exactly, or
    None (no capability, no tenant, no such row, or another tenant's). Plain
    SQL (portal.rows): for the lookups on every API request."""
    if scope.tenant is None or not scope.can(capability):
        return None
    row = row_get(model, tenant_id=scope.tenant.pk, **lookup)
    if row is not None:
        row.tenant = scope.tenant
    return row


def get_scoped_or_404(scope: Scope, model_or_queryset, capability: str, **lookup):
    """The acting tenant's row, or 404 (recorded: unknown ids and other
    tenants' ids look the same here, and both are worth a record)."""
    try:
        return scoped(scope, model_or_queryset, capability).get(**lookup)
    except (models.ObjectDoesNotExist, ValueError, TypeError):
        model = model_or_queryset if isinstance(model_or_queryset, type) else model_or_queryset.model
        record_denial(scope, action="access.not_found", resource_type=model._meta.label_lower,
                      resource_id=",".join(f"{k}={v}" for k, v in lookup.items()))
        raise Http404 from None


# --- refusing --------------------------------------------------------------------------


def record_denial(scope: Scope, *, action: str, resource_type: str, resource_id: str = "", **detail) -> None:
    """Every refusal is an audit event too (outcome denied), in the acting tenant's chain."""
    from audit.models import Outcome
    from audit.ledger.services import AuditUnavailable, record_event

    try:
        record_event(action=action, outcome=Outcome.DENIED, tenant=scope.tenant, user=scope.user,
                     context=scope.context, resource_type=resource_type, resource_id=str(resource_id)[:128],
                     detail={"method": scope.method, "path": scope.path[:200], **detail})
    except AuditUnavailable:
        pass  # the request is refused anyway; record_event has logged the failure


def require_capability(scope: Scope, capability: str, *, hide: bool = False) -> None:
    """403 when the acting roles lack the capability; 404 with hide=True, where
    even the existence of the feature should not show. Either way, audited.
    SIGNED_IN asks only for a signed-in user."""
    if capability == SIGNED_IN:
        if not scope.is_authenticated:
            raise Http404 if hide else PermissionDenied()
        return
    if not scope.can(capability):
        record_denial(scope, action="access.denied", resource_type="capability", resource_id=capability)
        # The capability travels with the refusal: the 403 page names the roles that grant it.
        raise Http404 if hide else PermissionDenied(capability)
