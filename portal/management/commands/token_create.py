from django.core.management.base import BaseCommand, CommandError

from portal.cli import scope_from_options
from portal.services import token_create


class Command(BaseCommand):
    help = "Create an API token for a user in a tenant and print it once (for service accounts)."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True)
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--days", type=int, default=90)
        parser.add_argument("--label", default="")

    def handle(self, *args, user, tenant, days, label, **options):
        scope = scope_from_options("token_create", tenant=tenant, user=user)
        try:
            row, text = token_create(user=scope.user, tenant=scope.tenant, days=days, label=label,
                                     context=scope.context)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"token {row.prefix}… for {user} in {tenant}, expires {row.expires_at:%Y-%m-%d}; "
                          "it is shown once:")
        self.stdout.write(text)
