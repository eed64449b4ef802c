from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from audit.models import Outcome
from audit.ledger.services import AuditUnavailable, record_event
from portal.scope import scope_from_request
from portal.services import token_authenticate


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <token>``; the token's tenant becomes the acting tenant."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'")
        try:
            text = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("invalid token") from None
        token, why = token_authenticate(text)
        if token is None:
            try:
                record_event(action="auth.token_failed", outcome=Outcome.DENIED,
                             context=scope_from_request(request._request).context, resource_type="api_token",
                             detail={"reason": why, "prefix": text[:10]})
            except AuditUnavailable:
                pass  # refused anyway; record_event has logged it
            raise exceptions.AuthenticationFailed(why)
        django_request = request._request
        django_request.tenant = token.tenant
        django_request.api_token = token
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Declares the bearer token in the OpenAPI document (the docs page's Authorize button)."""

    target_class = "portal.api_auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "An API token from /tokens/ or `manage.py token_create`."}
