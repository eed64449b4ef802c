"""The audit commands' view of tenants: which tenant owns which chain, the
tenant a --tenant option names, and what a tenant did that its chain must
show. Above the portal (it reads portal's models); the ledger itself only
knows tenants as the AUDIT_TENANT_MODEL rows its callers hand it."""
from __future__ import annotations

from django.apps import apps

from portal.cli import tenant_from_option
from portal.models import ApiToken, Membership, Tenant

__all__ = ["tenant_from_option", "tenants_by_chain", "unrecorded_activity"]


def tenants_by_chain() -> dict[int, Tenant]:
    """Every tenant, by the number of its chain (its primary key)."""
    return {tenant.pk: tenant for tenant in Tenant.objects.all()}


def unrecorded_activity(tenant) -> list[str]:
    """What a tenant did that its chain must show: knowledge bases and API
    tokens are created only together with their `kb.create` / `token.create`
    event, and a member whose only organisation this is signs in with an
    `auth.login` in this chain. A tenant with any of these and no events at
    all lost its chain. Empty for a tenant that never did anything."""
    found = []
    if apps.is_installed("search"):
        # By app label, as Django relates apps: nothing imports search (SPEC §2).
        kbs = apps.get_model("search", "KnowledgeBase").objects.filter(tenant=tenant).count()
        if kbs:
            found.append(f"{kbs} knowledge base(s)")
    tokens = ApiToken.objects.filter(tenant=tenant).count()
    if tokens:
        found.append(f"{tokens} API token(s)")
    signed_in = set(Membership.objects.filter(tenant=tenant, user__last_login__isnull=False)
                    .values_list("user_id", flat=True))
    if signed_in:
        elsewhere = set(Membership.objects.filter(user_id__in=signed_in).exclude(tenant=tenant)
                        .values_list("user_id", flat=True))
        if signed_in - elsewhere:
            found.append(f"{len(signed_in - elsewhere)} member(s) who have signed in")
    return found
