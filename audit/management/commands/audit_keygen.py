import hashlib
import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from keystore.signing import generate_signing_key, load_signing_key, public_key_raw, public_key_text


class Command(BaseCommand):
    requires_system_checks = []  # runs before the key it creates can pass them
    help = "Create the Ed25519 key that signs checkpoints and exports, and print its public key."

    def add_arguments(self, parser):
        parser.add_argument("--out", help="where to write the PEM (default: AUDIT_SIGNING_KEY_FILE)")
        parser.add_argument("--if-missing", action="store_true", help="do nothing if the file exists")

    def handle(self, *args, out=None, if_missing=False, **options):
        target = out or os.environ.get("AUDIT_SIGNING_KEY_FILE")
        if not target:
            raise CommandError("give --out or set AUDIT_SIGNING_KEY_FILE")
        path = Path(target)
        if not path.is_absolute():
            path = Path(settings.BASE_DIR) / path
        if path.exists():
            if not if_missing:
                raise CommandError(f"{path} exists; refusing to overwrite a signing key")
            key = load_signing_key(path.read_bytes())
        else:
            key = generate_signing_key(path)
            self.stderr.write(f"wrote {path} (mode 0600)")
        # The public key stays the last word of the output: scripts read it from there.
        self.stdout.write(f"fingerprint (SHA-256 of the raw public key, for verify_audit_export.py --fingerprint): "
                          f"{hashlib.sha256(public_key_raw(key.public_key())).hexdigest()}")
        self.stdout.write(f"audit signing public key (Ed25519, base64): {public_key_text(key.public_key())}")
