from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.ledger import services
from audit.ledger.checkpoints import SigningUnavailable
from audit.ledger.context import command_context
from audit.ledger.export import ExportError, parse_bound, range_events
from audit.review.tenants import tenant_from_option
from keystore.envelope import EnvelopeError


class Command(BaseCommand):
    help = ("Write a signed export bundle of one tenant's events from FROM to TO (dates are whole days, "
            "both inclusive), optionally sealed to an auditor's X25519 public key.")

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--from", dest="start", required=True, help="YYYY-MM-DD or ISO-8601 time (UTC)")
        parser.add_argument("--to", dest="end", required=True, help="YYYY-MM-DD (inclusive) or ISO-8601 time")
        parser.add_argument("--out", required=True, help="bundle file to write (must not exist)")
        parser.add_argument("--recipient", help="X25519 public key (base64 or PEM, or a file holding it)")

    def handle(self, *args, tenant, start, end, out, recipient=None, **options):
        found = tenant_from_option(tenant)
        if recipient and Path(recipient).is_file():
            recipient = Path(recipient).read_text()
        path = Path(out)
        if path.exists():
            raise CommandError(f"{path} exists; refusing to overwrite")
        if not path.resolve().parent.is_dir():
            raise CommandError(f"the folder of {path} does not exist")
        try:
            start_at, end_at = parse_bound(start, name="--from"), parse_bound(end, name="--to", end=True)
            events = range_events(found, start_at, end_at)
            with open(path, "x+b") as handle:
                result = services.audit_export_write(
                    out=handle, tenant=found, user=None, context=command_context("audit_export"), kind="range",
                    events=events, via="cli", created_by="manage.py audit_export", recipient=recipient,
                    description={"range": {"from": start_at.isoformat(), "to": end_at.isoformat()}})
        except (ExportError, EnvelopeError, SigningUnavailable) as exc:
            path.unlink(missing_ok=True)
            raise CommandError(str(exc)) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        manifest = result.manifest
        self.stdout.write(
            f"wrote {path}: {manifest['count']} events of {found.slug}, seq "
            f"{(manifest['first'] or {}).get('seq')}..{(manifest['last'] or {}).get('seq')}, "
            f"sha256 {result.bundle_sha256}" + (f", sealed to {result.sealed_to}" if result.sealed_to else ""))
        if result.gaps:
            gaps = ", ".join(f"{a}..{b}" for a, b in result.gaps)
            raise CommandError(f"the range has GAPS (seq {gaps} missing from the chain): the bundle was written "
                               "and says so, and verifiers will reject it; run audit_verify", returncode=1)
