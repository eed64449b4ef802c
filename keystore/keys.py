"""Loading, validating and identifying the process's secret keys.

A key comes from ``NAME`` or from the file named by ``NAME_FILE`` (never both),
as 64 hex characters or standard base64 of 32 bytes. Once read, both variables
are removed from ``os.environ``. Errors name the variable, never the value.

Removing a variable from ``os.environ`` does not change the process's initial
environment block, which ``/proc/<pid>/environ`` shows for the life of the
process (and which a forked worker inherits). So a long-lived server's master
calls ``reexec_without_secrets()`` first (portal/gunicorn.conf.py): it re-execs
itself once with the secret variables left out of the new environment, handing
their values over through an inherited pipe (never argv, never a file). The
new image reads the pipe (``receive_handed_over_secrets``) and keeps the values
in memory only; workers forked from it find them there.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
from dataclasses import dataclass, field
from typing import MutableMapping

KEY_LENGTH = 32
MODEL_KEY = "EMBED_MODEL_KEY"
AUDIT_KEY = "AUDIT_HMAC_KEY"
AUDIT_OLD_KEYS = "AUDIT_HMAC_OLD_KEYS"
SIGNING_KEY_FILE = "AUDIT_SIGNING_KEY_FILE"
DJANGO_SECRET = "DJANGO_SECRET_KEY"
# Every variable that holds a secret or names a file with one: the server's
# processes are re-executed without them (reexec_without_secrets).
SECRET_VARIABLES = (MODEL_KEY, MODEL_KEY + "_FILE", AUDIT_KEY, AUDIT_KEY + "_FILE",
                    AUDIT_OLD_KEYS, AUDIT_OLD_KEYS + "_FILE", DJANGO_SECRET)
HANDOFF_FD = "PORTAL_SECRETS_FD"
_PIPE_CAPACITY = 60 * 1024  # below Linux's 64 KiB pipe buffer: written before anyone reads


class KeyConfigError(Exception):
    """A key variable is missing or malformed. The message never holds the value."""


def key_id(key: bytes) -> str:
    """Public identifier of a key: a short digest that reveals nothing usable."""
    return "k_" + hashlib.sha256(b"portal-key-id\x00" + key).hexdigest()[:16]


def parse_key(text: str, *, name: str) -> bytes:
    """32 bytes from hex or standard base64; raises KeyConfigError naming ``name``."""
    text = text.strip()
    if not text:
        raise KeyConfigError(f"{name} is empty")
    raw: bytes | None = None
    if len(text) == 2 * KEY_LENGTH and all(c in "0123456789abcdefABCDEF" for c in text):
        raw = bytes.fromhex(text)
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise KeyConfigError(
                f"{name} is neither 64 hex characters nor standard base64 "
                f"(generate one with: openssl rand -hex 32)"
            ) from None
    if len(raw) != KEY_LENGTH:
        raise KeyConfigError(
            f"{name} must decode to {KEY_LENGTH} bytes, it decodes to {len(raw)} "
            f"(generate one with: openssl rand -hex 32)"
        )
    return raw


def take_variable(env: MutableMapping[str, str], name: str) -> str | None:
    """The text of ``name`` or of the file in ``name_FILE``; both are then removed."""
    direct = env.pop(name, None)
    file_name = env.pop(name + "_FILE", None)
    if direct is not None and file_name is not None:
        raise KeyConfigError(f"{name} and {name}_FILE are both set; set only one")
    if file_name is not None:
        try:
            with open(file_name, encoding="ascii") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyConfigError(
                f"{name}_FILE names a file that cannot be read ({exc.__class__.__name__})"
            ) from None
    return direct


@dataclass
class Keyring:
    """The keys this process holds, and what went wrong reading them."""

    model_key: bytes | None = None
    audit_key: bytes | None = None
    audit_old_keys: list[bytes] = field(default_factory=list)
    signing_key_pem: bytes | None = None
    errors: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never show key material, even in a debugger
        return (
            f"Keyring(model={self.model_key_id}, audit={self.audit_key_id}, "
            f"old={len(self.audit_old_keys)}, signing={'yes' if self.signing_key_pem else 'no'}, "
            f"errors={len(self.errors)})"
        )

    @property
    def model_key_id(self) -> str | None:
        return key_id(self.model_key) if self.model_key else None

    @property
    def audit_key_id(self) -> str | None:
        return key_id(self.audit_key) if self.audit_key else None

    def audit_keys_by_id(self) -> dict[str, bytes]:
        keys = {key_id(k): k for k in self.audit_old_keys}
        if self.audit_key:
            keys[key_id(self.audit_key)] = self.audit_key
        return keys


def read_keyring(env: MutableMapping[str, str]) -> Keyring:
    """Read every key from ``env``, removing the variables; collect errors instead of raising."""
    ring = Keyring()
    for name, attr in ((MODEL_KEY, "model_key"), (AUDIT_KEY, "audit_key")):
        try:
            text = take_variable(env, name)
            if text is None:
                ring.errors.append(f"{name} is not set (or {name}_FILE); generate one with: openssl rand -hex 32")
            else:
                setattr(ring, attr, parse_key(text, name=name))
        except KeyConfigError as exc:
            ring.errors.append(str(exc))
    if ring.model_key and ring.audit_key and hmac.compare_digest(ring.model_key, ring.audit_key):
        ring.errors.append(f"{AUDIT_KEY} must differ from {MODEL_KEY}")
    try:
        old = take_variable(env, AUDIT_OLD_KEYS) or ""
        ring.audit_old_keys = [
            parse_key(part, name=f"{AUDIT_OLD_KEYS}[{i}]") for i, part in enumerate(old.split(",")) if part.strip()
        ]
    except KeyConfigError as exc:
        ring.errors.append(str(exc))
    signing_file = env.get(SIGNING_KEY_FILE)
    if signing_file:
        try:
            with open(signing_file, "rb") as handle:
                ring.signing_key_pem = handle.read()
        except OSError as exc:
            ring.errors.append(f"{SIGNING_KEY_FILE} names a file that cannot be read ({exc.__class__.__name__})")
    return ring


_keyring: Keyring | None = None


def install_keyring(env: MutableMapping[str, str] | None = None) -> Keyring:
    """Read the keys once for this process (settings call this at startup), from
    ``os.environ`` and whatever the master handed over."""
    global _keyring
    if env is None:
        env = {**os.environ, **_handed_over} if _handed_over else os.environ
    _keyring = read_keyring(env)
    for name in SECRET_VARIABLES:
        if name != DJANGO_SECRET:
            os.environ.pop(name, None)
    return _keyring


# --- handing secrets to a re-executed server (SPEC §3) ------------------------

_handed_over: dict[str, str] = {}


def handed_over(name: str) -> str | None:
    """The value of a secret variable the re-executed master received, if any."""
    return _handed_over.get(name)


def reexec_without_secrets() -> None:
    """Re-exec this process once without the secret variables in its environment.

    Does nothing when none is set (already re-executed, keys given another
    way). Otherwise their values go into a pipe whose read end the new image
    inherits (its number in ``PORTAL_SECRETS_FD``), and this call does not
    return. Call it before any thread starts (gunicorn's config file).
    """
    found = {name: os.environ[name] for name in SECRET_VARIABLES if name in os.environ}
    if not found:
        return
    payload = json.dumps(found).encode()
    if len(payload) > _PIPE_CAPACITY:
        raise KeyConfigError("the secret variables are too long to hand over (over 60 KiB together)")
    read_end, write_end = os.pipe()  # both close on exec; the read end is made inheritable
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view):]
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    clean = {name: value for name, value in os.environ.items() if name not in SECRET_VARIABLES}
    clean[HANDOFF_FD] = str(read_end)
    del found, payload, view
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], clean)


def receive_handed_over_secrets() -> None:
    """In the re-executed image: read and close the pipe; keep the values in memory."""
    fd_text = os.environ.pop(HANDOFF_FD, None)
    if fd_text is None:
        return
    try:
        with os.fdopen(int(fd_text), "rb") as pipe:
            received = json.loads(pipe.read() or b"{}")
    except (OSError, ValueError):
        raise KeyConfigError(f"{HANDOFF_FD} does not name a readable hand-over pipe") from None
    _handed_over.update({name: value for name, value in received.items() if name in SECRET_VARIABLES})


def get_keyring() -> Keyring:
    if _keyring is None:
        return install_keyring()
    return _keyring


def derive_subkey(master: bytes, purpose: str, length: int = 32) -> bytes:
    """A key for one purpose derived from a master key (HKDF-SHA256)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode()).derive(master)
