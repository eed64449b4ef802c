from django.utils.http import url_has_allowed_host_and_scheme

from portal.landing import reviews_audit
from portal.scope import request_scope
from portal.tenancy import CAPABILITIES, tenants_of


def _on_site(path: str) -> str:
    # A page's own path goes into hidden `next` fields; a path such as
    # `//evil.example` (a 404) would be an off-site target, so "/" instead.
    return path if url_has_allowed_host_and_scheme(path, allowed_hosts=None) else "/"


def tenant(request):
    user = getattr(request, "user", None)
    here = {"next_here": _on_site(request.path), "next_here_full": _on_site(request.get_full_path())}
    if not getattr(user, "is_authenticated", False):
        return here
    scope = request_scope(request)
    current = scope.tenant
    roles = scope.roles if current else frozenset()
    return {
        **here,
        "acting_tenant": current,
        "user_tenants": tenants_of(user),
        "acting_roles": sorted(roles),
        "can": {name.replace(".", "_"): bool(roles & allowed) for name, allowed in CAPABILITIES.items()},
        # The admin's audit review spans every organisation one reviews, not only the acting one.
        "reviews_audit": reviews_audit(user),
    }
