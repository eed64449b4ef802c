"""Where each role starts, and who may open which page: the rules behind the
landing page after login, the navigation links and the 403 page."""
from __future__ import annotations

from django.urls import reverse

from portal.models import Role
from portal.tenancy import CAPABILITIES
from portal.grants import reviewable_tenant_ids

# A role's own work, most specific first: a user with several roles in the
# acting organisation starts at the first that applies.
LANDING_BY_ROLE: list[tuple[str, str]] = [
    (Role.ADMIN, "tokens"),
    (Role.CURATOR, "kb-list"),
    (Role.SEARCHER, "home"),
    (Role.COMPLIANCE, "audit-dashboard"),
]


def landing_url(request) -> str:
    """The page a user starts at in the acting organisation (``/`` without a role)."""
    from portal.scope import request_scope

    scope = request_scope(request)
    roles = scope.roles if scope.tenant is not None else frozenset()
    for role, url_name in LANDING_BY_ROLE:
        if role in roles:
            return reverse(url_name)
    return reverse("home")


def roles_for(capability: str | None) -> list[Role]:
    """The roles that grant ``capability``, in the order of Role; [] for an unknown one."""
    allowed = CAPABILITIES.get(capability or "", frozenset())
    return [role for role in Role if role in allowed]


def reviews_audit(user) -> bool:
    """Whether ``user`` may open the audit review in the admin: a platform
    superuser, or a compliance officer of at least one organisation."""
    ids = reviewable_tenant_ids(user)
    return ids is None or bool(ids)
