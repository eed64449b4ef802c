import re
import uuid

from django.conf import settings

from portal.request_context import client_ip
from portal.tenancy import session_tenant

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
    """The acting tenant of a session user. Token requests get theirs from the
    DRF authentication class, which replaces this value."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.tenant = session_tenant(request)
        request.api_token = None
        return self.get_response(request)
