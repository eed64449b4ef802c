"""manage.py model_inspect BUNDLE"""
import json

from django.core.management.base import BaseCommand, CommandError

from keystore.bundle import BundleError, inspect_bundle


class Command(BaseCommand):
    requires_system_checks = []  # reads the public header only: no key needed, so no key check
    help = "Print a sealed bundle's public header (format version, key id, chunk count, sizes); needs no key."

    def add_arguments(self, parser):
        parser.add_argument("bundle")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the header as JSON")

    def handle(self, *args, bundle, as_json, **options):
        try:
            header = inspect_bundle(bundle)
        except (BundleError, OSError) as exc:
            raise CommandError(f"{bundle}: {exc}") from None
        if as_json:
            self.stdout.write(json.dumps(header, indent=2))
            return
        for name, value in header.items():
            self.stdout.write(f"{name}: {value}")
        if header["file_size"] != header["expected_file_size"]:
            self.stdout.write(
                self.style.WARNING("the file size differs from what the header announces (truncated or appended)")
            )
