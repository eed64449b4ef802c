"""Write a development `.env` with fresh random keys, once.

Run by `make run`; never overwrites an existing file, so data sealed or MAC'd
with those keys stays readable. The file is created with mode 0600.
"""
import os
import secrets
import sys
from pathlib import Path


def write_dev_env(path: Path) -> bool:
    if path.exists():
        return False
    lines = [
        "# Development settings written by `make run`. Never commit this file.",
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


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    if write_dev_env(target):
        print(f"wrote {target} with fresh random keys (mode 0600)")
    else:
        print(f"keeping existing {target}")
