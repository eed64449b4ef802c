from django.core.management.base import BaseCommand, CommandError

from audit.verify import chains, verify_chain
from portal.models import Tenant


class Command(BaseCommand):
    help = "Walk every audit chain (or one tenant's); exit 1 at the first bad event, naming it and why."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="slug of the tenant whose chain to verify")

    def handle(self, *args, tenant=None, **options):
        if tenant:
            found = Tenant.objects.filter(slug=tenant).first()
            if found is None:
                raise CommandError(f"no tenant with slug {tenant!r}")
            to_check = [found.pk]
        else:
            to_check = chains()
        broken = False
        for chain in to_check:
            report = verify_chain(chain)
            self.stdout.write(report.describe())
            broken = broken or not report.ok
        if broken:
            raise CommandError("audit log verification FAILED", returncode=1)
        self.stdout.write(self.style.SUCCESS("audit log intact"))
