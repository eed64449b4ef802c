"""System checks that stop startup on a bad configuration, naming the variable
and never its value."""
import ipaddress
import re

from django.conf import settings
from django.core import checks
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured

from keystore.keys import get_keyring


@checks.register(checks.Tags.security)
def check_keys(app_configs=None, **kwargs):
    return [checks.Error(message, id="portal.E001") for message in get_keyring().errors]


@checks.register(checks.Tags.security)
def check_product_settings(app_configs=None, **kwargs):
    errors = [checks.Error(message, id="portal.E006") for message in settings.SETTINGS_ERRORS]
    mode = settings.AUDIT_QUERY_MODE
    if not (mode in ("full", "hash") or re.fullmatch(r"truncate:[1-9][0-9]*", mode)):
        errors.append(checks.Error(
            "AUDIT_QUERY_MODE must be 'full', 'hash' or 'truncate:N' with N > 0", id="portal.E002"))
    for cidr in settings.TRUSTED_PROXIES:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            errors.append(checks.Error(f"TRUSTED_PROXIES holds an entry that is not a CIDR: {cidr!r}",
                                       id="portal.E003"))
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", settings.EMBED_DEVICE):
        errors.append(checks.Error("EMBED_DEVICE must be auto, cpu, cuda or cuda:N", id="portal.E004"))
    if settings.AUDIT_RETENTION_DAYS < 1:
        errors.append(checks.Error("AUDIT_RETENTION_DAYS must be at least 1", id="portal.E005"))
    if not hasattr(caches["default"], "count_hit"):  # search.throttles counts every API request with it
        errors.append(checks.Error("CACHES['default'] must be portal.cache.SQLiteCache: the API throttle counts "
                                   "requests with its count_hit", id="portal.E007"))
    return errors


@checks.register(checks.Tags.security, deploy=True)
def check_signing_key(app_configs=None, **kwargs):
    if not settings.AUDIT_SIGNING_KEY_CONFIGURED:
        return [checks.Warning(
            "AUDIT_SIGNING_KEY_FILE is not set: checkpoints and exports cannot be signed",
            hint="Create one with: python manage.py audit_keygen", id="portal.W001")]
    return []


def fail_on_startup_errors() -> None:
    """Run the checks above in a WSGI worker, where Django runs none by itself."""
    errors = [m for m in checks.run_checks(tags=[checks.Tags.security]) if m.level >= checks.ERROR]
    if errors:
        raise ImproperlyConfigured("; ".join(m.msg for m in errors))
