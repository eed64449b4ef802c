import os
import secrets

from django.core.management.base import BaseCommand, CommandError

from portal.demo import DEMO_USERS, DemoSetupError, demo_setup


class Command(BaseCommand):
    help = "Create the demo tenants, users and knowledge base (idempotent: keeps existing data)."

    def handle(self, *args, **options):
        password = os.environ.get("DEMO_PASSWORD") or ""
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        try:
            created = demo_setup(password=password, set_existing_passwords=not generated)
        except DemoSetupError as exc:
            raise CommandError(str(exc)) from None
        for line in created:
            self.stdout.write(line)
        users = ", ".join(f"{name} ({role} @ {tenant})" for name, tenant, role in DEMO_USERS)
        self.stdout.write(f"demo users: {users}")
        if generated and any(line.startswith("created user") for line in created):
            self.stdout.write(f"demo password (generated, shown once): {password}")
