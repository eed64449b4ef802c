"""Ed25519 signing keys for checkpoints and exports."""
from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SigningKeyError(Exception):
    pass


def generate_signing_key(path: Path) -> Ed25519PrivateKey:
    """A new private key written as PKCS#8 PEM with mode 0600; never overwrites."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def load_signing_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError("AUDIT_SIGNING_KEY_FILE does not hold an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError("AUDIT_SIGNING_KEY_FILE must hold an Ed25519 private key")
    return key


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as standard base64: what an auditor pins."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
    except (ValueError, TypeError):
        raise SigningKeyError("not a base64 Ed25519 public key") from None


def public_key_raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_key_id(public_key: Ed25519PublicKey) -> str:
    """Public id of a signing key: a digest of its raw public key."""
    import hashlib

    return "ed25519_" + hashlib.sha256(public_key_raw(public_key)).hexdigest()[:16]


def sign(private_key: Ed25519PrivateKey, message: bytes) -> str:
    """Ed25519 signature of ``message`` as standard base64."""
    return base64.b64encode(private_key.sign(message)).decode()


def signature_valid(public_key: Ed25519PublicKey, message: bytes, signature_b64: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
