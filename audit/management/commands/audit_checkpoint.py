import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.ledger.checkpoints import SigningUnavailable, checkpoint_create, checkpoint_document
from audit.ledger.verify import chains
from audit.review.tenants import tenant_from_option, tenants_by_chain


class Command(BaseCommand):
    help = ("Sign a checkpoint of the current head of one tenant's chain (or of every chain); with --out, "
            "also write it as a file to keep outside the portal for `audit_verify --checkpoint`.")

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="tenant slug (default: every chain)")
        parser.add_argument("--out", help="write the checkpoint file here (needs --tenant)")

    def handle(self, *args, tenant=None, out=None, **options):
        if out and not tenant:
            raise CommandError("--out needs --tenant: a checkpoint file holds one chain")
        if tenant:
            found = tenant_from_option(tenant)
            targets = [(found.pk, found)]
        else:
            tenants = tenants_by_chain()
            targets = [(chain, tenants.get(chain)) for chain in chains()]
        try:
            for chain, owner in targets:
                checkpoint = checkpoint_create(chain=chain, tenant=owner)
                self.stdout.write(f"checkpoint: chain {chain} seq {checkpoint.seq} head {checkpoint.head_hash[:16]}… "
                                  f"signed by {checkpoint.signing_key_id}")
                if out:
                    path = Path(out)
                    path.write_text(json.dumps(checkpoint_document(checkpoint), indent=2) + "\n")
                    self.stdout.write(f"wrote {path}")
        except SigningUnavailable as exc:
            raise CommandError(str(exc)) from None
