import json

from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import (
    CheckpointFileError, SigningUnavailable, check_chain_against_checkpoint, parse_checkpoint_document,
)
from audit.verify import chains, verify_chain
from portal.cli import tenant_from_option


class Command(BaseCommand):
    help = ("Walk every audit chain (or one tenant's); exit 1 at the first bad event, naming it and why. "
            "With --checkpoint FILE, also fail when the chain was cut back or rewritten after that checkpoint.")

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="slug of the tenant whose chain to verify")
        parser.add_argument("--checkpoint", help="a checkpoint file (audit_checkpoint --out, or from an export)")

    def handle(self, *args, tenant=None, checkpoint=None, **options):
        held = self._read_checkpoint(checkpoint) if checkpoint else None
        if tenant:
            found = tenant_from_option(tenant)
            to_check = [found.pk]
        else:
            to_check = chains()
        broken = False
        for chain in to_check:
            report = verify_chain(chain)
            self.stdout.write(report.describe())
            broken = broken or not report.ok
        if held is not None:
            result = check_chain_against_checkpoint(held)
            self.stdout.write(result.message)
            broken = broken or not result.ok
        if broken:
            raise CommandError("audit log verification FAILED", returncode=1)
        self.stdout.write(self.style.SUCCESS("audit log intact"))

    def _read_checkpoint(self, path):
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
            if isinstance(document.get("checkpoint"), dict):  # an export's manifest.json
                document = document["checkpoint"]
            return parse_checkpoint_document(document)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}", returncode=2) from None
        except ValueError:
            raise CommandError(f"{path} is not JSON", returncode=2) from None
        except (CheckpointFileError, SigningUnavailable) as exc:
            raise CommandError(f"checkpoint {path}: {exc}", returncode=1) from None
