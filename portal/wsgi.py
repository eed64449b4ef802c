"""WSGI entry point. A misconfigured key stops the worker before it serves."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_wsgi_application()

from portal.checks import fail_on_startup_errors  # noqa: E402  (needs apps loaded)

fail_on_startup_errors()
