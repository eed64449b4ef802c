"""/metrics for the operators, and the request-latency middleware.

Who may read /metrics: a client whose address (as portal.request_context
resolves it, X-Forwarded-For believed only from TRUSTED_PROXIES) is loopback
or inside TRUSTED_PROXIES; or anyone with the bearer token of an active staff
user. Anyone else: 404 without credentials (the route is not advertised),
401 for a bad token (audited as auth.token_failed), 403 for a valid token of
a user who is not staff.
"""
from __future__ import annotations

import ipaddress
import os
import time

from django.conf import settings
from django.http import Http404, HttpResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from rest_framework.exceptions import PermissionDenied
from rest_framework.views import APIView

from portal.api_auth import BearerTokenAuthentication
from portal.metrics import HTTP_REQUEST_SECONDS, HTTP_RESPONSES
from portal.production import peer_is_trusted_proxy

UNRESOLVED = "unresolved"


def route_name(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNRESOLVED
    return match.view_name or match.route or UNRESOLVED


class MetricsMiddleware:
    """Latency per route name (never the raw path: it holds ids and names)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        route = route_name(request)
        method = request.method if request.method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD",
                                                      "OPTIONS") else "other"
        HTTP_REQUEST_SECONDS.labels(route, method).observe(time.perf_counter() - started)
        HTTP_RESPONSES.labels(route, method, str(response.status_code)).inc()
        return response


def from_operator_network(request) -> bool:
    address = getattr(request, "client_ip", None)
    if not address:
        return False
    try:
        if ipaddress.ip_address(address).is_loopback:
            return True
    except ValueError:
        return False
    return peer_is_trusted_proxy(address, settings.TRUSTED_PROXIES)


def exposition() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@extend_schema(exclude=True)
class MetricsView(APIView):
    authentication_classes = [BearerTokenAuthentication]
    permission_classes: list = []
    throttle_classes: list = []

    def get(self, request):
        if not from_operator_network(request._request):
            if request.auth is None:
                raise Http404
            user = request.user
            if not (user.is_active and user.is_staff):
                raise PermissionDenied("/metrics needs a staff user's token")
        return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
