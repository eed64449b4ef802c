from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.ledger.checkpoints import SigningUnavailable
from audit.ledger.context import command_context
from audit.ledger.retention import ArchiveRefused, archive_chain, archive_plan, retention_cutoff
from audit.ledger.verify import chains
from audit.review.tenants import tenants_by_chain


class Command(BaseCommand):
    help = ("Export events older than AUDIT_RETENTION_DAYS into signed archives, then remove them through the "
            "sanctioned path, leaving an audit.archive event with each archive's digest and chain position.")

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="only this tenant's chain")
        parser.add_argument("--out-dir", default=None, help="where archives go (default: AUDIT_ARCHIVE_DIR)")
        parser.add_argument("--dry-run", action="store_true", help="say what would be archived; change nothing")

    def handle(self, *args, tenant=None, out_dir=None, dry_run=False, **options):
        tenants = tenants_by_chain()
        if tenant:
            found = next((t for t in tenants.values() if t.slug == tenant), None)
            if found is None:
                raise CommandError(f"no tenant with slug {tenant!r}")
            targets = [found.pk]
        else:
            targets = chains()
        cutoff = retention_cutoff()
        directory = Path(out_dir or settings.AUDIT_ARCHIVE_DIR)
        self.stdout.write(f"retention {settings.AUDIT_RETENTION_DAYS} days: archiving events before {cutoff.isoformat()}")
        try:
            for chain in targets:
                plan = archive_plan(chain=chain, tenant=tenants.get(chain), cutoff=cutoff)
                if plan is None:
                    self.stdout.write(f"chain {chain}: nothing older than the retention")
                    continue
                if dry_run:
                    self.stdout.write(f"chain {chain}: would archive seq {plan.first_seq}..{plan.through_seq} "
                                      f"({plan.count} events)")
                    continue
                result = archive_chain(plan=plan, out_dir=directory, context=command_context("audit_archive"))
                self.stdout.write(f"chain {chain}: archived seq {plan.first_seq}..{plan.through_seq} "
                                  f"({plan.count} events) to {result.path} (sha256 {result.sha256})")
        except (ArchiveRefused, SigningUnavailable) as exc:
            raise CommandError(str(exc)) from None
