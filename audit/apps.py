from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = _("Audit log")

    def ready(self):
        from audit.ledger.mirror import mirror_check
        from portal.readiness import register_check

        register_check("audit_mirror", mirror_check)
        from portal.storage import audit_store_check

        register_check("audit_store", audit_store_check)
