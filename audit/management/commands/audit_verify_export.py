import json

from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import SigningUnavailable, signing_key
from audit.export import standalone_verifier
from keystore.keys import get_keyring


class Command(BaseCommand):
    help = ("Verify an export bundle offline: signature, events digest, links, gaps, checkpoint, and (with the "
            "audit key this portal holds) every event's MAC. Exit 0 verified, 1 not.")

    def add_arguments(self, parser):
        parser.add_argument("bundle")
        parser.add_argument("--public-key", help="signing public key to pin (default: this portal's own)")
        parser.add_argument("--private-key", help="X25519 private key (PEM) for a sealed bundle")
        parser.add_argument("--checkpoint", help="a checkpoint file kept earlier")
        parser.add_argument("--require-complete", action="store_true", help="fail selections that omit events")

    def handle(self, *args, bundle, public_key=None, private_key=None, checkpoint=None, require_complete=False,
               **options):
        verifier = standalone_verifier()
        try:
            if public_key:
                pinned = verifier.load_public_key(public_key)
            else:
                try:
                    pinned = signing_key().public_key()
                except SigningUnavailable:
                    pinned = None
            with open(bundle, "rb") as handle:
                data = handle.read()
            private_pem = open(private_key, "rb").read() if private_key else None
            held = json.load(open(checkpoint, encoding="utf-8")) if checkpoint else None
            result = verifier.verify_bundle(data, public_key=pinned, private_key_pem=private_pem,
                                            held_checkpoint=held, require_complete=require_complete,
                                            mac_keys=get_keyring().audit_keys_by_id() or None)
        except verifier.Unusable as exc:
            raise CommandError(str(exc), returncode=2) from None
        except OSError as exc:
            raise CommandError(f"cannot read {exc.filename}: {exc.strerror}", returncode=2) from None
        self.stdout.write(verifier.describe(result))
        if not result.ok:
            raise CommandError("export bundle NOT verified", returncode=1)
