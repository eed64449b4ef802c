import json

from django.core.management.base import BaseCommand, CommandError

from audit.ledger.checkpoints import SigningUnavailable, signing_key
from audit.ledger.export import standalone_verifier
from keystore.keys import get_keyring


class Command(BaseCommand):
    help = ("Verify an export bundle offline: signature, events digest, links, gaps, checkpoint, and (with the "
            "audit key this portal holds) every event's MAC. The signer is pinned to this portal's own signing "
            "key unless --public-key or --fingerprint names another. Exit 0 verified, 1 not, 2 unusable input, "
            "3 unpinned (no key to pin: nothing proves who signed it).")

    def add_arguments(self, parser):
        parser.add_argument("bundle")
        parser.add_argument("--public-key", "--key", dest="public_key",
                            help="signing public key to pin (default: this portal's own)")
        parser.add_argument("--fingerprint", help="hex SHA-256 of the raw signing public key to pin")
        parser.add_argument("--private-key", help="X25519 private key (PEM) for a sealed bundle")
        parser.add_argument("--checkpoint", help="a checkpoint file kept earlier")
        parser.add_argument("--require-complete", action="store_true", help="fail selections that omit events")

    def handle(self, *args, bundle, public_key=None, fingerprint=None, private_key=None, checkpoint=None,
               require_complete=False, **options):
        verifier = standalone_verifier()
        try:
            if public_key:
                pinned = verifier.load_public_key(public_key)
            elif fingerprint:
                pinned = None  # the embedded key must match the fingerprint
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
                                            mac_keys=get_keyring().audit_keys_by_id() or None,
                                            fingerprint=fingerprint)
        except verifier.Unusable as exc:
            raise CommandError(str(exc), returncode=2) from None
        except OSError as exc:
            raise CommandError(f"cannot read {exc.filename}: {exc.strerror}", returncode=2) from None
        self.stdout.write(verifier.describe(result))
        status = verifier.exit_status(result)
        if status == 3:
            raise CommandError("export bundle NOT verified: UNPINNED (this portal holds no signing key; "
                               "give --public-key or --fingerprint)", returncode=3)
        if status:
            raise CommandError("export bundle NOT verified", returncode=1)
