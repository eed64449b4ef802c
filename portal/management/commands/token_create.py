from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audit.ledger.context import command_context
from portal.cli import tenant_from_option
from portal.services import token_create


class Command(BaseCommand):
    help = "Create an API token for a user in a tenant and print it once (for service accounts)."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True)
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--days", type=int, default=90)
        parser.add_argument("--label", default="")

    def handle(self, *args, user, tenant, days, label, **options):
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user named {user!r}")
        found = tenant_from_option(tenant)
        try:
            row, text = token_create(user=account, tenant=found, days=days, label=label,
                                     context=command_context("token_create"))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"token {row.prefix}… for {user} in {tenant}, expires {row.expires_at:%Y-%m-%d}; "
                          "it is shown once:")
        self.stdout.write(text)
