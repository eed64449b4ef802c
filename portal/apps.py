from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self):
        from audit.ledger.mirror import mirror_check
        from portal import checks, signals  # noqa: F401  (registration)
        from portal.readiness import register_check
        from portal.storage import audit_store_check

        # The audit ledger stands below portal and registers nothing with it.
        register_check("audit_mirror", mirror_check)
        register_check("audit_store", audit_store_check)


class PortalAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the portal's site (portal.admin_site);
    named in INSTALLED_APPS, so not this module's default config."""

    default = False

    default_site = "portal.admin_site.PortalAdminSite"
