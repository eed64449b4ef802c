"""Shared pieces of the management commands."""
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from portal.models import Tenant
from portal.scope import Scope, command_scope


def tenant_from_option(slug: str) -> Tenant:
    """The tenant a command's --tenant names, or a CommandError that lists the known slugs."""
    found = Tenant.objects.filter(slug=slug).first()
    if found is None:
        known = ", ".join(Tenant.objects.order_by("slug").values_list("slug", flat=True)) or "none yet"
        raise CommandError(f"no tenant with slug {slug!r} (known: {known})")
    return found


def user_from_option(username: str):
    """The user a command's --user names, or a CommandError."""
    found = get_user_model().objects.filter(username=username).first()
    if found is None:
        raise CommandError(f"no user named {username!r}")
    return found


def scope_from_options(command_name: str, *, tenant: str | None = None, user: str | None = None) -> Scope:
    """The scope a command acts in, from its --tenant and --user options: the
    same object a page or API request builds (portal.scope)."""
    account = user_from_option(user) if user else None
    found = tenant_from_option(tenant) if tenant else None
    return command_scope(command_name, tenant=found, user=account)
