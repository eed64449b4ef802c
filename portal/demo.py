"""The demo data: two tenants and one user per role."""
from django.contrib.auth import get_user_model
from django.db import transaction

from portal.models import Role
from portal.services import membership_grant, tenant_create

DEMO_TENANTS = [("acme", "Acme Corporation"), ("globex", "Globex Bank")]
DEMO_USERS = [
    ("alice", "acme", Role.SEARCHER),
    ("carol", "acme", Role.CURATOR),
    ("chris", "acme", Role.COMPLIANCE),
    ("adam", "acme", Role.ADMIN),
    ("bob", "globex", Role.SEARCHER),
]
_demo_hooks = []


class DemoSetupError(Exception):
    """A demo hook cannot do its part (no model bundle, say): one line for the
    operator that names the setting to fix. Nothing is written (one transaction)."""


def register_demo_hook(hook) -> None:
    """Other apps add their demo data (the search app: the demo knowledge base)."""
    if hook not in _demo_hooks:
        _demo_hooks.append(hook)


@transaction.atomic
def demo_setup(*, password: str, set_existing_passwords: bool) -> list[str]:
    done = []
    tenants = {slug: tenant_create(slug=slug, name=name) for slug, name in DEMO_TENANTS}
    User = get_user_model()
    for username, slug, role in DEMO_USERS:
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_user(username=username, password=password)
            done.append(f"created user {username}")
        elif set_existing_passwords:
            user.set_password(password)
            user.save(update_fields=["password"])
        if role == Role.COMPLIANCE and not user.is_staff:
            user.is_staff = True  # compliance officers review audit events in the admin
            user.save(update_fields=["is_staff"])
        membership_grant(user=user, tenant=tenants[slug], role=role)
    for hook in _demo_hooks:
        done.extend(hook(tenants) or [])
    return done
