"""Shared pieces of the management commands."""
from django.core.management.base import CommandError

from portal.models import Tenant


def tenant_from_option(slug: str) -> Tenant:
    """The tenant a command's --tenant names, or a CommandError that lists the known slugs."""
    found = Tenant.objects.filter(slug=slug).first()
    if found is None:
        known = ", ".join(Tenant.objects.order_by("slug").values_list("slug", flat=True)) or "none yet"
        raise CommandError(f"no tenant with slug {slug!r} (known: {known})")
    return found
