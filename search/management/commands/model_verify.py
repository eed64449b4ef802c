"""manage.py model_verify BUNDLE"""
from django.core.management.base import BaseCommand, CommandError

from keystore.bundle import BundleError, verify_bundle
from search.management.commands.model_seal import require_model_key


class Command(BaseCommand):
    help = "Authenticate every chunk of a sealed bundle with the model key, without building the model. Exit 0 or 1."

    def add_arguments(self, parser):
        parser.add_argument("bundle")

    def handle(self, *args, bundle, **options):
        key = require_model_key()
        try:
            header = verify_bundle(bundle, key)
        except OSError as exc:
            raise CommandError(f"{bundle} cannot be read: {exc.strerror or exc}") from None
        except BundleError as exc:
            raise CommandError(f"{bundle} FAILED verification: {exc}") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"{bundle} OK: {header['chunk_count']} chunks, {header['plaintext_size']} bytes, "
                f"key {header['key_id']}"
            )
        )
