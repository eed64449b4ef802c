from portal.tenancy import CAPABILITIES, acting_roles, tenants_of


def tenant(request):
    user = getattr(request, "user", None)
    if not getattr(user, "is_authenticated", False):
        return {}
    current = getattr(request, "tenant", None)
    roles = acting_roles(request) if current else frozenset()
    return {
        "acting_tenant": current,
        "user_tenants": tenants_of(user),
        "acting_roles": sorted(roles),
        "can": {name.replace(".", "_"): bool(roles & allowed) for name, allowed in CAPABILITIES.items()},
    }
