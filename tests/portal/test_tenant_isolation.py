"""Every route that takes an object id answers 404 for another tenant's object.

The test walks the URLconf, so a route added later is covered without anyone
remembering: a new kind of id fails `test_every_object_route_is_covered` until
a factory for it is added to OBJECT_FACTORIES below.
"""
import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from portal.models import ApiToken

# Routes that are not tenant objects, with the reason.
EXCLUDED_PREFIXES = {
    "admin/": "Django admin: scoped by ModelAdmin.get_queryset, tested in tests/audit/test_admin.py",
    "static/": "static files",
}


def _token_in(tenant, owner):
    from portal.services import token_create

    return token_create(user=owner, tenant=tenant, days=5)[0]


def _factories():
    """param name → function(tenant, owner) making an object of that tenant, and a check it is intact."""
    factories = {
        "token_id": (_token_in, lambda obj: ApiToken.objects.get(pk=obj.pk).revoked_at is None),
    }
    try:
        from tests.search.isolation_factories import FACTORIES as search_factories
    except ImportError:
        search_factories = {}
    factories.update(search_factories)
    return factories


def walk(patterns, prefix=""):
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from walk(entry.url_patterns, route)
        elif isinstance(entry, URLPattern):
            yield route


def object_routes():
    routes = []
    for route in walk(get_resolver().url_patterns):
        route = route.lstrip("^")
        if any(route.startswith(p) for p in EXCLUDED_PREFIXES):
            continue
        params = re.findall(r"<(?:(\w+):)?(\w+)>", route)
        if params:
            routes.append((route, [name for _, name in params]))
    return routes


def test_every_object_route_is_covered():
    known = set(_factories())
    unknown = {name for _, names in object_routes() for name in names} - known
    assert not unknown, f"routes take ids with no isolation factory: {sorted(unknown)}"
    assert object_routes(), "the walk found no object routes at all"


@pytest.mark.parametrize("route,params", object_routes())
def test_other_tenants_object_is_404(route, params, tenants, make_user, login, make_token, bearer):
    acme_user = make_user("acme-all", tenants["acme"], "searcher", "curator", "compliance", "admin")
    globex_owner = make_user("globex-owner", tenants["globex"], "searcher", "curator", "compliance", "admin")
    factories = _factories()
    made = {name: factories[name][0](tenants["globex"], globex_owner) for name in params}
    url = "/" + route
    for name, obj in made.items():
        url = re.sub(r"<(?:\w+:)?" + name + ">", str(obj.pk), url)
    session = login(acme_user)
    _, token_text = make_token(acme_user, tenants["acme"])
    api = bearer(token_text)
    found_404 = 0
    is_api = route.startswith(("api/", "v1/"))
    for client in ((session, api) if is_api else (session,)):
        for method in ("get", "post", "put", "patch", "delete"):
            response = getattr(client, method)(url)
            assert response.status_code in (404, 405), f"{method.upper()} {url} → {response.status_code}"
            found_404 += response.status_code == 404
            assert b"globex" not in response.content.lower()
    assert found_404, f"{url}: no method answered 404 (all 405?)"
    for name, obj in made.items():
        assert factories[name][1](obj), f"{name} of the other tenant was changed"


# --- every entry point declares the capability it needs (issue 11, item 2) ----------


def test_every_route_declares_a_capability_or_is_public():
    from portal.access import undeclared_routes

    missing = undeclared_routes(get_resolver().url_patterns)
    assert not missing, ("routes whose view declares no capability (use portal.access.capability_required or "
                         f"portal.api_base.TenantApiView, or name it in PUBLIC_ROUTES): {missing}")


def test_the_walk_fails_on_a_view_that_declares_no_capability():
    from django.http import HttpResponse
    from django.urls import include, path
    from rest_framework.views import APIView

    from portal.access import capability_required, undeclared_routes
    from portal.api_base import TenantApiView

    def forgotten_page(request):
        return HttpResponse()

    @capability_required("kb.read")
    def declared_page(request):
        return HttpResponse()

    class ForgottenApi(APIView):
        pass

    class EmptyApi(TenantApiView):  # the base alone declares nothing
        pass

    class DeclaredApi(TenantApiView):
        capabilities = {"GET": "kb.read"}

    def healthz(request):
        return HttpResponse()

    urlconf = [
        path("page/forgotten/", forgotten_page),
        path("page/declared/", declared_page),
        path("nested/", include([path("api/forgotten", ForgottenApi.as_view()),
                                 path("api/empty", EmptyApi.as_view())])),
        path("api/declared", DeclaredApi.as_view()),
        path("healthz", healthz, name="healthz"),  # in PUBLIC_ROUTES
    ]
    missing = undeclared_routes(urlconf)
    assert [route.split(" ")[0] for route in missing] == ["page/forgotten/", "nested/api/forgotten",
                                                         "nested/api/empty"]
