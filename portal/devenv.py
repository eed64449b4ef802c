"""Write a development `.env` with fresh random keys, once.

Run by `make run`; never overwrites an existing file, so data sealed or MAC'd
with those keys stays readable. The file is created with mode 0600.
"""
import os
import secrets
import sys
from pathlib import Path


HEADER = "# Development settings written by `make run`. Never commit this file."
# Production is the default and strict (portal/production.py); this machine is
# a developer's: plain HTTP on loopback.
DEVELOPMENT = "PORTAL_MODE=development"


def write_dev_env(path: Path) -> bool:
    if path.exists():
        _add_development_flag(path)
        return False
    lines = [
        HEADER,
        DEVELOPMENT,
        f"EMBED_MODEL_KEY={secrets.token_hex(32)}",
        f"AUDIT_HMAC_KEY={secrets.token_hex(32)}",
        f"DJANGO_SECRET_KEY={secrets.token_urlsafe(48)}",
        f"DEMO_PASSWORD={secrets.token_urlsafe(12)}",
        "AUDIT_SIGNING_KEY_FILE=var/keys/audit-signing.pem",
        "",
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines))
    return True


def _add_development_flag(path: Path) -> None:
    """A .env that `make run` wrote before production became the default
    gets the development flag, once; any other .env is left alone."""
    text = path.read_text()
    if text.startswith(HEADER) and "PORTAL_MODE=" not in text:
        with open(path, "a") as handle:
            handle.write(("" if text.endswith("\n") else "\n") + DEVELOPMENT + "\n")


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    if write_dev_env(target):
        print(f"wrote {target} with fresh random keys (mode 0600)")
    else:
        print(f"keeping existing {target}")
