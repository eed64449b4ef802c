from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self):
        from audit.mirror import mirror_check
        from portal.readiness import register_check

        register_check("audit_mirror", mirror_check)
