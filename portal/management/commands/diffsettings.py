"""`diffsettings` without secrets (SPEC §3). Django's command prints the repr of
every setting, SECRET_KEY included (derived from the audit key when
DJANGO_SECRET_KEY is not given). Here the settings that hold secrets, and the
database passwords inside DATABASES, are shown masked in both output formats."""
import re

from django.core.management.commands import diffsettings

SECRET_SETTINGS = {"SECRET_KEY", "SECRET_KEY_FALLBACKS", "EMAIL_HOST_PASSWORD"}
MASK = "'********'"
EMPTY = {"None", "''", "[]", "()", "{}"}
_NESTED_PASSWORD = re.compile(r"""('PASSWORD': )('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def mask(settings_reprs: dict) -> dict:
    shown = {}
    for name, text in settings_reprs.items():
        if name in SECRET_SETTINGS and text not in EMPTY:
            text = MASK
        elif name == "DATABASES":
            text = _NESTED_PASSWORD.sub(lambda m: m.group(1) + (m.group(2) if m.group(2) == "''" else MASK), text)
        shown[name] = text
    return shown


class Command(diffsettings.Command):
    help = diffsettings.Command.help + " Settings that hold secrets (SECRET_KEY, …) are masked."

    def output_hash(self, user_settings, default_settings, **options):
        return super().output_hash(mask(user_settings), mask(default_settings), **options)

    def output_unified(self, user_settings, default_settings, **options):
        return super().output_unified(mask(user_settings), mask(default_settings), **options)
