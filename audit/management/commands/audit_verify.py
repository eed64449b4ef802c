import json

from django.core.management.base import BaseCommand, CommandError

from audit.ledger.checkpoints import (
    CheckpointFileError, SigningUnavailable, check_chain_against_checkpoint, check_stored_checkpoints,
    parse_checkpoint_document, pinned_public_keys,
)
from audit.ledger.verify import chains, checkpointed_chains, verify_chain
from audit.review.tenants import tenant_from_option, tenants_by_chain, unrecorded_activity
from keystore.signing import SigningKeyError, public_key_from_text


class Command(BaseCommand):
    help = ("Walk every audit chain (or one tenant's); exit 1 at the first bad event, naming it and why. "
            "Every chain is also checked against the signed checkpoints stored in the database (a cut tail "
            "or a deleted chain fails), and a tenant with activity but no events is reported. "
            "With --checkpoint FILE, also fail when the chain was cut back or rewritten after that checkpoint.")

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="slug of the tenant whose chain to verify")
        parser.add_argument("--checkpoint", help="a checkpoint file (audit_checkpoint --out, or from an export)")
        parser.add_argument("--public-key", action="append", default=[],
                            help="a signing public key (base64) stored checkpoints may be signed with, besides "
                                 "this portal's own (repeat for keys used before a rotation)")

    def handle(self, *args, tenant=None, checkpoint=None, public_key=(), **options):
        held = self._read_checkpoint(checkpoint) if checkpoint else None
        try:
            keys = pinned_public_keys([public_key_from_text(text) for text in public_key])
        except SigningKeyError as exc:
            raise CommandError(f"--public-key: {exc}", returncode=2) from None
        tenants = tenants_by_chain()
        with_events, with_checkpoints = set(chains()), set(checkpointed_chains())
        if tenant:
            found = tenant_from_option(tenant)
            to_check = [found.pk]
        else:
            to_check = sorted(with_events | with_checkpoints | set(tenants))
        broken = False
        for chain in to_check:
            owner = tenants.get(chain)
            if chain in with_events:
                report = verify_chain(chain)
                self.stdout.write(report.describe())
                broken = broken or not report.ok
            else:
                activity = unrecorded_activity(owner) if owner is not None else []
                name = f"chain {chain}" + (f" ({owner.slug})" if owner is not None else "")
                if activity:
                    self.stdout.write(f"{name}: NO EVENTS, but the tenant has {', '.join(activity)}: "
                                      "its chain was deleted")
                    broken = True
                elif chain in with_checkpoints or tenant:
                    self.stdout.write(f"{name}: no events")
            stored = check_stored_checkpoints(chain, keys)
            for line in stored.describe():
                self.stdout.write(line)
            broken = broken or not stored.ok
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
