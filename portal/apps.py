from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self):
        from portal import checks, signals  # noqa: F401  (registration)


class PortalAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the portal's site (portal.admin_site);
    named in INSTALLED_APPS, so not this module's default config."""

    default = False

    default_site = "portal.admin_site.PortalAdminSite"
