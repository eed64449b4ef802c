"""The floors of each layer a search request crosses, for bench/search_latency.py.

Three WSGI applications, each answering a JSON POST with a small JSON body,
served by the same gunicorn (1 worker × 1 thread) as the portal:

- ``wsgi``: bare WSGI, nothing but gunicorn and the JSON;
- ``django``: a minimal Django project (no middleware, one function view);
- ``drf``: the same project's Django REST framework view (JSON parser and
  renderer, no authentication, no throttle).

    gunicorn bench.floor_apps:wsgi | bench.floor_apps:django_app
    (the Django project serves /django and /drf)
"""
import json

import django
from django.conf import settings

BODY = json.dumps({"results": [], "latency_ms": 0.0}).encode()


def wsgi(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    json.loads(environ["wsgi.input"].read(length) or b"{}")
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
    return [BODY]


settings.configure(
    DEBUG=False, SECRET_KEY="bench-floor-not-a-secret", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
    MIDDLEWARE=[], INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
    DATABASES={}, USE_TZ=True,
    REST_FRAMEWORK={"DEFAULT_AUTHENTICATION_CLASSES": [], "DEFAULT_PERMISSION_CLASSES": [],
                    "UNAUTHENTICATED_USER": None, "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
                    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"]},
)
django.setup()

from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402


@csrf_exempt
def django_view(request):
    json.loads(request.body or b"{}")
    return HttpResponse(BODY, content_type="application/json")


class DrfView(APIView):
    def post(self, request):
        request.data  # parsed, as the portal's views do
        return Response({"results": [], "latency_ms": 0.0})


urlpatterns = [path("django", django_view), path("drf", DrfView.as_view())]

from django.core.wsgi import get_wsgi_application  # noqa: E402

django_app = get_wsgi_application()
