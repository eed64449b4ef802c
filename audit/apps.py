from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    """The ledger (audit/ledger/) and its review (audit/review/) as one Django
    app: one app label, one set of migrations. Its readiness checks are
    registered by portal, which owns readiness (portal/apps.py)."""

    name = "audit"
    verbose_name = _("Audit log")
