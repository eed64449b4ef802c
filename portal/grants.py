"""Which tenants a user's roles grant a capability in: the CAPABILITIES table
(portal.tenancy) read for one user across their tenants, where a request
reads it for its acting tenant only.

The audit review asks here: its scope in the admin, the dashboard and the API
(audit.review.selectors), whether a presigned export URL still holds
(audit.review.presign), and who may open the admin at all (portal.landing).
So "the compliance role reviews its tenant's audit" is written once, in
CAPABILITIES["audit.review"]."""
from __future__ import annotations

from portal.models import Membership
from portal.tenancy import CAPABILITIES

REVIEW_CAPABILITY = "audit.review"


def tenant_ids_granting(user, capability: str) -> list[int]:
    """Ids of the tenants where ``user``, signed in and active, holds a role
    that grants ``capability``; [] for anyone else (deny by default)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    return sorted(set(Membership.objects.filter(user=user, role__in=CAPABILITIES[capability])
                      .order_by().values_list("tenant_id", flat=True)))


def reviewable_tenant_ids(user) -> list[int] | None:
    """Tenant ids whose audit ``user`` may review; None means every chain
    (a platform superuser)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    if user.is_superuser:
        return None
    return tenant_ids_granting(user, REVIEW_CAPABILITY)
