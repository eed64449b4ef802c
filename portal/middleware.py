import re
import uuid

from django.conf import settings

from portal.request_context import client_ip
from portal.scope import scope_from_request
from portal.tenancy import session_membership

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


class RequestContextMiddleware:
    """A request id (echoed in X-Request-ID) and the client IP for every
    request; the Content-Security-Policy on every response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = uuid.uuid4().hex
        request.client_ip = client_ip(request.META)
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


class TenantMiddleware:
    """The scope of a page request (portal.scope), built once after Django's
    authentication: the session user's acting tenant and roles there, and the
    request facts. API requests get theirs from portal.api_base.TenantApiView
    after DRF's authentication (a token names its own tenant)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        tenant, roles = session_membership(request)
        request.tenant = tenant
        request.api_token = None
        request.scope = scope_from_request(request, tenant=tenant, roles=roles)
        return self.get_response(request)
