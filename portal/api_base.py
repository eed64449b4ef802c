"""The base of every API view: the scope built once, after DRF's
authentication, and a capability declared per method (deny unless listed)."""
from __future__ import annotations

from rest_framework import exceptions
from rest_framework.views import APIView

from portal.scope import Scope, require_capability, scope_from_request


def api_scope(request) -> Scope:
    """The scope of a DRF request. DRF authenticates lazily, so this runs in
    APIView.initial, after it: a bearer token (portal.api_auth) names its
    own tenant and roles; a session request keeps the one TenantMiddleware
    built."""
    django_request = request._request
    token = getattr(django_request, "api_token", None)
    if token is not None:
        return scope_from_request(django_request, user=request.user, tenant=token.tenant, roles=token.roles,
                                  token=token)
    scope = getattr(django_request, "scope", None)
    if scope is not None and scope.user is request.user:
        return scope
    return scope_from_request(django_request, user=request.user, tenant=getattr(django_request, "tenant", None))


class TenantApiView(APIView):
    # Base of every API view: a capability per method (deny unless listed;
    # portal.scope.SIGNED_IN for "any signed-in caller"), and ``self.scope``
    # for the selectors and services. A view that lets anonymous callers in
    # (permission_classes) may skip the check for requests that carry their
    # own credential (needs_capability). (A comment, not a docstring:
    # docstrings become the public API description.)

    capabilities: dict[str, str] = {}

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self._scope = api_scope(request)
        request._request.scope = self._scope
        capability = self.capabilities.get(request.method)
        if capability is None:
            self.http_method_not_allowed(request)
        if not self.needs_capability(request):
            return
        if not self._scope.is_authenticated:
            raise exceptions.NotAuthenticated()
        require_capability(self._scope, capability, hide=True)

    def needs_capability(self, request) -> bool:
        return True

    @property
    def scope(self) -> Scope:
        scope = getattr(self, "_scope", None)
        if scope is None:  # an exception before initial() finished; the refusal is still recorded
            scope = self._scope = api_scope(self.request)
        return scope

